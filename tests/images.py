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


# -- foreign disks that install writes into ------------------------------------
# Made on the host with sfdisk, mkfs.ext4 -E offset= and cryptsetup, like the
# rest of this file: no appliance launch.

NOTES = b"user's notes: keep me\n\x00\x01\xfe\xff binary tail\n"


def debian_tree(work: Path, name: str = "debian-tree") -> Path:
    """A small Debian-like tree whose bytes the tests know."""
    tree = work / name
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/debian_version").write_text("12.8\n")
    (tree / "home/user").mkdir(parents=True)
    (tree / "home/user/notes.txt").write_bytes(NOTES)
    return tree


def partitioned_disk(img: Path, size_mib: int, parts: list[int], *,
                     table: str = "dos") -> list[tuple[int, int]]:
    """A blank disk with Linux partitions of ``parts`` MiB each, from 1 MiB on.

    Returns each partition's (offset, size) in bytes; the rest of the disk
    stays free.  ``table`` is sfdisk's label: dos or gpt.
    """
    with img.open("wb") as f:
        f.truncate(size_mib * MiB)
    lines, out, start = [f"label: {table}"], [], MiB
    for size in parts:
        lines.append(f"start={start // 512}, size={size * MiB // 512}, type=L")
        out.append((start, size * MiB))
        start += size * MiB
    _run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", img, stdin="\n".join(lines) + "\n")
    return out


def put_ext4(img: Path, part: tuple[int, int], *, label: str, tree: Path | None = None) -> None:
    """An ext4 file system filling partition ``part`` (offset, size) of ``img``."""
    offset, size = part
    populate = ["-d", str(tree)] if tree is not None else []
    _run("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", label, "-E", f"offset={offset}",
         *populate, img, f"{size // 1024}k")


def put_luks(img: Path, part: tuple[int, int], work: Path) -> None:
    """A real LUKS1 header at the start of partition ``part`` (cryptsetup on a scratch file)."""
    offset, size = part
    scratch, key = work / "luks.scratch", work / "luks.key"
    key.write_bytes(b"not a secret")
    with scratch.open("wb") as f:
        f.truncate(size)
    _run("cryptsetup", "luksFormat", "-q", "--batch-mode", "--type", "luks1",
         "--pbkdf-force-iterations", "1000", "--key-file", key, scratch)
    header = scratch.read_bytes()[: 4 * MiB]
    with img.open("r+b") as f:
        f.seek(offset)
        f.write(header)
    scratch.unlink()
    key.unlink()


def existing_disk(work: Path, name: str, *, size_mib: int, table: str = "dos",
                  parts: tuple[int, ...] = (64,)) -> tuple[Path, list[tuple[int, int]]]:
    """Someone's disk: partition 1 holds ext4 "data" with a Debian-like tree.

    Further partitions are left blank, and so is the space after the last.
    """
    img = work / f"{name}.raw"
    layout = partitioned_disk(img, size_mib, list(parts), table=table)
    put_ext4(img, layout[0], label="data", tree=debian_tree(work, f"{name}-tree"))
    return img, layout


def extended_disk(work: Path) -> tuple[Path, list[tuple[int, int]]]:
    """MBR: partition 1 is an extended container; logical partition 5 in it holds ext4.

    Returns the image and the (offset, size) of partitions 1 and 5.
    """
    img = work / "extended.raw"
    with img.open("wb") as f:
        f.truncate(96 * MiB)
    _run("sfdisk", "-q", "--no-reread", "--no-tell-kernel", img,
         stdin="label: dos\nstart=2048, size=180224, type=5\nstart=4096, size=131072, type=83\n")
    logical = (4096 * 512, 131072 * 512)
    put_ext4(img, logical, label="data")
    return img, [(2048 * 512, 180224 * 512), logical]


def plant(img: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes of ``img`` in place (boot code, stray data)."""
    with img.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def mark_unclean(img: Path, offset: int) -> None:
    """Flag the ext4 at ``offset`` as needing journal recovery, as after a crash.

    Mounting it read-only on a writable device replays the journal: a write.
    """
    _run("debugfs", "-w", "-R", "feature needs_recovery", f"{img}?offset={offset}")


def debugfs(image: Path, offset: int, *cmds: str, write: bool = False) -> str:
    """Run debugfs commands on an ext4 file system in a raw file (at ``offset``).

    Tests damage and read images with it on the host, with no appliance.
    """
    target = f"{image}?offset={offset}" if offset else str(image)
    proc = subprocess.run(["debugfs", *(["-w"] if write else []), "-f", "-", target],
                          input="\n".join(cmds) + "\n", capture_output=True, text=True)
    # debugfs echoes each command read from stdin; keep only the answers
    return "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("debugfs: "))


def erofs_ls(image: Path, path: str = "/") -> set[str]:
    """Names in a directory of an erofs image, read by erofs-utils on the host."""
    proc = subprocess.run(["dump.erofs", "--ls", f"--path={path}", str(image)],
                          capture_output=True, text=True, check=True)
    _, _, table = proc.stdout.partition("FILENAME")
    names = {ln.split(None, 2)[2] for ln in table.splitlines() if len(ln.split(None, 2)) == 3}
    return names - {".", ".."}
