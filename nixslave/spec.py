"""MachineSpec: everything nixslave needs to know about one machine.

The name becomes part of file names, GC roots and unix socket paths, so it is
checked against a strict pattern before anything else reads it.  Every
validation failure is turned into a SpecError that names the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nixslave.errors import SpecError

# Also a valid NixOS networking.hostName (nixos/modules/tasks/network-interfaces.nix:
# no trailing "-"), since the guest module uses the name as its host name.
NAME_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,46}[a-z0-9])?")
SSH_KEY_RE = re.compile(
    r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+=*( .*)?"
)
_SIZE_RE = re.compile(r"(\d+)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

Boot = Literal["direct", "bios", "uefi"]
Layout = Literal["disk", "store-disk", "shared"]
Share = Literal["9p", "virtiofs"]
StoreFs = Literal["ext4", "erofs", "squashfs"]


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like ``512M``, ``2G`` or ``1GiB``."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a size; use bytes or a number with K, M, G or T")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(m.group(1)) * _UNITS[unit]


def check_name(name: str) -> str:
    """The one gate a machine name passes before it touches a path."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a machine name; use 1-48 of a-z, 0-9 and '-', starting with a "
            "letter and not ending with '-'"
        )
    return name


def valid_name(name: str, where: str = "name") -> str:
    """check_name for command-line input: a SpecError rather than a ValueError."""
    try:
        return check_name(name)
    except ValueError as exc:
        raise SpecError(str(exc), where=where,
                        hint="machine names are like web-1: a-z, 0-9 and '-'") from None


def valid_size(value: str, where: str) -> int:
    """parse_size for command-line input: a SpecError rather than a ValueError."""
    try:
        return parse_size(value)
    except ValueError as exc:
        raise SpecError(str(exc), where=where, hint="for example 64K, 2M or 1G") from None


