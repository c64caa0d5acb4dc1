"""Small scripts that make test images, one function per kind of image.

They use only mkfs.ext4 -d, sfdisk and qemu-img, so making an image needs
no appliance launch; the launches are kept for the code under test.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from nixslave.nixos import ROOT_LABEL, STORE_LABEL
from nixslave.root import Root, copy_paths

MiB = 1 << 20


def _run(*cmd: str | Path, stdin: str | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, input=stdin, text=True)


def mkfs(tree: Path, img: Path, size_mib: int, *, label: str = ROOT_LABEL) -> Path:
    """An ext4 file system filling the whole of ``img``, populated from ``tree``."""
    _run("mkfs.ext4", "-q", "-b", "4096", "-L", label, "-d", tree, img, f"{size_mib}M")
    return img


def to_qcow2(raw: Path, img: Path) -> Path:
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
    return img


def direct_image(root: Root, work: Path, *, fmt: str = "raw") -> Path:
    """A direct-boot image: the root fs is the whole disk."""
    tree = root.prepare(work / "direct-tree")
    raw = mkfs(tree, work / "direct.raw", 256)
    if fmt == "raw":
        return raw
    img = to_qcow2(raw, work / f"direct.{fmt}")
    raw.unlink()
    return img


def mbr_image(root: Root, work: Path, *, size_mib: int = 64, include_store: bool = True,
              generation: bool = False) -> Path:
    """A bios-style disk: MBR, one bootable partition at 1 MiB holding the root fs.

    With ``-E offset`` mke2fs's size argument is the file system's size, so
    the file system ends exactly at the end of the disk.  ``generation``
    plants a second system link, which inspection must flag.
    """
    tree = root.prepare(work / "mbr-tree", include_store=include_store)
    (tree / "boot/extlinux").mkdir(parents=True)
    (tree / "boot/extlinux/extlinux.conf").write_text("DEFAULT nixslave\n")
    if generation:
        (tree / "nix/var/nix/profiles/system-2-link").symlink_to(root.toplevel)
    img = work / "mbr.raw"
    with img.open("wb") as f:
        f.truncate(size_mib * MiB)
    _run("sfdisk", "-q", img, stdin="label: dos\nstart=2048, type=83, bootable\n")
    _run("mkfs.ext4", "-q", "-b", "4096", "-L", ROOT_LABEL, "-E", f"offset={MiB}",
         "-d", tree, img, f"{size_mib - 1}M")
    return img


def store_image(root: Root, work: Path, *, extra: str | None = None) -> Path:
    """A store disk: its file system's root is /nix/store and holds the closure.

    ``extra`` plants a file that is not in the closure.
    """
    store = work / "store-tree"
    store.mkdir()
    _run("cp", "-a", *root.paths, store)
    if extra:
        (store / extra).write_text("not in the closure\n")
    return mkfs(store, work / "store.raw", 256, label=STORE_LABEL)


def plain_ext4_image(work: Path) -> Path:
    """An ext4 file system with some files that is not NixOS."""
    tree = work / "plain-tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("debian\n")
    (tree / "home/user").mkdir(parents=True)
    (tree / "home/user/notes.txt").write_text("hello\n")
    return mkfs(tree, work / "plain.raw", 16, label="data")


def random_image(work: Path, size: int = MiB) -> Path:
    """Bytes no tool can make sense of: qemu-img calls it raw, it holds no fs."""
    img = work / "random.img"
    img.write_bytes(os.urandom(size))
    return img


def plain_nixos_image(root: Root, work: Path) -> Path:
    """What a NixOS not built by nixslave looks like: store, system link, no manifest."""
    tree = work / "nixos-tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/NIXOS").touch()
    copy_paths(root.paths, tree / "nix/store")
    profiles = tree / "nix/var/nix/profiles"
    profiles.mkdir(parents=True)
    (profiles / "system").symlink_to(root.toplevel)
    return mkfs(tree, work / "nixos.raw", 256, label="nixos")


def corrupt_manifest_image(root: Root, work: Path) -> Path:
    """A nixslave root (no store) whose manifest is truncated."""
    tree = root.prepare(work / "corrupt-tree", include_store=False)
    manifest = tree / "nix/var/nixslave/manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    return mkfs(tree, work / "corrupt.raw", 32)


# Everything a prepared root holds outside /nix/store, as image paths.
ROOT_OUTSIDE_STORE = frozenset({
    "/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/etc/NIXOS", "/root", "/var",
    "/nix", "/nix/store", "/nix/var", "/nix/var/nix", "/nix/var/nix/profiles",
    "/nix/var/nix/profiles/system", "/nix/var/nixslave", "/nix/var/nixslave/manifest.json",
})
