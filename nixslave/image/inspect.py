"""Offline inspection of a nixslave (or plain NixOS) disk image.

Everything is read from the image itself (its manifest, its store, its
profile links), never from the host's store, so the report tells what a
guest booted from the image would actually get.  Images are opened through
:mod:`nixslave.image.access`: read-only, explicit format, one launch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nixslave.appliance import guestfs_handle
from nixslave.errors import ImageError
from nixslave.image.access import (
    MANIFEST,
    ROOT_MP,
    STORE_MP,
    Fs,
    filesystems,
    find_root,
    launch,
    mount,
    partition_table,
    probe_image,
)
from nixslave.nixos import STORE_LABEL
from nixslave.progress import Progress

SYSTEM_LINK = "nix/var/nix/profiles/system"
PROFILES = "nix/var/nix/profiles"
NIX_DB = "nix/var/nix/db/db.sqlite"
MANIFEST_MAX = 64 << 20
NO_FS_HINT = "this is not a disk image nixslave can read (empty, corrupt or encrypted?)"


@dataclass
class FsUse:
    """One mounted file system: where it came from and how full it is."""

    device: str
    fstype: str
    label: str
    size: int
    used: int
    free: int


@dataclass
class ImageReport:
    """What an image holds, as far as can be told without booting it.

    Manifest-derived fields are ``None`` when there is no usable manifest;
    ``store_complete`` is ``None`` when the store is not in the inspected
    images (a shared host directory, or a store disk that was not given).

    Example:

        >>> report = nixslave.inspect_image(Path("web-1.qcow2"))
        >>> if report.missing_paths:
        ...     print(f"{report.name}: {len(report.missing_paths)} store paths missing")
        >>> json.dumps(report.to_json())
    """

    path: str
    format: str
    virtual_size: int
    allocated_size: int | None
    backing_file: str | None
    partition_table: str
    is_nixos: bool
    is_nixslave: bool
    reason: str | None = None
    manifest_error: str | None = None
    nixslave_version: str | None = None
    name: str | None = None
    toplevel: str | None = None
    system_link: str | None = None
    layout: str | None = None
    store: str | None = None
    boot: str | None = None
    closure_count: int | None = None
    closure_nar_size: int | None = None
    store_image: str | None = None
    store_location: str = "none"
    store_paths_present: int = 0
    store_complete: bool | None = None
    missing_paths: list[str] = field(default_factory=list)
    extra_paths: list[str] = field(default_factory=list)
    root_fs: FsUse | None = None
    store_fs: FsUse | None = None
    has_nix_db: bool = False
    generations: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    health: dict[str, Any] | None = None  # with health=True: see nixslave.image.repair.Health

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, every key always present, so scripts can rely on them."""
        return asdict(self)


def _fs_use(g: Any, fs: Fs, mp: str) -> FsUse:
    st = g.statvfs(mp)
    frsize = st["frsize"] or st["bsize"]
    return FsUse(device=fs[0], fstype=fs[1], label=fs[2], size=st["blocks"] * frsize,
                 used=(st["blocks"] - st["bfree"]) * frsize, free=st["bavail"] * frsize)


def _read_manifest(g: Any, where: str) -> tuple[dict[str, Any] | None, str | None]:
    """The parsed manifest, or why it is unusable; downloaded, not read over RPC,
    because a large closure's manifest exceeds the protocol's message limit."""
    path = f"{ROOT_MP}/{MANIFEST}"
    if g.filesize(path) > MANIFEST_MAX:
        return None, "the manifest is larger than 64 MiB"
    with tempfile.TemporaryDirectory(prefix="nixslave-inspect-") as tmp:
        local = Path(tmp) / "manifest.json"
        g.download(path, str(local))
        text = local.read_bytes()
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"not valid JSON: {exc}"
    err = validate_manifest(data)
    return (None, err) if err else (data, None)


