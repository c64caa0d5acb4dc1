"""libvirt artifacts: schema-valid XML, paths of the published build, a real define and boot.

virt-xml-validate checks libvirt's RNG schema; where libvirtd is installed
the domains are also defined (and one is started) in a private
``qemu:///session`` daemon of an unprivileged user, because libvirt's qemu
driver refuses things its schema allows.  Each test's docstring names the
bug it catches.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nixslave import boot
from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.backends.libvirt import LibvirtBackend, LibvirtOptions
from nixslave.errors import BuildError
from nixslave.nixos import BOOT_MARKER
from nixslave.root import Root
from nixslave.spec import MachineSpec
from nixslave.topology import load_plan, node_network

pytestmark = [pytest.mark.nix, pytest.mark.tools("virt-xml-validate", "qemu-img")]

TOPOLOGY = Path(__file__).parent / "data" / "boot" / "routed.yml"
VARIANTS: dict[str, dict[str, Any]] = {
    "direct": {},
    "bios": {"boot": "bios"},
    "store-disk": {"layout": "store-disk"},
    "9p": {"layout": "shared", "share": "9p"},
    "virtiofs": {"layout": "shared", "share": "virtiofs"},
}


def _root(node: str, **kw: object) -> Root:
    net = node_network(load_plan(TOPOLOGY), node)
    return rootmod.build(MachineSpec.parse({"name": node, "demo": True, **kw}), network=net)


def _build(out: Path, node: str, *, opts: LibvirtOptions | None = None, **kw: object
           ) -> Artifact:
    out.parent.mkdir(parents=True, exist_ok=True)
    return LibvirtBackend().materialize(
        _root(node, **kw), out, opts or LibvirtOptions(gcroot=False),
        extra={"topology": str(TOPOLOGY), "node": node})


def _validate(path: Path, kind: str) -> None:
    out = subprocess.run(["virt-xml-validate", str(path), kind], capture_output=True, text=True)
    assert out.returncode == 0, f"{path.name}: {out.stdout}{out.stderr}"


# -- a private libvirt session of an unprivileged user -------------------------------

class Session:
    """``virsh -c qemu:///session`` as ``nobody`` (root's session is the system daemon)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            self.prefix = ["runuser", "-u", "nobody", "--"]
        self.env = ["env", f"HOME={home}", f"XDG_RUNTIME_DIR={home}/run",
                    f"XDG_CONFIG_HOME={home}/config", f"XDG_CACHE_HOME={home}/cache"]

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.prefix, *self.env, "virsh", "-c", "qemu:///session",
                               *args], capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, f"virsh {' '.join(args)}: {proc.stderr}"
        return proc

    def stop(self) -> None:
        """End the session daemon this test started (it would idle out after 120 s)."""
        pid = self.home / "run" / "libvirt" / "libvirtd.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid.read_text().strip()), signal.SIGTERM)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    if shutil.which("libvirtd") is None or shutil.which("virsh") is None:
        pytest.skip("libvirtd/virsh not installed (apt-get install libvirt-daemon "
                    "libvirt-daemon-driver-qemu libvirt-clients)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("no user nobody to run a libvirt session as")
    # under /tmp itself: nobody cannot enter pytest's private temporary directories
    home = Path(tempfile.mkdtemp(prefix="nxs-libvirt-"))
    os.chmod(home, 0o1777)
    s = Session(home)
    yield s
    s.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory the session's qemu (running as nobody) can reach."""
    d = Path(tempfile.mkdtemp(prefix="nxs-libvirt-build-"))
    os.chmod(d, 0o755)
    yield d
    from nixslave.root import force_rmtree

    force_rmtree(d)


def _world_readable(build: Path) -> None:
    """The session's qemu runs as nobody: let it open the disk read-write."""
    for p in build.rglob("*"):
        if p.is_file() and p.suffix == ".qcow2":
            os.chmod(p, 0o666)


# -- tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [
    pytest.param(v, marks=[pytest.mark.guestfs] if v == "bios" else []) for v in VARIANTS])
