"""Install a nixslave root into a partition of someone else's disk image.

The disk (raw or qcow2) already holds other partitions, perhaps a whole
Debian, so nothing but the chosen partition, and for ``new_partition`` one
new partition-table entry, may change.  The root file system is built on the
host exactly as the disk backend builds it (``mkfs.ext4 -d``, no VM), then
one libguestfs launch reads the partition table, decides, and only then
writes: the disk is made read-only inside the appliance while it is read,
so a refusal provably leaves every byte as it was.

Only ``layout=disk`` with ``boot=direct`` can be installed: the host boots
the installed root directly (``root=LABEL=nixslave-root``), and installing a
boot loader into a disk whose boot sector belongs to someone else is not
nixslave's business.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from nixslave import boot, gcroots, interrupt, nix
from nixslave.appliance import guestfs_handle
from nixslave.backends import Artifact, sidecar_path
from nixslave.backends.disk import DiskBackend
from nixslave.backends.ext4 import MIB, derived_uuid, tree_usage
from nixslave.errors import ImageError
from nixslave.image.target import Target, exclusive, open_target
from nixslave.nixos import ROOT_LABEL
from nixslave.progress import Progress
from nixslave.root import Root, force_rmtree

Peek = Callable[["Part"], "str | None"]
ALIGN = MIB                  # new partitions start and end on a 1 MiB boundary
GPT_ENTRIES = 128 * 128      # bytes of GPT's partition entry array (and its backup)
GPT_MAX_PARTS = 128
MBR_MAX_SECTOR = 2**32 - 1   # the last sector an MBR entry can address
MBR_LINUX = 0x83
MBR_EXTENDED = ("0x5", "0xf", "0x85")  # blkid's PART_ENTRY_TYPE
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
PEEK_BYTES = MIB             # what is read of a partition with no known signature
GROW_HINT = ("grow the disk first: qemu-img resize IMG +{gib}G (nixslave moves a GPT's "
             "backup table to the new end)")


@dataclass
class InstallReport:
    """What was written where, for the CLI's --json and for scripts.

    Example:

        >>> r = nixslave.install_root(Path("disk.raw"), root, new_partition=True)
        >>> print(f"{r.toplevel} in partition {r.partition} ({r.table}) at {r.start}")
    """

    image: str
    format: str
    table: str                   # mbr | gpt
    partition: int
    device: str                  # the partition as libguestfs names it (/dev/sdaN)
    start: int                   # bytes from the start of the disk
    size: int                    # bytes
    toplevel: str
    closure_paths: int
    bytes_written: int           # the root file system copied into the partition
    created: bool                # a new partition was made
    overwritten: bool            # force replaced a file system that held files
    cmdline: str                 # direct boot: the kernel command line
    sidecar: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Part:
    """One partition-table entry, as read inside the appliance."""

    num: int
    start: int                   # bytes
    size: int                    # bytes
    fstype: str                  # blkid's word: ext4, crypto_LUKS, swap, "" for none
    label: str
    extended: bool = False       # an MBR extended container, not a place for data

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Disk:
    device: str
    table: str                   # mbr | gpt
    sector: int                  # bytes per sector
    size: int                    # bytes
    parts: tuple[Part, ...]
    gpt_moved: bool = False      # GPT whose backup table is not at the end (resized)


@dataclass(frozen=True)
class Slot:
    """Where the root goes: an existing partition, or free space for a new one."""

    num: int | None              # None: a partition is to be made
    start: int                   # bytes
    size: int                    # bytes
    overwritten: bool = False


def install(target: Path, root: Root, *, partition: int | None = None,
            new_partition: bool = False, force: bool = False,
            progress: Progress | None = None) -> InstallReport:
    """Install ``root`` into partition ``partition`` of ``target``, or into a new one.

    The other partitions of the disk are left alone: this is how a root goes
    beside an existing system.  ``partition`` names an existing partition
    to overwrite (``force`` is needed when it holds a file system with
    files); ``new_partition`` makes one in the free space instead.  Every
    refusal (no room, an encrypted or foreign partition, a running guest)
    is an :class:`nixslave.ImageError` raised before the first
    write; the sidecar written beside the image lets ``run_artifacts`` boot
    the installed root directly.

    Example:

        >>> import nixslave
        >>> root = nixslave.build_root(nixslave.MachineSpec(name="web-1", demo=True))
        >>> report = nixslave.install_root(Path("disk.raw"), root, new_partition=True)
        >>> report.created
        True
    """
    say = progress or (lambda _m: None)
    check_request(root, partition, new_partition, str(target))
    t = open_target(Path(target), write=True)
    with exclusive(t):
        try:
            scratch = Path(tempfile.mkdtemp(dir=t.image.parent, prefix=".nixslave-install-"))
        except OSError as exc:
            raise ImageError(f"cannot write beside the image: {exc.strerror}", where=t.where,
                             hint="the root file system is built in the image's directory; "
                                  "make it writable") from None
        try:
            fs, need = make_root_fs(root, scratch, say)
            report = _write(t, root, fs, need, partition, force, scratch, say)
        finally:
            force_rmtree(scratch)
        interrupt.check()
        _save_artifact(t, root, report)
        nix.add_gcroot(f"{root.spec.name}-current", root.toplevel)
        gcroots.record_image(root.spec.name, t.given.absolute(), root.toplevel)
    say(f"installed {root.toplevel} into partition {report.partition} of {t.where}")
    return report


def check_request(root: Root, partition: int | None, new_partition: bool, where: str) -> None:
    """Refusals that need no appliance: the arguments and the machine spec."""
    if (partition is None) == (not new_partition):
        raise ImageError("give exactly one of --partition N and --new-partition", where=where,
                         hint="--partition N writes over partition N; --new-partition "
                              "makes one in the free space after the last")
    if partition is not None and partition < 1:
        raise ImageError(f"partition {partition} does not exist (they count from 1)",
                         where=where, hint="list them with virt-filesystems -a IMG --parts")
    spec = root.spec
    if spec.layout != "disk" or spec.boot != "direct":
        raise ImageError(f"only --layout disk --boot direct can be installed into an "
                         f"existing disk (this machine is {spec.layout}, {spec.boot})",
                         where=f"machine {spec.name}",
                         hint="the host boots the installed root directly; a boot loader "
                              "or a store disk inside someone else's disk is out of scope: "
                              "build a whole image with nixslave image build instead")


def make_root_fs(root: Root, scratch: Path, say: Progress) -> tuple[Path, int]:
    """The smallest ext4 that holds the root, built on the host; grown in place later.

    Unlike the disk backend, no pass makes inode times reproducible: the
    appliance's e2fsck and resize2fs stamp the file system anyway.
    """
    backend, spec = DiskBackend(), root.spec
    tree = root.prepare(scratch / "tree", include_store=False, progress=say)
    need = tree_usage(tree, *(Path(p) for p in root.paths)).min_fs_size(journal=True)
    say(f"making the root file system ({need // MIB} MiB, mkfs.ext4 -d)")
    store = tree / "nix/store"
    pre = backend._fill_store(root, store)
    raw = scratch / "root.raw"
    backend._mkfs(root, pre, raw, tree, store, label=ROOT_LABEL, size=need,
                  fs_uuid=derived_uuid(root.toplevel, spec.name, "root"))
    force_rmtree(tree)
    return raw, need


def _write(t: Target, root: Root, fs: Path, need: int, partition: int | None, force: bool,
           scratch: Path, say: Progress) -> InstallReport:
    """The one launch: read and decide with the disk read-only, then write."""
    writing, num = False, None
    say("starting the libguestfs appliance")
    try:
        with guestfs_handle(tmpdir=scratch) as g:
            g.add_drive_opts(str(t.image), format=t.format, readonly=False)
            g.add_drive_opts(str(fs), format="raw", readonly=True)
            g.launch()
            dev, src = g.list_devices()[:2]
            disk = read_disk(g, dev, t.where)
            slot = choose(disk, need, partition=partition, force=force, where=t.where,
                          peek=peeker(g, dev))
            g.blockdev_setrw(dev)
            writing = True
            sidecar_path(t.image).unlink(missing_ok=True)  # never a sidecar for half a root
            num = slot.num if slot.num is not None else _add_partition(g, disk, slot, say)
            part = f"{dev}{num}"
            say(f"copying the root file system into partition {num} ({need // MIB} MiB)")
            g.wipefs(part)  # stale signatures the copy would not reach (an old fs's tail)
            # Not sparse: zero blocks of the new fs (its inode tables) must overwrite
            # whatever the partition held before.
            g.copy_device_to_device(src, part, sparse=False)
            say(f"growing it to the partition ({slot.size // MIB} MiB)")
            g.e2fsck(part, correct=True)  # resize2fs insists on a freshly checked fs
            g.resize2fs(part)
            g.sync()
            if g.vfs_label(part) != ROOT_LABEL:
                raise ImageError(f"partition {num} does not carry {ROOT_LABEL} after the copy",
                                 where=t.where, hint="report this as a bug")
    except RuntimeError as exc:
        state = ("nothing was written" if not writing else
                 f"partition {num} may be half written: rerun with --partition {num} --force"
                 if num is not None else "the partition table may have changed: look with "
                 "virt-filesystems -a IMG --parts before trying again")
        raise ImageError(f"libguestfs failed: {' '.join(str(exc).split())[:300]}",
                         where=t.where, hint=f"{state}; run `nixslave doctor` or "
                                             "libguestfs-test-tool") from None
    return InstallReport(
        image=str(t.given), format=t.format, table=disk.table, partition=num, device=part,
        start=slot.start, size=slot.size, toplevel=root.toplevel,
        closure_paths=len(root.paths), bytes_written=fs.stat().st_size,
        created=slot.num is None, overwritten=slot.overwritten,
        cmdline=boot.cmdline(root.toplevel, root.spec), sidecar=str(sidecar_path(t.image)))


def read_disk(g: Any, dev: str, where: str) -> Disk:
    """Make the disk read-only in the appliance, then read its table and partitions.

    The kernel's read-only flag on the disk covers its partitions, so neither
    a mount (journal replay, mount counts) nor parted (which likes to "fix" a
    GPT) can change a byte until the caller makes it writable again.  One
    blkid per partition gives its file system, label and MBR type at once;
    parted (slow under TCG) is asked once, for the table itself.
    """
    g.blockdev_setro(dev)
    kind = _blkid(g, dev).get("PTTYPE", "")
    if kind not in ("dos", "gpt"):
        raise ImageError("the disk has no partition table (a file system fills it, or it is "
                         "blank)", where=where,
                         hint="install needs a partitioned disk; build a whole image with "
                              "nixslave image build instead")
    table = "mbr" if kind == "dos" else "gpt"
    sector, size = int(g.blockdev_getss(dev)), int(g.blockdev_getsize64(dev))
    parts = []
    for p in sorted(g.part_list(dev), key=lambda p: p["part_num"]):
        num = int(p["part_num"])
        info = _blkid(g, f"{dev}{num}")
        extended = table == "mbr" and info.get("PART_ENTRY_TYPE") in MBR_EXTENDED
        parts.append(Part(num, int(p["part_start"]), int(p["part_size"]),
                          info.get("TYPE", ""), info.get("LABEL", ""), extended))
    moved = False
    if table == "gpt":
        header = bytes(g.pread_device(dev, 512, sector))
        if header[:8] == b"EFI PART":
            alternate = struct.unpack_from("<Q", header, 32)[0]
            moved = alternate != size // sector - 1
    return Disk(dev, table, sector, size, tuple(parts), moved)


def _blkid(g: Any, device: str) -> dict[str, str]:
    """blkid's low-level probe; nothing when it finds nothing (or two signatures)."""
    try:
        return {str(k): str(v) for k, v in g.blkid(device).items()}
    except RuntimeError:
        return {}


