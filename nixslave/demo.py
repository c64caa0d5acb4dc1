"""Build the demo system: a NixOS-shaped toplevel made from host files.

There is no nixpkgs on the machines nixslave is developed and tested on, so
``nix/demo-system.nix`` assembles a toplevel from the host's kernel,
initramfs-tools initrd and busybox-static.  It exercises every host-side path
(closures, disks, boot, store layouts, networking) and says plainly that it is
not NixOS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from nixslave import nix
from nixslave.errors import RootError
from nixslave.runtime.accel import host_kernel

DEMO_NIX = nix.DATA_DIR / "demo-system.nix"


def host_boot_files() -> tuple[Path, Path, Path]:
    """Kernel, initrd and module directory of the newest host kernel."""
    kernel = host_kernel()
    if kernel is None:
        raise RootError("no kernel found in /boot", where="demo system",
                        hint="install linux-image-amd64 (scripts/setup.sh does)")
    version = kernel.name.removeprefix("vmlinuz-")
    initrd = Path(f"/boot/initrd.img-{version}")
    modules = Path(f"/lib/modules/{version}")
    for path, pkg in ((initrd, "initramfs-tools"), (modules, "linux-image-amd64")):
        if not path.exists():
            raise RootError(f"{path} is missing", where="demo system",
                            hint=f"reinstall {pkg} or run update-initramfs -c -k {version}")
    if not os.access(kernel, os.R_OK):
        raise RootError(f"{kernel} is not readable", where="demo system",
                        hint=f"chmod 0644 {kernel}")
    return kernel, initrd, modules


def busybox_path() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(candidate)
        if p.exists():
            return p.resolve()
    raise RootError("busybox is missing", where="demo system",
                    hint="install busybox-static (scripts/setup.sh does)")


def _nix_string_list(items: Sequence[str]) -> str:
    return "[ " + " ".join(f'"{_nix_escape(i)}"' for i in items) + " ]"


def _nix_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")


def build_demo(
    name: str, *, network_script: str = "", peers: Sequence[str] = (), halt: bool = True,
) -> Path:
    """Build the demo toplevel for machine ``name`` and return its store path."""
    kernel, initrd, modules = host_boot_files()
    argstrs = {
        "name": name,
        "kernelPath": str(kernel.resolve()),
        "initrdPath": str(initrd.resolve()),
        "modulesPath": str(modules.resolve()),
        "busyboxPath": str(busybox_path()),
        "networkScript": network_script,
    }
    args = {"halt": "true" if halt else "false", "pingPeers": _nix_string_list(peers)}
    out = nix.build(file=DEMO_NIX, argstrs=argstrs, args=args, what="demo system build",
                    offline=True)
    return out[0]
