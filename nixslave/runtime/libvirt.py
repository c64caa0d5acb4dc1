"""The libvirt engine: the same fleet, defined and started through libvirt.

``nixslave up FLEET.yml --engine libvirt [--connect URI]`` builds each VM as
a libvirt artifact (:mod:`nixslave.backends.libvirt`: disks plus domain
XML) and defines a domain from that XML with the fleet's own parts:

* the name ``<fleet>-<node>``, the VM's qcow2 overlay as its root disk;
* NICs from the plan: a p2p link between two VMs is a ``udp`` pair on
  127.0.0.1 (rootless, as the backend writes it); a link or segment with a
  container, and every multi-access segment, is a tap (``type='ethernet'``)
  that nixslave moves into the fleet's namespace and onto the network's
  bridge right after the start, as ``container.join_bridge`` does;
  libvirt's own networks would put the bridges in the host's namespace;
* the guest agent channel ``org.qemu.guest_agent.0`` (libvirt talks to it:
  ``virDomainQemuAgentCommand``), a serial console logged to the node's run
  directory (boot marker, ``nixslave logs``);
* a static DAC label (``+0:+0``, ``relabel='no'``): libvirt's dynamic
  ownership would otherwise chown the host store's kernel and the disks.

Containers still run under nspawn, owned by the fleet's supervisor, which
also owns the namespace and the bridges.  ``down`` shuts the domains down
(agent, then ACPI), destroys what is left after the timeout and undefines
them.

Placement: ``machines.<n>.host: URI`` defines the node on that libvirt
host.  A p2p link between two hosts becomes a ``udp`` pair between the
hosts' addresses (the URIs' host names); segments and container links
cannot span hosts and are refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nixslave.backends.ext4 import derived_uuid
from nixslave.errors import RunError
from nixslave.netconf import Plan
from nixslave.netconf.wiring import short_id
from nixslave.progress import Progress
from nixslave.runtime import accel
from nixslave.runtime import fleet as fl
from nixslave.runtime.agent import QGA
from nixslave.runtime.fleetfile import Fleet
from nixslave.runtime.supervisor import BOOT_RE, SWITCH_RE

DEFAULT_URI = "qemu:///system"
LV_STATE = "libvirt.json"
QGA_NAME = "org.qemu.guest_agent.0"


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise RunError("the libvirt Python bindings are missing", where="--engine libvirt",
                       hint="apt-get install python3-libvirt (and use a venv with "
                            "--system-site-packages)") from None
    # libvirt prints every error on stderr by default; ours are raised instead.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def connect(uri: str) -> Any:
    lv = _libvirt()
    try:
        return lv.open(uri)
    except lv.libvirtError as exc:
        raise RunError(f"cannot connect to libvirt: {exc.get_error_message()}", where=uri,
                       hint="is libvirtd running? (libvirtd -d, virtlogd -d)") from None


def domain_name(fleet: str, node: str) -> str:
    return f"{fleet}-{node}"


def is_libvirt_fleet(name: str) -> bool:
    return (fl.run_dir(name) / LV_STATE).exists()


def _host_of(uri: str, node: str) -> str:
    """The address other hosts reach a machine's host by: its URI's host name."""
    host = urlparse(uri).hostname
    if not host:
        raise RunError(f"{uri} names no host that the other hosts could send to",
                       where=f"machines.{node}.host",
                       hint="give every host of a cross-host link by name, e.g. "
                            "qemu+ssh://hv1.example/system")
    return host


def base_port(name: str) -> int:
    """UDP ports of the fleet's p2p links: two per link from here, per run directory."""
    return 20000 + int(short_id(str(fl.run_dir(name)), name), 16) % 4000 * 10


