"""Backends turn a Root into something a hypervisor or container runtime uses.

Every backend implements one small protocol, ``materialize(root, out,
options) -> Artifact``.  The Artifact is the host's side of the machine: its
files and how to boot them.  It is saved beside the image as
``<image>.nixslave.json`` (inside the build directory, see
:mod:`nixslave.backends.publish`) so that ``nixslave run`` needs no other
state.

A sidecar is input like any other: a crafted one must not point the runner at
files outside its build or at a run directory of its choosing, so every field
is validated on load, names by the same pattern as a spec and paths as
relative names inside the sidecar's own directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nixslave.errors import BuildError
from nixslave.spec import check_name

ARTIFACT_SUFFIX = ".nixslave.json"
_PATH_FIELDS = ("image", "store_image", "share_dir")


@dataclass
class Artifact:
    """The files of one materialized machine and how the host boots them.

    Returned by ``build_image`` and saved beside the image as
    ``<image>.nixslave.json``; :meth:`load` reads (and validates) it again,
    so another process can run, inspect or upgrade the image with no other
    state.  ``image`` is the file inside its build directory;
    ``extra["published_as"]`` is the name the caller asked for.

    Example:

        >>> art = nixslave.Artifact.load(Path("web-1.qcow2"))
        >>> art.format, art.layout, art.boot
        ('qcow2', 'disk', 'direct')
        >>> json.dumps(art.to_json())
    """

    name: str
    kind: str                    # disk | vbox | nspawn | tar | oci | libvirt
    format: str                  # raw | qcow2 | vdi | vmdk | ova | nspawn | tar | oci | libvirt
    image: Path
    toplevel: str
    layout: str
    store: str                   # disk | store-disk | 9p | virtiofs
    boot: str                    # direct | bios | uefi
    cmdline: str = ""            # direct boot: the kernel command line
    store_image: Path | None = None
    share_dir: Path | None = None
    memory: int = 512
    cpus: int = 1
    sha256: str = ""
    virtual_size: int = 0
    build: str = ""              # the build id; every file of it shares its directory
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sidecar(self) -> Path:
        """The ``<image>.nixslave.json`` file beside the image."""
        return sidecar_path(self.image)

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON types (paths as strings)."""
        d = asdict(self)
        for k in _PATH_FIELDS:
            d[k] = str(d[k]) if d[k] is not None else None
        return d

    def save(self) -> Path:
        """Write the sidecar atomically, with paths relative to its directory."""
        path = self.sidecar
        d = self.to_json()
        for k in _PATH_FIELDS:
            if d[k] is not None:
                d[k] = os.path.relpath(d[k], path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o644)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, image: Path) -> Artifact:
        """Read and validate the sidecar of ``image`` (or the sidecar file itself).

        ``image`` may be the public name of a published build (a symlink):
        the sidecar is read beside the file it resolves to, so image and
        sidecar always come from the same build.
        """
        image = Path(image)
        if str(image).endswith(ARTIFACT_SUFFIX):
            path = image
        else:
            path = sidecar_path(Path(os.path.realpath(image)))
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BuildError(f"no {path.name} beside the image", where=str(image),
                             hint="run images built by `nixslave image build`, or rebuild "
                                  "this one") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BuildError(f"{path.name} is not valid JSON: {exc}", where=str(path),
                             hint="rebuild the image") from None
        except OSError as exc:
            raise BuildError(f"cannot read {path.name}: {exc.strerror}", where=str(path),
                             hint="check the path and its permissions") from None
        a = cls(**_validate(data, path))
        if not str(image).endswith(ARTIFACT_SUFFIX) and Path(image).absolute() != a.image:
            # The public name a user knows it by (records, messages).
            a.extra["published_as"] = str(Path(image).absolute())
        backing = a.extra.get("backing")
        if backing is not None:
            # An overlay: its store disk or share belongs to the base build.
            if not isinstance(backing, str) or not backing.startswith("/"):
                raise BuildError("extra.backing is not an absolute image path", where=str(path),
                                 hint="rebuild the overlay")
            base = cls.load(Path(backing))
            a.store_image, a.share_dir = base.store_image, base.share_dir
        return a


class _Sidecar(BaseModel):
    """The accepted shape of a sidecar; anything else is refused whole."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    kind: Literal["disk", "vbox", "nspawn", "tar", "oci", "libvirt"]
    format: Literal["raw", "qcow2", "vdi", "vmdk", "ova", "nspawn", "tar", "oci", "libvirt"]
    image: str
    toplevel: str = Field(pattern=r"^/nix/store/[0-9a-z]{32}-[^/]+$")
    layout: Literal["disk", "store-disk", "shared"]
    store: Literal["disk", "store-disk", "9p", "virtiofs", "container"]
    boot: Literal["direct", "bios", "uefi"]
    cmdline: str = Field("", max_length=4096)
    store_image: str | None = None
    share_dir: str | None = None
    memory: int = Field(512, ge=64, le=1 << 20)
    cpus: int = Field(1, ge=1, le=256)
    sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    virtual_size: int = Field(0, ge=0)
    build: str = Field("", pattern=r"^(b-[0-9a-f]{12})?$")
    extra: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("image", "store_image", "share_dir")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = Path(v)
        if p.is_absolute() or ".." in p.parts or not p.parts or "\0" in v:
            raise ValueError(f"{v!r} is not a file of this build (a relative name "
                             "inside the sidecar's directory)")
        return v

    @field_validator("cmdline")
    @classmethod
    def _cmdline(cls, v: str) -> str:
        if any(ord(c) < 32 for c in v):
            raise ValueError("the kernel command line holds control characters")
        return v


def _validate(data: object, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BuildError(f"{path.name} holds a {type(data).__name__}, not an object",
                         where=str(path), hint="rebuild the image")
    try:
        sc = _Sidecar.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "sidecar"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise BuildError(f"{loc}: {msg}", where=str(path),
                         hint="the sidecar was not written by nixslave; rebuild the image"
                         ) from None
    out = sc.model_dump()
    for k in _PATH_FIELDS:
        if out[k] is not None:
            out[k] = path.parent / out[k]
    return out


def sidecar_path(image: Path) -> Path:
    return image.with_name(image.name + ARTIFACT_SUFFIX)
