"""Offline delta upgrade of a stopped image: copy what is missing, then switch.

The guest never rebuilds itself, so the host upgrades it while it is off.
Only the store paths the image lacks travel (one tar stream of the delta);
everything else is a handful of small files.  The order makes every instant
safe to be killed at, which the crash test checks by killing it:

1. sweep what a killed upgrade left behind (staging dirs, temp files);
2. copy the delta into staging, sync, rename each path into the store;
   for a store disk, build a new one that holds the old *and* the new
   closure and switch the sidecar to it, so either system finds its paths;
   for a shared store, add the delta to the share;
3. register the paths in the guest's Nix database, when it has one;
4. switch: boot entry (extlinux.conf, or the UKI on the ESP), manifest,
   system link, each by a rename after a sync;
5. switch the host's side: the sidecar's toplevel and command line (the
   host reads direct-boot arguments from it), GC roots;
6. only with ``gc``: remove what the new system does not reference.

Before step 4 the image boots the old system, after it the new; a rerun
after a kill finds the delta already present and finishes the switch.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nixslave import boot, gcroots, nix
from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.errors import ImageError, NixslaveError
from nixslave.image import nixdb
from nixslave.image.access import MANIFEST
from nixslave.image.session import ESP, TMP, Session, open_session
from nixslave.image.target import Target, exclusive, open_target
from nixslave.nixos import store_kind
from nixslave.progress import Progress
from nixslave.root import Root
from nixslave.spec import MachineSpec

SOURCE_KEYS = ("demo", "config", "flake", "toplevel", "nixpkgs")


@dataclass
class UpgradeReport:
    """What an upgrade changed; the CLI prints this with ``--json``.

    ``changed`` is false when the image already ran the new system (nothing
    was written).  ``paths_added``/``bytes_added`` are the delta copied in,
    ``paths_removed`` what ``gc`` dropped, and ``cmdline`` the new kernel
    command line of a direct-boot image.

    Example:

        >>> r = nixslave.upgrade_image(Path("web-1.qcow2"), root=new_root)
        >>> print(f"{r.old_toplevel} -> {r.new_toplevel}: +{r.paths_added} paths")
    """

    image: str
    name: str
    layout: str
    boot: str
    old_toplevel: str
    new_toplevel: str
    changed: bool
    paths_added: int = 0
    bytes_added: int = 0            # NAR bytes of the delta
    paths_removed: int = 0
    registered: int = 0             # paths added to the guest's Nix database
    store_image: str | None = None
    share_dir: str | None = None
    cmdline: str = ""
    sidecar: str | None = None
    swept: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def upgrade(image: Path, *, root: Root | None = None, source: dict[str, Any] | None = None,
            gc: bool = False, progress: Progress | None = None) -> UpgradeReport:
    """Upgrade the stopped image at ``image`` to ``root`` (or to ``source``).

    ``root`` is a system the caller built; otherwise the image's own spec
    (from its manifest) with ``source`` applied (``{"toplevel": …}``,
    ``{"demo": True}``, ``{"config": …}`` or ``{"flake": …}``) is built.

    Only the store paths the image lacks are copied in, then the system
    link, boot files and manifest are switched so that a kill at any moment
    leaves an image that boots the old system or the new one.  ``gc``
    removes the old system's paths that the new one does not use.  The
    root's layout and boot mode must match the image's, and the guest must
    be stopped; otherwise :class:`nixslave.ImageError` is raised
    before anything is written.

    Example:

        >>> import nixslave
        >>> spec = nixslave.MachineSpec(name="web-1", config=Path("web-1.nix"))
        >>> new = nixslave.build_root(spec)
        >>> report = nixslave.upgrade_image(Path("web-1.qcow2"), root=new, gc=True)
        >>> report.new_toplevel == new.toplevel
        True
    """
    say = progress or (lambda _m: None)
    start = time.monotonic()
    t = open_target(Path(image), write=True)
    if root is not None and t.artifact is not None:
        # refused before the launch: the sidecar knows the layout and boot too
        _check_compatible({"layout": t.artifact.layout, "boot": t.artifact.boot}, root, t)
    with exclusive(t):
        _sweep_host(t)
        with open_session([(t.image, t.format)], t.where) as s:
            manifest = _manifest(s)
            if root is None:
                root = _build(manifest, t, source or {}, say)
            _check_compatible(manifest, root, t)
            report = UpgradeReport(
                image=t.where, name=root.spec.name, layout=root.spec.layout,
                boot=root.spec.boot, old_toplevel=manifest["toplevel"],
                new_toplevel=root.toplevel, changed=manifest["toplevel"] != root.toplevel)
            _in_image(s, t, manifest, root, report, gc=gc, say=say)
        _host_side(t, manifest, root, report, gc=gc, say=say)
    report.seconds = round(time.monotonic() - start, 2)
    say(f"upgraded {t.where} to {root.toplevel}" if report.changed
        else f"{t.where} already runs {root.toplevel}")
    return report


# -- before the switch -----------------------------------------------------------

def _manifest(s: Session) -> dict[str, Any]:
    manifest, err = s.read_manifest()
    if manifest is None:
        raise ImageError(f"cannot upgrade: {err}", where=s.where,
                         hint="`nixslave image repair` restores a lost manifest from the "
                              "system link; an image not built by nixslave needs a rebuild")
    return manifest


def _build(manifest: dict[str, Any], t: Target, source: dict[str, Any],
           say: Progress) -> Root:
    """The image's own spec with a new source, built on the host."""
    spec_data = dict(manifest.get("spec") or {})
    if not spec_data:
        raise ImageError("the manifest holds no machine spec", where=t.where,
                         hint="pass a built system (--toplevel) through the API's root=")
    if any(k in source for k in SOURCE_KEYS):
        for k in SOURCE_KEYS:
            spec_data.pop(k, None)
    spec_data.update(source)
    spec = MachineSpec.parse(spec_data)
    network = None
    a = t.artifact
    if a is not None and a.extra.get("topology") and a.extra.get("node"):
        from nixslave.topology import load_plan, node_network

        network = node_network(load_plan(Path(a.extra["topology"])), str(a.extra["node"]))
    return rootmod.build(spec, network=network, progress=say)


