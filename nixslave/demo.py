"""Build the demo system: a NixOS-shaped toplevel made from host files.

There is no nixpkgs on the machines nixslave is developed and tested on, so
``nix/demo-system.nix`` assembles a toplevel from the host's kernel, an
initramfs-tools initrd made from the host's modules, and busybox-static.  It
exercises every host-side path (closures, disks, boot, store layouts,
networking) and says plainly that it is not NixOS.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from nixslave import nix
from nixslave.errors import RootError
from nixslave.runtime.accel import host_kernel

DEMO_NIX = nix.DATA_DIR / "demo-system.nix"


def host_boot_files() -> tuple[Path, Path]:
    """Kernel and module directory of the newest host kernel.

    Stage 1 is made from the modules with the host's mkinitramfs, so that
    must be there too.
    """
    kernel = host_kernel()
    if kernel is None:
        raise RootError("no kernel found in /boot", where="demo system",
                        hint="install linux-image-amd64 (scripts/setup.sh does)")
    version = kernel.name.removeprefix("vmlinuz-")
    modules = Path(f"/lib/modules/{version}")
    for path, pkg in ((Path(MKINITRAMFS), "initramfs-tools"), (modules, "linux-image-amd64")):
        if not path.exists():
            raise RootError(f"{path} is missing", where="demo system",
                            hint=f"install {pkg} (scripts/setup.sh does)")
    if not os.access(kernel, os.R_OK):
        raise RootError(f"{kernel} is not readable", where="demo system",
                        hint=f"chmod 0644 {kernel}")
    return kernel, modules


MKINITRAMFS = "/usr/sbin/mkinitramfs"
# The drivers of the machines nixslave starts: virtio, AHCI/IDE and e1000
# for the VirtualBox disk, ext4 for the root.  The store file systems (9p,
# virtiofs, erofs, squashfs) come from demo-system.nix's own cpio, and
# virtio_console is loaded by stage 2, whose loading it is the agent's cue
# (a container cannot load it, so it starts no agent).
STAGE1_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi",
                  "ahci", "ata_piix", "ata_generic", "sd_mod", "e1000", "e1000e",
                  "ext4", "crc32c_generic")
STAGE1_CONF = """MODULES=list
BUSYBOX=y
KEYMAP=n
COMPRESS=zstd
COMPRESSLEVEL=3
DEVICE=
NFSROOT=auto
RUNSIZE=10%
FSTYPE=ext4
"""


def _cache_dir() -> Path:
    if os.geteuid() == 0:
        d = Path("/var/cache/nixslave")
    else:
        d = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nixslave"
    d.mkdir(parents=True, exist_ok=True)
    return d


def stage1_initrd(modules: Path, cache: Path | None = None) -> Path:
    """An initramfs-tools initrd with just :data:`STAGE1_MODULES`, made once per kernel.

    The host's own initrd is MODULES=most, three times the size: unpacking
    it and SYSLINUX reading it from disk were a third of a TCG boot.  It is
    made on the host rather than in a Nix build because mkinitramfs copies
    setuid helpers (ntfs-3g), which Nix's build sandbox forbids even with
    sandboxing off.  ``SOURCE_DATE_EPOCH`` makes it reproducible, so
    concurrent makers write the same bytes and the cache needs no lock.
    """
    version = modules.name
    dep = modules / "modules.dep"
    stamp = f"{dep.stat().st_mtime_ns}" if dep.exists() else ""
    key = hashlib.sha256("\0".join((version, stamp, STAGE1_CONF, *STAGE1_MODULES))
                         .encode()).hexdigest()[:16]
    cached = (cache or _cache_dir()) / f"stage1-{version}-{key}.img"
    if cached.exists():
        return cached
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".stage1-") as tmp:
        conf = Path(tmp) / "conf"
        (conf / "scripts").mkdir(parents=True)
        (conf / "initramfs.conf").write_text(STAGE1_CONF)
        (conf / "modules").write_text("\n".join(STAGE1_MODULES) + "\n")
        out = Path(tmp) / "initrd"
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1", "TMPDIR": tmp,
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        proc = subprocess.run([MKINITRAMFS, "-d", str(conf), "-o", str(out), version],
                              env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RootError(f"mkinitramfs failed: {last}", where="demo system",
                            hint=f"run mkinitramfs -o /tmp/x {version} to see why")
        os.replace(out, cached)
    return cached


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
    kernel, modules = host_boot_files()
    initrd = stage1_initrd(modules)
    argstrs = {
        "name": name,
        "kernelPath": str(kernel.resolve()),
        "initrdPath": str(initrd),
        "modulesPath": str(modules.resolve()),
        "busyboxPath": str(busybox_path()),
        "networkScript": network_script,
    }
    args = {"halt": "true" if halt else "false", "pingPeers": _nix_string_list(peers)}
    out = nix.build(file=DEMO_NIX, argstrs=argstrs, args=args, what="demo system build",
                    offline=True)
    return out[0]
