"""VirtualBox artifacts: a self-booting disk as VDI or VMDK, or one OVA.

VirtualBox cannot boot a kernel from the host, so every VirtualBox artifact
is a disk that boots by itself (extlinux for ``bios``; ``uefi`` once the disk
backend makes ESPs).  The disk is built exactly like a raw disk of
:mod:`nixslave.backends.disk` (same bytes, same reproducibility) inside this
build's scratch, then converted with ``qemu-img``:

* ``vdi``: VirtualBox's own format, plus ``<name>.vboxmanage.sh``, the
  VBoxManage commands that make the machine around the VDI where it is.
  VirtualBox's OVF importer only accepts VMDK, VHD and ISO disks, so an OVF
  beside a VDI would be a descriptor nothing can import;
* ``vmdk`` (streamOptimized): the disk plus an OVF 1.0 descriptor and a
  manifest beside it, importable as ``VBoxManage import <name>.ovf``
  (VirtualBox imports streamOptimized VMDKs but does not run them in place);
* ``ova``: the same descriptor, manifest and disks in one USTAR archive,
  descriptor first and manifest second as DSP0243 requires, with fixed
  times and numeric owners so two builds are the same bytes.

The descriptor carries the machine twice, on purpose.  The standard OVF part
(CPU, memory, SATA/AHCI, disks, one NIC per planned interface with its MAC in
``rasd:Address``) is what other consumers read (virt-v2v, VMware).  A
``vbox:Machine`` section is what VirtualBox itself uses when present, and it
is the only way to say "internal network <segment>" and to keep the planned
MACs: from plain OVF, VirtualBox attaches every NIC to a bridge and invents
MACs.  The guest matches NICs by MAC, so it must be imported with
``--options keepallmacs``.

qemu-img writes random UUIDs into VDI headers and a random CID into VMDK
descriptors; both are replaced by values derived from the toplevel and the
machine name, like every other identifier of a nixslave image.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import struct
import subprocess
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

from nixslave import boot, gcroots, interrupt, nix
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskBackend, DiskOptions, sha256_file
from nixslave.backends.ext4 import FAKE_TIME, derived_uuid
from nixslave.backends.publish import BuildSet
from nixslave.errors import BuildError
from nixslave.nixos import store_kind
from nixslave.progress import Progress
from nixslave.root import Root

VboxFormat = Literal["vdi", "vmdk", "ova"]

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VBOX_NS = "http://www.virtualbox.org/ovf/machine"
VMW_NS = "http://www.vmware.com/schema/ovf"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
VMDK_STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
# DMTF CIM_OperatingSystem.OSType 101 is "Linux 64-Bit"; VirtualBox's own
# name for it is Linux_64 ("Other Linux (64-bit)").  NixOS has no CIM type.
CIM_OS_LINUX_64 = 101
VBOX_OS_TYPE = "Linux_64"
# VirtualBox reads a vbox:Machine of a settings version it knows; 1.15 is
# the version it assumes for OVFs without one (VirtualBox 5.0 and later).
VBOX_SETTINGS_VERSION = "1.15-linux"
SATA_ID = 3  # rasd:InstanceID of the SATA controller
NIC_SUBTYPES = {"virtio": "VirtioNet", "82540EM": "E1000", "82545EM": "E1000"}
MAX_TAR_MEMBER = 8 << 30  # USTAR stores sizes in 11 octal digits


@dataclass(frozen=True)
class VboxOptions:
    """What kind of VirtualBox artifact to write."""

    format: VboxFormat = "vdi"
    nictype: Literal["virtio", "82540EM", "82545EM"] = "virtio"
    gcroot: bool = True
    checksum: bool = False  # record the artifact's sha256 in the sidecar


@dataclass(frozen=True)
class OvfDisk:
    """One disk of the descriptor: its file in the package and its size."""

    href: str
    size: int        # bytes of the file
    capacity: int    # virtual size in bytes
    uuid: str        # vbox:uuid, referenced by vbox:Machine's attachment


@dataclass(frozen=True)
class OvfNic:
    """One planned interface: the network it joins and its MAC."""

    network: str
    mac: str
    nictype: str = "virtio"


@dataclass(frozen=True)
class OvfMachine:
    """Everything the descriptor says; built from the spec and the plan."""

    name: str
    cpus: int
    memory: int                     # MiB
    firmware: Literal["bios", "efi"]
    uuid: str
    disks: tuple[OvfDisk, ...]
    nics: tuple[OvfNic, ...] = ()


# -- XML -----------------------------------------------------------------------

Node = tuple[str, dict[str, str], "list[Node] | str | None"]


def _render(node: Node, depth: int = 0) -> list[str]:
    """Indented XML with attributes in the given order (deterministic output)."""
    tag, attrs, body = node
    pad = "  " * depth
    head = tag + "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items())
    if body is None or body == []:
        return [f"{pad}<{head}/>"]
    if isinstance(body, str):
        return [f"{pad}<{head}>{escape(body)}</{tag}>"]
    lines = [f"{pad}<{head}>"]
    for child in body:
        lines += _render(child, depth + 1)
    return [*lines, f"{pad}</{tag}>"]


def _item(**fields: str | int) -> Node:
    """A rasd Item; CIM's schema wants its elements in alphabetical order."""
    return ("Item", {}, [(f"rasd:{k}", {}, str(v)) for k, v in sorted(fields.items())])