def _check_compatible(manifest: dict[str, Any], root: Root, t: Target) -> None:
    for key, new in (("layout", root.spec.layout), ("boot", root.spec.boot),
                     ("store", store_kind(root.spec))):
        old = manifest.get(key)
        if old is not None and old != new:
            raise ImageError(f"the image's {key} is {old}, the new system's is {new}",
                             where=t.where,
                             hint=f"an upgrade keeps the {key}; build a new image to change it")


def _in_image(s: Session, t: Target, manifest: dict[str, Any], root: Root,
              report: UpgradeReport, *, gc: bool, say: Progress) -> None:
    kind = store_kind(root.spec)
    store = s.p("nix/store")
    report.swept = s.sweep(store)
    want = {Path(p).name for p in root.paths}
    old = {Path(e["path"]).name for e in manifest["closure"]}
    if kind == "disk":
        have = s.store_names(store)
        delta = [p for p in root.paths if Path(p).name not in have]
        report.paths_added = len(delta)
        report.bytes_added = sum(i.nar_size for i in root.closure if i.path in delta)
        say(f"copying {len(delta)} store paths ({report.bytes_added / (1 << 20):.1f} MiB)")
        s.put_paths(delta, store)
    else:
        report.paths_added = len(want - old)
        report.bytes_added = sum(i.nar_size for i in root.closure
                                 if Path(i.path).name not in old)
        # the store is outside the root disk: a union store first, so that
        # both systems find their paths whatever the boot entry says
        _switch_outer_store(t, manifest, root, report, union=True, say=say)
    say("registering the paths")
    report.registered = _register(s, root)
    say("switching the boot entry")
    _switch_boot(s, t, root)
    say("writing the manifest")
    s.write_file(s.p(MANIFEST), (json.dumps(root.manifest(), indent=2, sort_keys=True)
                                 + "\n").encode())
    say("switching the system link")
    s.set_link(s.p("nix/var/nix/profiles/system"), root.toplevel)
    s.g.sync()
    if gc:
        say("removing paths the new system does not use")
        if kind == "disk":
            junk = sorted(s.store_names(store) - want)
            s.remove_paths(junk, store)
            report.paths_removed = len(junk)
        _unregister(s, sorted(f"/nix/store/{n}" for n in old - want))
        _remove_old_boot_files(s, root)
        s.g.sync()


