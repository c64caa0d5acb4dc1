"""The libguestfs appliance, opened the same way by every layer.

Backend settings are applied to the handle rather than to ``os.environ`` so
that a caller's environment is left alone and TCG is forced exactly when qemu
itself would have to use it (see nixslave.runtime.accel).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from nixslave import rundir
from nixslave.errors import ToolError
from nixslave.runtime import accel

# Handles are created under a lock: XDG_RUNTIME_DIR is process-wide, and a
# second thread's handle must not pick up the first one's run directory.
_CREATE = threading.Lock()


@contextmanager
def guestfs_handle(env: dict[str, str] | None = None, *,
                   tmpdir: Path | None = None) -> Iterator[Any]:
    """A GuestFS handle with nixslave's backend settings, always closed.

    ``tmpdir`` puts the appliance's temporary files in the caller's scratch
    directory (by default they go with its sockets into a run-directory
    entry), so a process killed mid-launch leaves nothing in /tmp.
    """
    try:
        import guestfs  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ToolError("the libguestfs Python binding is missing", where="libguestfs",
                        hint="apt-get install python3-guestfs and use a venv made with "
                             "--system-site-packages from /usr/bin/python3") from None
    settings = env if env is not None else accel.guestfs_env()
    with rundir.entry("guestfs") as run:
        # libguestfs puts its sockets under XDG_RUNTIME_DIR (read when the
        # handle is created; root's always go to /tmp, see
        # rundir.stale_guestfs_sockdirs) and its temporary files under
        # tmpdir: both in an entry of nixslave's run directory, which a
        # later sweep removes if this process is killed mid-launch.
        with _CREATE:
            saved = os.environ.get("XDG_RUNTIME_DIR")
            os.environ["XDG_RUNTIME_DIR"] = str(run)
            try:
                g = guestfs.GuestFS(python_return_dict=True)
            finally:
                if saved is None:
                    os.environ.pop("XDG_RUNTIME_DIR", None)
                else:
                    os.environ["XDG_RUNTIME_DIR"] = saved
        try:
            g.set_backend(settings.get("LIBGUESTFS_BACKEND", "direct"))
            if extra := settings.get("LIBGUESTFS_BACKEND_SETTINGS"):
                g.set_backend_settings(extra.split(":"))
            g.set_tmpdir(str(tmpdir or run))
            yield g
        finally:
            with suppress(RuntimeError):
                g.shutdown()
            g.close()
