"""ext4 file systems built on the host with ``mkfs.ext4 -d``, no VM involved.

This is the fast path every disk format starts from: populating a file
system from a directory takes well under a second for a small closure, where
a libguestfs copy takes tens of seconds under TCG.  Sizes are computed before
anything is written, so a size that cannot hold the tree is refused early,
and every random input of mke2fs (UUID, hash seed, timestamps) is derived
from the machine so that the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nixslave.errors import BuildError

BLOCK = 4096           # SYSLINUX fails on 1 KiB blocks; 4 KiB everywhere
INODE_SIZE = 256
MIB = 1 << 20
FAKE_TIME = "1"        # the store's own mtime


@dataclass(frozen=True)
class TreeUsage:
    """What a directory tree needs on ext4 with 4 KiB blocks."""

    data: int           # bytes in data blocks (files, dirs, long symlinks)
    inodes: int

    def min_fs_size(self, *, journal: bool) -> int:
        """The smallest file system that holds the tree, with a little slack."""
        inodes = self.inodes + 64
        meta = inodes * INODE_SIZE
        blocks = self.data + meta
        groups = blocks // (BLOCK * 8 * BLOCK) + 1        # 128 MiB per group
        meta += groups * 2 * BLOCK + groups * BLOCK       # bitmaps, descriptors
        size = self.data + meta
        if journal:
            size += journal_size(size)
        size = int(size * 1.03) + 2 * MIB                 # reserved GDT, slack
        return round_up(size, MIB)


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def journal_size(fs_size: int) -> int:
    """mke2fs's default journal size for a file system of this size."""
    blocks = fs_size // BLOCK
    if blocks < 32768:
        return 1024 * BLOCK
    if blocks < 256 * 1024:
        return 4096 * BLOCK
    if blocks < 512 * 1024:
        return 8192 * BLOCK
    if blocks < 4096 * 1024:
        return 16384 * BLOCK
    return 32768 * BLOCK


