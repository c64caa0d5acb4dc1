"""The host's side of a plan: how each backend connects the NICs.

Everything here is data (argv fragments, settings, XML, command lists) that
backends consume; nothing is started. Wiring is rootless where the backend
allows it: p2p links are a pair of unix or loopback sockets, segments a
vde_switch in hub mode on a unix socket directory, never multicast, so
traffic stays on the host's loopback and unix sockets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import quoteattr

from .errors import WiringError
from .plan import InterfacePlan, Plan

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the trailing NUL


def short_id(*parts: str, n: int = 8) -> str:
    """Hash-based short names keep socket paths and Linux interface names
    within their limits whatever the topology's names are."""
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).hexdigest()[:n]


def _sock(rundir: Path, name: str) -> str:
    path = str(rundir / name)
    if len(path.encode()) > SUN_PATH_MAX:
        raise WiringError(
            f"socket path {path!r} is {len(path.encode())} bytes, over the unix limit of 107",
            where=str(rundir), hint="use a shorter run directory, e.g. under /tmp or /run",
        )
    return path


@dataclass
class SwitchSpec:
    """One vde_switch (hub mode) per multi-access segment."""

    segment: str
    sock: str
    argv: list[str]


def qemu_switches(plan: Plan, rundir: Path) -> list[SwitchSpec]:
    """vde_switch processes to start before the guests, one per segment.

    Start each ``argv`` (it stays in the foreground) and wait until
    ``<sock>/ctl`` exists before starting qemu, as the NixOS test driver does.
    """
    out = []
    for nid, net in plan.networks.items():
        if net.kind == "p2p":
            continue
        sock = _sock(rundir, f"s{short_id(plan.name, nid)}.vde")
        ports = max(32, 2 * len(net.members))
        out.append(SwitchSpec(
            segment=nid, sock=sock,
            argv=["vde_switch", "--hub", "--sock", sock, "--dirmode", "0700",
                  "--numports", str(ports)],
        ))
    return out


def _p2p_end(plan: Plan, node: str, i: InterfacePlan) -> tuple[int, str, str]:
    members = plan.networks[i.link_id].members
    idx = [m for m, _ in members].index(node)
    return idx, members[0][0], members[1][0]


def qemu_wiring(plan: Plan, node: str, rundir: Path,
                transport: Literal["dgram", "stream"] = "dgram",
                *, address: Literal["unix", "loopback"] = "unix",
                base_port: int = 40000, model: str = "virtio-net-pci") -> list[str]:
    """qemu argv fragments: one ``-netdev``/``-device`` pair per interface.

    p2p links: ``dgram`` (each end binds its own socket and sends to the
    peer's; no start order) or ``stream`` (the first end listens, the second
    connects, so the first must be started first). Segments: ``-netdev vde``
    on the socket directory of the segment's switch (see qemu_switches).
    With ``address="loopback"`` p2p links use 127.0.0.1 ports from
    ``base_port`` (two per link, in declaration order).
    """
    np = plan.node(node)
    p2p_index = {nid: k for k, nid in enumerate(
        n for n, net in plan.networks.items() if net.kind == "p2p")}
    args: list[str] = []
    for k, i in enumerate(np.interfaces):
        nid = f"n{k}"
        net = plan.networks[i.link_id]
        if net.kind != "p2p":
            sock = _sock(rundir, f"s{short_id(plan.name, i.link_id)}.vde")
            netdev = f"vde,id={nid},sock={sock}"
        else:
            idx, _, _ = _p2p_end(plan, node, i)
            h = short_id(plan.name, i.link_id)
            if address == "unix":
                me = _sock(rundir, f"l{h}-{idx}.sock")
                peer = _sock(rundir, f"l{h}-{1 - idx}.sock")
                if transport == "dgram":
                    netdev = (f"dgram,id={nid},local.type=unix,local.path={me},"
                              f"remote.type=unix,remote.path={peer}")
                else:
                    path = _sock(rundir, f"l{h}.sock")
                    server = "on" if idx == 0 else "off"
                    netdev = f"stream,id={nid},server={server},addr.type=unix,addr.path={path}"
            else:
                port = base_port + 2 * p2p_index[i.link_id]
                mine, theirs = port + idx, port + 1 - idx
                if transport == "dgram":
                    netdev = (f"dgram,id={nid},local.type=inet,local.host=127.0.0.1,"
                              f"local.port={mine},remote.type=inet,remote.host=127.0.0.1,"
                              f"remote.port={theirs}")
                else:
                    server = "on" if idx == 0 else "off"
                    netdev = (f"stream,id={nid},server={server},addr.type=inet,"
                              f"addr.host=127.0.0.1,addr.port={port}")
        args += ["-netdev", netdev, "-device",
                 f"{model},netdev={nid},mac={i.mac},host_mtu={i.mtu}"]
    return args


