"""Read-only store file systems for the store-disk layout: erofs and squashfs.

A store disk is never written by its guest, so it needs no journal, no free
space and no fsck: a compressed read-only image allocates less than the
closure's NAR size, which ext4 (1.10x here) cannot.  Both are built on the
host from the same bind-mounted tree as ext4 (see :mod:`storebind`), with
every input fixed so the same closure gives the same bytes:

* erofs (``mkfs.erofs`` from erofs-utils): UUID from the machine, ``-T`` for
  every timestamp, ``--all-root``; lz4 because every kernel with erofs
  compression reads it (EROFS_FS_ZIP selects LZ4_DECOMPRESS), including
  Debian's 6.1 and nixpkgs' kernels (``EROFS_FS = module`` in
  pkgs/os-specific/linux/kernel/common-config.nix).  Measured on the demo
  closure, lz4hc took 4.5x longer for 0.4 % fewer bytes.  erofs-utils 1.5
  has no ``-L``, so the label is written into the superblock here and its
  crc32c recomputed, checked first against the checksum mkfs wrote.
* squashfs (``mksquashfs``, zstd): reproducible by default with fixed
  times; squashfs has no label at all, so its guest finds it by the drive
  serial the host gives every store disk (``/dev/disk/by-id/virtio-…``).
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from nixslave.errors import BuildError

SB_OFFSET = 1024                   # erofs superblock: EROFS_SUPER_OFFSET
SB_MAGIC = 0xE0F5E1E2
SB_CHECKSUM = SB_OFFSET + 4
SB_FEATURE_COMPAT = SB_OFFSET + 8
SB_BLKSZBITS = SB_OFFSET + 12
SB_VOLUME_NAME = SB_OFFSET + 64    # char volume_name[16]
COMPAT_SB_CHKSUM = 0x1
EROFS_COMPRESSION = "lz4"
SQUASHFS_COMPRESSION = "zstd"
# mksquashfs's zstd default (15) took 107 s for a 650 MiB closure in
# bench/build, 10x mkfs.erofs; level 3 is zstd's own default
SQUASHFS_LEVEL = 3


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """The kernel's ``crc32c(~0, …)``: Castagnoli, no final inversion."""
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _erofs_sb_crc(sb_block: bytes) -> int:
    """What erofs_superblock_csum_verify computes: the block from the superblock
    on, with the checksum field zeroed."""
    body = bytearray(sb_block[SB_OFFSET:])
    body[4:8] = b"\0\0\0\0"
    return crc32c_raw(bytes(body))


def set_erofs_label(image: Path, label: str) -> None:
    """Write ``label`` into the erofs superblock and fix its checksum.

    The checksum mkfs.erofs wrote is verified first: if this code and the
    on-disk format ever disagree, the build fails instead of making an image
    the kernel refuses to mount.
    """
    raw = label.encode()
    if len(raw) > 16:
        raise BuildError(f"erofs label {label!r} is longer than 16 bytes", where=str(image))
    with open(image, "r+b") as f:
        head = f.read(SB_OFFSET + 128)
        magic, = struct.unpack_from("<I", head, SB_OFFSET)
        if magic != SB_MAGIC:
            raise BuildError("mkfs.erofs wrote no erofs superblock", where=str(image),
                             hint="check erofs-utils")
        block = 1 << head[SB_BLKSZBITS]
        f.seek(0)
        sb_block = bytearray(f.read(block))
        compat, = struct.unpack_from("<I", sb_block, SB_FEATURE_COMPAT)
        checked = bool(compat & COMPAT_SB_CHKSUM)
        if checked:
            stored, = struct.unpack_from("<I", sb_block, SB_CHECKSUM)
            if _erofs_sb_crc(bytes(sb_block)) != stored:
                raise BuildError("the erofs superblock checksum is not the one expected",
                                 where=str(image), hint="this erofs-utils writes another "
                                 "superblock format; use --store-fs ext4")
        sb_block[SB_VOLUME_NAME:SB_VOLUME_NAME + 16] = raw.ljust(16, b"\0")
        if checked:
            struct.pack_into("<I", sb_block, SB_CHECKSUM, _erofs_sb_crc(bytes(sb_block)))
        f.seek(0)
        f.write(sb_block)


def erofs_label(image: Path) -> str:
    """The volume name of an erofs image (for checks and inspection)."""
    with open(image, "rb") as f:
        f.seek(SB_VOLUME_NAME)
        return f.read(16).rstrip(b"\0").decode(errors="replace")


def _run(cmd: list[str], what: str, where: Path,
         preexec: Callable[[], None] | None) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec)
    except FileNotFoundError:
        pkg = "erofs-utils" if cmd[0] == "mkfs.erofs" else "squashfs-tools"
        raise BuildError(f"{cmd[0]} is not installed", where=str(where),
                         hint=f"install {pkg} (scripts/setup.sh does)") from None
    if proc.returncode != 0:
        msg = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise BuildError(f"{what} failed: {msg}", where=str(where),
                         hint="rerun with --debug, or use --store-fs ext4")


def make_erofs(image: Path, tree: Path, *, label: str, fs_uuid: str, mtime: int = 1,
               preexec: Callable[[], None] | None = None) -> None:
    """An lz4-compressed erofs of ``tree`` with a fixed UUID, times and owner."""
    image.unlink(missing_ok=True)
    _run(["mkfs.erofs", "--quiet", f"-z{EROFS_COMPRESSION}", f"-T{mtime}", f"-U{fs_uuid}",
          "--all-root", str(image), str(tree)], "mkfs.erofs", image, preexec)
    set_erofs_label(image, label)


def make_squashfs(image: Path, tree: Path, *, mtime: int = 1,
                  preexec: Callable[[], None] | None = None) -> None:
    """A zstd squashfs of ``tree``; mksquashfs is reproducible with fixed times."""
    image.unlink(missing_ok=True)
    _run(["mksquashfs", str(tree), str(image), "-quiet", "-no-progress", "-noappend",
          "-comp", SQUASHFS_COMPRESSION, "-Xcompression-level", str(SQUASHFS_LEVEL),
          "-no-xattrs", "-all-root",
          "-mkfs-time", str(mtime), "-all-time", str(mtime)], "mksquashfs", image, preexec)