def tree_usage(*tops: Path) -> TreeUsage:
    """Blocks and inodes of files, directories and symlinks under ``tops``.

    One ``lstat`` per entry (through scandir), since this walks every file
    of the closure.  Each top counts itself as one entry too.
    """
    data = 0
    inodes = 0
    stack: list[str] = []
    for top in tops:
        st = os.lstat(top)
        inodes += 1
        if stat.S_ISDIR(st.st_mode):
            stack.append(str(top))
        else:
            data += _entry_blocks(st)
    while stack:
        d = stack.pop()
        n = 0
        with os.scandir(d) as it:
            for e in it:
                n += 1
                inodes += 1
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                else:
                    data += _entry_blocks(st)
        data += BLOCK * (n * 40 // BLOCK + 1)
    return TreeUsage(data=data, inodes=inodes)


def _entry_blocks(st: os.stat_result) -> int:
    if stat.S_ISLNK(st.st_mode):
        return BLOCK if st.st_size >= 60 else 0  # short targets live in the inode
    return round_up(st.st_size, BLOCK)


def derived_uuid(*parts: str) -> str:
    """A UUID that only depends on what the image is made of."""
    digest = hashlib.sha256("\0".join(("nixslave", *parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def repro_env() -> dict[str, str]:
    env = dict(os.environ)
    env["E2FSPROGS_FAKE_TIME"] = FAKE_TIME
    env["SOURCE_DATE_EPOCH"] = FAKE_TIME
    env.pop("MKE2FS_CONFIG", None)
    env["MKE2FS_DEVICE_SECTSIZE"] = "512"
    return env


def mkfs(
    image: Path, tree: Path, *, label: str, size: int, fs_uuid: str, offset: int = 0,
    journal: bool = True, inodes: int | None = None, reserved_pct: int = 0,
    preexec: Callable[[], None] | None = None,
) -> None:
    """Write an ext4 file system populated from ``tree`` into ``image``.

    With ``offset`` the file system starts that many bytes into the file (a
    partition); the file is extended as needed but never truncated.
    """
    features = ["^has_journal"] if not journal else []
    cmd = ["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-L", label,
           "-U", fs_uuid, "-m", str(reserved_pct), "-T", "default",
           "-E", f"hash_seed={fs_uuid},root_owner=0:0,lazy_itable_init=0,nodiscard"
                 + (f",offset={offset}" if offset else ""),
           "-d", str(tree)]
    if features:
        cmd += ["-O", ",".join(features)]
    if inodes:
        cmd += ["-N", str(inodes)]
    cmd += [str(image), f"{size // 1024}k"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=repro_env(),
                          preexec_fn=preexec)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split())[-300:] or f"exit code {proc.returncode}"
        raise BuildError(f"mkfs.ext4 failed: {msg}", where=str(image),
                         hint="a larger --size may help if the tree did not fit")


def _e2_target(image: Path, offset: int) -> str:
    """e2fsprogs reaches a partition inside a file through an io option."""
    return f"{image}?offset={offset}" if offset else str(image)


def used_inodes(image: Path, offset: int = 0) -> list[int]:
    """Inode numbers in use, from the inode bitmaps dumpe2fs prints."""
    proc = subprocess.run(["dumpe2fs", _e2_target(image, offset)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise BuildError(f"dumpe2fs failed: {proc.stderr.strip()[-200:]}", where=str(image),
                         hint="the file system may be damaged")
    per_group = total = 0
    free: list[tuple[int, int]] = []
    for line in proc.stdout.splitlines():
        s = line.strip()
        if s.startswith("Inode count:"):
            total = int(s.split(":")[1])
        elif s.startswith("Inodes per group:"):
            per_group = int(s.split(":")[1])
        elif s.startswith("Free inodes:") and per_group:
            for part in s.split(":", 1)[1].split(","):
                part = part.strip()
                if not part:
                    continue
                first, _, last = part.partition("-")
                free.append((int(first), int(last or first)))
    is_free = bytearray(total + 1)
    for lo, hi in free:
        is_free[lo:hi + 1] = b"\1" * (hi - lo + 1)
    return [i for i in range(1, total + 1) if not is_free[i]]


def normalize_inode_times(image: Path, offset: int = 0, *, after_mount: bool = False) -> None:
    """Set atime/ctime of every used inode to the store's epoch.

    mke2fs -d copies atime and ctime from the source tree, and the host can
    never set a ctime, so without this pass two builds of the same closure
    differ.  With ``after_mount`` the traces of a kernel mount (the
    libguestfs step) are reset too: new inodes' creation times and
    generations, touched directories' mtimes, and the superblock's mount
    bookkeeping.
    """
    cmds = []
    fields = ("atime", "ctime", "mtime", "crtime") if after_mount else ("atime", "ctime")
    for ino in used_inodes(image, offset):
        if 3 <= ino <= 10:  # reserved inodes other than the root are not files
            continue
        for field in fields:
            cmds.append(f"sif <{ino}> {field} @{FAKE_TIME}")
            cmds.append(f"sif <{ino}> {field}_extra 0")
        if after_mount:
            cmds.append(f"sif <{ino}> generation 0")
    if after_mount:
        cmds += [f"ssv mtime @{FAKE_TIME}", f"ssv wtime @{FAKE_TIME}",
                 f"ssv lastcheck @{FAKE_TIME}", "ssv mnt_count 0", "ssv kbytes_written 0",
                 'ssv last_mounted ""']
    script = "\n".join(cmds) + "\n"
    proc = subprocess.run(["debugfs", "-w", "-f", "-", _e2_target(image, offset)],
                          input=script, capture_output=True, text=True, env=repro_env())
    errors = [ln for ln in proc.stderr.splitlines()
              if ln.strip() and not ln.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        raise BuildError(f"debugfs failed: {' '.join(errors)[:300]}", where=str(image),
                         hint="check that e2fsprogs is installed and the image is ext4")


def holes(image: Path, path: str, offset: int = 0) -> list[tuple[int, int]]:
    """Byte ranges of ``path`` that are holes (mke2fs -d skips zero blocks)."""
    target = _e2_target(image, offset)
    ex = subprocess.run(["debugfs", "-R", f"ex {path}", target], capture_output=True,
                        text=True)
    st = subprocess.run(["debugfs", "-R", f"stat {path}", target], capture_output=True,
                        text=True)
    size_m = re.search(r"Size: (\d+)", st.stdout)
    if ex.returncode != 0 or size_m is None:
        raise BuildError(f"cannot read the extents of {path}", where=str(image),
                         hint="the file system may be damaged")
    nblocks = (int(size_m.group(1)) + BLOCK - 1) // BLOCK
    mapped: list[tuple[int, int]] = []
    for m in re.finditer(r"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+)\s+-\s+(\d+)\s+\d+\s+-\s+\d+",
                         ex.stdout, re.M):
        level, depth, first, last = (int(g) for g in m.groups())
        if level == depth:
            mapped.append((first, last))
    out, pos = [], 0
    for first, last in sorted(mapped):
        if first > pos:
            out.append((pos * BLOCK, (first - pos) * BLOCK))
        pos = max(pos, last + 1)
    if pos < nblocks:
        out.append((pos * BLOCK, (nblocks - pos) * BLOCK))
    return out