def test_domain_and_networks(variant: str, tmp_path: Path, request: pytest.FixtureRequest
                             ) -> None:
    """Each variant validates, names files of the published build and the planned NICs.

    Bugs it catches: paths into the scratch directory (gone after
    publishing), a kernel, initrd or command line that is not the
    toplevel's, disks without their label serials, a writable store disk
    or share, virtiofs without shared memory (qemu refuses vhost-user-fs),
    NICs without the planned MACs, a domain bridge that no network XML
    creates, and networks that give the host an address or DHCP.
    """
    out = tmp_path / "gw.xml"
    a = _build(out, "gw", **VARIANTS[variant])
    build = Path(os.path.realpath(out)).parent
    assert a.image.parent == build and build.name == a.build
    _validate(out, "domain")
    dom = ET.parse(out).getroot()
    spec_boot = VARIANTS[variant].get("boot", "direct")

    # every host path is absolute, exists now, and lies in the published build
    disks = {d.find("target").get("dev"): d for d in dom.iterfind("devices/disk")}  # type: ignore[union-attr]
    for d in disks.values():
        src = Path(d.find("source").get("file"))  # type: ignore[union-attr,arg-type]
        assert src.is_absolute() and src.parent == build and src.exists()
        assert d.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    vda = disks["vda"]
    assert vda.findtext("serial") == "nixslave-root" and vda.find("readonly") is None
    if variant == "store-disk":
        vdb = disks["vdb"]
        assert vdb.findtext("serial") == "nixslave-store" and vdb.find("readonly") is not None
    else:
        assert set(disks) == {"vda"}

    os_el = dom.find("os")
    assert os_el is not None
    if spec_boot == "direct":
        top = Path(a.toplevel)
        assert os_el.findtext("kernel") == os.path.realpath(top / "kernel")
        assert os_el.findtext("initrd") == os.path.realpath(top / "initrd")
        assert os_el.findtext("cmdline") == boot.cmdline(a.toplevel, _root("gw", **VARIANTS[
            variant]).spec) == a.cmdline
        assert os_el.find("boot") is None
    else:
        assert os_el.find("kernel") is None and os_el.find("boot").get("dev") == "hd"  # type: ignore[union-attr]

    shares = dom.findall("devices/filesystem")
    if variant in ("9p", "virtiofs"):
        (fs,) = shares
        src = Path(fs.find("source").get("dir"))  # type: ignore[union-attr,arg-type]
        assert src == build / "store" and src.is_dir()
        assert fs.find("target").get("dir") == "nixstore"  # type: ignore[union-attr]
        assert fs.find("readonly") is not None and fs.get("accessmode") == "passthrough"
        backing = dom.find("memoryBacking/access")
        if variant == "virtiofs":
            assert fs.find("driver").get("type") == "virtiofs"  # type: ignore[union-attr]
            assert backing is not None and backing.get("mode") == "shared"
        else:
            assert backing is None
    else:
        assert shares == []

    # NICs: the planned MACs in plan order; udp without <mtu> (libvirt refuses it)
    plan = load_plan(TOPOLOGY)
    ifaces = dom.findall("devices/interface")
    assert [i.find("mac").get("address") for i in ifaces] == [  # type: ignore[union-attr]
        i.mac for i in plan.node("gw").interfaces]
    assert [i.get("type") for i in ifaces] == ["udp", "bridge"]
    assert ifaces[0].find("mtu") is None
    bridges = {i.find("source").get("bridge") for i in ifaces if i.get("type") == "bridge"}  # type: ignore[union-attr]

    nets = sorted(build.glob("net-*.xml"))
    assert [n.name for n in nets] == ["net-lan.xml"] == a.extra["networks"]
    made = set()
    for n in nets:
        _validate(n, "network")
        net = ET.parse(n).getroot()
        assert net.find("forward") is None and net.find("ip") is None  # isolated, no host IP
        made.add(net.find("bridge").get("name"))  # type: ignore[union-attr]
        assert net.find("mtu").get("size") == "1500"  # type: ignore[union-attr]
    assert bridges == made

    session = request.getfixturevalue("session") if variant != "virtiofs" else None
    if session is not None:
        # libvirt's qemu driver itself accepts the domain (stricter than its schema)
        xml = session.home / "define.xml"  # where nobody can read it
        xml.write_text(out.read_text().replace('<domain type="kvm">', '<domain type="qemu">'))
        os.chmod(xml, 0o644)
        session.virsh("define", str(xml))
        session.virsh("undefine", "gw")


def test_virtiofs_readonly_is_optional_for_old_libvirt(tmp_path: Path) -> None:
    """virtiofs_readonly=False drops only <readonly/> of the virtiofs share.

    Bug it catches: the switch for libvirt < 11 (which refuses read-only
    virtiofs) also dropping the shared memory backing or the share itself.
    """
    out = tmp_path / "gw.xml"
    _build(out, "gw", opts=LibvirtOptions(gcroot=False, virtiofs_readonly=False),
           layout="shared", share="virtiofs")
    _validate(out, "domain")
    dom = ET.parse(out).getroot()
    (fs,) = dom.findall("devices/filesystem")
    assert fs.find("readonly") is None and fs.find("driver").get("type") == "virtiofs"  # type: ignore[union-attr]
    assert dom.find("memoryBacking/access").get("mode") == "shared"  # type: ignore[union-attr]


