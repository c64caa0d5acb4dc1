"""The plan: every node's interfaces, addresses, routes and hosts entries.

A plan is the single source every renderer and backend reads, which is what
keeps the guest's configuration and the host's wiring in agreement.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .alloc import HostSlots, SubnetPool, mac_for
from .errors import TopologyError
from .model import Topology
from .validate import Layout, Net, resolve

IPIf = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class InterfacePlan:
    name: str
    mac: str
    addresses: list[IPIf]
    mtu: int
    link_id: str
    kind: str  # p2p, lan or mgmt
    segment: str | None = None
    peer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "mac": self.mac, "mtu": self.mtu, "link_id": self.link_id,
            "kind": self.kind, "addresses": [str(a) for a in self.addresses],
        }
        if self.segment:
            d["segment"] = self.segment
        if self.peer:
            d["peer"] = self.peer
        return d


@dataclass(slots=True)
class Route:
    destination: IPNet
    via: IPAddr
    dev: str
    static: bool = False

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"to": str(self.destination), "via": str(self.via), "dev": self.dev}
        if self.static:
            d["static"] = True
        return d


@dataclass
class HostEntry:
    address: IPAddr
    names: list[str]


@dataclass
class NodePlan:
    name: str
    kind: str
    interfaces: list[InterfacePlan]
    loopbacks: list[IPIf] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    gateway: str | None = None
    shared_hosts: list[HostEntry] = field(default_factory=list, repr=False)

    @property
    def forwarding(self) -> bool:
        return self.kind == "router"

    @property
    def hosts(self) -> list[HostEntry]:
        """Entries for all nodes; one list shared by every node, because a
        per-node copy is quadratic in the number of nodes."""
        return self.shared_hosts

    def interface(self, name: str) -> InterfacePlan:
        for i in self.interfaces:
            if i.name == name:
                return i
        raise KeyError(name)

    def addresses(self, version: int | None = None, *, mgmt: bool = False) -> list[IPIf]:
        out = [a for a in self.loopbacks]
        for i in self.interfaces:
            if i.kind == "mgmt" and not mgmt:
                continue
            out.extend(i.addresses)
        return [a for a in out if version is None or a.version == version]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "interfaces": [i.to_dict() for i in self.interfaces],
            "loopbacks": [str(a) for a in self.loopbacks],
            "routes": [r.to_dict() for r in self.routes],
            "gateway": self.gateway,
        }


@dataclass
class NetworkPlan:
    id: str
    kind: str
    prefixes: list[IPNet]
    mtu: int
    members: list[tuple[str, str]]  # (node, interface name)
    segment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "prefixes": [str(p) for p in self.prefixes], "mtu": self.mtu,
            "members": [f"{n}:{i}" for n, i in self.members],
        }


@dataclass
class Plan:
    topology: Topology
    nodes: dict[str, NodePlan]
    networks: dict[str, NetworkPlan]
    hosts: list[HostEntry]
    graph: nx.MultiGraph

    @property
    def name(self) -> str:
        return self.topology.name

    def node(self, name: str) -> NodePlan:
        try:
            return self.nodes[name]
        except KeyError:
            raise TopologyError(f"no node named {name!r}", where=f"nodes.{name}",
                                hint="one of: " + ", ".join(sorted(self.nodes)[:20])) from None

    def peers(self, node: str) -> dict[str, list[str]]:
        """Every other node's addresses (without management), for a guest
        that checks it can reach all of them."""
        self.node(node)
        return {
            n: [str(a.ip) for a in np.addresses()]
            for n, np in self.nodes.items() if n != node
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodes": {n: p.to_dict() for n, p in sorted(self.nodes.items())},
            "networks": {k: v.to_dict() for k, v in sorted(self.networks.items())},
            "hosts": [[str(h.address), *h.names] for h in self.hosts],
        }


def _assign(layout: Layout) -> dict[str, dict[str, list[IPIf]]]:
    """Prefixes per network and addresses per interface (net -> node -> addrs)."""
    topo = layout.topo
    pools = topo.pools
    pool4 = {"p2p": SubnetPool(pools.p2p4, "p2p4"), "lan": SubnetPool(pools.lan4, "lan4")}
    pool6 = {"p2p": SubnetPool(pools.p2p6, "p2p6"), "lan": SubnetPool(pools.lan6, "lan6")}
    for net in layout.nets.values():
        if net.kind == "mgmt":
            continue
        for p in (net.prefix4, net.prefix6):
            if p is not None:
                for pool in (*pool4.values(), *pool6.values()):
                    pool.block(p, net.where)
    out: dict[str, dict[str, list[IPIf]]] = {}
    # segments first, then links, each in declaration order (dict order)
    ordered = [n for n in layout.nets.values() if n.kind != "p2p"] + [
        n for n in layout.nets.values() if n.kind == "p2p"]
    for net in ordered:
        addrs: dict[str, list[IPIf]] = {m.node: [] for m in net.members}
        out[net.id] = addrs
        for fam, enabled in ((4, topo.ipv4), (6, topo.ipv6)):
            if not enabled:
                continue
            prefix = net.prefix4 if fam == 4 else net.prefix6
            if prefix is None:
                if net.kind == "mgmt":
                    continue
                pool = (pool4 if fam == 4 else pool6)[net.kind]
                prefix = pool.take(net.id, net.plen4 if fam == 4 else net.plen6, net.where)
                if fam == 4:
                    net.prefix4 = prefix  # type: ignore[assignment]
                else:
                    net.prefix6 = prefix  # type: ignore[assignment]
            _host_addresses(layout, net, prefix, fam, addrs)
    return out


def _host_addresses(layout: Layout, net: Net, prefix: IPNet, fam: int,
                    addrs: dict[str, list[IPIf]]) -> None:
    slots = HostSlots(prefix)
    statics = {}
    for m in net.members:
        st = m.ipv4 if fam == 4 else m.ipv6
        if st is not None:
            slots.reserve(st.ip)
            statics[m.node] = st
    for m in net.members:
        if m.node in statics:
            addrs[m.node].append(statics[m.node])
            continue
        if net.kind == "p2p":
            k = slots.take_seq(m.where)
        else:
            fixed = layout.topo.nodes[m.node].id
            k = slots.take_hash(m.node, m.where, fixed)
        addrs[m.node].append(slots.iface(k))


def _loopbacks(layout: Layout) -> dict[str, list[IPIf]]:
    topo = layout.topo
    out: dict[str, list[IPIf]] = {}
    fams = [(4, topo.pools.loopback4)] if topo.ipv4 else []
    if topo.ipv6:
        fams.append((6, topo.pools.loopback6))
    for _fam, pool in fams:
        net = ipaddress.ip_network(pool)
        slots = HostSlots(net)
        for name, node in topo.nodes.items():
            wants = node.loopback if node.loopback is not None else node.kind == "router"
            if not wants:
                continue
            k = slots.take_hash(name, f"nodes.{name}", node.id)
            ip = slots.iface(k).ip
            out.setdefault(name, []).append(ipaddress.ip_interface((ip, net.max_prefixlen)))
    return out


def _macs(layout: Layout) -> dict[tuple[str, str], str]:
    seen: set[str] = {m.mac for n in layout.nets.values() for m in n.members if m.mac}
    out: dict[tuple[str, str], str] = {}
    for net in layout.nets.values():
        for m in net.members:
            if m.mac:
                out[(m.node, net.id)] = m.mac
                continue
            salt = 0
            mac = mac_for(layout.topo.name, m.node, net.id)
            while mac in seen:
                salt += 1
                mac = mac_for(layout.topo.name, m.node, net.id, salt)
            seen.add(mac)
            out[(m.node, net.id)] = mac
    return out


def build_graph(layout: Layout) -> nx.MultiGraph:
    from .graph import graph_from_layout

    return graph_from_layout(layout)


def plan(topology: Topology) -> Plan:
    """Plan a topology; deterministic, and stable when nodes or links are appended."""
    from .routes import compute_routes

    layout = resolve(topology)
    addrs = _assign(layout)
    loops = _loopbacks(layout)
    macs = _macs(layout)
    nodes: dict[str, NodePlan] = {}
    for name, node in topology.nodes.items():
        ifaces = []
        for att in layout.by_node[name]:
            net = layout.nets[att.net]
            peer = None
            if net.kind == "p2p":
                peer = next(m.node for m in net.members if m is not att)
            ifaces.append(InterfacePlan(
                name=att.ifname, mac=macs[(name, net.id)], addresses=addrs[net.id][name],
                mtu=net.mtu, link_id=net.id, kind=net.kind, segment=net.segment, peer=peer,
            ))
        nodes[name] = NodePlan(name=name, kind=node.kind, interfaces=ifaces,
                               loopbacks=loops.get(name, []))
    networks = {
        n.id: NetworkPlan(
            id=n.id, kind=n.kind, mtu=n.mtu, segment=n.segment,
            prefixes=[p for p in (n.prefix4, n.prefix6) if p is not None
                      and (topology.ipv4 if p.version == 4 else topology.ipv6)],
            members=[(m.node, m.ifname) for m in n.members],
        )
        for n in layout.nets.values()
    }
    result = Plan(topology=topology, nodes=nodes, networks=networks, hosts=[],
                  graph=build_graph(layout))
    if topology.routing == "static":
        compute_routes(result)
    _static_routes(result)
    result.hosts = _hosts(result)
    for np in nodes.values():
        np.shared_hosts = result.hosts
    return result


def _static_routes(p: Plan) -> None:
    for i, sr in enumerate(p.topology.routes):
        where = f"routes[{i}]"
        if sr.node not in p.nodes:
            raise TopologyError(f"unknown node {sr.node!r}", where=f"{where}.node",
                                hint="name a node declared under 'nodes'")
        np = p.nodes[sr.node]
        to = ipaddress.ip_network(sr.to)
        via = ipaddress.ip_address(sr.via)
        if to.version != via.version:
            raise TopologyError(f"route to {to} via {via} mixes IPv4 and IPv6",
                                where=where, hint="use a gateway of the same family")
        dev = next((i.name for i in np.interfaces for a in i.addresses
                    if a.version == via.version and via in a.network and via != a.ip), None)
        if dev is None:
            raise TopologyError(f"gateway {via} is not on any prefix of {sr.node!r}",
                                where=f"{where}.via",
                                hint="a static route's gateway must be a directly "
                                     "connected neighbour")
        np.routes = [r for r in np.routes if r.destination != to]
        np.routes.append(Route(destination=to, via=via, dev=dev, static=True))


def _hosts(p: Plan) -> list[HostEntry]:
    out: list[HostEntry] = []
    for name, np in p.nodes.items():
        for fam in (4, 6):
            addrs = np.addresses(fam)
            if addrs:
                out.append(HostEntry(address=addrs[0].ip, names=[name]))
    return out
