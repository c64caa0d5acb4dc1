"""install: a nixslave root into someone else's disk, every other byte kept.

The disks are made on the host (tests/images.py) and checked on the host
too (sfdisk, dumpe2fs, debugfs on a raw copy), so the appliance launches
are the ones under test: one read-only-phase launch over every refusal
disk, and one launch per real install.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import images  # tests/images.py, on sys.path through rootdir-relative import
import pytest

from nixslave import nix
from nixslave.backends import Artifact, sidecar_path
from nixslave.errors import ImageError
from nixslave.image.install import (
    GPT_LINUX,
    Disk,
    Part,
    Slot,
    choose,
    install,
    peeker,
    read_disk,
)
from nixslave.nixos import ROOT_LABEL
from nixslave.root import Root
from nixslave.spec import MachineSpec

MiB = 1 << 20
BOOT_CODE = b"GRUB boot code stand-in " * 18 + b"END!"   # 436 bytes: the MBR's code area
NEED = 40 * MiB   # what the survey tests ask for


# -- host-side reading of results (trusted images the tests made) ----------------

def sha(path: Path, offset: int = 0, length: int | None = None) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read() if length is None else f.read(length)).hexdigest()


def head(path: Path, n: int) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


def as_raw(img: Path, work: Path) -> Path:
    if img.suffix == ".raw":
        return img
    raw = work / f"{img.stem}.check.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(img), str(raw)],
                   check=True)
    return raw


def partitions(raw: Path) -> list[dict[str, object]]:
    out = subprocess.run(["sfdisk", "--json", str(raw)], check=True, capture_output=True,
                         text=True).stdout
    parts: list[dict[str, object]] = json.loads(out)["partitiontable"]["partitions"]
    for p in parts:
        p.pop("node")
    return parts


def fs_info(raw: Path, offset: int) -> dict[str, str]:
    out = subprocess.run(["dumpe2fs", "-h", f"{raw}?offset={offset}"], check=True,
                         capture_output=True, text=True).stdout
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}


def cat(raw: Path, offset: int, path: str) -> bytes | None:
    proc = subprocess.run(["debugfs", "-R", f"cat {path}", f"{raw}?offset={offset}"],
                          capture_output=True, check=True)
    return None if b"not found" in proc.stderr else proc.stdout


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".nixslave")
                  or p.name.endswith(".lock"))


def check_installed(raw: Path, start: int, size: int, root: Root) -> None:
    """The partition holds the root's file system, grown to fill it."""
    info = fs_info(raw, start)
    assert info["Filesystem volume name"] == ROOT_LABEL
    assert int(info["Block count"]) * 4096 == size
    manifest = json.loads(cat(raw, start, "/nix/var/nixslave/manifest.json") or b"{}")
    assert manifest["toplevel"] == root.toplevel
    assert cat(raw, start, "/etc/NIXOS") == b""
    fsck = subprocess.run(["e2fsck", "-fn", f"{raw}?offset={start}"], capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def resize(img: Path, delta: str) -> None:
    subprocess.run(["qemu-img", "resize", "-q", "-f", "raw", str(img), delta], check=True)


# -- refusals that need no appliance ------------------------------------------------

@pytest.mark.nix
@pytest.mark.parametrize("case", ["both", "neither", "zero", "store-disk", "bios"])
def test_refused_before_any_work(demo_root: Root, tmp_path: Path, case: str) -> None:
    img, _ = images.existing_disk(tmp_path, "small", size_mib=80)
    before = sha(img)
    kw: dict[str, object] = {"new_partition": True}
    root = demo_root
    if case == "both":
        kw = {"partition": 1, "new_partition": True}
    elif case == "neither":
        kw = {}
    elif case == "zero":
        kw = {"partition": 0}
    else:
        key = "layout" if case == "store-disk" else "boot"
        spec = MachineSpec.parse({"name": "demo", "demo": True, key: case})
        root = Root(spec=spec, toplevel=demo_root.toplevel, closure=demo_root.closure)
    expected = {"both": "exactly one of", "neither": "exactly one of",
                "zero": "count from 1", "store-disk": "only --layout disk --boot direct",
                "bios": "only --layout disk --boot direct"}[case]
    with pytest.raises(ImageError, match=expected) as exc:
        install(img, root, **kw)  # type: ignore[arg-type]
    assert exc.value.hint
    assert sha(img) == before
    assert leftovers(tmp_path) == [] and not sidecar_path(img).exists()


# -- where the root goes: the arithmetic ----------------------------------------------

def _disk(table: str, size_mib: int, *parts: Part, sector: int = 512) -> Disk:
    return Disk("/dev/sda", table, sector, size_mib * MiB, parts)


def _never(_p: Part) -> str | None:
    raise AssertionError("new_partition must not look into partitions")


@pytest.mark.unit
@pytest.mark.parametrize(("table", "sector", "free_mib"),
                         [("gpt", 512, 34), ("mbr", 512, 35), ("gpt", 4096, 34)])
def test_free_space_is_aligned_and_spares_the_gpt_backup(table: str, sector: int,
                                                         free_mib: int) -> None:
    """After a 64 MiB partition on a 100 MiB disk: GPT keeps its last MiB for the backup."""
    disk = _disk(table, 100, Part(1, MiB, 64 * MiB, "ext4", "data"), sector=sector)
    slot = choose(disk, 30 * MiB, partition=None, force=False, where="t", peek=_never)
    assert slot == Slot(None, 65 * MiB, free_mib * MiB)
    with pytest.raises(ImageError, match=rf"space is short: .* is {free_mib} MiB.* needs 50 MiB"):
        choose(disk, 50 * MiB, partition=None, force=False, where="t", peek=_never)


@pytest.mark.unit
def test_new_partition_goes_after_an_extended_one_and_on_a_mib() -> None:
    disk = _disk("mbr", 200,
                 Part(1, MiB, 10 * MiB + 512, "ext4", "boot"),
                 Part(2, 20 * MiB, 60 * MiB, "", "", extended=True),
                 Part(5, 21 * MiB, 30 * MiB, "ext4", "data"))
    slot = choose(disk, 30 * MiB, partition=None, force=False, where="t", peek=_never)
    assert slot == Slot(None, 80 * MiB, 120 * MiB)
    empty = _disk("gpt", 200)
    assert choose(empty, MiB, partition=None, force=False, where="t",
                  peek=_never).start == MiB


# -- the read phase on real disks, each refusal leaving the file untouched ----------

@pytest.fixture(scope="module")
def survey_disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("survey")
    # MBR, four primaries: files, too small, LUKS, unidentified bytes.
    mbr, lay = images.existing_disk(work, "four", size_mib=132, parts=(64, 8, 16, 40))
    images.put_ext4(mbr, lay[1], label="small")
    images.put_luks(mbr, lay[2], work)
    images.plant(mbr, lay[3][0] + 4096, b"\x7fsome database page\x00" * 8)
    # GPT whose partition 1 is an empty nixslave root; 2 is blank.
    gpt, glay = images.existing_disk(work, "rooted", size_mib=120, table="gpt",
                                     parts=(48, 48))
    images.put_ext4(gpt, glay[0], label=ROOT_LABEL)
    # An extended partition; its logical partition's ext4 needs journal recovery.
    ext, elay = images.extended_disk(work)
    images.mark_unclean(ext, elay[1][0])
    return {"four": mbr, "rooted": gpt, "extended": ext,
            "whole": images.plain_ext4_image(work)}


# disk -> [(partition, force, expected message or the Slot's (partition, overwritten))]
SURVEY_CASES: dict[str, list[tuple[int | None, bool, str | tuple[int, bool]]]] = {
    "four": [(1, False, r"partition 1 is not empty: it holds files \(etc, home\) on its ext4"),
             (1, True, (1, True)),
             (2, False, r"space is short: partition 2 holds 8 MiB, .* needs 40 MiB"),
             (3, True, r"partition 3 is encrypted \(LUKS\)"),
             (4, False, r"not empty: it holds data nixslave cannot identify"),
             (7, False, r"no partition 7 \(it has: 1, 2, 3, 4\)"),
             (None, False, r"4 primary partitions already")],
    "rooted": [(2, True, r"partition 1 already carries the label nixslave-root"),
               (None, False, r"partition 1 already carries the label nixslave-root"),
               (1, False, (1, False))],  # an empty root: only lost+found
    "extended": [(5, False, r"partition 5 is not empty: .*cannot be mounted read-only"),
                 (5, True, (5, True)),
                 (1, True, r"partition 1 is an extended partition")],
    "whole": [(1, True, r"no partition table")],
}


@pytest.mark.guestfs
def test_read_phase_decides_on_real_disks_and_writes_nothing(
        survey_disks: dict[str, Path]) -> None:
    """Install's read phase on drives added read-write, as install adds them.

    Each disk is read once (parted is slow under TCG) and every case decided
    on that reading, with real peeks into the partitions.
    """
    from nixslave.appliance import guestfs_handle

    before = {k: sha(v) for k, v in survey_disks.items()}
    got: dict[str, list[object]] = {k: [] for k in SURVEY_CASES}
    with guestfs_handle() as g:
        for img in survey_disks.values():
            g.add_drive_opts(str(img), format="raw", readonly=False)
        g.launch()
        for name, dev in zip(survey_disks, g.list_devices(), strict=True):
            try:
                disk = read_disk(g, dev, name)
            except ImageError as exc:
                got[name] = [str(exc)] * len(SURVEY_CASES[name])
                continue
            for part, force, _ in SURVEY_CASES[name]:
                try:
                    slot = choose(disk, NEED, partition=part, force=force, where=name,
                                  peek=peeker(g, dev))
                    got[name].append((slot.num, slot.overwritten))
                except ImageError as exc:
                    assert exc.hint, exc
                    got[name].append(str(exc))
    for name, cases in SURVEY_CASES.items():
        for (part, force, want), result in zip(cases, got[name], strict=True):
            if isinstance(want, tuple):
                assert result == want, (name, part, force)
            else:
                assert isinstance(result, str), (name, part, force, result)
                assert re.search(want, result), result
    assert {k: sha(v) for k, v in survey_disks.items()} == before


# -- real installs ----------------------------------------------------------------------

@pytest.mark.guestfs
@pytest.mark.boot
def test_new_partition_in_mbr_qcow2_boots(demo_root: Root, tmp_path: Path) -> None:
    """The whole story: someone's qcow2, a new partition, `nixslave run` boots it."""
    from nixslave.runtime.launch import run_artifacts

    raw, lay = images.existing_disk(tmp_path, "debian", size_mib=640)
    images.plant(raw, 0, BOOT_CODE)
    p1_sha, mbr = sha(raw, *lay[0]), head(raw, 446)  # boot code + disk id
    table_before = partitions(raw)
    img = tmp_path / "debian.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(img)],
                   check=True)
    raw.unlink()
    steps: list[str] = []
    report = install(img, demo_root, new_partition=True, progress=steps.append)
    assert (report.table, report.partition, report.created, report.overwritten) == \
        ("mbr", 2, True, False)
    assert (report.start, report.size) == (65 * MiB, 575 * MiB)
    assert report.bytes_written >= demo_root.nar_size
    assert report.to_json()["sidecar"] == str(sidecar_path(img))
    assert any("creating" in s for s in steps) and leftovers(tmp_path) == []
    subprocess.run(["qemu-img", "check", "-q", str(img)], check=True)

    check = as_raw(img, tmp_path)
    assert sha(check, *lay[0]) == p1_sha
    assert head(check, 446) == mbr
    assert partitions(check) == [*table_before,
                                 {"start": 65 * 2048, "size": 575 * 2048, "type": "83"}]
    assert cat(check, lay[0][0], "/home/user/notes.txt") == images.NOTES
    check_installed(check, report.start, report.size, demo_root)
    check.unlink()

    artifact = Artifact.load(img)
    assert (artifact.format, artifact.boot, artifact.extra["installedInto"]) == \
        ("qcow2", "direct", 2)
    assert Path(nix.GCROOTS_DIR / "demo-current").resolve() == Path(demo_root.toplevel)
    [result] = run_artifacts([artifact], timeout=300)
    assert result.booted == demo_root.toplevel


