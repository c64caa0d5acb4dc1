"""The host side of booting: kernel command line and boot loader entry.

Both are generated from the toplevel and the spec with the same labels the
guest module uses (nixslave.nixos), so the host can never point the guest at
a root or store it would not find.  The one command line serves every boot
mode: qemu's -append (direct), the extlinux entry (bios) and the .cmdline
section of the unified kernel image (uefi, see nixslave.backends.uefi).
"""

from __future__ import annotations

from pathlib import Path

from nixslave.nixos import ROOT_LABEL, store_kind
from nixslave.spec import MachineSpec


def kernel_params(toplevel: str | Path, *, store_root: Path | None = None) -> list[str]:
    """The toplevel's own kernel-params (read from ``store_root`` when given)."""
    base = Path(store_root) / str(toplevel).lstrip("/") if store_root else Path(toplevel)
    try:
        return (base / "kernel-params").read_text().split()
    except FileNotFoundError:
        return []


def cmdline(toplevel: str | Path, spec: MachineSpec, *, store_root: Path | None = None) -> str:
    """root=, init= and the store layout, followed by the system's own params."""
    params = [f"root=LABEL={ROOT_LABEL}", "rw", f"init={toplevel}/init",
              f"nixslave.store={store_kind(spec)}"]
    if store_kind(spec) == "store-disk":
        # The demo's stage 1 mounts with this type; NixOS reads its fstab.
        params.append(f"nixslave.storefs={spec.store_fs_resolved}")
    own = kernel_params(toplevel, store_root=store_root)
    if not any(p.startswith("console=") for p in own):
        own.insert(0, "console=ttyS0,115200")
    return " ".join(params + own)


def extlinux_conf(toplevel: str, spec: MachineSpec, *, kernel: str, initrd: str,
                  store_root: Path | None = None) -> str:
    """The single entry of a self-booting disk; there is nothing to choose."""
    return (
        "SERIAL 0 115200\n"
        "DEFAULT nixslave\n"
        "TIMEOUT 1\n"
        "PROMPT 0\n"
        f"LABEL nixslave\n"
        f"  MENU LABEL NixOS {Path(toplevel).name} ({spec.name})\n"
        f"  LINUX {kernel}\n"
        f"  INITRD {initrd}\n"
        f"  APPEND {cmdline(toplevel, spec, store_root=store_root)}\n"
    )
