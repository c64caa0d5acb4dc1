"""Every layout and boot mode, proven by a real boot of the built image.

All combinations boot at once (one fleet), so the TCG cost is paid in
parallel; each guest must print the exact toplevel its artifact promises and
mount /nix/store from where its layout says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import images  # tests/images.py
import pytest
from clirun import nixslave

from nixslave.backends import Artifact
from nixslave.backends.disk import DiskOptions
from nixslave.build import build_image
from nixslave.runtime.launch import run_artifacts
from nixslave.spec import MachineSpec

pytestmark = [pytest.mark.boot, pytest.mark.guestfs]

# name -> (layout, boot, share, expected /nix/store mount); the store disks
# are erofs (the default, by label) and squashfs (no label: by drive serial);
# tests/test_uefi.py boots an ext4 one.
MATRIX = {
    "disk-direct": ("disk", "direct", "9p", "rootfs"),
    "disk-bios": ("disk", "bios", "9p", "rootfs"),
    "store-direct": ("store-disk", "direct", "9p", "erofs /dev/disk/by-label/nixslave-store"),
    "store-bios": ("store-disk", "bios", "9p",
                   "squashfs /dev/disk/by-id/virtio-nixslave-store"),
    "shared-9p": ("shared", "direct", "9p", "9p nixstore"),
    "shared-vfs": ("shared", "direct", "virtiofs", "virtiofs nixstore"),
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("matrix")
    built = {}
    for name, (layout, boot, share, _) in MATRIX.items():
        extra = {"store_fs": "squashfs"} if name == "store-bios" else {}
        spec = MachineSpec.parse({"name": name, "demo": True, "layout": layout, "boot": boot,
                                  "share": share, **extra})
        built[name] = build_image(spec, out / f"{name}.qcow2",
                                  DiskOptions(gcroot=False, checksum=True))
    return built


@pytest.fixture(scope="module")
def booted(artifacts: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    rundir = tmp_path_factory.mktemp("run")
    results = run_artifacts(list(artifacts.values()), rundir=rundir, timeout=600)
    consoles = {r.name: Path(r.console_log).read_text(errors="replace") for r in results}
    return {r.name: r for r in results}, consoles


@pytest.mark.parametrize("name", list(MATRIX))
def test_combination_boots_the_exact_toplevel(name: str, artifacts: dict[str, Artifact],
                                              booted) -> None:  # type: ignore[no-untyped-def]
    results, consoles = booted
    assert results[name].booted == artifacts[name].toplevel
    expected_store = MATRIX[name][3]
    assert f"NIXSLAVE-STORE {expected_store}" in consoles[name]
    if expected_store != "rootfs":
        # even a guest that remounts its store read-write cannot write to it
        assert "NIXSLAVE-STORE-WRITABLE no" in consoles[name]


def test_bios_images_boot_without_a_host_kernel(artifacts: dict[str, Artifact]) -> None:
    from nixslave.runtime.run import vm_config

    for name in ("disk-bios", "store-bios"):
        cfg = vm_config(artifacts[name])
        assert cfg.kernel is None and cfg.initrd is None
    assert vm_config(artifacts["disk-direct"]).kernel is not None


def test_bios_build_is_reproducible(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    spec = MachineSpec.parse({"name": "disk-bios", "demo": True, "boot": "bios"})
    again = build_image(spec, tmp_path / "again.qcow2", DiskOptions(gcroot=False, checksum=True))
    assert again.sha256 == artifacts["disk-bios"].sha256


def test_image_holds_its_closure_and_nothing_from_the_host(
        artifacts: dict[str, Artifact]) -> None:
    """Every file of the image, listed through libguestfs."""
    from nixslave.image.inspect import list_files
    from nixslave.nix import closure

    art = artifacts["disk-direct"]
    files = list_files(art.image)
    store = {f.split("/")[3] for f in files if f.startswith("/nix/store/")}
    assert store == {Path(p).name for p in closure(art.toplevel)}
    outside = {f for f in files if not f.startswith("/nix/store/")}
    assert outside == images.ROOT_OUTSIDE_STORE | {"/lost+found"}




def test_inspect_a_built_bios_image(artifacts: dict[str, Artifact]) -> None:
    art = artifacts["store-bios"]
    out = nixslave("image", "inspect", str(art.image), "--store-image", str(art.store_image),
               "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["is_nixos"] and report["is_nixslave"]
    assert report["toplevel"] == art.toplevel
    assert (report["layout"], report["boot"]) == ("store-disk", "bios")
    assert report["partition_table"] == "mbr"
    assert report["closure_count"] == art.extra["closurePaths"]
    assert report["store_complete"] is True and report["extra_paths"] == []
    assert report["generations"] == [] and report["has_nix_db"] is False


def test_inspect_garbage_is_a_clear_answer(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    out = nixslave("image", "inspect", str(junk))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert str(junk) in out.stderr and "no file system found" in out.stderr
