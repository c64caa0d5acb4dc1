"""The first real capability: a profile-less root booted under qemu.

demo root -> ext4 image made by mkfs.ext4 -d -> direct kernel boot -> the
guest prints the exact toplevel it was started with.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nixslave import boot
from nixslave.errors import RunError
from nixslave.nixos import ROOT_LABEL
from nixslave.root import Root
from nixslave.runtime.run import VM, Drive, VMConfig

pytestmark = pytest.mark.boot


@pytest.fixture(scope="module")
def image(demo_root: Root, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("boot")
    tree = demo_root.prepare(work / "tree")
    img = work / "root.img"
    subprocess.run(["mkfs.ext4", "-q", "-b", "4096", "-L", ROOT_LABEL, "-d", str(tree),
                    str(img), "256M"], check=True)
    return img


def _config(demo_root: Root, image: Path, append: str) -> VMConfig:
    top = Path(demo_root.toplevel)
    return VMConfig(name="demo", memory=512, kernel=top / "kernel", initrd=top / "initrd",
                    append=append, drives=[Drive(image, "raw", snapshot=True)])


def test_direct_boot_reports_the_exact_toplevel(demo_root: Root, image: Path) -> None:
    append = boot.cmdline(demo_root.toplevel, demo_root.spec)
    assert f"init={demo_root.toplevel}/init" in append
    with VM(_config(demo_root, image, append)) as vm:
        booted = vm.wait_boot(timeout=240)
        assert booted == demo_root.toplevel
        # the demo system halts by itself after the boot
        assert vm.proc is not None
        assert vm.proc.wait(timeout=60) == 0
        assert "reboot: Power down" in vm.output()


def test_wrong_init_never_reaches_the_marker(demo_root: Root, image: Path) -> None:
    bogus = demo_root.toplevel[:-4] + "xxxx"
    append = boot.cmdline(demo_root.toplevel, demo_root.spec).replace(
        f"init={demo_root.toplevel}/init", f"init={bogus}/init")
    with VM(_config(demo_root, image, append)) as vm:
        with pytest.raises(RunError, match="qemu exited"):
            vm.wait_boot(timeout=240)
        assert "NIXSLAVE-BOOT-OK" not in vm.output()
        assert f"{bogus}/init" in vm.output()