def ovf_descriptor(m: OvfMachine) -> str:
    """The OVF 1.0 envelope (DSP8023) for one machine, as text."""
    refs: list[Node] = [("File", {"ovf:id": f"file{i}", "ovf:href": d.href,
                                  "ovf:size": str(d.size)}, None)
                        for i, d in enumerate(m.disks, 1)]
    disks: list[Node] = [("Info", {}, "List of the virtual disks used in the package")]
    disks += [("Disk", {"ovf:capacity": str(d.capacity), "ovf:diskId": f"vmdisk{i}",
                        "ovf:fileRef": f"file{i}", "ovf:format": VMDK_STREAM,
                        "vbox:uuid": d.uuid}, None) for i, d in enumerate(m.disks, 1)]
    sections: list[Node] = [("References", {}, refs), ("DiskSection", {}, disks)]
    networks = sorted({n.network for n in m.nics})
    if networks:
        nets: list[Node] = [("Info", {}, "Logical networks used in the package")]
        nets += [("Network", {"ovf:name": n}, [
            ("Description", {}, f"nixslave segment or link {n}")]) for n in networks]
        sections.append(("NetworkSection", {}, nets))

    cpu = f"{m.cpus} virtual CPU" + ("s" if m.cpus > 1 else "")
    items: list[Node] = [
        _item(Caption=cpu, Description="Number of virtual CPUs", ElementName=cpu,
              InstanceID=1, ResourceType=3, VirtualQuantity=m.cpus),
        _item(AllocationUnits="byte * 2^20", Caption=f"{m.memory} MB of memory",
              Description="Memory Size", ElementName=f"{m.memory} MB of memory",
              InstanceID=2, ResourceType=4, VirtualQuantity=m.memory),
        _item(Address=0, Caption="sataController0", Description="SATA Controller",
              ElementName="sataController0", InstanceID=SATA_ID, ResourceSubType="AHCI",
              ResourceType=20),
    ]
    iid = SATA_ID + 1
    for i, _d in enumerate(m.disks, 1):
        items.append(_item(AddressOnParent=i - 1, Caption=f"disk{i}", Description="Disk Image",
                           ElementName=f"disk{i}", HostResource=f"ovf:/disk/vmdisk{i}",
                           InstanceID=iid, Parent=SATA_ID, ResourceType=17))
        iid += 1
    for n in m.nics:
        # virt-v2v names a NIC's network by rasd:ElementName, VirtualBox and
        # VMware by rasd:Connection: both carry the segment's network name.
        items.append(_item(Address=n.mac, AutomaticAllocation="true",
                           Caption=f"Ethernet adapter on '{n.network}'", Connection=n.network,
                           ElementName=n.network, InstanceID=iid,
                           ResourceSubType=NIC_SUBTYPES.get(n.nictype, "E1000"),
                           ResourceType=10))
        iid += 1
    hardware: list[Node] = [
        ("Info", {}, "Virtual hardware requirements for a virtual machine"),
        ("System", {}, [("vssd:ElementName", {}, "Virtual Hardware Family"),
                        ("vssd:InstanceID", {}, "0"),
                        ("vssd:VirtualSystemIdentifier", {}, m.name),
                        ("vssd:VirtualSystemType", {}, "virtualbox-2.2")]),
        *items,
    ]
    if m.firmware == "efi":
        # The firmware has no standard OVF item; VMware's key is the one
        # virt-v2v and other importers read.
        hardware.append(("vmw:Config", {"ovf:required": "false", "vmw:key": "firmware",
                                        "vmw:value": "efi"}, None))
    system: list[Node] = [
        ("Info", {}, "A nix-slave machine, configured from the host"),
        ("Name", {}, m.name),
        ("OperatingSystemSection", {"ovf:id": str(CIM_OS_LINUX_64)}, [
            ("Info", {}, "The kind of installed guest operating system"),
            ("Description", {}, "Linux 64-Bit (NixOS)"),
            ("vbox:OSType", {"ovf:required": "false"}, VBOX_OS_TYPE)]),
        ("VirtualHardwareSection", {}, hardware),
        vbox_machine(m),
    ]
    envelope: Node = ("Envelope", {
        "ovf:version": "1.0", "xml:lang": "en-US", "xmlns": OVF_NS, "xmlns:ovf": OVF_NS,
        "xmlns:rasd": RASD_NS, "xmlns:vssd": VSSD_NS, "xmlns:vbox": VBOX_NS,
        "xmlns:vmw": VMW_NS, "xmlns:xsi": XSI_NS,
    }, [*sections, ("VirtualSystem", {"ovf:id": m.name}, system)])
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "\n".join(_render(envelope)) + "\n"