def _register(s: Session, root: Root) -> int:
    path = s.p(nixdb.DB)
    if not s.g.is_file(path):
        return 0
    local = _download_db(s)
    new = nixdb.register(local, nixdb.registrations(root.paths))
    s.write_file(path, local.read_bytes())
    return new


def _unregister(s: Session, paths: list[str]) -> None:
    path = s.p(nixdb.DB)
    if not paths or not s.g.is_file(path):
        return
    local = _download_db(s)
    nixdb.unregister(local, paths)
    s.write_file(path, local.read_bytes())


def _download_db(s: Session) -> Path:
    local = s.scratch / "db.sqlite"
    s.g.download(s.p(nixdb.DB), str(local))
    wal = s.p(nixdb.DB + "-wal")
    if s.g.is_file(wal):
        s.g.download(wal, str(local) + "-wal")
    nixdb.check_clean(local, s.where)
    return local


def _switch_boot(s: Session, t: Target, root: Root) -> None:
    """The boot entry a self-booting disk reads: extlinux.conf or the UKI."""
    spec = root.spec
    if spec.boot == "bios":
        top = Path(root.toplevel)
        kernel, initrd = os.path.realpath(top / "kernel"), os.path.realpath(top / "initrd")
        if store_kind(spec) != "disk":
            # SYSLINUX reads only its own partition: the files go to /boot,
            # named after their store path so that old and new coexist.
            names = []
            for f in (kernel, initrd):
                name = f"/boot/{Path(f).parent.name[:32]}-{Path(f).name}"
                if not s.g.is_file(s.p(name)):
                    s.write_file(s.p(name), Path(f).read_bytes())
                names.append(name)
            kernel, initrd = names
        conf = boot.extlinux_conf(root.toplevel, spec, kernel=kernel, initrd=initrd)
        s.g.sync()
        s.write_file(s.p("boot/extlinux/extlinux.conf"), conf.encode())
    elif spec.boot == "uefi":
        from nixslave.backends import uefi

        if s.esp is None:
            raise ImageError("the uefi image has no EFI system partition", where=t.where,
                             hint="`nixslave image repair` or a rebuild")
        uki = s.scratch / "BOOTX64.EFI"
        work = s.scratch / "uki"
        work.mkdir()
        uefi.build_uki(root, uki, work)
        free = s.g.statvfs(ESP)
        if uki.stat().st_size + 64 * 1024 > free["bavail"] * free["bsize"]:
            raise ImageError("the ESP has no room for a second unified kernel image",
                             where=t.where, hint="rebuild the image (newer builds leave "
                                                 "room for an upgrade)")
        s.write_file(f"{ESP}/{uefi.UKI_PATH}", uki.read_bytes(), mode=0o755)
    s.g.sync()


def _remove_old_boot_files(s: Session, root: Root) -> None:
    """Kernels of earlier systems copied to /boot (store-disk and shared bios)."""
    if root.spec.boot != "bios" or store_kind(root.spec) == "disk" or not s.g.is_dir(s.p("boot")):
        return
    conf = str(s.g.cat(s.p("boot/extlinux/extlinux.conf")))
    for n in s.g.ls(s.p("boot")):
        path = f"/boot/{n}"
        if s.g.is_file(s.p(path)) and path not in conf.split():
            s.g.rm(s.p(path))


# -- the host's side ---------------------------------------------------------------

def _sweep_host(t: Target) -> None:
    """Temporary store disks of a killed upgrade, in the build directory."""
    for p in t.image.parent.iterdir():
        if p.name.startswith(TMP):
            rootmod.force_rmtree(p)


