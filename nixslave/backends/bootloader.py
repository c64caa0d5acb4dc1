"""The one step of a self-booting disk that needs libguestfs: extlinux.

The partition table is written on the host (sfdisk on the file, with a disk
identifier derived from the machine), the file system is made at the
partition offset by mkfs.ext4 -d, and only ``extlinux --install`` runs inside
the appliance, because it needs the kernel's view of a mounted file system to
record where ldlinux.sys lives.  The journal is added afterwards on the host,
so the appliance's mount leaves no journal transactions (with timestamps)
behind.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from nixslave.appliance import guestfs_handle
from nixslave.backends.ext4 import _e2_target, holes, normalize_inode_times, repro_env
from nixslave.errors import BuildError, ToolError

MBR_BIN = Path("/usr/lib/EXTLINUX/mbr.bin")
ZERO_CHUNK = 1 << 20  # below the appliance protocol's message limit


def partition(raw: Path, *, disk_id: str) -> None:
    """One bootable Linux partition from 1 MiB to the end, MBR label."""
    label_id = "0x" + disk_id.replace("-", "")[:8]
    script = f"label: dos\nlabel-id: {label_id}\nstart=2048, type=83, bootable\n"
    proc = subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(raw)],
                          input=script, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"sfdisk failed: {proc.stderr.strip()}", where=str(raw),
                         hint="apt-get install fdisk")


def install_extlinux(raw: Path, *, offset: int, dense: tuple[str, ...] = ()) -> None:
    """extlinux into /boot/extlinux of partition 1, and SYSLINUX's MBR code.

    ``dense`` names the files SYSLINUX loads (kernel, initrd).  mkfs.ext4 -d
    turns zero blocks into holes and SYSLINUX reads a hole as an I/O error,
    so the holes are filled with written zeros first: in place, so that no
    inode is freed and reused (which would depend on timing), and with
    delayed allocation off, so that blocks are allocated in write order.
    """
    if not MBR_BIN.exists():
        raise ToolError(f"{MBR_BIN} is missing", where="extlinux",
                        hint="apt-get install extlinux syslinux-common")
    mbr = MBR_BIN.read_bytes()[:440]
    fill = {path: holes(raw, path, offset) for path in dense}
    try:
        with guestfs_handle(tmpdir=raw.parent) as g:
            g.add_drive_opts(str(raw), format="raw", readonly=False)
            g.launch()
            if not g.feature_available(["extlinux"]):
                raise ToolError("this libguestfs appliance has no extlinux", where="extlinux",
                                hint="apt-get install extlinux, then rebuild the appliance")
            g.mount_options("noatime,nodelalloc", "/dev/sda1", "/")
            for path, ranges in fill.items():
                for start, length in ranges:
                    pos, end = start, start + length
                    while pos < end:  # pwrite may write less than asked
                        pos += g.pwrite(path, b"\0" * min(ZERO_CHUNK, end - pos), pos)
            g.extlinux("/boot/extlinux")
            g.umount_all()
            g.pwrite_device("/dev/sda", mbr, 0)
            g.sync()
    except RuntimeError as exc:
        raise BuildError(f"libguestfs could not install extlinux: {exc}", where=str(raw),
                         hint="run `nixslave doctor` to check the appliance") from None
    normalize_inode_times(raw, offset, after_mount=True)


def add_journal(raw: Path, *, offset: int) -> None:
    proc = subprocess.run(["tune2fs", "-O", "has_journal", _e2_target(raw, offset)],
                          capture_output=True, text=True, env=repro_env())
    if proc.returncode != 0:
        raise BuildError(f"tune2fs failed: {proc.stderr.strip()}", where=str(raw),
                         hint="check the image with e2fsck")