@pytest.mark.guestfs
def test_gpt_refused_short_then_grown_by_the_hint(demo_root: Root, tmp_path: Path) -> None:
    """Refused untouched; after `qemu-img resize` the backup GPT moves and it installs.

    The disk first leaves room for half the closure after partition 1 (which
    ends at 65 MiB) and GPT's last MiB, so it is short whatever the closure.
    """
    short = 66 + max(1, demo_root.nar_size // MiB // 2)
    img, lay = images.existing_disk(tmp_path, "gpt", size_mib=short, table="gpt")
    images.plant(img, 0, BOOT_CODE)  # GRUB on GPT keeps code in the protective MBR
    p1_sha, table_before = sha(img, *lay[0]), partitions(img)
    before = sha(img)
    with pytest.raises(ImageError, match=r"space is short: .* needs \d+ MiB") as exc:
        install(img, demo_root, new_partition=True)
    assert "qemu-img resize" in exc.value.hint
    assert sha(img) == before and not sidecar_path(img).exists()
    assert leftovers(tmp_path) == []

    resize(img, "+192M")
    report = install(img, demo_root, new_partition=True)
    assert (report.table, report.partition, report.start) == ("gpt", 2, 65 * MiB)
    verify = subprocess.run(["sgdisk", "-v", str(img)], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout
    table = partitions(img)
    assert table[0] == table_before[0]
    assert table[1]["type"] == GPT_LINUX
    assert sha(img, *lay[0]) == p1_sha and head(img, len(BOOT_CODE)) == BOOT_CODE
    check_installed(img, report.start, report.size, demo_root)


@pytest.mark.guestfs
def test_force_replaces_one_partition_only(demo_root: Root, tmp_path: Path) -> None:
    """--force replaces what one partition held; nothing else changes.

    The refusal without --force is decided by the read phase (test above),
    on a drive added read-write, so it costs no launch of its own here.
    """
    img, lay = images.existing_disk(tmp_path, "two", size_mib=200, parts=(64, 128))
    images.put_ext4(img, lay[1], label="old", tree=images.debian_tree(tmp_path, "old-tree"))
    p1_sha, table_before = sha(img, *lay[0]), partitions(img)
    report = install(img, demo_root, partition=2, force=True)
    assert (report.partition, report.created, report.overwritten) == (2, False, True)
    assert (report.start, report.size) == lay[1]
    assert partitions(img) == table_before  # --partition never writes the table
    assert sha(img, *lay[0]) == p1_sha
    assert cat(img, lay[1][0], "/home/user/notes.txt") is None
    check_installed(img, *lay[1], demo_root)
