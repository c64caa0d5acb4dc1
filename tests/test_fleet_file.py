"""Fleet files, wiring decisions, the libvirt XML and the guest agent, without booting.

Each test's docstring names the bug it catches.  Expected media and bridge
names come from the plan and from netconf's nspawn wiring (what the
containers' artifacts record), never from the fleet code under test.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
import tty
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from nixmerge import eval_modules, merge

from nixslave.errors import NixslaveError, RunError
from nixslave.netconf import TopologyError, plan
from nixslave.netconf.wiring import nspawn_settings
from nixslave.nixos import guest_module
from nixslave.runtime import libvirt as lv
from nixslave.runtime.agent import QGA, SocketTransport
from nixslave.runtime.fleet import wire
from nixslave.runtime.fleetfile import fleet_from_data, json_schema, load_fleet
from nixslave.spec import MachineSpec

DATA = Path(__file__).parent / "data" / "fleet"


def _at(el: ET.Element, path: str) -> ET.Element:
    found = el.find(path)
    assert found is not None, path
    return found
DOCS = Path(__file__).parent.parent / "docs"
PAIR: dict[str, Any] = {"name": "duo", "pools": {"p2p4": "192.0.2.0/24", "p2p6": "2001:db8:1::/48"},
        "nodes": {"a": {"kind": "vm"}, "b": {"kind": "vm"}}, "links": [["a", "b"]]}


@pytest.mark.parametrize("machines, where, what", [
    ({"c": {}}, "machines.c", "not a node"),
    ({"a": {"layot": "disk"}}, "machines.a.layot", "unknown option"),
    ({"a": {"backend": "container", "boot": "bios"}}, "machines.a.boot", "container has no"),
    ({"a": {"layout": "shared", "boot": "bios"}}, "machines.a", "direct boot or uefi"),
    ({"a": {"memory": 8}}, "machines.a.memory", "outside"),
    ({"a": {"demo": True, "toplevel": "/nix/store/" + "a" * 32 + "-sys"}}, "machines.a",
     "exactly one"),
])
def test_bad_fleet_files_are_refused_with_where(machines: dict[str, Any], where: str,
                                                what: str) -> None:
    """Bug: a typo in a machine entry silently ignored (a VM booted with defaults),
    a machine for a node that does not exist, or an error that does not say which
    entry is wrong."""
    with pytest.raises((NixslaveError, TopologyError)) as exc:
        fleet_from_data({**PAIR, "machines": machines}, source=Path("duo.yml"))
    err: Any = exc.value
    assert where in err.where and what in err.what, (err.where, err.what)


def test_defaults_and_node_kinds_give_each_node_its_spec() -> None:
    """Bugs: ``defaults`` not applied (or overriding a machine's own value), a
    container node run as a VM, a relative config path resolved against the
    working directory instead of the fleet file."""
    data = {**PAIR, "nodes": {"a": {"kind": "vm"}, "b": {"kind": "container"}},
            "defaults": {"memory": 1024, "cpus": 2},
            "machines": {"a": {"config": "sys/a.nix", "cpus": 1, "switchable": True}}}
    f = fleet_from_data(data, source=Path("/srv/lab/duo.yml"))
    a, b = f.spec("a"), f.spec("b")
    assert (a.config, a.memory, a.cpus, a.agent, a.switchable) == (
        Path("/srv/lab/sys/a.nix"), 1024, 1, True, True)
    assert (f.backend("b"), b.demo, b.memory, b.agent, b.halt) == (
        "container", True, 1024, False, False)


def test_json_schema_in_the_docs_is_current() -> None:
    """Bug: the schema users point their editors at no longer matches what
    ``nixslave up`` accepts (regenerate with ``nixslave fleet schema``)."""
    on_disk = json.loads((DOCS / "fleet.schema.json").read_text())
    assert on_disk == json_schema()
    assert {"machines", "defaults", "nodes", "links"} <= set(on_disk["properties"])


def test_each_network_gets_the_medium_its_members_need(tmp_path: Path) -> None:
    """Bugs: a VM on a container's network left on a socket the container cannot
    reach, a VM-only LAN put on a bridge (a hub would do, without root), or a tap
    put on another bridge than the one the container's veth joins."""
    f = load_fleet(DATA / "mixed.yml")
    p = plan(f.topology)
    backends = {n: f.backend(n) for n in f.nodes()}
    w = wire(p, backends, tmp_path)
    kinds = {n: [a.split(",")[0] for a in args[1::4]] for n, args in w.net_args.items()}
    assert kinds == {"a": ["dgram"], "b": ["vde"], "r": ["dgram", "vde", "tap"]}
    (bridge, ports), = nspawn_settings(p, "c").bridges().items()
    assert w.bridges == [bridge] and w.ports["c"] == {ports[0]: bridge}
    assert [t["bridge"] for t in w.taps["r"].values()] == [bridge]
    macs = [a.split("mac=")[1].split(",")[0] for a in w.net_args["r"][3::4]]
    assert macs == [i.mac for i in p.node("r").interfaces]
    # libvirt has no hubs: the LAN becomes a bridge too
    w2 = wire(p, backends, tmp_path, hubs=False)
    assert len(w2.bridges) == 2 and w2.switches == {}


def test_libvirt_placement_makes_cross_host_links_udp() -> None:
    """Bugs: a link between machines on two libvirt hosts still wired to 127.0.0.1
    (each end talks to itself), crossed ports, or a segment silently split across
    hosts.  Only generated XML is checked: these machines have one libvirt host."""
    data = {**PAIR, "nodes": {"a": {"kind": "vm"}, "b": {"kind": "vm"}, "c": {"kind": "vm"}},
            "segments": {"lan": {}}, "links": [["a", "b"], ["b", "lan"], ["c", "lan"]],
            "pools": {**PAIR["pools"], "lan4": "198.51.100.0/24", "lan6": "2001:db8:2::/48"}}
    f = fleet_from_data(data)
    p = plan(f.topology)
    backends = {n: "vm" for n in f.nodes()}
    hosts = {"a": "qemu+ssh://hv-a.example/system", "b": "qemu+ssh://hv-b.example/system",
             "c": "qemu+ssh://hv-b.example/system"}
    a_if, _ = lv.interfaces(p, "a", backends, hosts, 30000)
    b_if, b_taps = lv.interfaces(p, "b", backends, hosts, 30000)
    ea, eb = a_if[0], b_if[0]
    assert ea.get("type") == eb.get("type") == "udp"
    # each end sends to the other's host and listens on all of its own addresses
    assert _at(ea, "source").get("address") == "hv-b.example"
    assert _at(eb, "source").get("address") == "hv-a.example"
    assert _at(ea, "source/local").get("address") == "0.0.0.0"
    assert _at(ea, "source/local").get("port") == _at(eb, "source").get("port")
    assert _at(eb, "source/local").get("port") == _at(ea, "source").get("port")
    assert b_if[1].get("type") == "ethernet" and next(iter(b_taps)).startswith("nt")
    hosts["b"] = "qemu:///system"  # a host others cannot name
    with pytest.raises(RunError, match="names no host"):
        lv.interfaces(p, "a", backends, hosts, 30000)
    hosts["b"] = "qemu+ssh://hv-b.example/system"
    hosts["c"] = "qemu+ssh://hv-c.example/system"
    with pytest.raises(RunError, match="spans libvirt hosts"):
        lv.interfaces(p, "b", backends, hosts, 30000)


def test_libvirt_domain_keeps_the_build_and_adds_agent_console_and_label(tmp_path: Path
                                                                         ) -> None:
    """Bugs: the fleet's domain boots the artifact's pristine disk instead of the
    node's overlay, has no agent channel (exec and switch fail), logs no console
    (no boot marker), or lets libvirt chown the host store's kernel."""
    base = ("<domain type='kvm'><name>a</name><uuid>x</uuid><memory>512</memory><os>"
            "<kernel>/k</kernel><cmdline>c</cmdline></os><devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            "<source file='/build/a.qcow2'/><target dev='vda' bus='virtio'/></disk>"
            "<interface type='udp'/><serial type='pty'><target port='0'/></serial>"
            "</devices></domain>")
    xml = lv.domain_xml(base, name="duo-a", overlay=tmp_path / "a-b-1.qcow2", ifaces=[],
                        console_log=tmp_path / "console.log", virt_type="qemu")
    dom = ET.fromstring(xml)
    assert dom.get("type") == "qemu" and dom.findtext("name") == "duo-a"
    assert _at(dom, "devices/disk/source").get("file") == str(tmp_path / "a-b-1.qcow2")
    assert dom.find("devices/interface") is None
    assert _at(dom, "devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert _at(dom, "devices/serial/log").get("file") == str(tmp_path / "console.log")
    sec = _at(dom, "seclabel")
    assert sec.get("relabel") == "no" and sec.findtext("label") == "+0:+0"


@pytest.mark.nix
def test_guest_module_enables_the_agent_and_keeps_switching_when_asked(tmp_path: Path
                                                                       ) -> None:
    """Bugs: qemu-ga missing from an agent guest (exec and switch cannot reach it),
    switch-to-configuration still disabled by slave.nix's mkDefault on a
    switchable machine, or our setting beating the user's own choice."""
    spec = MachineSpec.parse({"name": "web", "demo": True, "agent": True, "switchable": True})
    guest = tmp_path / "guest.nix"
    guest.write_text(guest_module(spec))
    cfg = merge(eval_modules(guest), set())
    assert cfg["services.qemuGuest.enable"] is True
    assert cfg["system.switch.enable"] is True
    user = tmp_path / "user.nix"
    user.write_text("{ ... }: { system.switch.enable = false; }\n")
    cfg = merge(eval_modules(guest) + eval_modules(user), set())
    assert cfg["system.switch.enable"] is False
    plain = tmp_path / "plain.nix"
    plain.write_text(guest_module(MachineSpec.parse({"name": "web", "demo": True})))
    cfg = merge(eval_modules(plain), set())
    assert cfg["system.switch.enable"] is False and "services.qemuGuest.enable" not in cfg


class _PtyTransport(SocketTransport):
    """The agent's port is a pty here: the same bytes as a virtio-serial port."""

    def __init__(self, fd: int) -> None:  # no socket, no lock
        self.fd, self.where, self._buf, self._lock = fd, "pty", b"", -1
        self.sock = None  # type: ignore[assignment]

    def send(self, request: dict[str, Any]) -> None:
        os.write(self.fd, json.dumps(request, separators=(",", ":")).encode() + b"\n")

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if select.select([self.fd], [], [], left)[0]:
                self._buf += os.read(self.fd, 1 << 16)
        line, _, self._buf = self._buf.partition(b"\n")
        return line


@pytest.mark.nix
def test_demo_agent_speaks_the_guest_agent_protocol(tmp_path: Path) -> None:
    """Bugs: the demo's agent and the host client disagreeing on the protocol (the
    exit code or stderr lost, base64 mangled, a file write short by its padding),
    or a stale reply from an earlier client taken for the answer."""
    from nixslave.demo import build_demo

    top = build_demo("agent", halt=False)
    m = re.search(r"/nix/store/\S+-nixslave-agent", Path(top, "init").read_text())
    assert m is not None
    agent = m[0]
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    env = {"PATH": "/usr/bin:/bin"}
    # the agent keeps its state under /run/nixslave-agent: give it a private /run
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c",
                             f"mount -t tmpfs tmpfs /run && exec {agent} {os.ttyname(slave)}"],
                            env=env, stdin=subprocess.DEVNULL)
    try:
        t = _PtyTransport(master)
        os.write(master, b'{"return":"stale"}\n')  # junk an earlier client left
        t.sync(10)
        q = QGA(t, where="pty")
        q.ping()
        r = q.run(["sh", "-c", 'printf "%s|" "$@"; echo err >&2; exit 7', "x", "a b", "it's"])
        assert (r.exitcode, r.stdout, r.stderr) == (7, b"a b|it's|", b"err\n")
        data = bytes(range(256)) * 300 + b"\x00"  # several chunks, odd length
        q.write_file(str(tmp_path / "blob"), data)
        assert (tmp_path / "blob").read_bytes() == data
        assert q.read_file(str(tmp_path / "blob")) == data
        with pytest.raises(RunError, match="not supported"):
            q.command("guest-get-osinfo")
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)


