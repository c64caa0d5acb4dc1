"""One call from a spec (and optionally a topology node) to a bootable artifact.

The node's plan is rendered into the guest (network script or NixOS module)
and recorded in the artifact, so the host wires exactly the NICs the guest
expects when it later runs the artifact.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskBackend, DiskOptions
from nixslave.errors import BuildError
from nixslave.spec import MachineSpec
from nixslave.topology import load_plan, node_network

BACKENDS = {"disk": DiskBackend}


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
        if text.endswith("/") or Path(text).is_dir():
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
    progress: Callable[[str], None] | None = None,
) -> Artifact:
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
    return BACKENDS["disk"]().materialize(root, out, options, progress=progress, extra=extra)
