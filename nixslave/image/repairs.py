"""The repair's checks outside the store: state files, fstab, boot loader, UKI.

Split from :mod:`nixslave.image.repair` so that each check reads on its own.
Each one looks first and writes only what it found wrong, and records a
finding that says what it did, so a clean image gets an empty report and
no write at all.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nixslave import boot
from nixslave.errors import NixslaveError
from nixslave.image.session import ESP, Session
from nixslave.nixos import ROOT_LABEL, store_kind
from nixslave.spec import MachineSpec

if TYPE_CHECKING:
    from nixslave.image.repair import RepairReport
    from nixslave.image.target import Target

MBR_BIN = Path("/usr/lib/EXTLINUX/mbr.bin")
# Directories whose whole content is runtime state: /run and /var/lock are
# tmpfs in a booted NixOS, so anything on disk beneath them is stale, and
# temproots belong to Nix processes that no longer exist.
STALE_DIRS = ("run", "var/lock", "nix/var/nix/temproots")
STALE_FILES = ("nix/var/nix/gc.lock", "etc/.pwd.lock", "var/lib/nixos/.lock")


def state_checks(s: Session, report: RepairReport) -> None:
    """Stale lock and pid files, and an /etc/fstab NixOS would not have written."""
    g = s.g
    for d in STALE_DIRS:
        path = s.p(d)
        if g.is_dir(path) and not g.is_symlink(path):
            names = g.ls(path)
            for n in names:
                g.rm_rf(f"{path}/{n}")
            if names:
                report.add("stale state", f"/{d} holds {len(names)} stale entries "
                           f"({', '.join(names[:3])})", "removed")
    for f in STALE_FILES:
        if g.is_file(s.p(f)):
            g.rm(s.p(f))
            report.add("stale state", f"/{f} is a stale lock", "removed")
    _fstab(s, report)


def _fstab(s: Session, report: RepairReport) -> None:
    """NixOS links /etc/fstab to /etc/static; a plain file naming another root is stale.

    The activation script would not replace a plain file it did not create
    (nixpkgs nixos/modules/system/etc/setup-etc.pl), so a leftover that
    names a root device the image does not have would stay in the way.
    """
    path = s.p("etc/fstab")
    if not s.g.is_file(path) or s.g.is_symlink(path):
        return
    text = str(s.g.cat(path))
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] == "/":
            if fields[0] != f"LABEL={ROOT_LABEL}":
                s.g.rename(path, s.p("etc/fstab.nixslave-bak"))
                report.add("fstab", f"/etc/fstab mounts / from {fields[0]}, not "
                           f"LABEL={ROOT_LABEL}", "moved to /etc/fstab.nixslave-bak")
            return


def boot_checks(s: Session, t: Target, manifest: dict[str, Any],
                report: RepairReport) -> None:
    """The boot loader of a self-booting image matches the manifest's system."""
    bootmode = manifest.get("boot", "direct")
    try:
        spec = MachineSpec.parse(manifest["spec"]) if manifest.get("spec") else None
    except NixslaveError:
        spec = None
    if spec is None:
        spec = MachineSpec.parse({"name": manifest.get("name") or "nixslave",
                                  "toplevel": manifest["toplevel"],
                                  "layout": manifest.get("layout", "disk"), "boot": bootmode})
    if bootmode == "bios":
        _extlinux(s, spec, manifest["toplevel"], report)
    elif bootmode == "uefi":
        _uki(s, t, spec, manifest["toplevel"], report)


def _extlinux(s: Session, spec: MachineSpec, toplevel: str, report: RepairReport) -> None:
    g = s.g
    top = Path(toplevel)
    kernel, initrd = os.path.realpath(top / "kernel"), os.path.realpath(top / "initrd")
    if store_kind(spec) != "disk":
        kernel, initrd = _boot_copies(s, kernel, initrd, report)
    conf = boot.extlinux_conf(toplevel, spec, kernel=kernel, initrd=initrd)
    path = s.p("boot/extlinux/extlinux.conf")
    have = str(g.cat(path)) if g.is_file(path) else None
    if have != conf:
        g.mkdir_p(s.p("boot/extlinux"))
        s.write_file(path, conf.encode())
        report.add("boot loader", "extlinux.conf is missing" if have is None
                   else "extlinux.conf does not boot the manifest's system",
                   "rewritten for " + toplevel)
    if not g.is_file(s.p("boot/extlinux/ldlinux.sys")):
        g.extlinux(s.p("boot/extlinux"))
        report.add("boot loader", "extlinux (ldlinux.sys) is missing", "installed extlinux")
    mbr = MBR_BIN.read_bytes()[:440] if MBR_BIN.exists() else b""
    if mbr and bytes(g.pread_device(s.disk, 440, 0)) != mbr:
        g.pwrite_device(s.disk, mbr, 0)
        report.add("boot loader", "the MBR holds no SYSLINUX boot code",
                   "wrote SYSLINUX's MBR code (the partition table is kept)")
    if s.parttable == "mbr":
        part = g.part_to_partnum(s.root[0])
        if not g.part_get_bootable(s.disk, part):
            g.part_set_bootable(s.disk, part, True)
            report.add("boot loader", "the root partition is not marked bootable",
                       "marked bootable")


def _boot_copies(s: Session, kernel: str, initrd: str,
                 report: RepairReport) -> tuple[str, str]:
    """Kernel and initrd copied to /boot (store-disk and shared bios images).

    The names the current extlinux.conf uses are kept when their files are
    intact, since an upgrade names them after their store path.
    """
    out = []
    for f, fallback in ((kernel, "/boot/kernel"), (initrd, "/boot/initrd")):
        want = _sha256(Path(f))
        named = f"/boot/{Path(f).parent.name[:32]}-{Path(f).name}"
        for cand in (named, fallback):
            if s.g.is_file(s.p(cand)) and s.g.checksum("sha256", s.p(cand)) == want:
                out.append(cand)
                break
        else:
            s.write_file(s.p(named), Path(f).read_bytes())
            report.add("boot loader", f"{Path(f).name} in /boot is missing or damaged",
                       f"copied to {named}")
            out.append(named)
    return out[0], out[1]


def _uki(s: Session, t: Target, spec: MachineSpec, toplevel: str,
         report: RepairReport) -> None:
    from nixslave.backends import uefi
    from nixslave.root import Root

    if s.esp is None:
        report.add("boot loader", "the uefi image has no EFI system partition", "none",
                   fixed=False)
        return
    work = s.scratch / "uki"
    work.mkdir(exist_ok=True)
    uki = work / "BOOTX64.EFI"
    uefi.build_uki(Root(spec=spec, toplevel=toplevel, closure=[]), uki, work)
    path = f"{ESP}/{uefi.UKI_PATH}"
    have = s.g.checksum("sha256", path) if s.g.is_file(path) else None
    if have != _sha256(uki):
        s.g.mkdir_p(os.path.dirname(path))
        s.write_file(path, uki.read_bytes(), mode=0o755)
        report.add("boot loader", "the unified kernel image is missing" if have is None
                   else "the unified kernel image does not boot the manifest's system",
                   "wrote a new one")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
