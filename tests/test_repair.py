"""The corruption matrix: damaged demo images repaired back to booting, user data intact.

Images are damaged on the host with debugfs and byte writes (no appliance),
the way disks really break: a store path unlinked, bit rot in a store file,
the system link or the manifest gone, extlinux or the MBR wiped, a garbled
extlinux.conf, inconsistent metadata, wrong modes and owners.  Each repair
is then checked on the host (debugfs again, against the host's store and
Nix's own hashes) and every image is booted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from clirun import nixslave_popen
from images import debugfs

from nixslave.backends import Artifact
from nixslave.backends.disk import DiskOptions
from nixslave.build import build_image
from nixslave.image.repair import Finding, RepairReport, health
from nixslave.runtime.launch import run_artifacts
from nixslave.spec import MachineSpec

pytestmark = [pytest.mark.nix, pytest.mark.guestfs, pytest.mark.boot]
MiB = 1 << 20
MBR_BIN = Path("/usr/lib/EXTLINUX/mbr.bin")
USERDATA = os.urandom(7000) + b"\nuser data under /var\n"


def store_name(image: Path, offset: int, suffix: str) -> str:
    listing = debugfs(image, offset, "ls -p /nix/store")
    names = [ln.split("/")[5] for ln in listing.splitlines() if ln.count("/") >= 6]
    return next(n for n in names if n.endswith(suffix))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    work = tmp_path_factory.mktemp("repair-base")
    out = {}
    for boot in ("direct", "bios"):
        spec = MachineSpec.parse({"name": f"rp-{boot}", "demo": True, "boot": boot})
        out[boot] = build_image(spec, work / f"{boot}.raw", DiskOptions(format="raw"))
    return out


def _copy(base: Artifact, dest: Path, name: str) -> Artifact:
    """A plain copy of a built image with its own sidecar (another machine name)."""
    img = dest / f"{name}.raw"
    subprocess.run(["cp", "--sparse=always", str(base.image), str(img)], check=True)
    a = replace(base, name=name, image=img, build="", extra=dict(base.extra))
    a.extra.pop("published_as", None)
    a.save()
    return Artifact.load(img)


@pytest.fixture(scope="module")
def damaged(bases: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, tuple[Artifact, dict[str, str]]]:
    """Eight kinds of damage on two images (keys a-d name the kinds, two per image)."""
    work = tmp_path_factory.mktemp("repair")
    (work / "ud").write_bytes(USERDATA)
    (work / "garbage").write_text("DEFAULT nowhere\nLABEL x\n  LINUX /nope\n")
    out: dict[str, tuple[Artifact, dict[str, str]]] = {}

    # A: a deleted store path, a removed manifest (the store intact), user data
    a = _copy(bases["direct"], work, "rp-ab")
    etc = store_name(a.image, 0, "-etc")
    debugfs(a.image, 0, f"write {work / 'ud'} /var/userdata.bin", f"unlink /nix/store/{etc}",
            "rm /nix/var/nixslave/manifest.json", write=True)
    out["a"] = (a, {"etc": etc})

    # B: bit rot in a store file, a removed system link, metadata errors, wrong modes
    b = a  # the same direct image: one repair (one launch) for both sets
    bb = store_name(b.image, 0, "-busybox")
    block = int(debugfs(b.image, 0, f"blocks /nix/store/{bb}/bin/busybox").split()[0])
    with open(b.image, "r+b") as f:
        f.seek(block * 4096 + 333)
        chunk = f.read(8)
        f.seek(block * 4096 + 333)
        f.write(bytes(x ^ 0x5A for x in chunk))
    kernel = store_name(b.image, 0, "-linux-kernel")
    debugfs(b.image, 0, "rm /nix/var/nix/profiles/system", "sif /var links_count 9",
            f"sif /nix/store/{kernel} mode 0100666", f"sif /nix/store/{kernel} uid 1000",
            write=True)
    out["b"] = (b, {"busybox": bb, "kernel": kernel})

    # C: the MBR's boot code and extlinux's ldlinux.sys wiped (partition table kept)
    c = _copy(bases["bios"], work, "rp-cd")
    with open(c.image, "r+b") as f:
        f.write(b"\0" * 440)
    debugfs(c.image, MiB, f"write {work / 'ud'} /var/userdata.bin",
            "rm /boot/extlinux/ldlinux.sys", write=True)
    out["c"] = (c, {})

    # D: a garbled extlinux.conf
    d = c  # the same bios image
    debugfs(d.image, MiB, "rm /boot/extlinux/extlinux.conf",
            f"write {work / 'garbage'} /boot/extlinux/extlinux.conf", write=True)
    out["d"] = (d, {})
    return out


def _cli(image: Path, *flags: str) -> subprocess.Popen[str]:
    return nixslave_popen("image", "repair", str(image), "--json", *flags,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _report(proc: subprocess.Popen[str], codes: tuple[int, ...] = (0,)) -> RepairReport:
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode in codes, stderr
    data = json.loads(stdout)
    data.pop("clean")
    data.pop("healthy")
    data["findings"] = [Finding(**f) for f in data["findings"]]
    return RepairReport(**data)


@pytest.fixture(scope="module")
def runs(damaged: dict) -> dict[str, Any]:
    """Through the CLI, as a user would; two appliances at a time.

    Round one: a dry run of the direct image beside the repair of the bios
    image; round two: the direct image's repair beside a health check of the
    repaired bios image.
    """
    ab, cd = damaged["a"][0].image, damaged["c"][0].image
    before = sha(ab)
    dry, first = _cli(ab, "--dry-run"), _cli(cd)
    dry_report = _report(dry, codes=(1,))  # 1: the dry run found something to do
    cd_report = _report(first)
    after_dry = sha(ab)
    second = _cli(ab)
    cd_health = health(cd)
    return {"dry": (dry_report, before, after_dry), "ab": _report(second), "cd": cd_report,
            "health": cd_health}


@pytest.fixture(scope="module")
def repaired(runs: dict[str, Any]) -> dict[str, RepairReport]:
    return {"a": runs["ab"], "b": runs["ab"], "c": runs["cd"], "d": runs["cd"]}


def _checks(report: RepairReport) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report.findings:
        out.setdefault(f.check, []).append(f.problem)
    return out


def test_dry_run_reports_and_writes_nothing(damaged: dict, runs: dict[str, Any]) -> None:
    """A dry run that wrote through (a read-write drive) would repair in secret."""
    report, before, after = runs["dry"]
    b, info = damaged["b"]
    assert after == before
    assert report.dry_run and report.backup is None
    checks = _checks(report)
    assert {"filesystem", "system link", "store", "store modes", "store owners",
            "manifest"} <= set(checks)
    assert any(info["busybox"] in p for p in checks["store"])
    assert len([p for p in b.image.parent.glob("rp-ab.raw.pre-repair-*")]) == 1  # the real one


def test_deleted_path_and_lost_manifest(damaged: dict, repaired: dict, tmp_path: Path) -> None:
    a, info = damaged["a"]
    report = repaired["a"]
    assert report.healthy, report.findings
    checks = _checks(report)
    assert any(info["etc"] in p and "missing" in p for p in checks["store"])
    assert "manifest" in checks
    listing = debugfs(a.image, 0, "ls -p /nix/store")
    assert f"/{info['etc']}/" in listing
    manifest = debugfs(a.image, 0, "cat /nix/var/nixslave/manifest.json")
    assert a.toplevel in manifest
    debugfs(a.image, 0, f"rdump /nix/store/{info['etc']} {tmp_path}")
    nix_hash = subprocess.run(["nix-hash", "--type", "sha256", "--base32",
                               str(tmp_path / info["etc"])], capture_output=True, text=True,
                              check=True)
    want = subprocess.run(["nix-store", "--query", "--hash", f"/nix/store/{info['etc']}"],
                          capture_output=True, text=True, check=True)
    assert want.stdout.strip() == f"sha256:{nix_hash.stdout.strip()}"


def test_bit_rot_link_metadata_and_modes(damaged: dict, repaired: dict, tmp_path: Path
                                         ) -> None:
    b, info = damaged["b"]
    report = repaired["b"]
    assert report.healthy, report.findings
    debugfs(b.image, 0, f"dump /nix/store/{info['busybox']}/bin/busybox {tmp_path / 'bb'}")
    assert sha(tmp_path / "bb") == sha(Path(f"/nix/store/{info['busybox']}/bin/busybox"))
    assert "Type: symlink" in debugfs(b.image, 0, "stat /nix/var/nix/profiles/system")
    # an 80-byte target lives in a block, which debugfs cat prints
    assert debugfs(b.image, 0, "cat /nix/var/nix/profiles/system").strip() == b.toplevel
    stat = debugfs(b.image, 0, f"stat /nix/store/{info['kernel']}")
    assert "Mode:  0444" in stat and "User:     0" in stat, stat[:300]
    fsck = subprocess.run(["e2fsck", "-f", "-n", str(b.image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout[-500:]
    assert report.backup and "pre-repair" in report.backup
    assert report.verified_paths >= 4 and report.verify_mb_per_s > 0  # one was missing


def test_bootloader_and_mbr(damaged: dict, repaired: dict) -> None:
    c, _ = damaged["c"]
    assert repaired["c"].healthy, repaired["c"].findings
    assert c.image.read_bytes()[:440] == MBR_BIN.read_bytes()[:440]
    assert "ldlinux.sys" in debugfs(c.image, MiB, "ls /boot/extlinux")
    d, _ = damaged["d"]
    conf = debugfs(d.image, MiB, "cat /boot/extlinux/extlinux.conf")
    assert f"init={d.toplevel}/init" in conf and "nowhere" not in conf


def test_user_data_survives_every_repair(damaged: dict, repaired: dict, tmp_path: Path) -> None:
    for key, (a, _info) in damaged.items():
        offset = MiB if a.boot == "bios" else 0
        debugfs(a.image, offset, f"dump /var/userdata.bin {tmp_path / key}")
        assert (tmp_path / key).read_bytes() == USERDATA, key


def test_a_clean_image_gets_no_findings(runs: dict[str, Any]) -> None:
    """After the repair, a second look finds nothing (the dry run of a healthy image)."""
    h = runs["health"]
    assert h.findings == [], h.findings
    assert (h.filesystem, h.store, h.boot, h.state) == ("clean", "verified", "consistent",
                                                       "clean")


def test_repaired_images_boot(damaged: dict, repaired: dict) -> None:
    artifacts = [Artifact.load(damaged[k][0].image) for k in ("a", "c")]
    results = run_artifacts(artifacts, timeout=420)
    for res, a in zip(results, artifacts, strict=True):
        assert res.booted == a.toplevel, f"{a.name} booted {res.booted}"


def test_raw_backup_is_the_damaged_image(damaged: dict, repaired: dict) -> None:
    """The safety copy is the state before the repair: going back restores the damage."""
    _c, _ = damaged["c"]
    backup = Path(repaired["c"].backup.split()[1])
    assert backup.read_bytes()[:440] == b"\0" * 440
    assert "ldlinux.sys" not in debugfs(backup, MiB, "ls /boot/extlinux")