def peeker(g: Any, dev: str) -> Peek:
    return lambda part: peek(g, f"{dev}{part.num}")


def peek(g: Any, device: str) -> str | None:
    """What a partition holds, in a few words; None when it holds nothing.

    A file system is mounted read-only (the disk is read-only, so even a dirty
    journal is not replayed) and counts as empty with only an empty
    lost+found.  Bytes with no signature blkid knows are data all the same.
    """
    fstype = _blkid(g, device).get("TYPE", "")
    if not fstype:
        head = bytes(g.pread_device(device, PEEK_BYTES, 0))
        return "data nixslave cannot identify" if head.strip(b"\0") else None
    try:
        g.mount_ro(device, "/")
    except RuntimeError:
        return f"a {fstype} file system that cannot be mounted read-only (unclean?)"
    try:
        found = [n for n in g.ls("/") if n != "lost+found"]
        if g.is_dir("/lost+found") and g.ls("/lost+found"):
            found.append("lost+found/…")
    finally:
        g.umount_all()
    if found:
        shown = ", ".join(sorted(found)[:4]) + (", …" if len(found) > 4 else "")
        return f"files ({shown}) on its {fstype} file system"
    return None


def choose(disk: Disk, need: int, *, partition: int | None, force: bool, where: str,
           peek: Peek) -> Slot:
    """Decide where the root goes, or refuse; reads (``peek``) but never writes."""
    if partition is None:
        _no_clash(disk, None, where)
        return _free_space(disk, need, where)
    part = next((p for p in disk.parts if p.num == partition), None)
    if part is None:
        have = ", ".join(str(p.num) for p in disk.parts) or "none"
        raise ImageError(f"the disk has no partition {partition} (it has: {have})",
                         where=where, hint="pick an existing one, or use --new-partition")
    if part.extended:
        raise ImageError(f"partition {partition} is an extended partition (a container of "
                         "logical partitions)", where=where,
                         hint="pick a primary or logical partition, or use --new-partition")
    if part.fstype == "crypto_LUKS":
        raise ImageError(f"partition {partition} is encrypted (LUKS)", where=where,
                         hint="nixslave does not write over encrypted data; wipe it yourself "
                              "(cryptsetup erase, wipefs -a) if it may go")
    _no_clash(disk, partition, where)
    if part.size < need:
        _short(f"partition {partition} holds {part.size / MIB:.0f} MiB", need, where,
               extra=", then grow the partition (parted resizepart), or use --new-partition")
    held = peek(part)
    if held and not force:
        raise ImageError(f"partition {partition} is not empty: it holds {held}", where=where,
                         hint="add --force to replace everything in it, or pick another "
                              "partition")
    return Slot(partition, part.start, part.size, overwritten=bool(held))


