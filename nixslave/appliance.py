"""The libguestfs appliance, opened the same way by every layer.

Backend settings are applied to the handle rather than to ``os.environ`` so
that a caller's environment is left alone and TCG is forced exactly when qemu
itself would have to use it (see nixslave.accel).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from nixslave import accel
from nixslave.errors import ToolError


@contextmanager
def guestfs_handle(env: dict[str, str] | None = None) -> Iterator[Any]:
    """A GuestFS handle with nixslave's backend settings, always closed."""
    try:
        import guestfs  # type: ignore[import-not-found]
    except ImportError:
        raise ToolError("the libguestfs Python binding is missing", where="libguestfs",
                        hint="apt-get install python3-guestfs and use a venv made with "
                             "--system-site-packages from /usr/bin/python3") from None
    settings = env if env is not None else accel.guestfs_env()
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend(settings.get("LIBGUESTFS_BACKEND", "direct"))
        if extra := settings.get("LIBGUESTFS_BACKEND_SETTINGS"):
            g.set_backend_settings(extra.split(":"))
        yield g
    finally:
        with suppress(RuntimeError):
            g.shutdown()
        g.close()
