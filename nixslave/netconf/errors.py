"""The netconf error family.

netconf is used on its own by other tools, so it cannot import nixslave's
error classes; it carries the same duck-typed attributes (``where``, ``what``,
``hint`` and ``layer``) so that the nixslave CLI still prints one line for it.
"""

from __future__ import annotations


class NetconfError(Exception):
    """Base of every error netconf raises on purpose."""

    layer = "netconf"

    def __init__(self, what: str, *, where: str = "", hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head} (hint: {self.hint})" if self.hint else head


class TopologyError(NetconfError):
    """The topology description is invalid or cannot be planned."""


class WiringError(NetconfError):
    """A plan cannot be wired onto a backend (socket path too long, ...)."""
