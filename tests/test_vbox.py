"""VirtualBox artifacts: OVF structure, a real OVF consumer, a boot, bytes, kills.

VirtualBox itself is not installable here, so the OVA is read by virt-v2v
(a real OVF/OVA importer), its disk is booted under qemu on an AHCI
controller (what the descriptor's SATA controller is), and the
VirtualBox-specific parts are checked against what VirtualBox's importer
reads (see nixslave/backends/vbox.py).  Each test's docstring names the
bug it catches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.backends.disk import sha256_file
from nixslave.backends.vbox import (
    OvfDisk,
    OvfMachine,
    OvfNic,
    VboxBackend,
    VboxFormat,
    VboxOptions,
    ovf_descriptor,
    pin_vmdk,
)
from nixslave.errors import BuildError
from nixslave.netconf.wiring import virtualbox_nics
from nixslave.root import Root
from nixslave.runtime.run import VM, VMConfig
from nixslave.spec import MachineSpec
from nixslave.topology import load_plan, node_network

pytestmark = [pytest.mark.nix, pytest.mark.guestfs, pytest.mark.tools("qemu-img")]

TOPOLOGY = Path(__file__).parent / "data" / "boot" / "routed.yml"
NS = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1",
      "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
              "CIM_ResourceAllocationSettingData",
      "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
      "vbox": "http://www.virtualbox.org/ovf/machine",
      "vmw": "http://www.vmware.com/schema/ovf"}
OVF = "{" + NS["ovf"] + "}"
RASD = "{" + NS["rasd"] + "}"
VBOX = "{" + NS["vbox"] + "}"


@dataclass(frozen=True)
class Built:
    """One built node of the routed topology and its plan's view of it."""

    root: Root
    extra: dict[str, object]
    node: str


def _node_root(node: str, *, layout: str = "disk") -> Built:
    plan = load_plan(TOPOLOGY)
    net = node_network(plan, node)
    spec = MachineSpec.parse({"name": node, "demo": True, "boot": "bios", "memory": 384,
                              "cpus": 2, "layout": layout})
    root = rootmod.build(spec, network=net)
    return Built(root, {"topology": str(TOPOLOGY), "node": node, "peers": list(net.peers)},
                 node)


def _build(b: Built, out: Path, fmt: VboxFormat, *, checksum: bool = False) -> Artifact:
    out.parent.mkdir(parents=True, exist_ok=True)
    return VboxBackend().materialize(b.root, out, VboxOptions(format=fmt, gcroot=False,
                                                              checksum=checksum),
                                     extra=b.extra)


@pytest.fixture(scope="module")
def gw() -> Built:
    """gw has two planned interfaces (a p2p link and a LAN), so NIC order matters."""
    return _node_root("gw")