def _switch_outer_store(t: Target, manifest: dict[str, Any], root: Root,
                        report: UpgradeReport, *, union: bool, say: Progress) -> None:
    """A new store disk (or share contents) for layouts whose store is not on the root disk."""
    a = t.artifact
    if a is None:
        raise ImageError(f"a {root.spec.layout} image is upgraded with its artifact",
                         where=t.where, hint="the image has no sidecar; upgrade the artifact "
                                             "nixslave built, or rebuild")
    if a.extra.get("backing"):
        # an overlay's store disk or share is its base build's (Artifact.load)
        raise ImageError(f"an overlay of a {root.spec.layout} image shares its base's store",
                         where=t.where, hint="rebuild the base image and make a new overlay")
    closure = list(root.closure)
    if union:
        have = {i.path for i in closure}
        old = [e["path"] for e in manifest["closure"] if e["path"] not in have]
        missing = [p for p in old if not nix.is_valid_path(p)]
        if missing:
            raise ImageError(f"{len(missing)} paths of the old system are gone from the host "
                             f"store (e.g. {missing[0]})", where=t.where,
                             hint="the host's GC roots keep them; `nix-store --realise` "
                                  "them, or rebuild the image")
        closure += nix.path_info(old)
    both = Root(spec=root.spec, toplevel=root.toplevel, closure=closure)
    if a.store == "store-disk":
        report.store_image = str(_new_store_disk(t, a, both, say))
        a.store_image = Path(report.store_image)
    elif a.share_dir is not None:
        if a.extra.get("shareMethod") == "bind":
            # zero copy: the runner serves the sidecar's toplevel's closure
            say("the shared store is zero-copy: nothing to copy")
        else:
            _fill_share(a.share_dir, both.paths if union else root.paths, prune=not union)
        report.share_dir = str(a.share_dir)
    a.save()


def _new_store_disk(t: Target, a: Artifact, root: Root, say: Progress) -> Path:
    from nixslave.backends.disk import DiskBackend, DiskOptions

    say(f"building a store disk of {len(root.paths)} paths")
    scratch = t.image.parent / f"{TMP}{secrets.token_hex(4)}"
    scratch.mkdir()
    try:
        fmt = a.store_image.suffix.lstrip(".") if a.store_image else a.format
        target = scratch / f"store.{fmt}"
        work = scratch / "work"
        work.mkdir()
        DiskBackend()._store_disk(root, t.image, DiskOptions(format=fmt), work, say,
                                  target=target)
        final = t.image.with_name(f"{t.image.stem}-store-{secrets.token_hex(4)}.{fmt}")
        target.rename(final)
    finally:
        rootmod.force_rmtree(scratch)
    return final


def _fill_share(share: Path, paths: list[str], *, prune: bool) -> int:
    """Add missing paths to a shared store (each whole, by rename); with ``prune``
    remove what is not in ``paths``."""
    want = {Path(p).name for p in paths}
    have = {p.name for p in share.iterdir()}
    missing = [p for p in paths if Path(p).name not in have]
    if missing:
        staging = share.parent / f"{TMP}{secrets.token_hex(4)}"
        rootmod.copy_paths(missing, staging)
        for p in missing:
            (staging / Path(p).name).rename(share / Path(p).name)
        rootmod.force_rmtree(staging)
    if prune:
        for n in sorted(have - want):
            rootmod.force_rmtree(share / n)
    return len(missing)


def _host_side(t: Target, manifest: dict[str, Any], root: Root, report: UpgradeReport,
               *, gc: bool, say: Progress) -> None:
    spec = root.spec
    say("switching the host's side")
    report.cmdline = boot.cmdline(root.toplevel, spec)
    a = t.artifact
    if a is not None:
        if gc and a.store != "disk":
            _switch_outer_store(t, manifest, root, report, union=False, say=say)
            _drop_unused_store_disks(t, a)
        a.toplevel = root.toplevel
        a.cmdline = report.cmdline
        a.extra.update({"closurePaths": len(root.paths), "narSize": root.nar_size})
        if a.boot == "bios" and store_kind(spec) == "disk":
            top = Path(root.toplevel)
            a.extra.update(kernel=os.path.realpath(top / "kernel"),
                           initrd=os.path.realpath(top / "initrd"))
        report.sidecar = str(a.save())
        report.store_image = str(a.store_image) if a.store_image else None
        report.share_dir = str(a.share_dir) if a.share_dir else None
    try:
        nix.add_gcroot(f"{spec.name}-current", root.toplevel)
        gcroots.record_image(spec.name, t.given, root.toplevel)
    except (OSError, NixslaveError) as exc:
        say(f"warning: the host's GC root was not updated: {exc}")


def _drop_unused_store_disks(t: Target, a: Artifact) -> None:
    keep = a.store_image.name if a.store_image else ""
    prefix = f"{t.image.stem}-store"
    for p in t.image.parent.iterdir():
        if p.name.startswith(prefix) and p.name != keep and p.is_file():
            p.unlink()
