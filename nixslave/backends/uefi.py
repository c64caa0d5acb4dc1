"""Self-booting UEFI disks: a GPT, an ESP with one unified kernel image, the root.

The firmware needs no boot loader: ``\\EFI\\BOOT\\BOOTX64.EFI`` on the ESP is
systemd's EFI stub with the toplevel's kernel, initrd and command line added
as PE sections (a unified kernel image, UKI), and OVMF starts that file by
itself from the removable-media path.  Everything is made on the host, in the
raw file, without a VM or libguestfs:

* the UKI by ``objcopy`` (Debian 12 has no ukify), with the sections placed
  one after another behind the stub's own, then the PE time stamp that
  objcopy stamps in (it ignores SOURCE_DATE_EPOCH) reset and the PE checksum
  recomputed;
* the ESP by ``mkfs.vfat --offset`` at 1 MiB and ``mmd``/``mcopy`` at that
  offset (``-i disk.raw@@1048576``), with a volume id derived from the
  machine and mtools' clock fixed through SOURCE_DATE_EPOCH;
* the root file system by ``mkfs.ext4 -d`` at its partition offset, exactly
  as for a BIOS disk (the caller does that, see ``disk.py``);
* the GPT last, by ``sfdisk`` with a disk GUID and partition GUIDs derived
  from the toplevel and the machine name, so that no earlier step can touch
  the table and the same inputs give the same bytes.

The UKI's kernel and initrd are the toplevel's own, so every store layout
works: stage 1 mounts the store from the root file system, the store disk or
the 9p/virtiofs share exactly as in a direct boot, and the guest needs no
ESP mount (nixslave.nixos adds no /boot file system).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nixslave import boot
from nixslave.backends.ext4 import MIB, derived_uuid, round_up
from nixslave.errors import BuildError, ToolError
from nixslave.root import Root

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
UKI_PATH = "EFI/BOOT/BOOTX64.EFI"  # the removable-media path x86-64 firmware boots
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"    # gdisk EF00
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # gdisk 8300: root is found by label
ESP_LABEL = "NIXSLAVE"  # FAT labels hold 11 characters
ESP_OFFSET = MIB
SECTOR = 512
# FAT32 needs 65525 clusters; at one 512-byte sector per cluster that is
# 32 MiB and some, so no ESP is smaller than this.
ESP_MIN = 40 * MIB
GPT_TAIL = MIB  # the backup GPT (33 sectors), kept 1 MiB-aligned
PAGE = 4096
# 1980-01-01 00:00:00 UTC: the first instant FAT can store.  Earlier epochs
# wrap around in mtools (1970 comes out as 2098).
FAT_EPOCH = "315532800"


@dataclass(frozen=True)
class Geometry:
    """Where the ESP and the root file system sit in the disk, in bytes."""

    esp_size: int
    fs_size: int

    @property
    def root_offset(self) -> int:
        return ESP_OFFSET + self.esp_size

    @property
    def total(self) -> int:
        return self.root_offset + self.fs_size + GPT_TAIL


def _payload(toplevel: str) -> int:
    top = Path(toplevel)
    try:
        return (os.path.getsize(top / "kernel") + os.path.getsize(top / "initrd")
                + os.path.getsize(STUB))
    except FileNotFoundError as exc:
        raise BuildError(f"{exc.filename} is missing", where=toplevel,
                         hint="a toplevel has kernel and initrd; for the stub "
                              "apt-get install systemd-boot-efi") from None


def esp_size(toplevel: str) -> int:
    """An ESP that holds two UKIs with room for FAT's tables.

    Computed from the input sizes before anything is built, so that --size
    can be checked up front; the UKI is a few pages larger than its parts.
    Room for a second one lets an offline upgrade write the new UKI beside
    the old and switch with a rename (see nixslave.image.upgrade); the
    unused half costs no bytes in a qcow2 or a sparse raw file.
    """
    need = 2 * (_payload(toplevel) + 64 * 1024)
    return max(ESP_MIN, round_up(need + need // 32 + 2 * MIB, MIB))


def overhead(toplevel: str) -> int:
    """Bytes of a UEFI disk that are not the root file system."""
    return ESP_OFFSET + esp_size(toplevel) + GPT_TAIL


def check_tools() -> None:
    """Refuse early, with the Debian package to install, before any copying."""
    if not STUB.exists():
        raise ToolError(f"{STUB} is missing", where="uefi boot",
                        hint="apt-get install systemd-boot-efi")
    for tool, pkg in (("objcopy", "binutils"), ("mkfs.vfat", "dosfstools"),
                      ("mcopy", "mtools"), ("mmd", "mtools"), ("sfdisk", "fdisk")):
        if shutil.which(tool) is None:
            raise ToolError(f"{tool} is not installed", where="uefi boot",
                            hint=f"apt-get install {pkg}")


def _run(cmd: list[str], what: str, where: Path, env: dict[str, str] | None = None,
         stdin: str | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, input=stdin)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split())[-300:] or f"exit code {proc.returncode}"
        raise BuildError(f"{what} failed: {msg}", where=str(where),
                         hint=f"rerun with --debug; the command was {cmd[0]}")


# -- the unified kernel image ---------------------------------------------------

def os_release(toplevel: str) -> bytes:
    """The .osrel section: the system's own os-release, else a minimal one.

    systemd-stub only shows it (and systemd-boot would list it by it); a
    toplevel without one still boots.
    """
    path = Path(toplevel) / "etc/os-release"
    if path.is_file():
        return path.read_bytes()
    return f'NAME=NixOS\nID=nixos\nPRETTY_NAME="NixOS {Path(toplevel).name}"\n'.encode()


def _stub_end(stub: Path) -> int:
    """The first address after the stub's own sections (objdump -h)."""
    proc = subprocess.run(["objdump", "-h", str(stub)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"objdump cannot read {stub}: {proc.stderr.strip()[-200:]}",
                         where=str(stub), hint="reinstall systemd-boot-efi")
    end = 0
    for line in proc.stdout.splitlines():
        f = line.split()
        if len(f) >= 4 and f[0].isdigit():
            end = max(end, int(f[2], 16) + int(f[3], 16))
    if not end:
        raise BuildError("the EFI stub has no sections", where=str(stub),
                         hint="reinstall systemd-boot-efi")
    return end


def build_uki(root: Root, out: Path, work: Path) -> str:
    """Write the UKI for ``root`` to ``out``; returns its command line.

    The sections go behind the stub's own, each page-aligned, instead of at
    the fixed addresses of old examples (.linux at 0x2000000, .initrd at
    0x3000000): those overlap as soon as a kernel is larger than 16 MiB.
    """
    spec = root.spec
    top = Path(root.toplevel)
    cmdline = boot.cmdline(root.toplevel, spec)
    (work / "osrel").write_bytes(os_release(root.toplevel))
    # No trailing newline or NUL: the stub passes the section as it is.
    (work / "cmdline").write_text(cmdline)
    sections = [(".osrel", work / "osrel"), (".cmdline", work / "cmdline"),
                (".linux", Path(os.path.realpath(top / "kernel"))),
                (".initrd", Path(os.path.realpath(top / "initrd")))]
    addr = round_up(_stub_end(STUB), PAGE)
    cmd = ["objcopy"]
    for name, path in sections:
        cmd += ["--add-section", f"{name}={path}",
                "--change-section-vma", f"{name}=0x{addr:x}",
                "--set-section-flags", f"{name}=contents,alloc,load,readonly,data"]
        addr = round_up(addr + os.path.getsize(path), PAGE)
    _run([*cmd, str(STUB), str(out)], "objcopy (unified kernel image)", out)
    _fix_pe_header(out, timestamp=_pe_timestamp(STUB))
    return cmdline


def _pe_offsets(data: bytes | bytearray, where: Path) -> tuple[int, int]:
    """Offsets of the COFF time stamp and the optional header's CheckSum."""
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[:2] != b"MZ" or data[pe:pe + 4] != b"PE\0\0":
        raise BuildError("not a PE image", where=str(where),
                         hint="reinstall systemd-boot-efi and binutils")
    return pe + 8, pe + 24 + 64


def _pe_timestamp(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(4096)
    ts, _ = _pe_offsets(head, path)
    return int(struct.unpack_from("<I", head, ts)[0])


def pe_checksum(data: bytes | bytearray, checksum_at: int) -> int:
    """The PE image checksum, as objcopy and the Windows loader compute it.

    It is the one's-complement style sum of all 16-bit words (the checksum
    field counted as zero) plus the file length.  Summing with end-around
    carry is the same as the value mod 0xffff, and the little-endian integer
    of the whole file is congruent to the sum of its words mod 0xffff
    (65536 = 1 mod 65535), so one big-integer remainder replaces 20 million
    Python additions.
    """
    buf = bytearray(data)
    buf[checksum_at:checksum_at + 4] = bytes(4)
    s = int.from_bytes(buf, "little") % 0xFFFF
    if s == 0 and any(buf):
        s = 0xFFFF
    return (s + len(data)) & 0xFFFFFFFF


def _fix_pe_header(path: Path, *, timestamp: int) -> None:
    """Reset objcopy's build-time stamp; recompute the checksum it covers."""
    data = bytearray(path.read_bytes())
    ts, cs = _pe_offsets(data, path)
    struct.pack_into("<I", data, ts, timestamp)
    struct.pack_into("<I", data, cs, pe_checksum(data, cs))
    path.write_bytes(data)


# -- the ESP and the partition table ----------------------------------------------

def _fat_env() -> dict[str, str]:
    env = dict(os.environ)
    # mtools stamps directories and copies with SOURCE_DATE_EPOCH, in local
    # time: fix both.  Skip its geometry check (an image, not a floppy) and
    # any user configuration.
    env.update(SOURCE_DATE_EPOCH=FAT_EPOCH, TZ="UTC0", MTOOLS_SKIP_CHECK="1",
               MTOOLSRC="/dev/null")
    return env


def write_esp(raw: Path, geo: Geometry, uki: Path, *, volume_id: str) -> None:
    """A FAT32 ESP at 1 MiB of ``raw`` holding only the UKI."""
    env = _fat_env()
    first = ESP_OFFSET // SECTOR
    # --invariant fixes the label's time stamp; it also sets a constant volume
    # id, so -i must come after it to win.
    _run(["mkfs.vfat", "-F", "32", "-S", str(SECTOR), "-s", "1", "-n", ESP_LABEL,
          "--invariant", "-i", volume_id, "-h", str(first), f"--offset={first}",
          str(raw), str(geo.esp_size // 1024)], "mkfs.vfat (ESP)", raw, env)
    target = f"{raw}@@{ESP_OFFSET}"
    parts = UKI_PATH.split("/")
    dirs = ["::/" + "/".join(parts[:i]) for i in range(1, len(parts))]
    _run(["mmd", "-i", target, *dirs], "mmd (ESP)", raw, env)
    _run(["mcopy", "-i", target, str(uki), "::/" + UKI_PATH], "mcopy (ESP)", raw, env)


def partition(raw: Path, geo: Geometry, *, ids: dict[str, str]) -> None:
    """GPT with the ESP and the root partition; GUIDs from ``ids``.

    Written last, and told never to wipe: the file systems are already in
    place and sfdisk only writes the two tables.
    """
    s = SECTOR
    script = (
        "label: gpt\n"
        f"label-id: {ids['disk']}\n"
        "unit: sectors\n"
        f"start={ESP_OFFSET // s}, size={geo.esp_size // s}, type={ESP_TYPE}, "
        f"uuid={ids['esp']}, name=\"EFI System Partition\"\n"
        f"start={geo.root_offset // s}, size={geo.fs_size // s}, type={LINUX_TYPE}, "
        f"uuid={ids['root']}, name=\"nixslave-root\"\n")
    _run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", "--wipe", "never",
          "--wipe-partitions", "never", str(raw)], "sfdisk (GPT)", raw, stdin=script)


def ids_for(root: Root) -> dict[str, str]:
    """Every identifier of the disk, derived like the file-system UUIDs."""
    top, name = root.toplevel, root.spec.name
    return {k: derived_uuid(top, name, f"gpt-{k}") for k in ("disk", "esp", "root")}


def volume_id(root: Root) -> str:
    """The FAT serial (8 hex digits), derived from the toplevel and the name."""
    return derived_uuid(root.toplevel, root.spec.name, "esp").replace("-", "")[:8]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def make_disk(raw: Path, root: Root, geo: Geometry, work: Path) -> dict[str, object]:
    """ESP with the UKI, then the GPT, around a root file system already in ``raw``.

    Returns what the sidecar records about the boot.
    """
    uki = work / "BOOTX64.EFI"
    build_uki(root, uki, work)
    if os.path.getsize(uki) + 2 * MIB > geo.esp_size:
        raise BuildError("the unified kernel image does not fit the ESP", where=str(raw),
                         hint="this is a bug in nixslave's ESP sizing; please report it")
    ids = ids_for(root)
    write_esp(raw, geo, uki, volume_id=volume_id(root))
    partition(raw, geo, ids=ids)
    return {"uki": UKI_PATH,
            "uefi": {"ukiSize": os.path.getsize(uki), "ukiSha256": _sha256(uki),
                     "espOffset": ESP_OFFSET, "espSize": geo.esp_size,
                     "rootOffset": geo.root_offset, "diskGuid": ids["disk"],
                     "stub": str(STUB)}}
