"""An OCI image layout of the container root, for podman, skopeo and registries.

The artifact is a directory in the OCI image layout (image-spec
``image-layout.md``)::

    alpha.oci/
        oci-layout          {"imageLayoutVersion": "1.0.0"}
        index.json          one manifest, tagged (org.opencontainers.image.ref.name)
        blobs/sha256/…      manifest, config and layers, named by their digest

The config's ``Entrypoint`` is ``<toplevel>/init`` and its ``StopSignal``
SIGRTMIN+3 (systemd's power-off, as arion and nixos-containers.nix use).

**Layers.**  By default every store path is a layer of its own, built from
that path alone, so two images that share a store path share the layer's
blob byte for byte (in a layout, a registry or skopeo's copy).  The non-store
files (``/etc/NIXOS``, the system link, the manifest, ``/sbin/init``, the
mount points) are one top layer, last, so that runtimes which share layers
by chain (containers/storage: a layer is identified with everything below
it) share the longest common prefix of store layers.  Docker refuses more
than 125 layers and nixpkgs' ``dockerTools.streamLayeredImage`` makes 100 by
default, while a NixOS closure has hundreds of paths: past ``max_layers``
the most depended-upon paths (most referrers in the closure, then the
largest) keep their own layer and the rest share one.  With
``per_path_layers=False`` the whole root is one layer.

Every blob is reproducible: tar entries from :mod:`nixslave.backends.tar`
(sorted, mtime 1, owner 0), gzip with mtime 0 (or no compression), JSON with
sorted keys and no spaces, a fixed ``created`` time, layers in path order.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nixslave.backends import Artifact
from nixslave.backends.nspawn import (
    KILL_SIGNAL,
    STORE,
    base_extra,
    check_output,
    container_tree,
    options_of,
    publish_container,
)
from nixslave.backends.publish import BuildSet
from nixslave.backends.tar import Entry, Written, scan, write_archive
from nixslave.errors import BuildError
from nixslave.progress import Progress
from nixslave.root import Root

CREATED = "1970-01-01T00:00:01Z"  # the store's epoch, as every mtime in the layers
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {None: "application/vnd.oci.image.layer.v1.tar",
            "gzip": "application/vnd.oci.image.layer.v1.tar+gzip"}
REF_NAME = "org.opencontainers.image.ref.name"
# nix/ and nix/store/ as Root.prepare makes them, repeated in every store layer
STORE_DIRS = {"nix": 0o755, "nix/store": 0o1775}
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm",
        "riscv64": "riscv64", "powerpc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class OciOptions:
    """Options of the OCI backend."""

    tag: str = "latest"
    per_path_layers: bool = True
    max_layers: int = 100
    compression: Literal["gzip"] | None = "gzip"
    gcroot: bool = True

    def check(self) -> None:
        # image-spec annotations.md: a ref name is a tag-like component here
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", self.tag):
            raise BuildError(f"{self.tag!r} is not a tag", where="oci options",
                             hint="use letters, digits, '_', '.' and '-' (e.g. latest)")
        if self.max_layers < 2:
            raise BuildError("max_layers must be at least 2 (store and top layer)",
                             where="oci options", hint="use 100, as dockerTools does")
        if self.compression not in MT_LAYER:
            raise BuildError(f"unknown layer compression {self.compression!r}",
                             where="oci options", hint="use gzip or none")


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def _architecture(toplevel: str) -> str:
    """The OCI architecture of the system (its ``system`` file), else the host's."""
    try:
        system = (Path(toplevel) / "system").read_text().strip()
    except OSError:
        system = platform.machine() + "-linux"
    cpu = system.split("-", 1)[0]
    return ARCH.get(cpu, cpu)


def layer_groups(root: Root, opts: OciOptions) -> list[list[str]]:
    """Store paths per layer, in a fixed order (see the module docstring)."""
    paths = sorted(root.paths)
    if not opts.per_path_layers:
        return [paths]
    budget = opts.max_layers - 1  # the top layer takes one
    if len(paths) <= budget:
        return [[p] for p in paths]
    referrers = {p: 0 for p in paths}
    for info in root.closure:
        for ref in info.references:
            if ref in referrers and ref != info.path:
                referrers[ref] += 1
    size = {i.path: i.nar_size for i in root.closure}
    ranked = sorted(paths, key=lambda p: (-referrers[p], -size[p], p))
    own = set(ranked[:budget - 1])
    return [[p] for p in paths if p in own] + [[p for p in paths if p not in own]]


def _store_layer(paths: list[str]) -> list[Entry]:
    entries = [Entry(n, "dir", m) for n, m in STORE_DIRS.items()]
    for p in paths:
        entries += scan(Path(p), f"nix/store/{Path(p).name}")
    return entries


