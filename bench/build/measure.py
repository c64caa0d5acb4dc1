"""Helpers of bench/build/run.py: timing nixslave's steps, the anchors, allocation.

Kept apart from run.py so that each stays readable: this module knows how
to time one nixslave build step by step (wrapping the backend's helpers for
the run, nixslave's code unchanged) and how to run each anchor (the tools
alone) on the same tree state nixslave's own run sees.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nixslave.backends import disk as disk_mod
from nixslave.backends import ext4 as ext4_mod
from nixslave.backends import publish, storebind, storefs
from nixslave.root import Root, force_rmtree

MIB = 1 << 20


def run(cmd: list[str], env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=preexec)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc.stdout


def settle() -> None:
    """Flush earlier writes so that their writeback is not charged to the next run."""
    os.sync()


def cpu_now() -> float:
    """CPU seconds of this process and of every child it has waited for.

    On a host shared with other work the wall clock of a step swings by 2x;
    the CPU it used (mkfs, qemu-img, mkfs.erofs are CPU-bound here, the page
    cache holds the closure) moves much less, so both are reported.
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def qemu_info(image: Path) -> dict[str, Any]:
    return json.loads(run(["qemu-img", "info", "--output=json", str(image)]))


def allocated(image: Path) -> int:
    """Bytes an image takes on the host: qcow2 actual-size, else the file's blocks."""
    if image.suffix == ".qcow2":
        return int(qemu_info(image)["actual-size"])
    return os.stat(image).st_blocks * 512


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKMGT]?)\s*", text)
    if not m:
        raise ValueError(text)
    unit = {"": 1, "k": 1 << 10, "K": 1 << 10, "M": MIB, "G": 1 << 30, "T": 1 << 40}
    return int(float(m.group(1)) * unit[m.group(2)])


def ext4_metadata(raw: Path) -> dict[str, int]:
    """Inode tables and journal of an ext4 image, from ``dumpe2fs -h``."""
    fields: dict[str, str] = {}
    for line in run(["dumpe2fs", "-h", str(raw)]).splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip()] = v.strip()
    inodes = int(fields["Inode count"])
    isize = int(fields["Inode size"])
    journal = parse_size(fields.get("Total journal size", fields.get("Journal size", "0")))
    return {"inodes": inodes, "inodesFree": int(fields["Free inodes"]),
            "inodeTables": inodes * isize, "journal": journal,
            "metadata": inodes * isize + journal}


def share_extra_bytes(share: Path) -> dict[str, int]:
    """Blocks the share directory owns: inodes not hardlinked to the store, and dirs."""
    seen: set[int] = set()
    extra = dirs = files = 0
    for dirpath, dirnames, filenames in os.walk(share):
        st = os.lstat(dirpath)
        dirs += st.st_blocks * 512
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if st.st_ino in seen or (os.path.isdir(p) and not os.path.islink(p)):
                continue
            seen.add(st.st_ino)
            if st.st_nlink == 1:
                files += 1
                extra += st.st_blocks * 512
    return {"dirBytes": dirs, "unlinkedBytes": extra, "unlinkedInodes": files,
            "total": dirs + extra}


# -- nixslave, step by step ------------------------------------------------------------

class Steps:
    """Timestamps of progress messages plus timed nixslave internals."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: list[tuple[float, str]] = []
        self.calls: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.share_free_delta: int | None = None

    def progress(self, msg: str) -> None:
        self.marks.append((time.perf_counter() - self.t0, msg))

    def phases(self, total: float) -> list[tuple[str, float]]:
        out = [("(start: checks, build directory, sweep)", self.marks[0][0] if self.marks
                else total)]
        for i, (t, msg) in enumerate(self.marks):
            end = self.marks[i + 1][0] if i + 1 < len(self.marks) else total
            out.append((msg, end - t))
        return out


# (owner, attribute, label): what is timed inside a build.  Module-level
# functions are wrapped where the caller looks them up.
TIMED: list[tuple[Any, str, str]] = [
    (Root, "prepare", "root tree (Root.prepare, outside the store)"),
    (disk_mod, "tree_usage", "size walk (tree_usage over the closure)"),
    (storebind, "stub", "store stubs for the bind mounts"),
    (disk_mod, "copy_paths", "hardlink tree (cp -a --link)"),
    (disk_mod, "mkfs", "mkfs.ext4 -d"),
    (disk_mod, "normalize_inode_times", "debugfs timestamp pass"),
    (storefs, "make_erofs", "mkfs.erofs (+ label)"),
    (storefs, "set_erofs_label", "erofs label + superblock crc32c"),
    (storefs, "make_squashfs", "mksquashfs"),
    (disk_mod.DiskBackend, "_emit", "qemu-img convert (or rename)"),
    (disk_mod, "sha256_file", "sha256 of the image"),
    (publish, "force_rmtree", "scratch removal (work dir, old builds)"),
    (publish, "_sync_tree", "fsync of the build's files"),
    (publish, "sweep", "sweep of old builds"),
]


@contextlib.contextmanager
def instrumented(steps: Steps) -> Iterator[None]:
    """Time the helpers nixslave's disk backend calls (wrapped for the run, not modified)."""
    saved = []
    for owner, attr, label in TIMED:
        orig = getattr(owner, attr)
        saved.append((owner, attr, orig))

        def wrap(orig: Callable[..., Any] = orig, label: str = label) -> Callable[..., Any]:
            @functools.wraps(orig)
            def timed(*a: Any, **kw: Any) -> Any:
                t = time.perf_counter()
                try:
                    return orig(*a, **kw)
                finally:
                    steps.calls[label] = steps.calls.get(label, 0.0) + time.perf_counter() - t
                    steps.counts[label] = steps.counts.get(label, 0) + 1
            return timed

        setattr(owner, attr, wrap())
    try:
        yield
    finally:
        for owner, attr, orig in reversed(saved):
            setattr(owner, attr, orig)


