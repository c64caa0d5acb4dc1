"""One exception family per layer.

Every error carries *where* (the element or file at fault), *what* went wrong
and a *hint*, so the CLI can print a single actionable line and scripts can
catch one base class per layer.
"""

from __future__ import annotations


class NixslaveError(Exception):
    """Base of every error nixslave raises on purpose.

    ``where`` names the element or file at fault, ``what`` what went wrong,
    ``hint`` what to do; ``layer`` is the part of nixslave that raised it.
    ``str()`` is the one line the CLI prints.  Anything else that escapes a
    public function (an ``OSError``, a ``KeyboardInterrupt``) is a bug or an
    interruption, not a report.

    Example:

        >>> try:
        ...     nixslave.build_image(spec, Path("web-1.ova"), nixslave.DiskOptions(format="ova"))
        ... except nixslave.NixslaveError as exc:
        ...     print(exc.layer, "|", exc.where, "|", exc.what, "|", exc.hint)
        build | --boot | ova cannot use direct boot | use one of bios, uefi
    """

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
    """A machine spec is invalid.

    Example:

        >>> nixslave.MachineSpec.parse({"name": "web-1"})
        Traceback (most recent call last):
        nixslave.errors.SpecError: machine web-1: give exactly one of demo, config, ...
    """

    layer = "spec"


class NixError(NixslaveError):
    """A Nix command failed; carries the command and Nix's own message.

    Example:

        >>> try:
        ...     nixslave.build_root(nixslave.MachineSpec(name="web-1", config=Path("web.nix")))
        ... except nixslave.NixError as exc:
        ...     print(" ".join(exc.cmd)); print(exc.stderr)
    """

    layer = "nix"

    def __init__(
        self, what: str, *, cmd: list[str] | None = None, stderr: str = "",
        where: str = "", hint: str = "",
    ) -> None:
        super().__init__(what, where=where, hint=hint)
        self.cmd = cmd or []
        self.stderr = stderr


class RootError(NixslaveError):
    """Building or preparing a profile-less root failed.

    Example:

        >>> spec = nixslave.MachineSpec(name="web-1", toplevel="/nix/store/" + "0" * 32 + "-x")
        >>> nixslave.build_root(spec)
        Traceback (most recent call last):
        nixslave.errors.RootError: machine web-1.toplevel: ... is not a valid path ...
    """

    layer = "root"


class BuildError(NixslaveError):
    """Materializing an artifact failed (or was refused before it began).

    Example:

        >>> nixslave.build_image(spec, Path("web-1.tar"), nixslave.DiskOptions(format="tar",
        ...                                                                    overlay=Path("o")))
        Traceback (most recent call last):
        nixslave.errors.BuildError: --overlay: --overlay applies to qcow2 disks, not tar ...
    """

    layer = "build"


class ImageError(NixslaveError):
    """An operation on an existing image failed (or was refused before any write).

    Example:

        >>> try:
        ...     nixslave.repair_image(Path("web-1.qcow2"))
        ... except nixslave.ImageError as exc:  # e.g. the guest is still running
        ...     print(exc)
    """

    layer = "image"


class RunError(NixslaveError):
    """Starting or supervising a guest failed: qemu exited, or no boot marker in time.

    Example:

        >>> try:
        ...     nixslave.run_artifacts([art], timeout=60)
        ... except nixslave.RunError as exc:
        ...     print(exc.hint)  # names the console log to read
    """

    layer = "run"


class ToolError(NixslaveError):
    """An external tool (qemu-img, mkfs.ext4, virt-* ...) is missing or failed.

    Example:

        >>> try:
        ...     nixslave.build_image(spec, Path("web-1.qcow2"))
        ... except nixslave.ToolError as exc:
        ...     print("install it first:", exc.hint)
    """

    layer = "tool"