def vbox_machine(m: OvfMachine) -> Node:
    """VirtualBox's own machine settings, which its importer prefers to OVF.

    Only this section can attach a NIC to an internal network by name and
    give it a MAC; the disks are bound by the vbox:uuid of the DiskSection.
    """
    hw: list[Node] = [
        ("CPU", {"count": str(m.cpus)}, [("PAE", {"enabled": "true"}, None),
                                         ("LongMode", {"enabled": "true"}, None)]),
        ("Memory", {"RAMSize": str(m.memory)}, None),
    ]
    if m.firmware == "efi":
        hw.append(("Firmware", {"type": "EFI"}, None))
    hw += [
        ("Boot", {}, [("Order", {"position": str(p), "device": "HardDisk" if p == 1 else "None"},
                       None) for p in range(1, 5)]),
        ("BIOS", {}, [("IOAPIC", {"enabled": "true"}, None)]),
        ("Network", {}, [
            ("Adapter", {"slot": str(k), "enabled": "true",
                         "MACAddress": n.mac.replace(":", "").upper(), "cable": "true",
                         "type": n.nictype}, [("InternalNetwork", {"name": n.network}, None)])
            for k, n in enumerate(m.nics)]),
        # console=ttyS0: the boot marker goes to COM1; point it at a file to read it.
        ("UART", {}, [("Port", {"slot": "0", "enabled": "true", "IOBase": "0x3f8", "IRQ": "4",
                                "hostMode": "Disconnected"}, None)]),
    ]
    attached: list[Node] = [
        ("AttachedDevice", {"type": "HardDisk", "hotpluggable": "false", "port": str(i),
                            "device": "0"}, [("Image", {"uuid": "{" + d.uuid + "}"}, None)])
        for i, d in enumerate(m.disks)]
    return ("vbox:Machine", {"ovf:required": "false", "version": VBOX_SETTINGS_VERSION,
                             "uuid": "{" + m.uuid + "}", "name": m.name,
                             "OSType": VBOX_OS_TYPE}, [
        ("ovf:Info", {}, "Complete VirtualBox machine configuration in VirtualBox format"),
        ("Hardware", {}, hw),
        ("StorageControllers", {}, [
            ("StorageController", {"name": "SATA", "type": "AHCI",
                                   "PortCount": str(max(1, len(m.disks))),
                                   "useHostIOCache": "false", "Bootable": "true"}, attached)]),
    ])


def manifest(files: list[Path]) -> str:
    """The .mf: one ``SHA256(name)= digest`` line per file, in package order."""
    return "".join(f"SHA256({f.name})= {sha256_file(f)}\n" for f in files)