@pytest.fixture(scope="module")
def ova(gw: Built, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return _build(gw, tmp_path_factory.mktemp("ova-a") / "gw.ova", "ova", checksum=True)


@pytest.fixture(scope="module")
def vdi(gw: Built, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return _build(gw, tmp_path_factory.mktemp("vdi-a") / "gw.vdi", "vdi", checksum=True)


@pytest.fixture(scope="module")
def ova_vmdk(ova: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The disk member of the OVA, extracted with tarfile as an importer would."""
    path = tmp_path_factory.mktemp("ova-disk") / "gw-disk1.vmdk"
    path.write_bytes(_read(ova.image, "gw-disk1.vmdk"))
    return path


def _members(ova: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(ova) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(ova: Path, name: str) -> bytes:
    with tarfile.open(ova) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def _items(vs: ET.Element, rtype: int) -> list[ET.Element]:
    return [i for i in vs.iterfind("ovf:VirtualHardwareSection/ovf:Item", NS)
            if i.findtext("rasd:ResourceType", namespaces=NS) == str(rtype)]


def _rasd(item: ET.Element, field: str) -> str | None:
    return item.findtext(f"rasd:{field}", namespaces=NS)


def test_ova_layout_and_descriptor(ova: Artifact, ova_vmdk: Path) -> None:
    """The OVA is what VirtualBox and virt-v2v read, checked field by field.

    Bugs it catches: NICs taken from another node or in another order than
    the plan (the guest renames NICs by MAC and finds none); memory written
    in bytes while AllocationUnits says MiB; a Disk whose fileRef/href does
    not name a member, or a File size that is not the member's; a manifest
    digest of the wrong bytes; the manifest or disks before the descriptor;
    build-time mtimes or the builder's user name in the tar headers; a
    vbox:Machine whose attachment names no disk of the DiskSection.
    """
    image = ova.image
    members = _members(image)
    # descriptor first, manifest right after it, then the disks (DSP0243)
    assert list(members) == ["gw.ovf", "gw.mf", "gw-disk1.vmdk"]
    raw = image.read_bytes()
    assert raw[257:263] == b"ustar\x00"  # POSIX USTAR, as the OVF spec requires
    for m in members.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (1, 0, 0, "", "", 0o644)

    env = ET.fromstring(_read(image, "gw.ovf"))
    assert env.tag == f"{OVF}Envelope" and env.get(f"{OVF}version") == "1.0"
    files = {f.get(f"{OVF}id"): f for f in env.iterfind("ovf:References/ovf:File", NS)}
    disks = env.findall("ovf:DiskSection/ovf:Disk", NS)
    assert len(disks) == 1
    for d in disks:
        f = files[d.get(f"{OVF}fileRef")]
        href = f.get(f"{OVF}href")
        assert href in members and int(f.get(f"{OVF}size") or -1) == members[href].size
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "vmdk", str(ova_vmdk)],
            capture_output=True, check=True).stdout)
        assert int(d.get(f"{OVF}capacity") or -1) == info["virtual-size"]
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"

    vs = env.find("ovf:VirtualSystem", NS)
    assert vs is not None and vs.get(f"{OVF}id") == "gw"
    assert vs.findtext("ovf:Name", namespaces=NS) == "gw"
    os_sec = vs.find("ovf:OperatingSystemSection", NS)
    assert os_sec is not None and os_sec.get(f"{OVF}id") == "101"  # CIM "Linux 64-Bit"
    assert os_sec.findtext("vbox:OSType", namespaces=NS) == "Linux_64"
    (cpu,) = _items(vs, 3)
    assert _rasd(cpu, "VirtualQuantity") == "2"
    (mem,) = _items(vs, 4)
    assert (_rasd(mem, "AllocationUnits"), _rasd(mem, "VirtualQuantity")) == ("byte * 2^20",
                                                                             "384")
    (sata,) = _items(vs, 20)
    assert _rasd(sata, "ResourceSubType") == "AHCI"
    (disk,) = _items(vs, 17)
    assert _rasd(disk, "Parent") == _rasd(sata, "InstanceID")
    assert _rasd(disk, "HostResource") == f"ovf:/disk/{disks[0].get(f'{OVF}diskId')}"
    ids = [_rasd(i, "InstanceID") for i in vs.iterfind("ovf:VirtualHardwareSection/ovf:Item",
                                                        NS)]
    assert len(ids) == len(set(ids))
    for item in vs.iterfind("ovf:VirtualHardwareSection/ovf:Item", NS):
        tags = [c.tag.removeprefix(RASD) for c in item]
        assert tags == sorted(tags), "CIM's schema wants rasd elements in alphabetical order"

    # one NIC per planned interface, in plan order, with the planned MAC and network
    plan = load_plan(TOPOLOGY)
    planned = [(n.intnet, n.mac) for n in virtualbox_nics(plan, "gw")]
    assert [i.mac for i in plan.node("gw").interfaces] == [m for _, m in planned]
    nics = _items(vs, 10)
    assert [(_rasd(n, "Connection"), _rasd(n, "Address")) for n in nics] == planned
    assert [_rasd(n, "ElementName") for n in nics] == [n for n, _ in planned]
    assert {n.get(f"{OVF}name") for n in env.iterfind(
        "ovf:NetworkSection/ovf:Network", NS)} == {n for n, _ in planned}

    # VirtualBox's own section: internal networks, MACs, the disk by uuid
    vm = vs.find("vbox:Machine", NS)
    assert vm is not None and vm.get("OSType") == "Linux_64"
    adapters = vm.findall("ovf:Hardware/ovf:Network/ovf:Adapter", NS)
    assert [(a.get("slot"), a.find("ovf:InternalNetwork", NS).get("name"),  # type: ignore[union-attr]
             a.get("MACAddress")) for a in adapters] == [
        (str(k), n, m.replace(":", "").upper()) for k, (n, m) in enumerate(planned)]
    assert vm.find("ovf:Hardware/ovf:Firmware", NS) is None  # BIOS is VirtualBox's default
    (image_ref,) = vm.iterfind(".//ovf:AttachedDevice/ovf:Image", NS)
    assert image_ref.get("uuid") == "{" + str(disks[0].get(f"{VBOX}uuid")) + "}"

    # the manifest covers every other member with its real digest
    lines = _read(image, "gw.mf").decode().splitlines()
    sums: dict[str, str] = {}
    for ln in lines:
        line = re.fullmatch(r"SHA256\((.+)\)= ([0-9a-f]{64})", ln)
        assert line is not None, ln
        sums[line.group(1)] = line.group(2)
    assert list(sums) == ["gw.ovf", "gw-disk1.vmdk"]
    for name, digest in sums.items():
        assert hashlib.sha256(_read(image, name)).hexdigest() == digest
    # and the sidecar records the whole OVA
    assert ova.sha256 == sha256_file(image)
    assert ova.kind == "vbox" and ova.boot == "bios" and ova.extra["nics"] == [
        {"network": n, "mac": m} for n, m in planned]


@pytest.mark.tools("virt-v2v")
def test_virt_v2v_reads_the_ova(ova: Artifact, tmp_path: Path) -> None:
    """A real importer parses the OVA: name, memory, CPUs, firmware, disk, NICs.

    Bugs it catches: a descriptor or manifest an importer rejects (a wrong
    digest is "corrupt OVA"; a HostResource it cannot follow is "could not
    parse disk"), memory/CPU read as other values than the spec's, NICs
    without their planned MACs, and a disk qemu cannot open at its offset
    inside the tar.  The conversion itself then stops at inspection,
    because libguestfs's inspection knows no NixOS (the demo system has no
    distribution of its own): the step after parsing and opening.
    """
    env = {**os.environ, "LIBGUESTFS_CACHEDIR": str(tmp_path)}
    src = subprocess.run(["virt-v2v", "-i", "ova", str(ova.image), "-o", "null",
                          "--print-source"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert src.returncode == 0, src.stderr
    out = src.stdout
    assert re.search(r"source name: gw\n", out)
    assert re.search(rf"memory: {384 << 20} \(bytes\)", out)
    assert re.search(r"nr vCPUs: 2\n", out)
    assert re.search(r"firmware: bios\n", out)
    assert re.search(r"disks:\n\s+0 \[sata\]\n", out)
    plan = load_plan(TOPOLOGY)
    macs = re.findall(r"mac: ([0-9a-f:]{17})", out)
    assert macs == [i.mac for i in plan.node("gw").interfaces]

    full = subprocess.run(["virt-v2v", "-i", "ova", str(ova.image), "-o", "null"],
                          capture_output=True, text=True, env=env, timeout=900)
    text = full.stdout + full.stderr
    assert "Opening the source" in text and "Inspecting the source" in text, text
    if full.returncode != 0:
        assert "inspection could not detect the source guest" in text, text


def _ahci_config(name: str, disk: Path, macs: list[str], rundir: Path) -> VMConfig:
    """The disk on an AHCI port (VirtualBox's SATA), one NIC per descriptor NIC."""
    args = ["-device", "ahci,id=ahci",
            "-drive", f"file={disk},format=vmdk,if=none,id=d0,snapshot=on",
            "-device", "ide-hd,drive=d0,bus=ahci.0,bootindex=1"]
    for k, mac in enumerate(macs):
        # nothing listens on the other end: traffic stays in the run directory
        args += ["-netdev", f"dgram,id=n{k},local.type=unix,local.path={rundir}/n{k}a,"
                            f"remote.type=unix,remote.path={rundir}/n{k}b",
                 "-device", f"virtio-net-pci,netdev=n{k},mac={mac}"]
    return VMConfig(name=name, memory=384, cpus=1, extra_args=args)


@pytest.mark.boot
def test_disk_from_the_ova_boots_with_the_planned_nics(ova: Artifact, ova_vmdk: Path,
                                                       tmp_path: Path) -> None:
    """The VMDK inside the OVA boots by itself on SATA with the descriptor's NICs.

    Bugs it catches: an OVA whose disk does not self-boot (no extlinux, a
    conversion of the wrong raw file, a truncated member), a guest that
    boots another toplevel than the sidecar promises, and descriptor MACs
    that differ from the ones rendered into the guest (its network script
    finds no NIC and prints NIXSLAVE-NETWORK-FAILED).
    """
    env = ET.fromstring(_read(ova.image, "gw.ovf"))
    vs = env.find("ovf:VirtualSystem", NS)
    assert vs is not None
    macs = [str(_rasd(n, "Address")) for n in _items(vs, 10)]
    run = tmp_path / "run"
    run.mkdir()
    with VM(_ahci_config("gw", ova_vmdk, macs, run), run) as vm:
        assert vm.wait_boot(timeout=300) == ova.toplevel
        out = vm.output()
        assert "NIXSLAVE-NETWORK-FAILED" not in out and "no interface with MAC" not in out
        vm.kill()


def test_builds_are_bit_for_bit_reproducible(ova: Artifact, vdi: Artifact, gw: Built,
                                             tmp_path: Path) -> None:
    """Two builds of the same machine give the same OVA and the same VDI.

    Bugs it catches: qemu-img's random VDI image UUID and VMDK CID left in
    place, tar headers with the build time or owner, a descriptor that
    depends on the output path or the build id.
    """
    ova_b = _build(gw, tmp_path / "b" / "gw.ova", "ova", checksum=True)
    vdi_b = _build(gw, tmp_path / "b" / "gw.vdi", "vdi", checksum=True)
    assert ova_b.sha256 == ova.sha256 == sha256_file(ova.image)
    assert vdi_b.sha256 == vdi.sha256 == sha256_file(vdi.image)
    assert ova_b.build != ova.build
    with open(vdi.image, "rb") as f:
        f.seek(0x188)
        uuids = f.read(32)
    assert uuids[:16] != bytes(16) and uuids[16:] != bytes(16)


@pytest.mark.parametrize("printed", ["5d2c1e0", "0", "deadbeef"])
def test_pinned_cid_keeps_the_descriptor_whole(tmp_path: Path, printed: str) -> None:
    """Bug: the CID patched in place as eight characters.  qemu-img prints it
    with %x, so one build in sixteen has a shorter CID, and the patch then
    overwrote the newline (``CID=4542e9f6parentCID=ffffffff``): the VMDK
    differed between builds and its descriptor lost parentCID.  Here qemu's
    CID is replaced by one of each length before pinning."""
    raw = tmp_path / "d.raw"
    raw.write_bytes(b"\1" * (1 << 20))
    vmdk = tmp_path / "d.vmdk"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", str(raw), str(vmdk)], check=True)
    data = bytearray(vmdk.read_bytes())
    offset, size = (n * 512 for n in struct.unpack_from("<QQ", data, 28))  # the descriptor
    text = bytes(data[offset:offset + size]).split(b"\0", 1)[0]
    text, n = re.subn(rb"(?m)^CID=[0-9a-f]+$", b"CID=" + printed.encode(), text)
    assert n == 1
    data[offset:offset + size] = text.ljust(size, b"\0")
    vmdk.write_bytes(bytes(data))
    pin_vmdk(vmdk, "4542e9f6")
    text = vmdk.read_bytes()[offset:offset + size].split(b"\0", 1)[0].decode()
    lines = text.splitlines()
    assert "CID=4542e9f6" in lines and "parentCID=ffffffff" in lines, text
    assert 'createType="streamOptimized"' in lines
    info = subprocess.run(["qemu-img", "info", "--output=json", str(vmdk)], check=True,
                          capture_output=True, text=True)
    assert json.loads(info.stdout)["format"] == "vmdk"
    cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(raw),
                          str(vmdk)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_vdi_is_the_same_disk_with_a_vboxmanage_script(vdi: Artifact,
                                                      ova_vmdk: Path) -> None:
    """The VDI holds the OVA's disk, and its script wires the planned NICs.

    Bugs it catches: VDI and OVA made from different raw disks (one format
    stale), a script that names the disk by an absolute scratch path (wrong
    after publishing) or attaches NICs with other MACs or networks.
    """
    cmp = subprocess.run(["qemu-img", "compare", "-f", "vdi", "-F", "vmdk", str(vdi.image),
                          str(ova_vmdk)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    script = vdi.image.parent / vdi.extra["vboxmanage"]
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert '--medium "$here/gw.vdi"' in text
    plan = load_plan(TOPOLOGY)
    for nic in virtualbox_nics(plan, "gw"):
        args = " ".join(nic.vboxmanage_args())
        assert args.replace(f"--nic{nic.index} intnet ", "") in text.replace(
            f"--nic{nic.index} intnet ", "")
    assert not list(vdi.image.parent.glob("*.ovf"))  # VirtualBox imports no VDI from OVF


def test_vmdk_with_store_disk_is_an_ovf_directory(tmp_path: Path) -> None:
    """store-disk is two SATA disks; vmdk is an OVF directory VirtualBox can import.

    Bugs it catches: the store disk left out of the descriptor or the
    manifest (the guest stops in stage 1 without /nix/store), hrefs naming
    scratch files instead of the files beside the descriptor.
    """
    b = _node_root("edge", layout="store-disk")
    a = _build(b, tmp_path / "edge.vmdk", "vmdk")
    build = a.image.parent
    assert sorted(p.name for p in build.iterdir() if p.name != "lock") == sorted([
        "edge.vmdk", "edge.vmdk.nixslave.json", "edge-store.vmdk", "edge.ovf", "edge.mf"])
    assert a.store_image == build / "edge-store.vmdk"
    env = ET.fromstring((build / "edge.ovf").read_text())
    hrefs = [f.get(f"{OVF}href") for f in env.iterfind("ovf:References/ovf:File", NS)]
    assert hrefs == ["edge.vmdk", "edge-store.vmdk"]
    vs = env.find("ovf:VirtualSystem", NS)
    assert vs is not None
    assert [_rasd(d, "AddressOnParent") for d in _items(vs, 17)] == ["0", "1"]
    mf = (build / "edge.mf").read_text()
    for name in ("edge.ovf", "edge.vmdk", "edge-store.vmdk"):
        assert f"SHA256({name})= {sha256_file(build / name)}\n" in mf
    if subprocess.run(["which", "virt-v2v"], capture_output=True).returncode == 0:
        src = subprocess.run(["virt-v2v", "-i", "ova", str(build), "-o", "null",
                              "--print-source"], capture_output=True, text=True, timeout=300)
        assert src.returncode == 0, src.stderr
        assert re.search(r"disks:\n\s+0 \[sata\]\n\s+1 \[sata\]\n", src.stdout), src.stdout


@pytest.mark.tools("virt-v2v")
def test_uefi_descriptor_says_efi(tmp_path: Path) -> None:
    """boot=uefi sets EFI firmware for VirtualBox and for other importers.

    Bugs it catches: a UEFI disk described with BIOS firmware (VirtualBox
    boots nothing and shows "No bootable medium").
    """
    m = OvfMachine(name="u", cpus=1, memory=256, firmware="efi",
                   uuid="00000000-0000-4000-8000-000000000001",
                   disks=(OvfDisk("u-disk1.vmdk", 0, 16 << 20,
                                  "00000000-0000-4000-8000-000000000002"),),
                   nics=(OvfNic("nxs-t-lan", "02:00:00:00:00:01"),))
    text = ovf_descriptor(m)
    env = ET.fromstring(text)
    vm = env.find("ovf:VirtualSystem/vbox:Machine", NS)
    assert vm is not None
    fw = vm.find("ovf:Hardware/ovf:Firmware", NS)
    assert fw is not None and fw.get("type") == "EFI"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized",
                    str(pkg / "u-disk1.vmdk"), "16M"], check=True)
    (pkg / "u.ovf").write_text(text)
    src = subprocess.run(["virt-v2v", "-i", "ova", str(pkg), "-o", "null", "--print-source"],
                         capture_output=True, text=True, timeout=300)
    assert src.returncode == 0, src.stderr
    assert re.search(r"firmware: uefi\n", src.stdout), src.stdout


@pytest.mark.parametrize("kw, field, hint", [
    ({"boot": "direct"}, "boot", "boots only from the disk"),
    ({"layout": "shared"}, "layout", "cannot serve a 9p/virtiofs store"),
])
@pytest.mark.parametrize("fmt", ["vdi", "ova"])
def test_bad_combinations_are_refused(tmp_path: Path, kw: dict[str, str], field: str,
                                      hint: str, fmt: VboxFormat) -> None:
    """What VirtualBox cannot boot is refused in one line, before any work.

    Bugs it catches: a direct-boot VirtualBox disk (it has no boot loader
    and VirtualBox cannot pass a kernel: a black screen), a shared-store
    guest whose /nix/store VirtualBox cannot serve, and a refusal that
    leaves a half-made build directory beside the output.
    """
    spec = MachineSpec.parse({"name": "bad", "demo": True, **kw})
    root = Root(spec=spec, toplevel="/nix/store/" + "a" * 32 + "-x", closure=[])
    with pytest.raises(BuildError) as err:
        VboxBackend().materialize(root, tmp_path / f"bad.{fmt}", VboxOptions(format=fmt))
    assert err.value.where == f"machine bad.{field}" and hint in err.value.hint
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, fmt", [("gw.vdi", "ova"), ("gw.ovf", "vmdk"), ("gw", "vdi")])
def test_output_name_must_say_the_format(tmp_path: Path, name: str, fmt: VboxFormat) -> None:
    """The output is named after its format, before any work.

    Bugs it catches: ``-o gw.ovf --format vmdk`` (the descriptor written
    over the disk it describes) and an OVA VirtualBox refuses to import
    because its name does not end in .ova.
    """
    spec = MachineSpec.parse({"name": "gw", "demo": True, "boot": "bios"})
    root = Root(spec=spec, toplevel="/nix/store/" + "a" * 32 + "-x", closure=[])
    with pytest.raises(BuildError, match=rf"a {fmt} artifact is named \*\.{fmt}"):
        VboxBackend().materialize(root, tmp_path / name, VboxOptions(format=fmt))
    assert list(tmp_path.iterdir()) == []


_KILLED = """
import sys
from pathlib import Path
from nixslave import root
from nixslave.spec import MachineSpec
from nixslave.backends.vbox import VboxBackend, VboxOptions
r = root.build(MachineSpec.parse({"name": "vk", "demo": True, "boot": "bios"}))
VboxBackend().materialize(r, Path(sys.argv[1]), VboxOptions(format=sys.argv[2], gcroot=False),
                          progress=lambda m: print(m, file=sys.stderr, flush=True))
"""


@pytest.mark.parametrize("stage", ["installing extlinux", "writing vmdk",
                                   "writing the OVF descriptor and the OVA"])
def test_killed_build_leaves_nothing_at_the_target(tmp_path: Path, stage: str) -> None:
    """SIGKILL at any stage: no OVA appears, and the next build sweeps the scratch.

    Bugs it catches: writing the OVA (or the nested raw disk) straight to
    the output name, so a killed build leaves a truncated OVA that looks
    complete; scratch of a killed build that is never removed.
    """
    out = tmp_path / "vk.ova"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(out), "ova"],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(stage):
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=300) == -signal.SIGKILL, "".join(seen)
    assert not out.exists() and not out.is_symlink()
    assert [p.name for p in tmp_path.iterdir()] == [".vk.ova.nixslave"]
    if stage == "writing the OVF descriptor and the OVA":
        # the last kill: a whole build afterwards leaves exactly one build, no scratch
        done = subprocess.run([sys.executable, "-c", _KILLED, str(out), "ova"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        base = tmp_path / ".vk.ova.nixslave"
        left = sorted(p.name for p in base.iterdir())
        assert left == sorted(["lock", Artifact.load(out).build]), left