@dataclass
class VBoxNic:
    index: int  # VBoxManage NIC number, from 1
    intnet: str
    mac: str
    nictype: str = "virtio"

    def vboxmanage_args(self) -> list[str]:
        """Arguments for ``VBoxManage modifyvm <vm>``."""
        n = self.index
        return [f"--nic{n}", "intnet", f"--intnet{n}", self.intnet,
                f"--macaddress{n}", self.mac.replace(":", "").upper(),
                f"--nictype{n}", self.nictype, f"--cableconnected{n}", "on"]


def virtualbox_nics(plan: Plan, node: str, nictype: str = "virtio") -> list[VBoxNic]:
    """One internal network per segment or p2p link; VirtualBox has at most
    8 NICs per VM (the limit of the ICH9 chipset)."""
    np = plan.node(node)
    if len(np.interfaces) > 8:
        raise WiringError(f"{len(np.interfaces)} interfaces, VirtualBox allows 8",
                          where=f"nodes.{node}", hint="split the node or use another backend")
    return [VBoxNic(index=k + 1, intnet=f"nxs-{plan.name}-{i.link_id}"[:63], mac=i.mac,
                    nictype=nictype) for k, i in enumerate(np.interfaces)]


@dataclass
class NspawnInterface:
    ifname: str
    host_ifname: str
    bridge: str
    mode: Literal["veth", "bridge", "zone"]


@dataclass
class NspawnSettings:
    interfaces: list[NspawnInterface] = field(default_factory=list)

    def ini(self) -> str:
        """The [Network] section of a ``.nspawn`` file."""
        lines = ["[Network]", "Private=yes"]
        for i in self.interfaces:
            if i.mode == "zone":
                lines.append(f"Zone={i.bridge.removeprefix('vz-')}")
            elif i.mode == "bridge":
                lines.append(f"Bridge={i.bridge}")
            else:
                lines.append(f"VirtualEthernetExtra={i.host_ifname}:{i.ifname}")
        return "\n".join(lines) + "\n"

    def bridges(self) -> dict[str, list[str]]:
        """Host bridges the backend creates, with the host-side veths to enslave."""
        out: dict[str, list[str]] = {}
        for i in self.interfaces:
            if i.mode == "veth":
                out.setdefault(i.bridge, []).append(i.host_ifname)
        return out


def nspawn_settings(plan: Plan, node: str) -> NspawnSettings:
    """Every interface is a VirtualEthernetExtra= veth whose host end joins a
    bridge per link or segment: nspawn allows only one Bridge=/Zone=, which
    would limit a container to one network. The container side already has
    the planned name; the rendered config sets its MAC."""
    np = plan.node(node)
    out = NspawnSettings()
    for i in np.interfaces:
        out.interfaces.append(NspawnInterface(
            ifname=i.name, host_ifname=f"vx{short_id(plan.name, node, i.link_id, n=12)}",
            bridge=f"nb{short_id(plan.name, i.link_id, n=12)}", mode="veth",
        ))
    return out


def libvirt_interfaces(plan: Plan, node: str, *, base_port: int = 40000) -> str:
    """libvirt ``<interface>`` elements: p2p links as ``udp`` pairs on
    loopback (rootless), segments as bridges the host provides."""
    np = plan.node(node)
    p2p_index = {nid: k for k, nid in enumerate(
        n for n, net in plan.networks.items() if net.kind == "p2p")}
    parts = []
    for i in np.interfaces:
        net = plan.networks[i.link_id]
        body = [f"  <mac address={quoteattr(i.mac)}/>", "  <model type='virtio'/>",
                f"  <alias name={quoteattr('ua-nxs-' + i.name)}/>"]
        if net.kind != "p2p":
            # libvirt 9 refuses <mtu> on udp interfaces at define time (the
            # schema allows it); the guest sets a p2p link's MTU itself.
            body.insert(2, f"  <mtu size={quoteattr(str(i.mtu))}/>")
        if net.kind == "p2p":
            idx, _, _ = _p2p_end(plan, node, i)
            port = base_port + 2 * p2p_index[i.link_id]
            head = "<interface type='udp'>"
            body.insert(0, f"  <source address='127.0.0.1' port='{port + 1 - idx}'>"
                           f"<local address='127.0.0.1' port='{port + idx}'/></source>")
        else:
            head = "<interface type='bridge'>"
            bridge = "nb" + short_id(plan.name, i.link_id, n=12)
            body.insert(0, f"  <source bridge={quoteattr(bridge)}/>")
        parts.append("\n".join([head, *body, "</interface>"]))
    return "\n".join(parts) + "\n"