def interfaces(plan: Plan, node: str, backends: Mapping[str, str], hosts: Mapping[str, str],
               port0: int) -> tuple[list[ET.Element], dict[str, dict[str, Any]]]:
    """The node's ``<interface>`` elements and the taps to put on bridges afterwards."""
    p2p_index = {nid: k for k, nid in enumerate(
        n for n, net in plan.networks.items() if net.kind == "p2p")}
    out: list[ET.Element] = []
    taps: dict[str, dict[str, Any]] = {}
    for i in plan.node(node).interfaces:
        net = plan.networks[i.link_id]
        members = [m for m, _ in net.members]
        vm_p2p = net.kind == "p2p" and all(backends[m] == "vm" for m in members)
        if not vm_p2p and len({hosts[m] for m in members}) > 1:
            raise RunError(f"network {i.link_id} spans libvirt hosts", where=f"node {node}",
                           hint="only p2p links between two VMs may join two hosts")
        if vm_p2p:
            idx = members.index(node)
            peer = members[1 - idx]
            port = port0 + 2 * p2p_index[i.link_id]
            same = hosts[peer] == hosts[node]
            el = ET.Element("interface", type="udp")
            src = ET.SubElement(el, "source", address="127.0.0.1" if same else
                                _host_of(hosts[peer], peer), port=str(port + 1 - idx))
            ET.SubElement(src, "local", address="127.0.0.1" if same else "0.0.0.0",
                          port=str(port + idx))
        else:
            tap = "nt" + short_id(plan.name, node, i.link_id, n=12)
            taps[tap] = {"bridge": fl.bridge_name(plan, i.link_id), "mtu": i.mtu}
            el = ET.Element("interface", type="ethernet")
            ET.SubElement(el, "target", dev=tap, managed="yes")
            ET.SubElement(el, "mtu", size=str(i.mtu))
        ET.SubElement(el, "mac", address=i.mac)
        ET.SubElement(el, "model", type="virtio")
        out.append(el)
    return out, taps


def domain_xml(base_xml: str, *, name: str, overlay: Path, ifaces: list[ET.Element],
               console_log: Path, virt_type: str, next_boot: dict[str, Any] | None = None
               ) -> str:
    """The artifact's domain XML with the fleet's name, disk, NICs, agent and console."""
    dom = ET.fromstring(base_xml)
    dom.set("type", virt_type)
    dom.find("name").text = name  # type: ignore[union-attr]
    dom.find("uuid").text = derived_uuid("libvirt-fleet-domain", name)  # type: ignore[union-attr]
    devices = dom.find("devices")
    assert devices is not None
    for d in devices.findall("disk"):
        tgt = d.find("target")
        if tgt is not None and tgt.get("dev") == "vda":
            d.find("source").set("file", str(overlay))  # type: ignore[union-attr]
            d.find("driver").set("type", "qcow2")  # type: ignore[union-attr]
    for el in devices.findall("interface"):
        devices.remove(el)
    for el in devices.findall("serial") + devices.findall("console"):
        devices.remove(el)
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(console_log), append="off")
    ET.SubElement(serial, "target", port="0")
    con = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(con, "target", type="serial", port="0")
    chan = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(chan, "source", mode="bind")
    ET.SubElement(chan, "target", type="virtio", name=QGA_NAME)
    devices.extend(ifaces)
    if virt_type == "qemu" and dom.find("cpu") is None:
        ET.SubElement(dom, "cpu", mode="maximum")  # -cpu max, as run.py gives TCG
    sec = ET.SubElement(dom, "seclabel", type="static", model="dac", relabel="no")
    ET.SubElement(sec, "label").text = "+0:+0"
    if next_boot is not None:
        os_el = dom.find("os")
        top = Path(next_boot["toplevel"])
        for tag, value in (("kernel", os.path.realpath(top / "kernel")),
                           ("initrd", os.path.realpath(top / "initrd")),
                           ("cmdline", next_boot["append"])):
            found = os_el.find(tag) if os_el is not None else None
            if found is not None:
                found.text = value
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def _next_boot(name: str, node: str, build: str) -> dict[str, Any] | None:
    try:
        nb: dict[str, Any] = json.loads(fl.next_boot_path(name, node).read_text())
    except (OSError, ValueError):
        return None
    return nb if nb.get("build") == build and "append" in nb else None


