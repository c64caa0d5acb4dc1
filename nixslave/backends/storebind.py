"""Put the closure into a tree by bind mounts that only mkfs.ext4 ever sees.

Linking every file of a large closure into a scratch tree (and removing the
links again) costs more than writing the file system itself.  As root,
mkfs.ext4 can instead run in a private mount namespace where each closure
path is bind-mounted onto an empty stub in the tree: the cost is one mount
per store path, not one link per file, and the host's mount table never sees
any of it.  Without the privilege the caller falls back to copying.

The same trick serves the shared store layout at run time
(:func:`closure_view`): qemu or virtiofsd sees the closure at the share
directory and nobody else does.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 4096


def available() -> bool:
    return os.geteuid() == 0 and Path("/proc/self/ns/mnt").exists()


def stub(paths: list[str], store_dir: Path) -> list[tuple[bytes, bytes]]:
    """Empty mount points for each store path; returns (source, target) pairs."""
    binds = []
    for p in paths:
        target = store_dir / Path(p).name
        if os.path.islink(p):
            target.symlink_to(os.readlink(p))
            continue
        if os.path.isdir(p):
            target.mkdir()
        else:
            target.touch()
        binds.append((os.fsencode(p), os.fsencode(target)))
    return binds


def preexec(binds: list[tuple[bytes, bytes]]) -> Callable[[], None]:
    """A ``preexec_fn`` that enters a private mount namespace and makes the binds.

    It runs in the forked child just before exec, so an error there surfaces
    as subprocess.SubprocessError in the parent.
    """
    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_void_p]
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "making / private")
        for src, dst in binds:
            if libc.mount(src, dst, None, MS_BIND, None) != 0:
                raise OSError(ctypes.get_errno(), f"bind {src!r}")
    return enter


MS_REMOUNT = 32
MS_RDONLY = 1


def readonly_view(path: Path) -> Callable[[], None]:
    """A ``preexec_fn`` that makes ``path`` read-only for the child alone.

    virtiofsd has no read-only export; serving a read-only bind mount of the
    share means a guest that remounts its store read-write still cannot
    change a file that is a hardlink into the host store.
    """
    target = os.fsencode(path)

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_void_p]
        steps = [(b"none", b"/", MS_REC | MS_PRIVATE), (target, target, MS_BIND | MS_REC),
                 (b"none", target, MS_BIND | MS_REMOUNT | MS_RDONLY)]
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        for src, dst, flags in steps:
            if libc.mount(src, dst, None, flags, None) != 0:
                raise OSError(ctypes.get_errno(), f"mount {dst!r}")
    return enter


MS_NOSUID = 2
MS_NODEV = 4


def closure_view(share: Path, paths: list[str]) -> Callable[[], None]:
    """A ``preexec_fn`` that shows exactly ``paths`` at ``share``, read-only, to the child.

    This is the zero-copy shared store: in a private mount namespace of
    qemu (9p) or virtiofsd, a tmpfs covers the share directory, holds one
    empty stub per closure path and each store path is bind-mounted onto
    its stub, then made read-only.  The host's file system gains nothing
    (no hardlink tree, no directory blocks per path), the host's mount
    table never sees the mounts, and nothing outside the closure is
    reachable through the share.  The mounts end with the process.
    """
    target = os.fsencode(share)
    entries = []
    for p in paths:
        name = os.fsencode(Path(p).name)
        if os.path.islink(p):
            entries.append((name, "link", os.fsencode(os.readlink(p))))
        else:
            entries.append((name, "dir" if os.path.isdir(p) else "file", os.fsencode(p)))

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_void_p]

        def mount(src: bytes, dst: bytes, fstype: bytes | None, flags: int,
                  data: bytes | None = None) -> None:
            if libc.mount(src, dst, fstype, flags, data) != 0:
                raise OSError(ctypes.get_errno(), f"mount {dst!r}")

        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        mount(b"none", b"/", None, MS_REC | MS_PRIVATE)
        mount(b"nixslave-store", target, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=16m")
        for name, kind, src in entries:
            dst = target + b"/" + name
            if kind == "link":
                os.symlink(src, dst)
                continue
            if kind == "dir":
                os.mkdir(dst)
            else:
                os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o444))
            mount(src, dst, None, MS_BIND | MS_REC)
            mount(b"none", dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.utime(target, (1, 1))
        mount(b"none", target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return enter
