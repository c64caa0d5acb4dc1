"""The demo's stage 1: the small initrd nixslave makes from the host's modules.

Bugs these catch: mkinitramfs run without SOURCE_DATE_EPOCH (two processes
then make different initrds, so one demo machine gets two toplevels), the
module list losing a driver the runner's devices need, virtio_console put
into stage 1 (udev loads it there, stage 2's insmod then fails, and the
guest agent never starts), and a demo built from some other initrd than
the one made here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nixslave import demo

pytestmark = [pytest.mark.nix, pytest.mark.tools("mkinitramfs", "lsinitramfs")]


def _modules_in(initrd: Path) -> set[str]:
    out = subprocess.run(["lsinitramfs", str(initrd)], check=True, capture_output=True,
                         text=True).stdout
    return {Path(line).name.removesuffix(".ko") for line in out.splitlines()
            if line.endswith(".ko")}


def test_stage1_is_reproducible_and_holds_the_runner_drivers(tmp_path: Path) -> None:
    _kernel, modules = demo.host_boot_files()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = demo.stage1_initrd(modules, cache=tmp_path / "a")
    b = demo.stage1_initrd(modules, cache=tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert demo.stage1_initrd(modules, cache=tmp_path / "a") == a  # cached, not remade
    have = _modules_in(a)
    # virtio disk and NIC (qemu), AHCI disk and e1000 (the OVA's disk), ext4 root
    for m in ("virtio_pci", "virtio_blk", "virtio_net", "ahci", "sd_mod", "e1000", "ext4"):
        assert m in have, m
    assert "virtio_console" not in have
    # a third of the host's MODULES=most initrd or less
    host = Path(f"/boot/initrd.img-{modules.name}")
    if host.exists():
        assert a.stat().st_size * 2 < host.stat().st_size


def test_the_demo_boots_that_initrd(demo_root) -> None:  # type: ignore[no-untyped-def]
    _kernel, modules = demo.host_boot_files()
    made = demo.stage1_initrd(modules).read_bytes()
    initrd = Path(os.path.realpath(Path(demo_root.toplevel) / "initrd")).read_bytes()
    assert initrd[:len(made)] == made
    pad = (512 - len(made) % 512) % 512
    assert initrd[len(made):len(made) + pad] == bytes(pad)
    assert initrd[len(made) + pad:len(made) + pad + 6] == b"070701"  # nixslave's cpio