def vboxmanage_script(m: OvfMachine, disks: list[str]) -> str:
    """The VBoxManage commands that make this machine from a VDI or VMDK.

    Paths are relative to the script, so it stays right after publishing.
    """
    nm = shlex.quote(m.name)
    lines = ["#!/bin/sh",
             "# Make the VirtualBox machine of this nixslave build; usage: sh THIS [VM-NAME]",
             "set -eu", 'here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)',
             f'vm=${{1:-{nm}}}',
             f'VBoxManage createvm --name "$vm" --ostype {VBOX_OS_TYPE} --register',
             f'VBoxManage modifyvm "$vm" --memory {m.memory} --cpus {m.cpus} '
             f'--firmware {m.firmware} --ioapic on --boot1 disk --boot2 none '
             '--uart1 0x3f8 4 --uartmode1 disconnected' + (" --nic1 none" if not m.nics else "")]
    for k, n in enumerate(m.nics, 1):
        mac = n.mac.replace(":", "").upper()
        lines.append(f'VBoxManage modifyvm "$vm" --nic{k} intnet --intnet{k} '
                     f'{shlex.quote(n.network)} --macaddress{k} {mac} --nictype{k} {n.nictype} '
                     f'--cableconnected{k} on')
    lines.append(f'VBoxManage storagectl "$vm" --name SATA --add sata --controller IntelAhci '
                 f'--portcount {max(1, len(disks))} --bootable on')
    for port, disk in enumerate(disks):
        lines.append(f'VBoxManage storageattach "$vm" --storagectl SATA --port {port} '
                     f'--device 0 --type hdd --medium "$here/{disk}"')
    return "\n".join(lines) + "\n"


# -- image files -----------------------------------------------------------------

def _run(cmd: list[str], what: str, where: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split())[-300:]
        raise BuildError(f"{what} failed: {msg}", where=str(where),
                         hint=f"rerun with --debug; the command was {cmd[0]}")


def _uuid_bytes(u: str) -> bytes:
    """A UUID as VirtualBox's RTUUID stores it (first three fields little-endian)."""
    import uuid

    return uuid.UUID(u).bytes_le


def pin_vdi(path: Path, image_uuid: str, snap_uuid: str) -> None:
    """Replace the random image and last-snapshot UUIDs qemu-img wrote.

    VDI header (VirtualBox's VDIHEADER1): uuidCreate at 0x188, uuidModify
    at 0x198; uuidLinkage and uuidParentModify stay zero (no parent).
    """
    with open(path, "r+b") as f:
        f.seek(0x40)
        if f.read(4) != b"\x7f\x10\xda\xbe":
            raise BuildError("qemu-img wrote no VDI signature", where=str(path),
                             hint="check qemu-utils")
        f.seek(0x188)
        f.write(_uuid_bytes(image_uuid) + _uuid_bytes(snap_uuid))


def pin_vmdk(path: Path, cid: str) -> None:
    """Replace the random CID in a streamOptimized VMDK's embedded descriptor.

    qemu-img prints the CID with ``%x``, so one in sixteen has fewer than
    eight digits: the whole line is rewritten and the descriptor re-padded
    within its sectors (SparseExtentHeader: descriptorOffset at byte 28,
    descriptorSize at byte 36, both in sectors), never patched in place.
    """
    if not re.fullmatch(r"[0-9a-f]{8}", cid):
        raise ValueError(f"a VMDK CID is eight hex digits, not {cid!r}")
    with open(path, "r+b") as f:
        header = f.read(44)
        if len(header) < 44 or header[:4] != b"KDMV":
            raise BuildError("qemu-img wrote no VMDK sparse header", where=str(path),
                             hint="check qemu-utils")
        offset, size = struct.unpack_from("<QQ", header, 28)
        f.seek(offset * 512)
        region = f.read(size * 512)
        text = region.split(b"\0", 1)[0]
        new, n = re.subn(rb"^CID=[0-9a-fA-F]+$", b"CID=" + cid.encode(), text, count=1,
                         flags=re.MULTILINE)
        if n != 1 or len(new) > len(region):
            raise BuildError("no CID in the VMDK descriptor", where=str(path),
                             hint="check qemu-utils")
        f.seek(offset * 512)
        f.write(new.ljust(len(region), b"\0"))


def convert(raw: Path, target: Path, fmt: Literal["vdi", "vmdk"], *, ident: str) -> None:
    """qemu-img convert, then pin the identifiers qemu-img randomises."""
    opts = ["-o", "subformat=streamOptimized"] if fmt == "vmdk" else []
    _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, *opts, str(raw), str(target)],
         f"qemu-img convert to {fmt}", target)
    if fmt == "vdi":
        pin_vdi(target, ident, derived_uuid(ident, "vdi-modify"))
    else:
        pin_vmdk(target, hashlib.sha256(ident.encode()).hexdigest()[:8])