class MachineSpec(BaseModel):
    """One machine: where its system comes from and how it is materialized.

    Exactly one source: ``demo``, ``config`` (a NixOS configuration file),
    ``flake`` (``path#name``) or ``toplevel`` (a built system in the host's
    store).  The spec is frozen and validated as a whole: the name is
    checked before it reaches any path, and impossible combinations (a
    shared store with BIOS boot) are refused.

    Construct it with keywords in typed code (a bad value raises pydantic's
    ``ValidationError``, a ``ValueError``), or with :meth:`parse` for input
    from files or users, which raises :class:`nixslave.SpecError`
    naming the field.

    Example:

        >>> from nixslave import MachineSpec
        >>> spec = MachineSpec(name="web-1", demo=True, layout="store-disk", memory=1024)
        >>> spec.source
        'demo'
        >>> MachineSpec.parse({"name": "Web 1", "demo": True})
        Traceback (most recent call last):
        nixslave.errors.SpecError: machine.name: 'Web 1' is not a machine name; ...
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Machine name: 1-48 of a-z, 0-9 and -, starting with a "
                      "letter, not ending with -.")
    # exactly one source
    demo: bool = Field(default=False, description="Use the built-in demo system.")
    config: Path | None = Field(default=None, description="A NixOS configuration file.")
    flake: str | None = Field(default=None, description="A flake reference, path#name.")
    toplevel: str | None = Field(default=None, description="An already built system toplevel.")
    nixpkgs: Path | None = Field(default=None, description="nixpkgs checkout for --config builds.")

    boot: Boot = "direct"
    layout: Layout = "disk"
    share: Share = "9p"
    store_fs: StoreFs | None = Field(default=None, description="File system of a store disk: erofs "
                                     "(the default), squashfs or ext4; the disk layout's "
                                     "store is in its ext4 root.")
    size: int | None = Field(default=None, description="Disk size in bytes; automatic when unset.")
    memory: int = Field(default=512, description="Memory in MiB.")
    cpus: int = 1
    ssh_keys: tuple[str, ...] = ()
    with_nix: bool = Field(default=False, description="Give the guest a Nix database and daemon.")
    halt: bool = Field(default=True, description="Demo system: power off after boot.")
    agent: bool = Field(default=False, description="Run the QEMU guest agent (services.qemuGuest) "
                        "so the host can exec and copy files; the demo always has its own.")
    switchable: bool = Field(default=False, description="Keep switch-to-configuration so the host "
                             "can switch the running guest (nixslave switch).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return None
        size = parse_size(v)
        if size < 16 << 20:
            raise ValueError(f"{size} bytes is below the 16 MiB minimum of a disk")
        return size

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int) -> int:
        if not 64 <= v <= 1 << 20:
            raise ValueError(f"{v} MiB is outside 64 MiB .. 1 TiB")
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: int) -> int:
        if not 1 <= v <= 256:
            raise ValueError(f"{v} CPUs is outside 1 .. 256")
        return v

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, key in enumerate(v):
            if not SSH_KEY_RE.fullmatch(key.strip()):
                raise ValueError(f"key {i} is not an OpenSSH public key line")
        return tuple(k.strip() for k in v)

    @field_validator("toplevel")
    @classmethod
    def _toplevel(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"/nix/store/[0-9a-z]{32}-[^/]+", v.rstrip("/")):
            raise ValueError(f"{v!r} is not a store path (/nix/store/<hash>-<name>)")
        return v.rstrip("/") if v else v

    @field_validator("flake")
    @classmethod
    def _flake(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[^#\s]+#[A-Za-z0-9_.'\"-]+", v):
            raise ValueError(f"{v!r} is not a flake reference of the form path#name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> MachineSpec:
        sources = [s for s in ("demo", "config", "flake", "toplevel") if getattr(self, s)]
        if len(sources) != 1:
            got = ", ".join(sources) or "none"
            raise ValueError(f"give exactly one of demo, config, flake, toplevel (got {got})")
        if self.nixpkgs is not None and self.config is None:
            raise ValueError("nixpkgs applies only to a config source")
        # A UKI carries kernel and initrd itself, so its stage 1 mounts the
        # share exactly as a direct boot does (tests/test_uefi.py boots it).
        # bios keeps the rule: no boot test covers extlinux with a share.
        if self.layout == "shared" and self.boot == "bios":
            raise ValueError("the shared store layout needs direct boot or uefi (extlinux "
                             "cannot read a host directory)")
        if self.store_fs not in (None, "ext4") and self.layout != "store-disk":
            raise ValueError(f"store_fs {self.store_fs} needs the store-disk layout (the "
                             f"{self.layout} layout keeps its store in ext4 or a host share)")
        return self

    @property
    def store_fs_resolved(self) -> StoreFs:
        """The store's file system: erofs for a store disk unless asked otherwise.

        A store disk is read-only, so a compressed read-only file system
        costs less than the closure and is never fsck'd in stage 1.
        """
        if self.store_fs is not None:
            return self.store_fs
        return "erofs" if self.layout == "store-disk" else "ext4"

    @property
    def source(self) -> str:
        """Which source the system comes from: demo, config, flake or toplevel."""
        for s in ("demo", "config", "flake", "toplevel"):
            if getattr(self, s):
                return s
        raise AssertionError("validated spec without a source")

    @classmethod
    def parse(cls, data: dict[str, Any]) -> MachineSpec:
        """Validate input, turning pydantic's report into one SpecError."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise spec_error(exc, data) from None

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON types; ``parse`` reads it back."""
        return self.model_dump(mode="json", exclude_defaults=False)


def spec_error(exc: ValidationError, data: dict[str, Any] | None = None) -> SpecError:
    """The first problem pydantic found, as where/what/hint."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    name = (data or {}).get("name")
    where = f"machine {name}" if isinstance(name, str) and NAME_RE.fullmatch(name) else "machine"
    if loc:
        where += f".{loc}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    hints = {
        "extra_forbidden": "remove the field or check its spelling",
        "literal_error": "pick one of the listed values",
        "missing": "add the field",
    }
    hint = hints.get(str(err["type"]), "see `nixslave root build --help` for valid values")
    if err["type"] == "extra_forbidden":
        msg = f"unknown field {loc!r}"
    return SpecError(msg, where=where, hint=hint)


def json_schema() -> dict[str, Any]:
    return MachineSpec.model_json_schema()
