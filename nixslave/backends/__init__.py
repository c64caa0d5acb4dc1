"""Backends turn a Root into something a hypervisor or container runtime uses.

Every backend implements one small protocol, ``materialize(root, out,
options) -> Artifact``.  The Artifact is the host's side of the machine: its
files and how to boot them.  It is saved beside the image as
``<image>.nixslave.json`` so that ``nixslave run`` needs no other state.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nixslave.errors import BuildError

ARTIFACT_SUFFIX = ".nixslave.json"


@dataclass
class Artifact:
    """The files of one materialized machine and how the host boots them."""

    name: str
    kind: str                    # "disk"
    format: str                  # raw | qcow2
    image: Path
    toplevel: str
    layout: str
    store: str                   # disk | store-disk | 9p | virtiofs
    boot: str                    # direct | bios
    cmdline: str = ""            # direct boot: the kernel command line
    store_image: Path | None = None
    share_dir: Path | None = None
    memory: int = 512
    cpus: int = 1
    sha256: str = ""
    virtual_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.image)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("image", "store_image", "share_dir"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d

    def save(self) -> Path:
        """Write the sidecar atomically (temp file in the same directory)."""
        path = self.sidecar
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, image: Path) -> Artifact:
        """Read the sidecar of ``image`` (or the sidecar file itself)."""
        path = image if str(image).endswith(ARTIFACT_SUFFIX) else sidecar_path(image)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BuildError(f"no {path.name} beside the image", where=str(image),
                             hint="run images built by `nixslave image build`, or rebuild "
                                  "this one") from None
        except ValueError as exc:
            raise BuildError(f"{path.name} is not valid JSON: {exc}", where=str(path),
                             hint="rebuild the image") from None
        for k in ("image", "store_image", "share_dir"):
            if data.get(k) is not None:
                p = Path(data[k])
                data[k] = p if p.is_absolute() else path.parent / p
        return cls(**data)


def sidecar_path(image: Path) -> Path:
    return image.with_name(image.name + ARTIFACT_SUFFIX)