def fresh(out: Path) -> None:
    """Remove every earlier build of ``out`` so that no run pays for its predecessor's sweep."""
    out.unlink(missing_ok=True)
    force_rmtree(publish.store_dir(out))


# -- the anchors: the tools alone, on the tree state nixslave's run sees ----------------

class BoundTree:
    """A tree whose ``store`` directory gets the closure by bind mounts, as nixslave's does.

    ``Root.prepare(include_store=False)`` plus one empty stub per store path
    (storebind.stub); a tool run with :meth:`preexec` sees each closure path
    bind-mounted onto its stub in a private mount namespace, which is exactly
    what nixslave's mkfs.ext4 (root tree) and mkfs.erofs (store tree) see.
    Prepared once, not timed.
    """

    def __init__(self, root: Root, where: Path, *, store_only: bool = False) -> None:
        if store_only:
            where.mkdir(mode=0o755)
            os.chmod(where, 0o755)
            self.tree, store = where, where
        else:
            self.tree = root.prepare(where, include_store=False)
            store = self.tree / "nix/store"
        self.binds = storebind.stub(root.paths, store)
        os.utime(store, (1, 1))

    def preexec(self) -> Callable[[], None]:
        return storebind.preexec(self.binds)


def floor_same_flags(bt: BoundTree, size: int, work: Path
                     ) -> tuple[float, float, float, Path]:
    """mkfs.ext4 with nixslave's own arguments and environment, then qemu-img convert.

    The arguments are the ones ext4.mkfs passes for a direct-boot root (label,
    UUID, hash seed, no discard, inode tables written now); the image is
    left for the allocation figures.  Returns (mkfs s, convert s, CPU s, qcow2).
    """
    raw, out = work / "floor.raw", work / "floor.qcow2"
    raw.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    uuid = "4f0e0e36-51c1-4a1b-8d0f-4e9a66a5c0de"
    cmd = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-I", "256", "-L", "nixslave-root",
           "-U", uuid, "-m", "0", "-T", "default",
           "-E", f"hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,nodiscard",
           "-d", str(bt.tree), str(raw), f"{size // 1024}k"]
    settle()
    c, t = cpu_now(), time.perf_counter()
    run(cmd, env=ext4_mod.repro_env(), preexec=bt.preexec())
    t1 = time.perf_counter()
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)])
    t2 = time.perf_counter()
    cpu = cpu_now() - c
    raw.unlink()
    return t1 - t, t2 - t1, cpu, out


def floor_defaults(bt: BoundTree, size: int, work: Path
                   ) -> tuple[float, float, float, Path]:
    """mkfs.ext4 with mke2fs's defaults (lazy inode tables, discard), then convert."""
    raw, out = work / "floor-defaults.raw", work / "floor-defaults.qcow2"
    raw.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    settle()
    c, t = cpu_now(), time.perf_counter()
    run(["mkfs.ext4", "-q", "-b", "4096", "-L", "nixslave-root", "-d", str(bt.tree), str(raw),
         f"{size // 1024}k"], preexec=bt.preexec())
    t1 = time.perf_counter()
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)])
    t2 = time.perf_counter()
    cpu = cpu_now() - c
    raw.unlink()
    return t1 - t, t2 - t1, cpu, out


def erofs_alone(bt: BoundTree, work: Path) -> tuple[float, float, Path]:
    """``mkfs.erofs -zlz4`` (nixslave's compression) of the closure, nothing else."""
    out = work / "anchor.erofs"
    out.unlink(missing_ok=True)
    settle()
    c, t = cpu_now(), time.perf_counter()
    run(["mkfs.erofs", "--quiet", f"-z{storefs.EROFS_COMPRESSION}", str(out), str(bt.tree)],
        preexec=bt.preexec())
    return time.perf_counter() - t, cpu_now() - c, out


def virt_make_fs(bt: BoundTree, size: int, work: Path, env: dict[str, str]
                 ) -> tuple[float, float, Path]:
    """``virt-make-fs`` of the same tree (its host-side tar sees the bind mounts)."""
    out = work / "vmf.qcow2"
    settle()
    c, t = cpu_now(), time.perf_counter()
    run(["virt-make-fs", "--format=qcow2", "--type=ext4", f"--size={size // MIB}M",
         str(bt.tree), str(out)], env={**os.environ, **env}, preexec=bt.preexec())
    return time.perf_counter() - t, cpu_now() - c, out