def _no_clash(disk: Disk, mine: int | None, where: str) -> None:
    """One root per disk: the command line finds it by label alone."""
    clash = [p.num for p in disk.parts if p.label == ROOT_LABEL and p.num != mine]
    if clash:
        raise ImageError(f"partition {clash[0]} already carries the label {ROOT_LABEL}; "
                         "the direct-boot command line (root=LABEL=) could not tell two "
                         "apart", where=where,
                         hint=f"reinstall into it with --partition {clash[0]} --force, or "
                              "relabel it (e2label) if it is not a nixslave root")


def _free_space(disk: Disk, need: int, where: str) -> Slot:
    """The aligned free space after the last partition."""
    ss = disk.sector
    total = disk.size // ss
    if disk.table == "mbr":
        if len([p for p in disk.parts if p.num <= 4]) >= 4:
            raise ImageError("the MBR partition table has 4 primary partitions already; it "
                             "holds no 5th", where=where,
                             hint="use --partition N on a free one, or convert the disk to "
                                  "GPT (sgdisk -g) first")
        last = min(total - 1, MBR_MAX_SECTOR)
    else:
        if len(disk.parts) >= GPT_MAX_PARTS:
            raise ImageError(f"the GPT holds {GPT_MAX_PARTS} partitions already",
                             where=where, hint="use --partition N on a free one")
        last = total - 1 - (1 + GPT_ENTRIES // ss)  # the backup header and entries
    align = ALIGN // ss
    used = -(-max((p.end for p in disk.parts), default=0) // ss)
    first = max(align, -(-used // align) * align)
    sectors = max(0, (last - first + 1) // align * align)
    if sectors * ss < need:
        _short(f"the free space after the last partition is {sectors * ss / MIB:.0f} "
               "MiB", need, where)
    return Slot(None, first * ss, sectors * ss)


def _short(what: str, need: int, where: str, extra: str = "") -> NoReturn:
    gib = max(1, -(-need // (1 << 30)))
    raise ImageError(f"space is short: {what}, the root file system needs "
                     f"{-(-need // MIB)} MiB", where=where,
                     hint=GROW_HINT.format(gib=gib) + extra)


def _add_partition(g: Any, disk: Disk, slot: Slot, say: Progress) -> int:
    """One new entry in the table; the other entries and boot code stay as they were."""
    ss, dev = disk.sector, disk.device
    first, last = slot.start // ss, (slot.start + slot.size) // ss - 1
    if disk.gpt_moved:
        say("moving the GPT's backup table to the end of the grown disk")
        g.part_expand_gpt(dev)
    say(f"creating a {slot.size // MIB} MiB partition")
    g.part_add(dev, "p", first, last)
    num = next(int(p["part_num"]) for p in g.part_list(dev)
               if int(p["part_start"]) == slot.start)
    if disk.table == "gpt":
        g.part_set_gpt_type(dev, num, GPT_LINUX)
    else:
        g.part_set_mbr_id(dev, num, MBR_LINUX)
    return num


def _save_artifact(t: Target, root: Root, report: InstallReport) -> None:
    """The sidecar that lets ``nixslave run IMG`` boot the installed root."""
    spec = root.spec
    build = t.build.name if t.build is not None and t.build.name.startswith("b-") else ""
    Artifact(
        name=spec.name, kind="disk", format=t.format, image=t.image, toplevel=root.toplevel,
        layout="disk", store="disk", boot="direct", cmdline=report.cmdline,
        memory=spec.memory, cpus=spec.cpus, virtual_size=int(t.info["virtual-size"]),
        build=build,
        extra={"installedInto": report.partition, "partitionTable": report.table,
               "partitionStart": report.start, "partitionSize": report.size,
               "closurePaths": report.closure_paths, "narSize": root.nar_size,
               "demo": spec.demo},
    ).save()
