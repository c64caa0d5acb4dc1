"""One run directory for every temporary thing nixslave makes outside a build.

Sockets, libguestfs's socket directory, VM run directories and scratch for
Nix evaluations all go under :func:`base` (``NIXSLAVE_RUN_DIR``, else
``/run/nixslave`` for root, else ``$XDG_RUNTIME_DIR/nixslave`` or
``/tmp/nixslave-<uid>``).  Each entry holds a ``lock`` that its owner keeps
locked while it lives, so a killed process's leftovers are recognised by a
lock that can be taken, never by a pid that may have been reused, and
:func:`sweep` (run by every build and by ``nixslave gc sweep``) removes them.
The paths stay short, because unix socket paths are limited to 108 bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = "lock"


def base() -> Path:
    """The run directory of this user (created on first use, mode 0700)."""
    env = os.environ.get("NIXSLAVE_RUN_DIR")
    if env:
        d = Path(env)
    elif os.geteuid() == 0:
        d = Path("/run/nixslave")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "nixslave"
    else:
        d = Path(f"/tmp/nixslave-{os.getuid()}")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def entry(kind: str) -> Iterator[Path]:
    """A fresh directory ``<base>/<kind>-<random>``, locked while in use, removed after."""
    d = base() / f"{kind}-{secrets.token_hex(4)}"
    d.mkdir(mode=0o700)
    fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield d
    finally:
        _rmtree(d)
        os.close(fd)


def _rmtree(d: Path) -> None:
    from nixslave.root import force_rmtree  # root uses this module too

    force_rmtree(d)


def lock_held(lock: Path) -> bool:
    """Whether a living process holds ``lock`` (an flock); OSError if it cannot be opened.

    A shared probe, so that it never stands in the way of an owner taking
    the lock exclusively at that moment.
    """
    fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _stale(d: Path) -> bool:
    try:
        return not lock_held(d / LOCK)
    except FileNotFoundError:
        return True  # killed before it could lock: nobody owns it
    except OSError:
        return False


def entries() -> list[tuple[Path, bool]]:
    """Every entry of the run directory and whether it is stale."""
    b = base()
    return [(d, _stale(d)) for d in sorted(b.iterdir()) if d.is_dir()]


def _dead_socket(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except OSError:
            return False
    return False


def stale_guestfs_sockdirs(*, min_age: float = 30.0) -> list[Path]:
    """/tmp/libguestfsXXXXXX directories of handles whose process is gone.

    libguestfs ignores XDG_RUNTIME_DIR for root and always makes its socket
    directory in /tmp (lib/tmpdirs.c, get_sockdir), so a process killed
    mid-launch leaves one there.  A directory is stale when it is ours, a
    little old, and holds nothing but sockets that nobody listens on.
    """
    out = []
    now = time.time()
    for d in Path("/tmp").glob("libguestfs??????"):
        try:
            st = d.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            if now - st.st_mtime < min_age:
                continue
            kids = list(d.iterdir())
            if all(stat.S_ISSOCK(k.lstat().st_mode) and _dead_socket(k) for k in kids):
                out.append(d)
        except OSError:
            continue
    return out


def sweep(*, dry_run: bool = False) -> list[Path]:
    """Remove the entries of processes that are gone."""
    gone = [d for d, stale in entries() if stale] + stale_guestfs_sockdirs()
    if not dry_run:
        for d in gone:
            _rmtree(d)
    return gone