def validate_manifest(data: Any) -> str | None:
    """Why ``data`` is not a usable manifest, or None when it is."""
    if not isinstance(data, dict):
        return "the manifest is not a JSON object"
    for key in ("toplevel", "layout", "boot", "closure"):
        if key not in data:
            return f"the manifest has no {key!r}"
    if not isinstance(data["toplevel"], str) or not _is_store_path(data["toplevel"]):
        return f"toplevel {data['toplevel']!r} is not a store path"
    if not isinstance(data["closure"], list):
        return "the manifest's closure is not a list"
    for entry in data["closure"]:
        if not isinstance(entry, dict) or not _is_store_path(entry.get("path")):
            return f"bad closure entry {str(entry)[:200]!r}"
        size = entry.get("narSize", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"closure entry {entry['path']!r} has a bad narSize"
    size = data.get("narSize", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "the manifest's narSize is not a byte count"
    for key in ("name", "layout", "store", "boot", "nixslave"):
        if key in data and not isinstance(data[key], str):
            return f"the manifest's {key!r} is not a string"
    return None


def _is_store_path(p: Any) -> bool:
    if not isinstance(p, str) or not p.startswith("/nix/store/"):
        return False
    name = p[len("/nix/store/"):]
    return bool(name) and "/" not in name and name not in (".", "..")


def _store_entries(g: Any, mp: str, *, fs_root: bool) -> list[str]:
    """Names in a store directory; lost+found at a store fs's root is mkfs's, not a path."""
    if not g.is_dir(mp):
        return []
    names: list[str] = g.ls(mp)
    return sorted(n for n in names if not (fs_root and n == "lost+found"))


def _built_store_image(path: Path) -> Path | None:
    """The store disk the image's own build made, from its (validated) sidecar."""
    from nixslave.backends import Artifact
    from nixslave.errors import NixslaveError

    try:
        a = Artifact.load(path)
    except NixslaveError:
        return None  # not built by nixslave, or no sidecar: inspect the image alone
    return a.store_image if a.store_image is not None and a.store_image.exists() else None


def inspect_image(path: Path, *, store_image: Path | None = None,
                  health: bool = False, progress: Progress | None = None) -> ImageReport:
    """Inspect ``path`` (and the store image of a store-disk layout) in one launch.

    Nothing is written and nothing from the image runs on the host: the
    drives are added read-only with an explicit format, and the manifest is
    validated as untrusted input.  The store disk that the image's own build
    made is found through its sidecar when ``store_image`` is not given.

    ``health`` adds a second, read-only pass: the repair's checks (file
    system, NAR hashes of the store, boot configuration) on a throwaway
    overlay.  An image that cannot be read at all raises
    :class:`nixslave.ImageError`; one that is readable but not NixOS
    gets a report with ``is_nixos`` false and the ``reason``.

    Example:

        >>> import nixslave
        >>> report = nixslave.inspect_image(Path("web-1.qcow2"), progress=print)
        >>> report.is_nixslave, report.layout, report.store_complete
        (True, 'disk', True)
    """
    say = progress or (lambda _m: None)
    path = Path(path)
    if health:
        from nixslave.image.repair import health as check_health

        report = inspect_image(path, store_image=store_image, progress=progress)
        if report.is_nixos:
            report.health = check_health(path, store_image=store_image,
                                         progress=progress).to_json()
        return report
    say(f"inspecting {path}")
    info = probe_image(path)
    drives = [(path, str(info["format"]))]
    if store_image is None:
        store_image = _built_store_image(path)
    if store_image is not None:
        store_image = Path(store_image)
        drives.append((store_image, str(probe_image(store_image)["format"])))
    with guestfs_handle() as g:
        devices = launch(g, drives, str(path))
        return _guarded(g, path, info, devices[0], devices[1:], store_image)


def inspect_images(paths: Sequence[Path], *,
                   progress: Progress | None = None) -> list[ImageReport | ImageError]:
    """Inspect several images in one launch; each gets its report or its error.

    For checking a set of machines at once: a launch costs far more than
    reading an image, so a batch costs about as much as a single image.
    The result has one entry per path, in order; an image that cannot be
    read gets its :class:`nixslave.ImageError` in its place rather
    than failing the batch.

    Example:

        >>> import nixslave
        >>> for r in nixslave.inspect_images([Path("a.qcow2"), Path("b.qcow2")]):
        ...     print(r if isinstance(r, nixslave.ImageError) else r.toplevel)
    """
    say = progress or (lambda _m: None)
    out: list[ImageReport | ImageError | None] = []
    drives: list[tuple[Path, str]] = []
    infos: list[tuple[int, Path, dict[str, Any]]] = []
    for p in map(Path, paths):
        try:
            info = probe_image(p)
        except ImageError as exc:
            out.append(exc)
            continue
        infos.append((len(out), p, info))
        drives.append((p, str(info["format"])))
        out.append(None)
    if drives:
        say(f"inspecting {len(drives)} images")
        with guestfs_handle() as g:
            devices = launch(g, drives, ", ".join(str(p) for p, _ in drives))
            for (slot, p, info), disk in zip(infos, devices, strict=True):
                try:
                    out[slot] = _guarded(g, p, info, disk, [], None)
                except ImageError as exc:
                    out[slot] = exc
                g.umount_all()
    return [r for r in out if r is not None]


def _guarded(g: Any, path: Path, info: dict[str, Any], disk: str, store_disks: list[str],
             store_image: Path | None) -> ImageReport:
    """_inspect with libguestfs failures turned into an ImageError about ``path``."""
    try:
        return _inspect(g, path, info, disk, store_disks, store_image)
    except RuntimeError as exc:
        raise ImageError(f"reading the image failed: {exc}", where=str(path),
                         hint="the file system may be damaged; try e2fsck on a copy") from None


def _inspect(g: Any, path: Path, info: dict[str, Any], disk: str, store_disks: list[str],
             store_image: Path | None) -> ImageReport:
    where = str(path)
    report = ImageReport(
        path=where, format=str(info["format"]), virtual_size=int(info["virtual-size"]),
        allocated_size=info.get("actual-size"), backing_file=info.get("backing-filename"),
        partition_table=partition_table(g, disk), is_nixos=False, is_nixslave=False,
        store_image=str(store_image) if store_image else None)
    root = find_root(g, filesystems(g, disk))
    if root is None:
        raise ImageError("no file system found", where=where, hint=NO_FS_HINT)
    report.root_fs = _fs_use(g, root, ROOT_MP)
    has_nixos = bool(g.is_file(f"{ROOT_MP}/etc/NIXOS"))
    report.is_nixslave = bool(g.is_file(f"{ROOT_MP}/{MANIFEST}"))
    report.is_nixos = has_nixos or report.is_nixslave
    if not report.is_nixos:
        report.reason = "no /etc/NIXOS and no nixslave manifest"
        return report
    if not has_nixos:
        report.warnings.append("the image has a manifest but no /etc/NIXOS")
    manifest = None
    if report.is_nixslave:
        manifest, report.manifest_error = _read_manifest(g, where)
    if g.is_symlink(f"{ROOT_MP}/{SYSTEM_LINK}"):
        report.system_link = str(g.readlink(f"{ROOT_MP}/{SYSTEM_LINK}"))
    report.has_nix_db = bool(g.is_file(f"{ROOT_MP}/{NIX_DB}"))
    if g.is_dir(f"{ROOT_MP}/{PROFILES}"):
        report.generations = sorted(n for n in g.ls(f"{ROOT_MP}/{PROFILES}") if n != "system")
    if report.generations:
        report.warnings.append(f"unexpected profile entries: {', '.join(report.generations)}")
    _apply_manifest(g, report, manifest)
    _check_store(g, report, manifest, store_disks, store_image)
    return report


def _apply_manifest(g: Any, report: ImageReport, manifest: dict[str, Any] | None) -> None:
    """Fill name/toplevel/layout/boot from the manifest, else from the tree."""
    if manifest is None:
        report.toplevel = report.system_link
        report.boot = "bios" if g.is_dir(f"{ROOT_MP}/boot/extlinux") else "direct"
        return
    report.nixslave_version = _str(manifest.get("nixslave"))
    report.name = _str(manifest.get("name"))
    report.toplevel = manifest["toplevel"]
    report.layout = _str(manifest.get("layout"))
    report.store = _str(manifest.get("store"))
    report.boot = _str(manifest.get("boot"))
    report.closure_count = len(manifest["closure"])
    size = manifest.get("narSize")
    if not size:  # validated: an int when present
        size = sum(e.get("narSize", 0) for e in manifest["closure"])
    report.closure_nar_size = size
    if report.system_link != report.toplevel:
        report.warnings.append(f"the system link points to {report.system_link}, "
                               f"not the manifest's toplevel {report.toplevel}")


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _check_store(g: Any, report: ImageReport, manifest: dict[str, Any] | None,
                 store_disks: list[str], store_image: Path | None) -> None:
    """Compare the store that was inspected with the manifest's closure."""
    if store_image is not None:
        fss = filesystems(g, store_disks[0])
        labelled = [fs for fs in fss if fs[2] == STORE_LABEL]
        store = next((fs for fs in labelled + fss if mount(g, fs[0], STORE_MP)), None)
        if store is None:
            raise ImageError("no file system found on the store image", where=str(store_image),
                             hint="pass the image made for this machine's /nix/store")
        report.store_fs = _fs_use(g, store, STORE_MP)
        report.store_location = "store image"
        names = _store_entries(g, STORE_MP, fs_root=True)
    else:
        names = _store_entries(g, f"{ROOT_MP}/nix/store", fs_root=False)
        report.store_location = "root image"
    report.store_paths_present = len(names)
    if manifest is None:
        return
    if store_image is None and report.layout == "shared":
        report.store_location = "host directory"
        report.warnings.extend([] if not names else ["the root image's /nix/store is not "
                                                     "empty although the store is shared"])
        report.extra_paths = [f"/nix/store/{n}" for n in names]
        return
    if store_image is None and report.layout == "store-disk":
        report.store_location = "store image (not given)"
        report.extra_paths = [f"/nix/store/{n}" for n in names]
        return
    want = {Path(e["path"]).name for e in manifest["closure"]}
    have = set(names)
    report.missing_paths = sorted(f"/nix/store/{n}" for n in want - have)
    report.extra_paths = sorted(f"/nix/store/{n}" for n in have - want)
    report.store_complete = not report.missing_paths
    if report.extra_paths:
        report.warnings.append(f"{len(report.extra_paths)} store entries are not in the "
                               "closure")


# -- other read-only operations -----------------------------------------------

def list_files(path: Path, *, store_image: Path | None = None) -> list[str]:
    """Every path in the root fs (store image files under /nix/store), sorted.

    One launch; ``find0`` streams to a local file because a full store's
    listing is larger than one libguestfs message.
    """
    path = Path(path)
    where = str(path)
    drives = [(path, str(probe_image(path)["format"]))]
    if store_image is not None:
        drives.append((Path(store_image), str(probe_image(Path(store_image))["format"])))
    with guestfs_handle() as g, tempfile.TemporaryDirectory(prefix="nixslave-ls-") as tmp:
        devices = launch(g, drives, where)
        try:
            root = find_root(g, filesystems(g, devices[0]))
            if root is None:
                raise ImageError("no file system found", where=where, hint=NO_FS_HINT)
            files = _find(g, ROOT_MP, Path(tmp) / "root", "")
            if store_image is not None:
                fss = filesystems(g, devices[1])
                if not any(mount(g, fs[0], STORE_MP) for fs in fss):
                    raise ImageError("no file system found on the store image",
                                     where=str(store_image), hint="pass the store image")
                files += _find(g, STORE_MP, Path(tmp) / "store", "/nix/store")
        except RuntimeError as exc:
            raise ImageError(f"listing the image failed: {exc}", where=where,
                             hint="the file system may be damaged") from None
    return sorted(set(files))


def _find(g: Any, mp: str, local: Path, prefix: str) -> list[str]:
    """find0 writes absolute paths relative to ``mp``; put them under ``prefix``."""
    g.find0(mp, str(local))
    raw = local.read_bytes().split(b"\0")
    return [prefix + os.fsdecode(p) for p in raw if p]


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a nixslave image; ImageError if it has none or it is corrupt."""
    path = Path(path)
    where = str(path)
    fmt = str(probe_image(path)["format"])
    with guestfs_handle() as g:
        devices = launch(g, [(path, fmt)], where)
        try:
            root = find_root(g, filesystems(g, devices[0]))
            if root is None or not g.is_file(f"{ROOT_MP}/{MANIFEST}"):
                raise ImageError("the image has no nixslave manifest", where=where,
                                 hint="only images built by nixslave carry one")
            manifest, err = _read_manifest(g, where)
        except RuntimeError as exc:
            raise ImageError(f"reading the image failed: {exc}", where=where,
                             hint="the file system may be damaged") from None
    if manifest is None:
        raise ImageError(f"the manifest is corrupt: {err}", where=where,
                         hint="rebuild the image")
    return manifest