@pytest.mark.tools("qemu-ga")
def test_host_client_speaks_to_the_real_qemu_ga(tmp_path: Path) -> None:
    """Bug: a host client that only works with the demo's stand-in agent (a field
    qemu-ga names otherwise, exit codes or base64 output read wrongly, no reply to
    guest-shutdown taken for a hang).  qemu-ga itself (Debian's qemu-guest-agent,
    what services.qemuGuest runs on NixOS) listens on a unix socket here instead of
    a virtio-serial port; the protocol is the same."""
    sock = tmp_path / "qga.sock"
    (tmp_path / "state").mkdir()
    proc = subprocess.Popen(["qemu-ga", "-m", "unix-listen", "-p", str(sock),
                             "-t", str(tmp_path / "state"), "-f", str(tmp_path / "pid"),
                             "-l", str(tmp_path / "log")], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with QGA.connect(sock, where="qemu-ga", timeout=20) as q:
            q.ping()
            r = q.run(["sh", "-c", 'printf "%s|" "$@"; echo err >&2; exit 7', "x", "a b",
                       "it's"])
            assert (r.exitcode, r.stdout, r.stderr) == (7, b"a b|it's|", b"err\n")
            data = bytes(range(256)) * 300 + b"\x00"
            q.write_file(str(tmp_path / "blob"), data)
            assert (tmp_path / "blob").read_bytes() == data
            assert q.read_file(str(tmp_path / "blob")) == data
        # a second client resynchronises on the same socket
        with QGA.connect(sock, where="qemu-ga", timeout=20) as q:
            assert q.run(["true"]).exitcode == 0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