def write_ova(target: Path, members: list[Path]) -> None:
    """USTAR, members in the given order, fixed times, numeric root owner."""
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in members:
            size = path.stat().st_size
            if size >= MAX_TAR_MEMBER:
                raise BuildError(f"{path.name} is {size >> 30} GiB, over the 8 GiB an OVA "
                                 "member can hold", where=str(target),
                                 hint="use --format vmdk (an OVF directory) instead")
            info = tarfile.TarInfo(path.name)
            info.size, info.mtime, info.mode = size, int(FAKE_TIME), 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)


# -- the backend ----------------------------------------------------------------------

def _plan_nics(extra: dict[str, object] | None, nictype: str) -> tuple[OvfNic, ...]:
    """One NIC per planned interface of the node, on its segment's internal network."""
    if not extra or "topology" not in extra:
        return ()
    from nixslave.netconf.wiring import virtualbox_nics
    from nixslave.topology import check_node, load_plan

    plan = load_plan(Path(str(extra["topology"])))
    node = str(extra.get("node") or "")
    check_node(plan, node)
    return tuple(OvfNic(network=n.intnet, mac=n.mac, nictype=n.nictype)
                 for n in virtualbox_nics(plan, node, nictype=nictype))


def check_root(root: Root, fmt: str) -> None:
    """Refuse what VirtualBox cannot boot, before anything is built."""
    spec = root.spec
    where = f"machine {spec.name}"
    if spec.layout == "shared":
        raise BuildError(f"the shared store layout cannot be a {fmt} artifact",
                         where=f"{where}.layout",
                         hint="VirtualBox cannot serve a 9p/virtiofs store; "
                              "use --layout disk or store-disk")
    if spec.layout == "store-disk" and spec.store_fs_resolved == "squashfs":
        raise BuildError(f"a squashfs store disk cannot be a {fmt} artifact",
                         where=f"{where}.store_fs",
                         hint="squashfs has no label and VirtualBox's disks no virtio "
                              "serial to find it by; use --store-fs erofs")
    if spec.boot == "direct":
        raise BuildError(f"direct boot cannot be a {fmt} artifact", where=f"{where}.boot",
                         hint="VirtualBox boots only from the disk; use --boot bios or uefi")