@pytest.mark.boot
def test_libvirt_boots_the_domain(session: Session, shared_tmp: Path) -> None:
    """libvirt defines and starts the domain XML as built; the guest reports its toplevel.

    Bugs it catches: XML that validates but libvirt's qemu driver refuses
    (it refused <mtu> on udp interfaces), a direct-boot command line that
    does not reach stage 2, a disk path that libvirt cannot open after
    publishing, and a serial console that does not carry the boot marker.
    """
    out = shared_tmp / "edge.xml"
    a = _build(out, "edge", opts=LibvirtOptions(gcroot=False, virt_type="qemu"))
    _world_readable(a.image.parent)
    session.virsh("define", str(out))
    try:
        session.virsh("start", "edge")
        pty = session.virsh("ttyconsole", "edge").stdout.strip()
        assert re.fullmatch(r"/dev/pts/\d+", pty), pty
        fd = os.open(pty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd)
            text = b""
            deadline = time.monotonic() + 300
            rx = re.compile(rb"%s (/nix/store/\S+)\r?\n" % BOOT_MARKER.encode())
            while not rx.search(text) and time.monotonic() < deadline:
                if select.select([fd], [], [], 1)[0]:
                    with contextlib.suppress(BlockingIOError):
                        text += os.read(fd, 65536)
        finally:
            os.close(fd)
        m = rx.search(text)
        assert m is not None, text.decode(errors="replace")[-2000:]
        assert m.group(1).decode() == a.toplevel
    finally:
        session.virsh("destroy", "edge", check=False)
        session.virsh("undefine", "edge", check=False)


@pytest.mark.parametrize("name, opts, match", [
    ("gw.qcow2", LibvirtOptions(gcroot=False), "named by its domain XML"),
    ("net-lan.xml", LibvirtOptions(gcroot=False), "named by its domain XML"),
    ("gw.xml", LibvirtOptions(gcroot=False, loader=Path("/usr/share/OVMF/OVMF_CODE.fd")),
     "needs --boot uefi"),
])
def test_bad_outputs_are_refused(tmp_path: Path, name: str, opts: LibvirtOptions,
                                 match: str) -> None:
    """Names that would collide with the build's own files are refused up front.

    Bugs it catches: ``-o net-lan.xml`` overwritten by the segment's network
    XML, ``-o gw.qcow2`` holding XML where a disk is expected, and a UEFI
    loader silently ignored on a BIOS machine.
    """
    with pytest.raises(BuildError, match=match):
        _build(tmp_path / name, "gw", opts=opts)
    assert list(tmp_path.iterdir()) == []


_KILLED = """
import sys
from pathlib import Path
from typing import Any
from nixslave import root
from nixslave.spec import MachineSpec
from nixslave.backends.libvirt import LibvirtBackend, LibvirtOptions
r = root.build(MachineSpec.parse({"name": "lk", "demo": True}))
LibvirtBackend().materialize(r, Path(sys.argv[1]), LibvirtOptions(gcroot=False),
                             progress=lambda m: print(m, file=sys.stderr, flush=True))
"""


@pytest.mark.parametrize("stage", ["making the root file system",
                                   "writing the domain and network XML"])
def test_killed_build_leaves_nothing_at_the_target(tmp_path: Path, stage: str) -> None:
    """SIGKILL mid-build: no domain XML at the target; the next build sweeps.

    Bugs it catches: the domain XML written under its public name before the
    disks exist (``virsh define`` would then take a domain without disks),
    and killed scratch never removed.
    """
    out = tmp_path / "lk.xml"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(out)], stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(stage):
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=300) == -signal.SIGKILL
    if out.is_symlink():
        # The last stage is short: on a loaded machine the kill can land
        # after the publishing rename.  Then the artifact must be whole.
        assert stage == "writing the domain and network XML"
        a = Artifact.load(out)
        assert all(Path(d).exists() for d in a.extra.get("disks", [])) and a.image.exists()
    else:
        assert not out.exists()
    done = subprocess.run([sys.executable, "-c", _KILLED, str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    base = tmp_path / ".lk.xml.nixslave"
    assert sorted(p.name for p in base.iterdir()) == sorted(["lock", Artifact.load(out).build])
