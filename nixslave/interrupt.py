"""SIGINT and SIGTERM abort a build at once, wherever it is.

A Python signal handler runs only when the main thread executes bytecode:
inside a libguestfs launch, a ``qemu-img convert`` or ``mkfs.ext4`` it would
wait for the call to finish, and a KeyboardInterrupt raised in the wrong
instant (while a child is being forked) can be swallowed, so the build went
on and exited 0.  Two things close those holes:

* the C-level handler writes the signal number to a wakeup pipe at once; a
  watcher thread reads it, records the signal and terminates this process's
  children (the libguestfs appliance, qemu-img, mkfs), so a blocking call
  returns within moments;
* the signal is recorded, so :func:`check` (called before anything is
  published) and the CLI's exit code see it even when the exception was lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

_received: int | None = None
_installed = False
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The build was stopped by SIGINT or SIGTERM."""


def received() -> int | None:
    """The signal that interrupted this process, if any."""
    return _received


def exit_code() -> int:
    """128 + the signal number, as a shell reports a process killed by it."""
    return 128 + (_received or signal.SIGINT)


def check() -> None:
    """Raise if a signal arrived: called before every publishing step."""
    if _received is not None:
        raise Interrupted()


def _children() -> list[int]:
    """Direct children of this process, from /proc (no extra dependency)."""
    me = os.getpid()
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            kids.append(int(d.name))
    return kids


def _kill_children() -> None:
    kids = _children()
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in kids):
        time.sleep(0.05)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _watch(fd: int) -> None:
    global _received
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        sigs = [b for b in data if b in SIGNALS]
        if sigs:
            _received = _received or sigs[0]
            _kill_children()


def _handler(signum: int, _frame: object) -> None:
    global _received
    _received = _received or signum
    raise Interrupted()


def install() -> None:
    """Install the handlers and the watcher (the CLI calls this once)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for s in SIGNALS:
        signal.signal(s, _handler)
    threading.Thread(target=_watch, args=(r,), name="nixslave-signals", daemon=True).start()
    _installed = True