def read_lv(name: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((fl.run_dir(name) / LV_STATE).read_text())
        return data
    except (OSError, ValueError):
        return {"fleet": name, "nodes": {}}


def set_current(name: str, node: str, toplevel: str) -> None:
    data = read_lv(name)
    data["nodes"][node]["current"] = toplevel
    fl.write_json(fl.run_dir(name) / LV_STATE, data)


def _move_tap(ns: str, tap: str, t: dict[str, Any], timeout: float = 30.0) -> None:
    """libvirt made the tap in the host's namespace; qemu keeps its fd when it moves."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["ip", "link", "show", "dev", tap], capture_output=True).returncode:
        if subprocess.run(["ip", "-n", ns, "link", "show", "dev", tap],
                          capture_output=True).returncode == 0:
            break  # already moved
        if time.monotonic() > deadline:
            raise RunError(f"tap {tap} did not appear", where="libvirt",
                           hint="see /var/log/libvirt/qemu/")
        time.sleep(0.05)
    else:
        subprocess.run(["ip", "link", "set", "dev", tap, "netns", ns], check=True)
    for args in (["mtu", str(t["mtu"])], ["master", t["bridge"]], ["up"]):
        subprocess.run(["ip", "-n", ns, "link", "set", "dev", tap, *args], check=True,
                       capture_output=True)


def up(fleet: Fleet, *, uri: str | None = None, timeout: float = 600.0,
       progress: Progress | None = None) -> dict[str, Any]:
    """Define and start the fleet's VMs under libvirt; containers under the supervisor."""
    say = progress or (lambda _m: None)
    uri = uri or DEFAULT_URI
    plan = fl.make_plan_of(fleet)
    lv = _libvirt()
    with fl.ops_lock(fleet.name):
        built = fl.build(fleet, plan, vm_format="libvirt", progress=say)
        backends = {n: fleet.backend(n) for n in fleet.nodes()}
        hosts = {n: fleet.machine(n).host or uri for n in fleet.nodes()}
        rd = fl.run_dir(fleet.name)
        w = fl.wire(plan, backends, rd / "net", hubs=False)
        desired = fl.describe(fleet, plan, {n: b for n, b in built.items()
                                            if backends[n] == "container"}, only_containers=True)
        desired["bridges"] = w.bridges
        if not fl.supervisor_alive(fleet.name):
            say(f"starting the supervisor of fleet {fleet.name} (containers, namespace)")
            fl.start_supervisor(fleet.name)
        report = fl.request(fleet.name, {"op": "apply", "desired": desired},
                            timeout=900)["report"]
        state = read_lv(fleet.name)
        state.update({"fleet": fleet.name, "uri": uri, "netns": desired["netns"]})
        virt_type = "kvm" if accel.detect().kvm_usable else "qemu"
        port0 = base_port(fleet.name)
        old = state.get("nodes", {})
        nodes: dict[str, Any] = {}
        for node in fleet.nodes():
            if backends[node] != "vm":
                continue
            b = built[node]
            ifaces, taps = interfaces(plan, node, backends, hosts, port0)
            (rd / node).mkdir(mode=0o700, exist_ok=True)
            console = rd / node / "console.log"
            overlay = fl.overlay_for(fleet.name, node, b.artifact)
            dname = domain_name(fleet.name, node)
            base = b.artifact.image.read_text()
            planned = domain_xml(base, name=dname, overlay=overlay, ifaces=ifaces,
                                 console_log=console, virt_type=virt_type)
            fp = derived_uuid("fingerprint", planned)
            conn = connect(hosts[node])
            try:
                dom = conn.lookupByName(dname)
            except lv.libvirtError:
                dom = None
            prev = old.get(node, {})
            if dom is not None and dom.isActive() and prev.get("fingerprint") == fp:
                nodes[node] = prev
                report["kept"].append(node)
                continue
            if dom is not None:
                report["restarted" if dom.isActive() else "started"].append(node)
                with contextlib.suppress(lv.libvirtError):
                    dom.destroy()
                with contextlib.suppress(lv.libvirtError):
                    dom.undefine()
            else:
                report["started"].append(node)
            xml = domain_xml(base, name=dname, overlay=overlay, ifaces=ifaces,
                             console_log=console, virt_type=virt_type,
                             next_boot=_next_boot(fleet.name, node, b.artifact.build))
            (rd / node / "domain.xml").write_text(xml)
            console.unlink(missing_ok=True)
            try:
                dom = conn.defineXML(xml)
                dom.create()
            except lv.libvirtError as exc:
                raise RunError(f"libvirt refused the domain: {exc.get_error_message()}",
                               where=f"node {node}", hint=f"see {rd / node / 'domain.xml'}"
                               ) from None
            for tap, t in taps.items():
                _move_tap(desired["netns"], tap, t)
            nodes[node] = {"domain": dname, "uri": hosts[node], "fingerprint": fp,
                           "started": time.time(), "dir": str(rd / node), "taps": taps,
                           "artifact": str(fl.artifact_path(fleet.name, node, "vm", "libvirt")),
                           "build": b.artifact.build, "toplevel": b.artifact.toplevel,
                           "addresses": [str(x.ip) for x in plan.node(node).addresses()]}
        for node, prev in old.items():
            if node not in nodes:
                _destroy(prev, 5)
                report["stopped"].append(node)
        state["nodes"] = nodes
        fl.write_json(rd / LV_STATE, state)
        fresh = report["started"] + report["restarted"]
        deadline = time.monotonic() + timeout
        while True:
            st = status(fleet.name)
            pending = [n for n in fresh if not st["nodes"].get(n, {}).get("booted")]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise RunError(f"no boot marker within {timeout:.0f}s", where=f"node {pending[0]}",
                               hint=f"nixslave logs {pending[0]}")
            time.sleep(0.5)
    return {"fleet": fleet.name, "engine": "libvirt", "report": report, "state": st,
            "rebuilt": sorted(n for n, b in built.items() if b.rebuilt),
            "changed": bool(fresh or report["stopped"])}


def _scan(log: Path) -> tuple[str | None, str | None]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None, None
    booted = [m.group(1) for m in BOOT_RE.finditer(text)]
    switched = [m.group(1) for m in SWITCH_RE.finditer(text)]
    return (booted[-1] if booted else None,
            switched[-1] if switched else booted[-1] if booted else None)


def status(name: str) -> dict[str, Any]:
    """The supervisor's containers plus each domain's state as libvirt reports it."""
    lv = _libvirt()
    try:
        state = fl.status(name)
    except RunError:
        state = {"fleet": name, "nodes": {}}
    data = read_lv(name)
    state["engine"] = "libvirt"
    state["uri"] = data.get("uri")
    for node, info in data.get("nodes", {}).items():
        booted, current = _scan(Path(info["dir"]) / "console.log")
        entry = {"kind": "vm", "domain": info["domain"], "uri": info["uri"],
                 "started": info["started"], "dir": info["dir"], "agent": True,
                 "artifact": info["artifact"], "build": info["build"],
                 "toplevel": info["toplevel"], "addresses": info["addresses"],
                 "booted": booted, "current": info.get("current") or current,
                 "fingerprint": info["fingerprint"], "pid": None, "state": "stopped"}
        if info.get("stopped"):
            state["nodes"][node] = entry
            continue
        try:
            dom = connect(info["uri"]).lookupByName(info["domain"])
            if dom.isActive():
                entry["state"] = "running" if booted else "booting"
                with contextlib.suppress(OSError, ValueError):
                    entry["pid"] = int(Path(f"/run/libvirt/qemu/{info['domain']}.pid")
                                       .read_text())
        except (lv.libvirtError, RunError):
            entry["state"] = "lost"
        state["nodes"][node] = entry
    return state


class LibvirtTransport:
    """QGA requests through libvirt's own agent connection (it does guest-sync itself)."""

    def __init__(self, dom: Any) -> None:
        self.dom = dom

    def call(self, request: dict[str, Any], timeout: float) -> Any:
        import libvirt
        import libvirt_qemu

        try:
            out = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(request),
                                                max(1, int(timeout)), 0)
        except libvirt.libvirtError as exc:
            msg = exc.get_error_message()
            if "timeout" in msg.lower() or "not responding" in msg.lower():
                raise TimeoutError from None
            return {"error": {"class": "GenericError", "desc": msg}}
        return json.loads(out) if out else {}

    def send(self, request: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            self.call(request, 5)

    def close(self) -> None:
        pass


def libvirt_agent(state: dict[str, Any], node: str, *, where: str) -> QGA:
    info = state["nodes"][node]
    dom = connect(info["uri"]).lookupByName(info["domain"])
    return QGA(LibvirtTransport(dom), where=where)


def console(name: str, node: str) -> int:
    info = read_lv(name)["nodes"][node]
    return subprocess.call(["virsh", "-c", info["uri"], "console", info["domain"]])


def set_next_boot(name: str, node: str, nb: dict[str, Any]) -> None:
    """Redefine the domain with the new kernel and command line: its next boot."""
    info = read_lv(name)["nodes"][node]
    xml_path = Path(info["dir"]) / "domain.xml"
    xml = xml_path.read_text()
    top = Path(nb["toplevel"])
    for tag, value in (("kernel", os.path.realpath(top / "kernel")),
                       ("initrd", os.path.realpath(top / "initrd")),
                       ("cmdline", nb["append"])):
        xml = re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", xml)
    connect(info["uri"]).defineXML(xml)
    xml_path.write_text(xml)


def restart(name: str, node: str) -> None:
    """Power-cycle a domain (a rollback when its guest stopped answering)."""
    data = read_lv(name)
    info = data["nodes"][node]
    dom = connect(info["uri"]).lookupByName(info["domain"])
    lv = _libvirt()
    with contextlib.suppress(lv.libvirtError):
        dom.destroy()
    (Path(info["dir"]) / "console.log").unlink(missing_ok=True)
    dom.create()
    for tap, t in info.get("taps", {}).items():
        _move_tap(data["netns"], tap, t)
    info["started"] = time.time()
    info.pop("current", None)
    fl.write_json(fl.run_dir(name) / LV_STATE, data)


def _destroy(info: dict[str, Any], timeout: float) -> None:
    lv = _libvirt()
    try:
        dom = connect(info["uri"]).lookupByName(info["domain"])
    except (lv.libvirtError, RunError):
        return
    if dom.isActive():
        with contextlib.suppress(Exception):
            QGA(LibvirtTransport(dom), where=info["domain"]).shutdown()
        with contextlib.suppress(lv.libvirtError):
            dom.shutdown()
        deadline = time.monotonic() + timeout
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(lv.libvirtError):
            if dom.isActive():
                dom.destroy()
    with contextlib.suppress(lv.libvirtError):
        dom.undefine()


def down(name: str, nodes: list[str] | None = None, *, timeout: float = 20.0,
         progress: Progress | None = None) -> dict[str, Any]:
    """Shut the domains down (destroy after ``timeout``), undefine them; then the rest."""
    say = progress or (lambda _m: None)
    data = read_lv(name)
    vms = {n: i for n, i in data.get("nodes", {}).items() if not nodes or n in nodes}
    for info in vms.values():
        say(f"stopping {info['domain']}")
        _destroy(info, timeout)
        for tap in info.get("taps", {}):
            subprocess.run(["ip", "link", "del", tap], capture_output=True)
    rest = [n for n in nodes or [] if n not in vms]
    if nodes:
        if rest:
            fl.down(name, rest, timeout=timeout, progress=say)
        for n in vms:
            data["nodes"][n]["stopped"] = True
        fl.write_json(fl.run_dir(name) / LV_STATE, data)
        return {"fleet": name, "stopped": nodes}
    return fl.down(name, None, timeout=timeout, progress=say)