@dataclass
class Veth:
    """A veth pair: ``a`` in namespace ``ns_a`` carries the planned MAC under
    a temporary name, so the node's own script renames it by MAC."""

    ns_a: str
    name_a: str
    mac_a: str
    ns_b: str
    name_b: str
    mac_b: str | None
    bridge_b: str | None
    mtu: int


@dataclass
class NetnsPlan:
    namespaces: dict[str, str]  # node -> namespace
    switch_ns: str
    bridges: list[str]
    veths: list[Veth]

    def setup_commands(self) -> list[list[str]]:
        cmds: list[list[str]] = [["ip", "netns", "add", self.switch_ns]]
        cmds += [["ip", "netns", "add", ns] for ns in self.namespaces.values()]
        for br in self.bridges:
            cmds.append(["ip", "-n", self.switch_ns, "link", "add", br, "type", "bridge"])
            cmds.append(["ip", "-n", self.switch_ns, "link", "set", br, "up"])
        for v in self.veths:
            peer = ["peer", "name", v.name_b]
            if v.mac_b:
                peer += ["address", v.mac_b]
            cmds.append(["ip", "-n", v.ns_a, "link", "add", v.name_a, "address", v.mac_a,
                         "mtu", str(v.mtu), "type", "veth", *peer, "netns", v.ns_b])
            cmds.append(["ip", "-n", v.ns_b, "link", "set", v.name_b, "mtu", str(v.mtu)])
            if v.bridge_b:
                cmds.append(["ip", "-n", v.ns_b, "link", "set", v.name_b, "master", v.bridge_b])
                cmds.append(["ip", "-n", v.ns_b, "link", "set", v.name_b, "up"])
        return cmds

    def teardown_commands(self) -> list[list[str]]:
        return [["ip", "netns", "del", ns]
                for ns in [*self.namespaces.values(), self.switch_ns]]


def netns_plan(plan: Plan, prefix: str = "nxs") -> NetnsPlan:
    """Linux network namespaces: one per node, p2p links as veth pairs
    between them, segments as bridges in a separate switch namespace, so
    nothing touches the host's own namespace."""
    namespaces = {n: f"{prefix}-{n}" for n in plan.nodes}
    switch = f"{prefix}-sw"
    bridges = []
    veths: list[Veth] = []
    br_of: dict[str, str] = {}
    for nid, net in plan.networks.items():
        if net.kind != "p2p":
            br_of[nid] = f"b{short_id(plan.name, nid, n=12)}"
            bridges.append(br_of[nid])
    for nid, net in plan.networks.items():
        if net.kind == "p2p":
            (a, ia), (b, ib) = net.members
            fa, fb = plan.nodes[a].interface(ia), plan.nodes[b].interface(ib)
            veths.append(Veth(
                ns_a=namespaces[a], name_a=f"t{short_id(nid, a, n=10)}", mac_a=fa.mac,
                ns_b=namespaces[b], name_b=f"t{short_id(nid, b, n=10)}", mac_b=fb.mac,
                bridge_b=None, mtu=net.mtu,
            ))
        else:
            for m, ifn in net.members:
                f = plan.nodes[m].interface(ifn)
                veths.append(Veth(
                    ns_a=namespaces[m], name_a=f"t{short_id(nid, m, n=10)}", mac_a=f.mac,
                    ns_b=switch, name_b=f"p{short_id(nid, m, n=12)}", mac_b=None,
                    bridge_b=br_of[nid], mtu=net.mtu,
                ))
    return NetnsPlan(namespaces=namespaces, switch_ns=switch, bridges=bridges, veths=veths)
