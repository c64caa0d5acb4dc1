"""UEFI disks: GPT + ESP + a unified kernel image, booted by OVMF with no -kernel.

Every image here is built through the CLI, as a user would.  The three store
layouts boot at once (one fleet, so the TCG cost is paid in parallel) and
each guest must print the exact toplevel its artifact promises.  The disk
layout is inspected with tools that share nothing with the writer: sfdisk
reads the table, mtools the ESP, objcopy the UKI's sections, debugfs the
root file system.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from clirun import nixslave

from nixslave import boot
from nixslave.backends import Artifact
from nixslave.runtime.launch import GuestResult
from nixslave.spec import MachineSpec

pytestmark = [pytest.mark.nix,
              pytest.mark.tools("objcopy", "objdump", "mkfs.vfat", "mcopy", "sfdisk",
                                "debugfs")]

ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # gdisk's EF00
# name -> (layout, format, the demo init's line for /nix/store)
LAYOUTS = {
    "uefi-disk": ("disk", "raw", "rootfs"),
    "uefi-store": ("store-disk", "qcow2", "ext4 /dev/disk/by-label/nixslave-store"),
    "uefi-shared": ("shared", "qcow2", "9p nixstore"),
}


def _build(out: Path, *args: str) -> Artifact:
    proc = nixslave("image", "build", "--demo", "--boot", "uefi", "--json", "-o", str(out),
                    *args)
    assert proc.returncode == 0, proc.stderr
    return Artifact.load(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("uefi")
    # the one boot of an ext4 store disk (the default is erofs)
    return {name: _build(out / f"{name}.{fmt}", "--layout", layout, "--format", fmt,
                         "--name", name,
                         *(("--store-fs", "ext4") if layout == "store-disk" else ()))
            for name, (layout, fmt, _) in LAYOUTS.items()}


@pytest.fixture(scope="module")
def booted(built: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[dict[str, GuestResult], Path]:
    from nixslave.runtime.launch import run_artifacts

    rundir = tmp_path_factory.mktemp("run")
    results = run_artifacts(list(built.values()), rundir=rundir, timeout=900)
    return {r.name: r for r in results}, rundir


@pytest.mark.boot
@pytest.mark.tools("qemu-system-x86_64")
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_uefi_disk_boots_its_exact_toplevel_under_ovmf(
        name: str, built: dict[str, Artifact], booted: tuple[dict[str, GuestResult], Path]
        ) -> None:
    """Catches: a UKI without its initrd or with another command line (no
    root=/init=/nixslave.store=: the guest never reaches its marker, or mounts
    the store from the wrong place), a shared layout still refused for uefi,
    and a runner that quietly passes -kernel (which would boot even an
    unbootable disk) or gives guests one shared variable store (one guest's
    boot entries would steer another's firmware)."""
    results, rundir = booted
    r = results[name]
    assert r.booted == built[name].toplevel
    console = (rundir / name / "console.log").read_text(errors="replace")
    assert f"NIXSLAVE-STORE {LAYOUTS[name][2]}" in console
    # the firmware, not qemu, loaded the kernel: OVMF's boot manager and the stub spoke
    assert "BdsDxe: starting" in console and "EFI stub:" in console
    argv = json.loads((rundir / name / "qemu.argv").read_text())
    assert "-kernel" not in argv and "-initrd" not in argv
    pflash = [a for a in argv if a.startswith("if=pflash")]
    assert len(pflash) == 2 and "readonly=on" in pflash[0] and "/usr/share/OVMF/" in pflash[0]
    store = Path(pflash[1].split("file=", 1)[1]).resolve()
    assert store.parent == (rundir / name).resolve(), "each VM needs its own variable store"
    assert store.is_file() and "readonly" not in pflash[1]


def test_uefi_disk_has_an_esp_with_the_uki_and_the_root_at_its_partition(
        built: dict[str, Artifact], tmp_path: Path) -> None:
    """Catches: an ESP of the wrong partition type (real firmware and
    VirtualBox ignore it), the UKI not at the removable-media path, a .cmdline
    that differs from the direct boot's (a trailing newline, a stale
    toplevel, the wrong store kind), .linux/.initrd swapped or truncated, and
    a root file system written at another offset than its partition."""
    art = built["uefi-disk"]
    table = json.loads(subprocess.run(["sfdisk", "--json", str(art.image)],
                                      capture_output=True, text=True, check=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "gpt" and len(parts) == 2
    esp, rootp = parts
    assert esp["type"].upper() == ESP_GUID
    assert rootp["start"] >= esp["start"] + esp["size"]
    sector = table["partitiontable"].get("sectorsize", 512)

    # the root partition holds ext4 labelled nixslave-root, with the system link
    root_fs = f"{art.image}?offset={rootp['start'] * sector}"
    stats = subprocess.run(["debugfs", "-R", "stat /nix/var/nix/profiles/system", root_fs],
                           capture_output=True, text=True)
    assert stats.returncode == 0 and "Type: symlink" in stats.stdout, stats.stderr
    label = subprocess.run(["dumpe2fs", "-h", root_fs], capture_output=True, text=True)
    assert "Filesystem volume name:   nixslave-root" in label.stdout

    uki = tmp_path / "BOOTX64.EFI"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mcopy", "-i", f"{art.image}@@{esp['start'] * sector}",
                    "::/EFI/BOOT/BOOTX64.EFI", str(uki)], check=True, env=env)

    def section(name: str) -> bytes:
        dump = tmp_path / name.strip(".")
        subprocess.run(["objcopy", "-O", "binary", f"--only-section={name}", str(uki),
                        str(dump)], check=True)
        return dump.read_bytes()

    spec = MachineSpec.parse({"name": "uefi-disk", "demo": True, "boot": "uefi"})
    expected = boot.cmdline(art.toplevel, spec)
    # PE pads a section to the file alignment with zeros; the stub stops at NUL.
    assert section(".cmdline").rstrip(b"\0").decode() == expected
    assert expected == art.cmdline and f"init={art.toplevel}/init" in expected
    top = Path(art.toplevel)
    for name, path in ((".linux", top / "kernel"), (".initrd", top / "initrd")):
        data, want = section(name), path.read_bytes()
        assert data[:len(want)] == want and not data[len(want):].strip(b"\0"), name
    assert art.extra["uki"] == "EFI/BOOT/BOOTX64.EFI" and art.boot == "uefi"


def test_uefi_build_is_reproducible(built: dict[str, Artifact], tmp_path: Path) -> None:
    """Catches: objcopy's build-time PE time stamp left in the UKI, a random
    FAT volume id or mtools' clock on the ESP, and random GPT disk and
    partition GUIDs: any of them makes two builds of one input differ."""
    args = ("--layout", "store-disk", "--store-fs", "ext4", "--name", "uefi-store")
    first = _build(tmp_path / "a.qcow2", *args)
    # seconds apart, so every clock-derived field would change
    second = _build(tmp_path / "b.qcow2", *args)
    assert first.toplevel == second.toplevel == built["uefi-store"].toplevel
    assert _sha256(first.image) == _sha256(second.image) == _sha256(built["uefi-store"].image)
    assert first.store_image is not None and second.store_image is not None
    assert _sha256(first.store_image) == _sha256(second.store_image)


def test_uefi_disk_is_exactly_the_size_asked_and_refuses_one_without_room_for_the_esp(
        tmp_path: Path) -> None:
    """Catches: the ESP (about 46 MiB for the demo) and the GPT left out of
    the --size arithmetic, so a uefi disk came out larger than asked, or a
    size that holds the root but not the ESP was accepted."""
    art = _build(tmp_path / "sized.raw", "--layout", "store-disk", "--format", "raw",
                 "--size", "128M")
    assert os.path.getsize(art.image) == art.virtual_size == 128 << 20
    small = nixslave("image", "build", "--demo", "--boot", "uefi", "--layout", "store-disk",
                     "--size", "40M", "-o", str(tmp_path / "small.qcow2"))
    assert small.returncode == 2 and "Traceback" not in small.stderr
    error = small.stderr.splitlines()[-1]  # progress lines come before it
    assert "too small" in error and "ESP" in error
    assert not (tmp_path / "small.qcow2").exists()


def test_shared_layout_takes_uefi_but_not_bios(tmp_path: Path) -> None:
    """Catches: the old "shared needs direct boot" rule still applied to uefi,
    whose UKI carries kernel and initrd (the boot test proves it works), or
    lifted for bios too, where no boot test proves it: this task widens the
    rule for uefi only."""
    ok = MachineSpec.parse({"name": "web", "demo": True, "layout": "shared", "boot": "uefi"})
    assert ok.boot == "uefi"
    refused = nixslave("image", "build", "--demo", "--boot", "bios", "--layout", "shared",
                       "-o", str(tmp_path / "x.qcow2"))
    assert refused.returncode == 2 and "shared store layout needs direct boot" in refused.stderr
    assert not (tmp_path / "x.qcow2").exists()


def test_pe_checksum_matches_objcopys(tmp_path: Path) -> None:
    """Catches: a wrong PE checksum after the time stamp is reset (firmware
    that checks it, and sbsign/pesign, would reject the UKI).  objcopy's own
    checksum of a fresh file is the independent oracle."""
    from nixslave.backends import uefi

    if not uefi.STUB.exists():
        pytest.skip("systemd-boot-efi is not installed")
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(12345))  # odd length on purpose
    out = tmp_path / "t.efi"
    subprocess.run(["objcopy", "--add-section", f".cmdline={payload}", "--change-section-vma",
                    ".cmdline=0x40000", str(uefi.STUB), str(out)], check=True)
    dump = subprocess.run(["objdump", "-p", str(out)], capture_output=True, text=True,
                          check=True).stdout
    want = next(int(ln.split()[1], 16) for ln in dump.splitlines() if ln.startswith("CheckSum"))
    data = out.read_bytes()
    _, at = uefi._pe_offsets(data, out)
    assert uefi.pe_checksum(data, at) == want
