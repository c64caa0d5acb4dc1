"""How an untrusted image is opened: checked by qemu-img, then read-only in libguestfs.

The format is read with ``qemu-img info`` and passed to libguestfs
explicitly, because letting qemu probe a raw image lets the image's own bytes
decide how it is opened.  Backing files must live beside the image, because
a backing file is a way for an image to read any host file.  Every drive is
added read-only, and one appliance launch serves a whole operation, because
a launch costs seconds (tens under TCG).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from nixslave.errors import ImageError, ToolError
from nixslave.nixos import ROOT_LABEL

FORMATS = ("raw", "qcow2", "vdi", "vmdk", "vpc")
MANIFEST = "nix/var/nixslave/manifest.json"
MAX_BACKING_DEPTH = 16
# Mount points inside the appliance: the root fs and an optional store fs.
ROOT_MP = "/root"
STORE_MP = "/store"
Fs = tuple[str, str, str]  # device, fs type, label

# -- qemu-img -----------------------------------------------------------------

def _qemu_img_info(path: Path, where: str) -> dict[str, Any]:
    """``qemu-img info`` of one file, without opening its backing chain."""
    exe = shutil.which("qemu-img")
    if exe is None:
        raise ToolError("qemu-img is not installed", where="image inspect",
                        hint="apt-get install qemu-utils")
    proc = subprocess.run([exe, "info", "-U", "--output=json", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        raise ImageError(f"qemu-img cannot read the image: {msg[0]}", where=where,
                         hint="check that the file is a disk image and is readable")
    try:
        info: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise ImageError("qemu-img printed no JSON", where=where,
                         hint="check the qemu-utils installation") from None
    return info


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise ImageError(f"{what} does not exist", where=str(path),
                         hint="check the path of the image")
    if not path.is_file():
        raise ImageError(f"{what} is not a regular file", where=str(path),
                         hint="pass a disk image file, not a directory or device")


def probe_image(path: Path) -> dict[str, Any]:
    """Format, sizes and backing file of ``path``; refuse what must not be opened.

    The whole backing chain is checked here, file by file, before libguestfs
    (qemu) follows it: every member, and every vmdk extent, must be a plain
    file in the top image's directory, and every member of an accepted format.
    """
    where = str(path)
    _check_file(path, "the image")
    size = path.stat().st_size
    if size == 0:
        raise ImageError("the image is empty (0 bytes)", where=where,
                         hint="pass a disk image; a zero-length file holds nothing")
    top = _qemu_img_info(path, where)
    if top.get("format") == "raw" and size % 512:
        # qemu-img calls any file raw; a disk is a whole number of sectors
        raise ImageError("this is not a disk image (not a whole number of 512-byte sectors)",
                         where=where, hint="pass the image file, not a text or spec file")
    if top.get("format") == "qcow2":
        _check_qcow2_readable(path, where)
    base_dir = path.resolve().parent
    info, current, depth = top, path, 0
    while True:
        fmt = info.get("format", "")
        if fmt not in FORMATS:
            what = "image" if depth == 0 else f"backing file {current.name}"
            raise ImageError(f"{what} format {fmt!r} is not supported", where=where,
                             hint=f"convert it with qemu-img convert -O qcow2; accepted: "
                                  f"{', '.join(FORMATS)}")
        _check_parts(info, current, base_dir, where)
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if not backing:
            return top
        depth += 1
        if depth > MAX_BACKING_DEPTH:
            raise ImageError("the backing chain is too long", where=where,
                             hint="flatten it with qemu-img convert")
        current = _beside(backing, current, base_dir, where, "backing file")
        _check_file(current, f"backing file {backing}")
        info = _qemu_img_info(current, where)


def _check_qcow2_readable(path: Path, where: str) -> None:
    """A truncated or corrupt qcow2 is refused before libguestfs reads garbage through it.

    ``qemu-img check`` exits 0 (clean), 3 (leaked clusters: harmless), 2
    (corruption) or 1 (cannot be checked, e.g. a truncated file); ``-U``
    lets it read an image a running guest holds.
    """
    proc = subprocess.run(["qemu-img", "check", "-U", "-q", "-f", "qcow2", str(path)],
                          capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        msg = " ".join(proc.stderr.split())[:200] or f"exit code {proc.returncode}"
        raise ImageError(f"the qcow2 file is damaged: {msg}", where=where,
                         hint="restore it from a backup, or try qemu-img check -r all on a "
                              "copy")


def _beside(name: str, current: Path, base_dir: Path, where: str, what: str) -> Path:
    """``name`` (relative to ``current``) resolved; refused unless it is in ``base_dir``."""
    resolved = (current.parent / name).resolve()
    if ":" in name.split("/")[0] or resolved.parent != base_dir:
        raise ImageError(f"{what} {name} is outside the image's directory", where=where,
                         hint="flatten the image with qemu-img convert, or move the "
                              f"{what} next to the image")
    return resolved


def _check_parts(info: dict[str, Any], current: Path, base_dir: Path, where: str) -> None:
    """External data files are refused; vmdk extents must lie beside the image."""
    data = info.get("format-specific", {}).get("data", {})
    if data.get("data-file"):
        raise ImageError(f"the image uses an external data file ({data['data-file']})",
                         where=where,
                         hint="convert it to a self-contained image with qemu-img convert")
    for extent in data.get("extents", []):
        _beside(str(extent.get("filename", "")), current, base_dir, where, "vmdk extent")


# -- libguestfs ---------------------------------------------------------------

def launch(g: Any, drives: list[tuple[Path, str]], where: str) -> list[str]:
    """Add the drives read-only and launch; return their devices in order."""
    try:
        for path, fmt in drives:
            g.add_drive_opts(str(path), format=fmt, readonly=True)
        g.launch()
        devices: list[str] = g.list_devices()
        for mp in (ROOT_MP, STORE_MP):
            g.mkmountpoint(mp)
    except RuntimeError as exc:
        raise ImageError(f"the libguestfs appliance did not start: {exc}", where=where,
                         hint="run `nixslave doctor` or libguestfs-test-tool") from None
    return devices


def filesystems(g: Any, disk: str) -> list[Fs]:
    """(device, fstype, label) of every file system on ``disk``, disk order."""
    out = []
    for dev, fstype in sorted(g.list_filesystems().items()):
        if fstype in ("unknown", "swap"):
            continue
        parent = dev if dev == disk else _parent(g, dev)
        if parent != disk:
            continue
        try:
            label = g.vfs_label(dev)
        except RuntimeError:
            label = ""
        out.append((dev, fstype, label))
    return out


def _parent(g: Any, dev: str) -> str | None:
    try:
        return str(g.part_to_dev(dev))
    except RuntimeError:
        return None


def partition_table(g: Any, disk: str) -> str:
    try:
        kind = str(g.part_get_parttype(disk))
    except RuntimeError:
        return "none"
    return "mbr" if kind == "msdos" else kind


def mount(g: Any, dev: str, mp: str) -> bool:
    try:
        g.mount_ro(dev, mp)
    except RuntimeError:
        return False
    return True


def find_root(g: Any, fss: list[Fs]) -> Fs | None:
    """Mount the root fs at ROOT_MP: by nixslave's label, else anything NixOS-like.

    Without a NixOS candidate the first mountable file system stays mounted,
    so the report can still say how full it is.
    """
    by_label = [fs for fs in fss if fs[2] == ROOT_LABEL]
    for fs in by_label + [fs for fs in fss if fs not in by_label]:
        if not mount(g, fs[0], ROOT_MP):
            continue
        if g.is_file(f"{ROOT_MP}/etc/NIXOS") or g.is_file(f"{ROOT_MP}/{MANIFEST}"):
            return fs
        g.umount(ROOT_MP)
    for fs in fss:
        if mount(g, fs[0], ROOT_MP):
            return fs
    return None
