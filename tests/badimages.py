"""Phony bad images for the refusal tests, made on the host with no appliance.

A Debian-like tree (raw and MBR-partitioned), a disk with a real LUKS2
partition, a truncated qcow2: each is what a user could hand nixslave by
mistake, made by a small script as libguestfs's own tests do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

MiB = 1 << 20
NOTES = b"call the plumber on monday\n\x00\xff binary tail\n"
OS_RELEASE = ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
              'VERSION_ID="12"\nID=debian\n')


def run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def debian_tree(work: Path) -> Path:
    """What a small Debian root holds, with a user's file whose bytes must survive."""
    tree = work / "debian-tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/debian_version").write_text("12.8\n")
    (tree / "etc/os-release").write_text(OS_RELEASE)
    (tree / "etc/hostname").write_text("workstation\n")
    (tree / "home/user").mkdir(parents=True)
    (tree / "home/user/notes.txt").write_bytes(NOTES)
    return tree


def debian_raw(d: Path) -> Path:
    """A Debian root file system filling the whole raw disk (a cloud image's shape)."""
    d.mkdir(parents=True, exist_ok=True)
    img = d / "debian.raw"
    run("mkfs.ext4", "-q", "-b", "4096", "-L", "rootfs", "-d", debian_tree(d), img, "16M")
    return img


def mbr_disk(img: Path, size_mib: int, parts: list[int]) -> list[tuple[int, int]]:
    """A blank MBR disk with Linux partitions of ``parts`` MiB from 1 MiB on."""
    with img.open("wb") as f:
        f.truncate(size_mib * MiB)
    script, out, start = ["label: dos"], [], MiB
    for size in parts:
        script.append(f"start={start // 512}, size={size * MiB // 512}, type=83")
        out.append((start, size * MiB))
        start += size * MiB
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(img)], check=True,
                   input="\n".join(script) + "\n", text=True, capture_output=True)
    return out


def put_ext4(img: Path, part: tuple[int, int], label: str, tree: Path) -> None:
    offset, size = part
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", label, "-E", f"offset={offset}",
         "-d", tree, img, f"{size // 1024}k")


def debian_mbr(d: Path) -> Path:
    """A Debian installed the classic way: MBR, one ext4 partition at 1 MiB."""
    d.mkdir(parents=True, exist_ok=True)
    img = d / "debian-mbr.raw"
    (part,) = mbr_disk(img, 40, [36])
    put_ext4(img, part, "rootfs", debian_tree(d))
    return img


def luks_disk(d: Path) -> Path:
    """Debian's encrypted install as a VM disk (qcow2): ext4 /boot, then a LUKS2 partition.

    The LUKS header is made by cryptsetup on a scratch file the size of the
    partition (no loop device) and copied into place.
    """
    d.mkdir(parents=True, exist_ok=True)
    raw = d.parent / f"{d.name}-luks.raw"
    boot, crypt = mbr_disk(raw, 48, [16, 24])
    tree = d.parent / f"{d.name}-boot-tree"
    (tree / "grub").mkdir(parents=True)
    (tree / "grub/grub.cfg").write_text("set timeout=5\n")
    (tree / "vmlinuz-6.1.0-28-amd64").write_bytes(b"\x7fELF not really a kernel\n")
    put_ext4(raw, boot, "boot", tree)
    scratch, key = d.parent / f"{d.name}-crypt.scratch", d.parent / f"{d.name}-key"
    key.write_bytes(b"not a secret")
    with scratch.open("wb") as f:
        f.truncate(crypt[1])
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
         "--pbkdf-force-iterations", "1000", "--key-file", key, scratch)
    with raw.open("r+b") as f:
        f.seek(crypt[0])
        f.write(scratch.read_bytes())
    img = d / "encrypted.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
    for p in (raw, scratch, key):
        p.unlink()
    shutil.rmtree(tree)
    return img


def truncated_qcow2(source: Path, d: Path) -> Path:
    """A copy of a real image cut off at half its length, as by a full disk or a killed scp."""
    d.mkdir(parents=True, exist_ok=True)
    img = d / "copied.qcow2"
    run("cp", "--sparse=always", source, img)
    os.truncate(img, img.stat().st_size // 2)
    return img


def to_qcow2(raw: Path) -> Path:
    img = raw.with_suffix(".qcow2")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img)
    raw.unlink()
    return img
