"""Offline delta upgrades boot the new system in every layout and boot mode.

Each image is built with the demo system, upgraded (through the CLI, as a
user would) to a changed demo system, and booted; the marker must name the
new toplevel.  Realistic bugs this catches: the boot entry (extlinux.conf,
the UKI, the sidecar's command line) left on the old system; a store disk
swapped without the new paths; a share missing the delta; the guest's Nix
database not knowing the new paths; user data outside the store lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from clirun import nixslave_popen
from images import debugfs, erofs_ls

from nixslave import nix
from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskOptions
from nixslave.build import build_image
from nixslave.runtime.launch import run_artifacts
from nixslave.spec import MachineSpec

pytestmark = [pytest.mark.nix, pytest.mark.guestfs, pytest.mark.boot]
MiB = 1 << 20
USERDATA = os.urandom(5000) + b"user data, not in the store\n"


@dataclass(frozen=True)
class Case:
    name: str
    layout: str
    boot: str
    fmt: str = "qcow2"
    with_nix: bool = False
    gc: bool = False


CASES = [
    Case("up-uefi", "disk", "uefi", with_nix=True, gc=True),
    Case("up-sdisk", "store-disk", "bios"),
    Case("up-share", "shared", "direct", gc=True),
    Case("up-bios", "disk", "bios", fmt="raw"),
]


def _spec(c: Case, **kw: object) -> MachineSpec:
    return MachineSpec.parse({"name": c.name, "demo": True, "layout": c.layout,
                              "boot": c.boot, "with_nix": c.with_nix, **kw})


def root_offset(a: Artifact) -> int:
    if a.boot == "bios":
        return MiB
    if a.boot == "uefi":
        return int(a.extra["uefi"]["rootOffset"])
    return 0


def _upgrade_cli(img: Path, toplevel: str, gc: bool) -> subprocess.Popen[str]:
    args = ["image", "upgrade", str(img), "--toplevel", toplevel, "--json"]
    return nixslave_popen(*args, *(["--gc"] if gc else []), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Case, dict, Path]]:
    """Every case built, its old state noted, then upgraded (two CLI runs at a time)."""
    work = tmp_path_factory.mktemp("upgrade")
    out: dict[str, tuple[Case, dict, Path]] = {}
    jobs = []
    for c in CASES:
        img = work / f"{c.name}.{c.fmt}"
        old = build_image(_spec(c), img, DiskOptions(format=c.fmt))
        if c.fmt == "raw":  # user data under /var, written the way a guest would leave it
            (work / "ud").write_bytes(USERDATA)
            debugfs(old.image, root_offset(old), f"write {work / 'ud'} /var/userdata.bin",
                    write=True)
        new = rootmod.build(_spec(c, halt=False))
        assert new.toplevel != old.toplevel
        jobs.append((c, img, old, new))
    results: dict[str, dict] = {}
    for i in range(0, len(jobs), 2):
        procs = [(c, _upgrade_cli(img, new.toplevel, c.gc)) for c, img, _o, new in jobs[i:i + 2]]
        for c, proc in procs:
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr
            results[c.name] = json.loads(stdout)
    for c, img, old, new in jobs:
        out[c.name] = (c, {**results[c.name], "old": old, "new": new}, img)
    return out


def test_every_layout_boots_the_new_system(upgraded: dict) -> None:
    artifacts = [Artifact.load(img) for _c, _r, img in upgraded.values()]
    for a, (c, r, _img) in zip(artifacts, upgraded.values(), strict=True):
        assert a.toplevel == r["new"].toplevel, f"{c.name}: the sidecar names the old system"
    results = run_artifacts(artifacts, timeout=420)
    for res, (c, r, _img) in zip(results, upgraded.values(), strict=True):
        assert res.booted == r["new"].toplevel, f"{c.name} booted {res.booted}"


def test_only_the_delta_travels(upgraded: dict) -> None:
    for c, r, _img in upgraded.values():
        old_paths = set(nix.closure(r["old"].toplevel))
        delta = [p for p in r["new"].paths if p not in old_paths]
        assert r["changed"] and r["new_toplevel"] == r["new"].toplevel
        assert r["paths_added"] == len(delta), c.name
        assert r["bytes_added"] == sum(i.nar_size for i in r["new"].closure
                                       if i.path in delta), c.name


def test_gc_removes_only_the_old_system(upgraded: dict) -> None:
    _c, r, img = upgraded["up-share"]
    a = Artifact.load(img)
    assert a.share_dir is not None
    # a zero-copy share holds nothing: the runner serves the new toplevel's
    # closure (the upgraded image's boot proves it is the new one)
    assert a.extra["shareMethod"] == "bind" and list(a.share_dir.iterdir()) == []
    assert a.toplevel == r["new"].toplevel
    _c, r, img = upgraded["up-uefi"]
    assert r["paths_removed"] == len(set(nix.closure(r["old"].toplevel))
                                     - set(r["new"].paths))


def test_store_disk_keeps_both_systems_until_gc(upgraded: dict) -> None:
    """The new store disk holds old and new closure, so a boot entry of either boots."""
    c, r, img = upgraded["up-sdisk"]
    a = Artifact.load(img)
    assert a.store_image is not None and a.store_image.name != f"{c.name}-store.qcow2"
    raw = img.parent / "sdisk-store.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(a.store_image), str(raw)],
                   check=True)
    names = erofs_ls(raw)  # a new store disk is the default erofs
    want = {Path(p).name for p in set(r["new"].paths) | set(nix.closure(r["old"].toplevel))}
    assert want <= names
    raw.unlink()


def test_guest_nix_database_knows_the_new_paths(upgraded: dict) -> None:
    _c, r, img = upgraded["up-uefi"]
    a = Artifact.load(img)
    raw = img.parent / "uefi.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(a.image), str(raw)], check=True)
    db = img.parent / "db.sqlite"
    debugfs(raw, root_offset(a), f"dump /nix/var/nix/db/db.sqlite {db}")
    con = sqlite3.connect(db)
    valid = {row[0] for row in con.execute("SELECT path FROM ValidPaths")}
    con.close()
    assert valid == set(r["new"].paths), "registered paths differ from the new closure"
    raw.unlink()


def test_user_data_survives_byte_for_byte(upgraded: dict, tmp_path: Path) -> None:
    _c, r, img = upgraded["up-bios"]
    a = Artifact.load(img)
    debugfs(a.image, root_offset(a), f"dump /var/userdata.bin {tmp_path / 'ud'}")
    assert (tmp_path / "ud").read_bytes() == USERDATA
    conf = debugfs(a.image, root_offset(a), "cat /boot/extlinux/extlinux.conf")
    assert f"init={r['new'].toplevel}/init" in conf
    assert r["old"].toplevel not in conf


def test_a_changed_layout_is_refused_before_any_write(upgraded: dict) -> None:
    """Upgrading a shared image to a store-disk system would leave it unbootable."""
    from nixslave.errors import ImageError
    from nixslave.image.upgrade import upgrade

    c, _r, img = upgraded["up-share"]
    a = Artifact.load(img)
    before = (a.image.stat().st_mtime_ns, a.sidecar.read_bytes())
    other = rootmod.build(MachineSpec.parse({"name": c.name, "demo": True,
                                             "layout": "store-disk"}))
    with pytest.raises(ImageError, match="layout is shared"):
        upgrade(img, root=other)
    assert (a.image.stat().st_mtime_ns, a.sidecar.read_bytes()) == before
