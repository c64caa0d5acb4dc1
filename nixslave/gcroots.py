"""Host GC roots that keep every built or booted guest closure alive.

``<name>-current`` protects the closure of the newest image of a machine and
``<name>-booted`` the one last seen booting, so a host GC never removes what
an offline upgrade or repair of that guest needs.  A small record beside the
roots remembers which image files each machine has, so roots of machines
whose images are all gone can be pruned.

``NIXSLAVE_STATE_DIR`` (default ``/nix/var/nixslave``) moves the records, so
that a test suite or a second installation leaves the host's own alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from nixslave import nix
from nixslave.spec import check_name

STATE_DIR = Path(os.environ.get("NIXSLAVE_STATE_DIR") or "/nix/var/nixslave")
RECORDS_DIR = STATE_DIR / "images"
ROOT_KINDS = ("current", "booted")


@dataclass
class MachineRoots:
    name: str
    roots: dict[str, str]         # kind -> store path
    images: list[str]             # image files recorded for this machine
    images_present: list[str]

    @property
    def orphaned(self) -> bool:
        return bool(self.images) and not self.images_present

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "orphaned": self.orphaned}


def record_image(name: str, image: Path, toplevel: str, *, records: Path = RECORDS_DIR) -> None:
    """Remember that ``image`` belongs to machine ``name``."""
    check_name(name)
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    images = set(data.get("images", [])) | {str(Path(image).absolute())}
    data = {"name": name, "toplevel": toplevel, "images": sorted(images)}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def machines(*, records: Path = RECORDS_DIR, gcroots: Path = nix.GCROOTS_DIR
             ) -> list[MachineRoots]:
    """Every machine that has a root or a record."""
    roots = nix.list_gcroots(gcroots=gcroots)
    names: set[str] = set()
    for link in roots:
        base, _, kind = link.rpartition("-")
        if kind in ROOT_KINDS and base:
            names.add(base)
    if records.is_dir():
        names |= {p.stem for p in records.glob("*.json")}
    out = []
    for name in sorted(names):
        try:
            data = json.loads((records / f"{name}.json").read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        images = [str(i) for i in data.get("images", [])]
        out.append(MachineRoots(
            name=name,
            roots={k: roots[f"{name}-{k}"] for k in ROOT_KINDS if f"{name}-{k}" in roots},
            images=images, images_present=[i for i in images if Path(i).exists()]))
    return out


def remove_machine(name: str, *, records: Path = RECORDS_DIR,
                   gcroots: Path = nix.GCROOTS_DIR) -> list[str]:
    """Drop a machine's roots and record; returns the roots removed."""
    check_name(name)
    removed = [f"{name}-{k}" for k in ROOT_KINDS
               if nix.remove_gcroot(f"{name}-{k}", gcroots=gcroots)]
    (records / f"{name}.json").unlink(missing_ok=True)
    return removed


def prune(*, dry_run: bool = False, records: Path = RECORDS_DIR,
          gcroots: Path = nix.GCROOTS_DIR) -> list[str]:
    """Remove the roots of machines whose recorded images are all gone."""
    gone = [m.name for m in machines(records=records, gcroots=gcroots) if m.orphaned]
    if not dry_run:
        for name in gone:
            remove_machine(name, records=records, gcroots=gcroots)
    return gone
