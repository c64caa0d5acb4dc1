"""One exception family per layer.

Every error carries *where* (the element or file at fault), *what* went wrong
and a *hint*, so the CLI can print a single actionable line and scripts can
catch one base class per layer.
"""

from __future__ import annotations


class NixslaveError(Exception):
    """Base of every error nixslave raises on purpose."""

    layer = "nixslave"

    def __init__(self, what: str, *, where: str = "", hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head} (hint: {self.hint})" if self.hint else head


class SpecError(NixslaveError):
    """A machine spec is invalid."""

    layer = "spec"


class NixError(NixslaveError):
    """A Nix command failed; carries the command and Nix's own message."""

    layer = "nix"

    def __init__(
        self, what: str, *, cmd: list[str] | None = None, stderr: str = "",
        where: str = "", hint: str = "",
    ) -> None:
        super().__init__(what, where=where, hint=hint)
        self.cmd = cmd or []
        self.stderr = stderr


class RootError(NixslaveError):
    """Building or preparing a profile-less root failed."""

    layer = "root"


class BuildError(NixslaveError):
    """Materializing an artifact failed."""

    layer = "build"


class ImageError(NixslaveError):
    """An operation on an existing image failed."""

    layer = "image"


class RunError(NixslaveError):
    """Starting or supervising a guest failed."""

    layer = "run"


class ToolError(NixslaveError):
    """An external tool is missing or failed."""

    layer = "tool"
