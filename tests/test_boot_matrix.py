"""Every layout and boot mode, proven by a real boot of the built image.

All combinations boot at once (one fleet), so the TCG cost is paid in
parallel; each guest must print the exact toplevel its artifact promises and
mount /nix/store from where its layout says.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nixslave.backends import Artifact
from nixslave.backends.disk import DiskOptions
from nixslave.build import build_image
from nixslave.launch import run_artifacts
from nixslave.spec import MachineSpec

pytestmark = [pytest.mark.boot, pytest.mark.guestfs]

# name -> (layout, boot, share, expected /nix/store mount)
MATRIX = {
    "disk-direct": ("disk", "direct", "9p", "rootfs"),
    "disk-bios": ("disk", "bios", "9p", "rootfs"),
    "store-direct": ("store-disk", "direct", "9p", "ext4 /dev/disk/by-label/nixslave-store"),
    "store-bios": ("store-disk", "bios", "9p", "ext4 /dev/disk/by-label/nixslave-store"),
    "shared-9p": ("shared", "direct", "9p", "9p nixstore"),
    "shared-vfs": ("shared", "direct", "virtiofs", "virtiofs nixstore"),
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    out = tmp_path_factory.mktemp("matrix")
    built = {}
    for name, (layout, boot, share, _) in MATRIX.items():
        spec = MachineSpec.parse({"name": name, "demo": True, "layout": layout, "boot": boot,
                                  "share": share})
        built[name] = build_image(spec, out / f"{name}.qcow2", DiskOptions(gcroot=False))
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


def test_bios_images_boot_without_a_host_kernel(artifacts: dict[str, Artifact]) -> None:
    from nixslave.run import vm_config

    for name in ("disk-bios", "store-bios"):
        cfg = vm_config(artifacts[name])
        assert cfg.kernel is None and cfg.initrd is None
    assert vm_config(artifacts["disk-direct"]).kernel is not None


def test_bios_build_is_reproducible(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    spec = MachineSpec.parse({"name": "disk-bios", "demo": True, "boot": "bios"})
    again = build_image(spec, tmp_path / "again.qcow2", DiskOptions(gcroot=False))
    assert again.sha256 == artifacts["disk-bios"].sha256