class VboxBackend:
    """VDI, VMDK+OVF or OVA artifacts for VirtualBox (and other OVF consumers)."""

    name = "vbox"

    def materialize(self, root: Root, out: Path, options: VboxOptions | None = None, *,
                    progress: Progress | None = None,
                    extra: dict[str, object] | None = None) -> Artifact:
        """Build the VirtualBox artifact of ``root`` at ``out``, published whole."""
        opts = options or VboxOptions()
        say: Progress = progress or (lambda _m: None)
        out = Path(out).absolute()
        check_root(root, opts.format)
        nics = _plan_nics(extra, opts.nictype)  # a bad node fails before any work
        if out.suffix != f".{opts.format}":
            # VirtualBox's importer goes by the name (.ova/.ovf), and the files
            # beside the image (NAME.ovf, NAME.mf) must never be the image.
            raise BuildError(f"a {opts.format} artifact is named *.{opts.format}",
                             where=str(out), hint=f"give a name such as "
                                                  f"{root.spec.name}.{opts.format}")
        if out.is_dir():
            raise BuildError("the output is a directory", where=str(out),
                             hint=f"give a file name such as machine.{opts.format}")
        if not out.parent.is_dir():
            raise BuildError("the output directory does not exist", where=str(out.parent),
                             hint="create it first")
        try:
            bs = BuildSet(out)
            bs.__enter__()
        except OSError as exc:
            raise BuildError(f"cannot write beside the output: {exc.strerror}",
                             where=str(out), hint="pick a writable directory") from None
        try:
            artifact = self._build(root, bs, opts, nics, say, extra)
            say("publishing the artifact")
            final = bs.publish()
        finally:
            bs.__exit__(None, None, None)
        artifact = Artifact.load(final / out.name)
        if opts.gcroot:
            nix.add_gcroot(f"{root.spec.name}-current", root.toplevel)
            gcroots.record_image(root.spec.name, out, root.toplevel)
        say(f"wrote {out}")
        return artifact

    def _build(self, root: Root, bs: BuildSet, opts: VboxOptions, nics: tuple[OvfNic, ...],
               say: Progress, extra: dict[str, object] | None) -> Artifact:
        spec = root.spec
        fmt = opts.format
        disk_fmt: Literal["vdi", "vmdk"] = "vdi" if fmt == "vdi" else "vmdk"

        def nested(msg: str) -> None:
            # The raw disk is published inside our scratch: its "publishing"
            # and "wrote" are not this artifact's.
            if not msg.startswith(("publishing the artifact", "wrote ", "writing ")):
                say(msg)

        raw_out = bs.work / "disk.raw"
        raw = DiskBackend().materialize(root, raw_out, DiskOptions(format="raw", gcroot=False),
                                        progress=nested)
        ident = derived_uuid(root.toplevel, spec.name, "vbox-disk")
        sources = [(Path(os.path.realpath(raw_out)), ident)]
        if raw.store_image is not None:
            sources.append((raw.store_image, derived_uuid(root.toplevel, spec.name,
                                                          "vbox-store")))
        say(f"writing {disk_fmt}")
        names = [f"{spec.name}-disk{i}.{disk_fmt}" for i in range(1, len(sources) + 1)]
        converted: list[Path] = []
        for (src, uid), name in zip(sources, names, strict=True):
            tmp = bs.work / name  # a fixed name: VMDKs embed their own file name
            convert(src, tmp, disk_fmt, ident=uid)
            converted.append(tmp)
            interrupt.check()
        machine = OvfMachine(
            name=spec.name, cpus=spec.cpus, memory=spec.memory,
            firmware="efi" if spec.boot == "uefi" else "bios",
            uuid=derived_uuid(root.toplevel, spec.name, "vbox-machine"),
            disks=tuple(OvfDisk(href=n, size=p.stat().st_size, capacity=s.stat().st_size,
                                uuid=u)
                        for n, p, (s, u) in zip(names, converted, sources, strict=True)),
            nics=nics)
        files: dict[str, str] = {}
        store_image: Path | None = None
        if fmt == "ova":
            say("writing the OVF descriptor and the OVA")
            ovf = bs.work / f"{spec.name}.ovf"
            ovf.write_text(ovf_descriptor(machine))
            mf = bs.work / f"{spec.name}.mf"
            mf.write_text(manifest([ovf, *converted]))
            write_ova(bs.work / "out.ova", [ovf, mf, *converted])
            (bs.work / "out.ova").replace(bs.image)
        else:
            # the image under the public name, the store disk and descriptors beside it
            finals = [bs.image]
            if len(converted) > 1:
                finals.append(bs.dir / f"{bs.out.stem}-store.{fmt}")
            for tmp, final in zip(converted, finals, strict=True):
                tmp.replace(final)
            store_image = finals[1] if len(finals) > 1 else None
            rel = [f.name for f in finals]
            if fmt == "vmdk":
                say("writing the OVF descriptor")
                machine = replace(machine, disks=tuple(
                    replace(d, href=r, size=f.stat().st_size)
                    for r, f, d in zip(rel, finals, machine.disks, strict=True)))
                ovf = bs.dir / f"{spec.name}.ovf"
                ovf.write_text(ovf_descriptor(machine))
                mf = bs.dir / f"{spec.name}.mf"
                mf.write_text(manifest([ovf, *finals]))
                files.update(ovf=ovf.name, manifest=mf.name)
            else:
                # VirtualBox attaches a VDI where it is; a streamOptimized
                # VMDK it only imports (through the OVF), so no script for it.
                script = bs.dir / f"{spec.name}.vboxmanage.sh"
                script.write_text(vboxmanage_script(machine, rel))
                os.chmod(script, 0o755)
                files["vboxmanage"] = script.name
        interrupt.check()
        artifact = Artifact(
            name=spec.name, kind="vbox", format=fmt, image=bs.image, toplevel=root.toplevel,
            layout=spec.layout, store=store_kind(spec), boot=spec.boot,
            cmdline=boot.cmdline(root.toplevel, spec), store_image=store_image,
            memory=spec.memory, cpus=spec.cpus,
            sha256=sha256_file(bs.image) if opts.checksum else "",
            virtual_size=machine.disks[0].capacity, build=bs.id,
            extra={"closurePaths": len(root.paths), "narSize": root.nar_size,
                   "demo": spec.demo, "firmware": machine.firmware,
                   "disks": [d.href for d in machine.disks],
                   "nics": [{"network": n.network, "mac": n.mac} for n in nics],
                   **files, **(extra or {})},
        )
        artifact.save()
        return artifact