class _Blobs:
    """Content-addressed files under ``blobs/sha256`` of one layout."""

    def __init__(self, layout: Path) -> None:
        self.dir = layout / "blobs" / "sha256"
        self.dir.mkdir(parents=True)
        for d in (layout, layout / "blobs", self.dir):
            os.chmod(d, 0o755)  # whatever the umask
        self.tmp = layout / ".tmp-blob"

    def archive(self, entries: list[Entry], compression: Literal["gzip"] | None) -> Written:
        w = write_archive(entries, self.tmp, compression)
        self.tmp.replace(self.dir / w.file_sha256)
        return w

    def json(self, obj: object) -> tuple[str, int]:
        data = _canonical(obj)
        digest = hashlib.sha256(data).hexdigest()
        _write(self.dir / digest, data)
        return digest, len(data)


class OciBackend:
    """An OCI image layout with one layer per store path and a top layer."""

    name = "oci"

    def materialize(self, root: Root, out: Path, options: object = None, *,
                    progress: Progress | None = None,
                    extra: dict[str, object] | None = None) -> Artifact:
        """Write the image layout for ``root`` at ``out`` (a directory, e.g. alpha.oci)."""
        opts = options_of(options, OciOptions)
        opts.check()
        out = check_output(out)

        def make(bs: BuildSet, say: Progress) -> Artifact:
            spec = root.spec
            say(f"preparing the container root ({len(root.paths)} store paths)")
            tree = container_tree(root, bs.work / "tree", copy_store=False, progress=say)
            layout = bs.image
            layout.mkdir()
            blobs = _Blobs(layout)
            groups = layer_groups(root, opts)
            top = scan(tree)
            if not opts.per_path_layers:
                groups, top = [], top + _store_layer(sorted(root.paths))
            layers: list[Written] = []
            history: list[dict[str, Any]] = []
            for i, group in enumerate(groups):
                say(f"writing layer {i + 1}/{len(groups) + 1}")
                layers.append(blobs.archive(_store_layer(group), opts.compression))
                what = group[0] if len(group) == 1 else f"{len(group)} store paths"
                history.append({"created": CREATED, "created_by": f"nixslave: {what}"})
            say(f"writing layer {len(groups) + 1}/{len(groups) + 1}")
            layers.append(blobs.archive(top, opts.compression))
            history.append({"created": CREATED, "created_by": "nixslave: root files"})
            config = {
                "created": CREATED,
                "architecture": _architecture(root.toplevel),
                "os": "linux",
                "config": {
                    "Entrypoint": [f"{root.toplevel}/init"],
                    "Env": ["PATH=/run/current-system/sw/bin"],
                    "StopSignal": KILL_SIGNAL,
                    "WorkingDir": "/",
                    "Labels": {"org.nixos.toplevel": root.toplevel,
                               "org.opencontainers.image.title": spec.name},
                },
                "rootfs": {"type": "layers",
                           "diff_ids": [f"sha256:{w.tar_sha256}" for w in layers]},
                "history": history,
            }
            cfg_digest, cfg_size = blobs.json(config)
            manifest = {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "digest": f"sha256:{cfg_digest}",
                           "size": cfg_size},
                "layers": [{"mediaType": MT_LAYER[opts.compression],
                            "digest": f"sha256:{w.file_sha256}", "size": w.size}
                           for w in layers],
                "annotations": {"org.opencontainers.image.title": spec.name},
            }
            man_digest, man_size = blobs.json(manifest)
            index = {
                "schemaVersion": 2,
                "mediaType": MT_INDEX,
                "manifests": [{"mediaType": MT_MANIFEST, "digest": f"sha256:{man_digest}",
                               "size": man_size,
                               "platform": {"architecture": config["architecture"],
                                            "os": "linux"},
                               "annotations": {REF_NAME: opts.tag}}],
            }
            _write(layout / "index.json", _canonical(index))
            _write(layout / "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            for f in blobs.dir.iterdir():
                os.chmod(f, 0o644)
            # the layout itself is reproducible too (copied or archived whole)
            for p in [*sorted(layout.rglob("*"), reverse=True), layout]:
                os.utime(p, (1, 1))
            return Artifact(
                name=spec.name, kind="oci", format="oci", image=layout,
                toplevel=root.toplevel, layout="disk", store=STORE, boot="direct",
                memory=spec.memory, cpus=spec.cpus, build=bs.id,
                extra={**base_extra(root, extra), "tag": opts.tag,
                       "manifest": f"sha256:{man_digest}", "config": f"sha256:{cfg_digest}",
                       "layers": [f"sha256:{w.file_sha256}" for w in layers],
                       "diffIds": [f"sha256:{w.tar_sha256}" for w in layers],
                       "compression": opts.compression or "none"})

        return publish_container(root, out, gcroot=opts.gcroot, progress=progress, make=make)
