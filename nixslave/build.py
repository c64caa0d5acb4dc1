"""One call from a spec (and optionally a topology node) to a bootable artifact.

The node's plan is rendered into the guest (network script or NixOS module)
and recorded in the artifact, so the host wires exactly the NICs the guest
expects when it later runs the artifact.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskOptions
from nixslave.backends.publish import current_build
from nixslave.errors import BuildError
from nixslave.progress import Progress
from nixslave.spec import MachineSpec
from nixslave.topology import load_plan, node_network


@dataclass(frozen=True)
class FormatRule:
    """What one output format is made by and which boot modes and layouts it takes."""

    module: str                    # nixslave.backends.<module>
    cls: str                       # its backend class
    boots: tuple[str, ...]         # the first one is the default
    layouts: tuple[str, ...]
    container: bool = False        # no kernel of its own: --boot does not apply


# One declarative table: the CLI, the API and the docs' matrix read it.
FORMATS: dict[str, FormatRule] = {
    "qcow2": FormatRule("disk", "DiskBackend", ("direct", "bios", "uefi"),
                        ("disk", "store-disk", "shared")),
    "raw": FormatRule("disk", "DiskBackend", ("direct", "bios", "uefi"),
                      ("disk", "store-disk", "shared")),
    "vdi": FormatRule("vbox", "VboxBackend", ("bios", "uefi"), ("disk", "store-disk")),
    "vmdk": FormatRule("vbox", "VboxBackend", ("bios", "uefi"), ("disk", "store-disk")),
    "ova": FormatRule("vbox", "VboxBackend", ("bios", "uefi"), ("disk", "store-disk")),
    "libvirt": FormatRule("libvirt", "LibvirtBackend", ("direct", "bios", "uefi"),
                          ("disk", "store-disk", "shared")),
    "nspawn": FormatRule("nspawn", "NspawnBackend", ("direct",), ("disk",), container=True),
    "tar": FormatRule("tar", "TarBackend", ("direct",), ("disk",), container=True),
    "oci": FormatRule("oci", "OciBackend", ("direct",), ("disk",), container=True),
}


def check_format(fmt: str, boot: str | None, layout: str) -> str:
    """The boot mode for ``fmt`` (its default when None), or a BuildError.

    Refused up front, before anything is built: a direct-boot OVA, a
    container with --boot, a VirtualBox disk with a host-shared store.
    """
    rule = FORMATS.get(fmt)
    if rule is None:
        raise BuildError(f"unknown format {fmt!r}", where="--format",
                         hint=f"use one of {', '.join(FORMATS)}")
    if rule.container and boot is not None:
        raise BuildError(f"a {fmt} container has no boot mode: the host runs its init",
                         where="--boot", hint="drop --boot")
    boot = boot or rule.boots[0]
    if boot not in rule.boots:
        raise BuildError(f"{fmt} cannot use {boot} boot", where="--boot",
                         hint=f"use one of {', '.join(rule.boots)}")
    if layout not in rule.layouts:
        raise BuildError(f"{fmt} cannot use the {layout} layout", where="--layout",
                         hint=f"use {' or '.join(rule.layouts)}")
    return boot


def backend_options(fmt: str, opts: DiskOptions) -> Any:
    """Each backend's own options from the command line's disk options.

    qcow2 knobs reach the formats that make a qcow2 (libvirt); elsewhere
    they are refused rather than silently ignored.
    """
    module = FORMATS[fmt].module
    if module == "disk":
        return opts
    qcow2_only = [flag for flag, v in (("--compress", opts.compression),
                                       ("--cluster-size", opts.cluster_size),
                                       ("--overlay", opts.overlay),
                                       ("--preallocation", opts.preallocation != "off"))
                  if v]
    if qcow2_only and module != "libvirt":
        raise BuildError(f"{qcow2_only[0]} applies to qcow2 disks, not {fmt}",
                         where=qcow2_only[0], hint="drop it, or use --format qcow2")
    if module == "libvirt":
        from nixslave.backends.libvirt import LibvirtOptions

        if opts.overlay is not None:
            raise BuildError("--overlay applies to qcow2 disks, not libvirt", where="--overlay",
                             hint="drop it; libvirt domains get their own disks")
        disk = replace(opts, format="qcow2", gcroot=False, checksum=False)
        return LibvirtOptions(disk=disk, gcroot=opts.gcroot, checksum=opts.checksum)
    if module == "vbox":
        from nixslave.backends.vbox import VboxOptions

        return VboxOptions(format=fmt, gcroot=opts.gcroot,  # type: ignore[arg-type]
                           checksum=opts.checksum)
    mod = importlib.import_module(f"nixslave.backends.{module}")
    cls = getattr(mod, f"{module.capitalize()}Options")  # NspawnOptions, TarOptions, OciOptions
    return cls(gcroot=opts.gcroot)


def backend_for(fmt: str) -> Any:
    """The backend class of ``fmt``, imported on first use."""
    rule = FORMATS[fmt]
    return getattr(importlib.import_module(f"nixslave.backends.{rule.module}"), rule.cls)


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (or would, once created)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(out: Path, overlay: Path | None, *, inputs: list[Path]) -> None:
    """Refuse outputs that would overwrite an input or each other.

    ``-o`` equal to the topology (or a config) used to overwrite it, and
    ``--overlay`` equal to ``-o`` made the image its own backing file.
    """
    named = [("-o", out)] + ([("--overlay", overlay)] if overlay is not None else [])
    for flag, path in named:
        text = str(path)
        # A directory artifact (nspawn, OCI) is published as a symlink to its
        # build: rebuilding it is fine; any other directory is not a target.
        if text.endswith("/") or (Path(text).is_dir() and current_build(Path(text)) is None):
            raise BuildError(f"{flag} names a directory", where=text,
                             hint="give a file name such as machine.qcow2")
        for inp in inputs:
            if _same(path, inp) or (Path(inp).is_dir() and Path(os.path.realpath(path))
                                    .is_relative_to(os.path.realpath(inp))):
                raise BuildError(f"{flag} is an input of this build", where=text,
                                 hint="write the image somewhere else")
    if overlay is not None and _same(out, overlay):
        raise BuildError("--overlay is the image itself", where=str(overlay),
                         hint="give the overlay its own file name")


def build_image(
    spec: MachineSpec, out: Path, options: DiskOptions | None = None, *,
    topology: Path | None = None, node: str | None = None,
    progress: Progress | None = None,
) -> Artifact:
    """Build ``spec``'s system and materialize it at ``out``, in any format.

    ``options.format`` picks the backend (``qcow2`` by default; ``raw``,
    ``vdi``, ``vmdk``, ``ova``, ``libvirt``, ``nspawn``, ``tar``, ``oci``),
    and ``spec.boot`` / ``spec.layout`` must be ones that format takes (the
    table is in docs/api.md): an impossible combination raises a
    :class:`nixslave.BuildError` before anything is built.

    ``topology`` is a topology *file* and ``node`` this machine's node in it
    (default: ``spec.name``).  The node's plan is rendered into the guest,
    and the file's path is recorded in the artifact, because a later run,
    upgrade or libvirt/VirtualBox wiring re-reads it: keep the file as long
    as the artifact.  A topology built in Python is written to a file first
    (JSON is fine).

    Returns the :class:`nixslave.Artifact`, also saved beside the
    image as ``<image>.nixslave.json``.  ``out`` is published atomically: a
    build that is killed leaves the previous artifact or the new one.

    Example:

        >>> from pathlib import Path
        >>> import nixslave
        >>> spec = nixslave.MachineSpec(name="web-1", demo=True, layout="store-disk")
        >>> art = nixslave.build_image(spec, Path("/srv/vm/web-1.qcow2"),
        ...                            nixslave.DiskOptions(format="qcow2"),
        ...                            progress=print)
        >>> art.store_image is not None
        True
    """
    fmt = options.format if options else "qcow2"
    # The CLI checks this before making the spec; a caller of the API gets
    # the same refusal instead of a half-built VirtualBox disk with direct boot.
    check_format(fmt, None if fmt in FORMATS and FORMATS[fmt].container else spec.boot,
                 spec.layout)
    backend_opts = backend_options(fmt, options or DiskOptions())
    check_outputs(out, options.overlay if options else None,
                  inputs=[p for p in (topology, spec.config, spec.nixpkgs) if p is not None])
    network = None
    extra: dict[str, object] = {}
    if topology is not None:
        plan = load_plan(topology)
        node = node or spec.name
        network = node_network(plan, node)
        extra = {"topology": str(Path(topology).resolve()), "node": node,
                 "peers": list(network.peers)}
    root = rootmod.build(spec, network=network, progress=progress)
    artifact: Artifact = backend_for(fmt)().materialize(root, out, backend_opts,
                                                        progress=progress, extra=extra)
    # The name the user asked for; the image path is inside its build directory.
    artifact.extra.setdefault("published_as", str(Path(out).absolute()))
    return artifact
