"""The plan: every node's interfaces, addresses, routes and hosts entries.

A plan is the single source every renderer and backend reads, which is what
keeps the guest's configuration and the host's wiring in agreement.
"""

from __future__ import annotations

import gc
import ipaddress
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .alloc import IPIf, IPNet, assign_addresses, assign_macs, h64, loopbacks
from .errors import TopologyError
from .model import Topology
from .validate import Layout, resolve

if TYPE_CHECKING:  # networkx costs a tenth of a second to import; only graph users pay it
    import networkx as nx

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
Fmt = Callable[[Any], str]


@dataclass
class InterfacePlan:
    """One planned interface of a node: the name and MAC both sides use.

    ``kind`` is ``p2p``, ``lan`` or ``mgmt``; ``peer`` is the node at the
    other end of a p2p link, ``segment`` the LAN segment of a lan one.
    The guest matches the interface by ``mac`` and renames it to ``name``.

    Example:

        >>> eth0 = p.node("edge").interface("eth0")
        >>> eth0.mac, [str(a) for a in eth0.addresses], eth0.peer
    """

    name: str
    mac: str
    addresses: list[IPIf]
    mtu: int
    link_id: str
    kind: str  # p2p, lan or mgmt
    segment: str | None = None
    peer: str | None = None

    def to_dict(self, fmt: Fmt = str) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "mac": self.mac, "mtu": self.mtu, "link_id": self.link_id,
            "kind": self.kind, "addresses": [fmt(a) for a in self.addresses],
        }
        if self.segment:
            d["segment"] = self.segment
        if self.peer:
            d["peer"] = self.peer
        return d


@dataclass(slots=True)
class Route:
    """A route of one node: ``destination`` via the gateway ``via`` out of ``dev``.

    Example:

        >>> [f"{r.destination} via {r.via}" for r in p.node("edge").routes if r.is_default]
    """

    destination: IPNet
    via: IPAddr
    dev: str
    static: bool = False

    @property
    def is_default(self) -> bool:
        return self.destination.prefixlen == 0

    def to_dict(self, fmt: Fmt = str) -> dict[str, Any]:
        d: dict[str, Any] = {"to": fmt(self.destination), "via": fmt(self.via), "dev": self.dev}
        if self.static:
            d["static"] = True
        return d


@dataclass
class HostEntry:
    """One ``/etc/hosts`` line of the plan: an address and the names it answers to.

    Example:

        >>> "\n".join(f"{h.address} {' '.join(h.names)}" for h in p.hosts)
    """

    address: IPAddr
    names: list[str]


@dataclass
class NodePlan:
    """Everything one node needs: interfaces, loopbacks, routes, its gateway.

    ``kind`` is the topology's (``vm``, ``router``, ...); a router forwards.
    ``addresses()`` lists the node's addresses (without management unless
    asked), which is what its peers ping.

    Example:

        >>> edge = p.node("edge")
        >>> [i.name for i in edge.interfaces], edge.gateway
        (['eth0'], 'gw')
        >>> [str(a.ip) for a in edge.addresses(4)]
    """

    name: str
    kind: str
    interfaces: list[InterfacePlan]
    loopbacks: list[IPIf] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    gateway: str | None = None
    shared_hosts: list[HostEntry] = field(default_factory=list, repr=False)
    router_id: str | None = None
    """OSPF/BGP router id (dotted quad) of a router under routing: ospf or bgp."""
    asn: int | None = None
    """The router's own private AS number under routing: bgp (one AS per
    router, as in RFC 7938 fabrics, so every session is eBGP)."""

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

    def to_dict(self, fmt: Fmt = str) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "interfaces": [i.to_dict(fmt) for i in self.interfaces],
            "loopbacks": [fmt(a) for a in self.loopbacks],
            "routes": [r.to_dict(fmt) for r in self.routes],
            "gateway": self.gateway,
        }
        if self.router_id is not None:
            d["router_id"] = self.router_id
        if self.asn is not None:
            d["asn"] = self.asn
        return d


@dataclass
class NetworkPlan:
    """One layer-2 network: a p2p link or a LAN segment, its prefixes and members.

    Example:

        >>> for net in p.networks.values():
        ...     print(net.kind, [str(x) for x in net.prefixes], net.members)
    """

    id: str
    kind: str
    prefixes: list[IPNet]
    mtu: int
    members: list[tuple[str, str]]  # (node, interface name)
    segment: str | None = None

    def to_dict(self, fmt: Fmt = str) -> dict[str, Any]:
        return {
            "kind": self.kind, "prefixes": [fmt(p) for p in self.prefixes], "mtu": self.mtu,
            "members": [f"{n}:{i}" for n, i in self.members],
        }


@dataclass
class Plan:
    """A planned topology: every node's interfaces, addresses, routes and hosts.

    The single source every renderer and backend reads, so the guest's
    configuration and the host's wiring cannot disagree.  Planning is
    deterministic: the same topology always gives the same names, MACs and
    addresses, and appending nodes or links does not move existing ones.

    Example:

        >>> from nixslave import netconf
        >>> p = netconf.plan(netconf.load_topology("tests/data/boot/routed.yml"))
        >>> sorted(p.nodes)
        ['edge', 'gw', 'inner']
        >>> p.peers("edge")["inner"]
        ['198.51.100.81', '2001:db8:20:6208::8db']
    """

    topology: Topology
    nodes: dict[str, NodePlan]
    networks: dict[str, NetworkPlan]
    hosts: list[HostEntry]
    layout: Layout | None = field(default=None, repr=False)
    _graph: nx.MultiGraph | None = field(default=None, repr=False)
    _fallback: dict[str, list[Route]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.topology.name

    @property
    def routing(self) -> str:
        """static, none, ospf or bgp (the topology's ``routing``)."""
        return self.topology.routing

    @property
    def graph(self) -> nx.MultiGraph:
        """The networkx MultiGraph of nodes and segments, built on first use:
        planning and ``plan --json`` never need it, and for 100,000 nodes it
        costs more than the routes."""
        if self._graph is None:
            if self.layout is None:
                raise ValueError("this plan was built without a layout")
            self._graph = build_graph(self.layout)
        return self._graph

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

    def static_routes(self, node: str) -> list[Route]:
        """The node's routes as static routes, whatever ``routing`` says.

        Under ospf or bgp a router's table comes from its routing daemon, so
        its planned routes are only the user's; a guest without a daemon
        (the busybox demo) installs the static tables the planner would have
        computed instead, which reach the same addresses."""
        np = self.node(node)
        if self.routing in ("static", "none") or np.kind != "router":
            return np.routes
        if self._fallback is None:
            from .routes import router_tables

            tables = router_tables(self)
            _static_routes(self, tables)
            self._fallback = tables
        return self._fallback[node]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, the document ``nixslave net plan --json`` prints."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "routing": self.routing,
            "nodes": {n: p.to_dict() for n, p in sorted(self.nodes.items())},
            "networks": {k: v.to_dict() for k, v in sorted(self.networks.items())},
            "hosts": [[str(h.address), *h.names] for h in self.hosts],
        }

    def write_json(self, out: IO[str]) -> None:
        """Write :meth:`to_dict` as JSON, one node, network or hosts entry per
        line. The whole document is never held as one string: a 100,000-node
        plan is hundreds of megabytes of JSON, and the pretty printer of
        ``json.dump(indent=...)`` is pure Python, ten times slower than
        encoding each entry compactly."""
        enc = json.JSONEncoder(sort_keys=True, ensure_ascii=True).encode
        w = out.write
        # gateways, defaults and prefixes are shared objects that repeat across
        # nodes: format each once, keyed by identity (the plan keeps them all
        # alive, and ipaddress's own __hash__ builds a hex string every time)
        memo: dict[int, str] = {}

        def fmt(x: Any) -> str:
            got = memo.get(id(x))
            if got is None:
                got = memo[id(x)] = format_ip(x)
            return got

        with gc_paused():
            self._write_json(w, enc, fmt)

    def _write_json(self, w: Callable[[str], Any], enc: Callable[[Any], str], fmt: Fmt) -> None:
        w("{\n")
        w('"hosts": [')
        for k, h in enumerate(self.hosts):
            w(("\n" if k == 0 else ",\n") + enc([fmt(h.address), *h.names]))
        w("\n],\n" if self.hosts else "],\n")
        w(f'"name": {enc(self.name)},\n')
        for key, items in (("networks", self.networks), ("nodes", self.nodes)):
            w(f'"{key}": {{')
            for k, name in enumerate(sorted(items)):
                w(("\n" if k == 0 else ",\n") + enc(name) + ": "
                  + enc(items[name].to_dict(fmt)))
            w("\n},\n" if items else "},\n")
        w(f'"routing": {enc(self.routing)}\n')
        w("}\n")


_SHIFTS = (112, 96, 80, 64, 48, 32, 16, 0)


def _v6(n: int) -> str:
    """RFC 5952 text of an IPv6 address, as ipaddress writes it (the longest
    run of two or more zero groups becomes ``::``, the first on a tie) in a
    third of the time: a 100,000-node plan writes half a million of them."""
    h = [f"{(n >> s) & 0xFFFF:x}" for s in _SHIFTS]
    best = run = 0
    best_at = at = -1
    for i, x in enumerate(h):
        if x == "0":
            if run == 0:
                at = i
            run += 1
            if run > best:
                best, best_at = run, at
        else:
            run = 0
    if best > 1:
        return ":".join(h[:best_at]) + "::" + ":".join(h[best_at + best:])
    return ":".join(h)


def format_ip(x: Any) -> str:
    """``str(x)`` for the ipaddress objects of a plan, faster for IPv6."""
    cls = type(x)
    if cls is ipaddress.IPv6Address and not x.scope_id:
        return _v6(int(x))
    if cls is ipaddress.IPv6Interface and not x.scope_id:
        return f"{_v6(int(x))}/{x.network.prefixlen}"
    if cls is ipaddress.IPv6Network:
        return f"{_v6(int(x.network_address))}/{x.prefixlen}"
    return str(x)


def build_graph(layout: Layout) -> nx.MultiGraph:
    from .graph import graph_from_layout

    return graph_from_layout(layout)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off CPython's cycle collector. Loading and planning allocate
    millions of small objects that form no cycles (addresses, routes,
    dicts), and each full collection rescans the whole growing heap: for a
    100,000-node lab that is half of the planning time, spent finding no
    garbage that reference counting does not free anyway. The switch is
    process-wide, so it is held only for the duration and then restored."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def plan(topology: Topology) -> Plan:
    """Plan a topology; deterministic, and stable when nodes or links are appended.

    Addresses come from the topology's pools (or fixed prefixes), MACs and
    names are derived from stable keys, and routes are computed so that
    every node reaches every other.  A topology that cannot be planned (a
    pool too small, an unreachable gateway) raises :class:`TopologyError`.

    Example:

        >>> from nixslave import netconf
        >>> topo = netconf.topology_from_data({"name": "pair", "nodes": ["a", "b"],
        ...                                    "links": [["a", "b"]]})
        >>> p = netconf.plan(topo)
        >>> p.node("a").interfaces[0].name
        'eth0'
    """
    with gc_paused():
        return _plan(topology)


def _plan(topology: Topology) -> Plan:
    from .routes import compute_routes

    layout = resolve(topology)
    addrs = assign_addresses(layout)
    loops = loopbacks(layout)
    macs = assign_macs(layout)
    nodes: dict[str, NodePlan] = {}
    for name, node in topology.nodes.items():
        ifaces = []
        for att in layout.by_node[name]:
            net = layout.nets[att.net]
            peer = None
            if net.kind == "p2p":
                a, b = net.members
                peer = b.node if a is att else a.node
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
    result = Plan(topology=topology, nodes=nodes, networks=networks, hosts=[], layout=layout)
    if topology.routing != "none":
        # under ospf/bgp the daemons fill the routers' tables; end systems
        # run no daemon and still need their gateway
        compute_routes(result, routers=topology.routing == "static")
    if topology.routing in ("ospf", "bgp"):
        _router_ids(result)
    if topology.routing == "bgp":
        _asns(result)
    tables = {n: np.routes for n, np in nodes.items()}
    _static_routes(result, tables)
    for n, table in tables.items():
        nodes[n].routes = table
    result.hosts = _hosts(result)
    for np in nodes.values():
        np.shared_hosts = result.hosts
    return result


def _static_routes(p: Plan, tables: dict[str, list[Route]]) -> None:
    """Add the topology's ``routes`` to ``tables`` (node -> routes), each
    replacing a computed route to the same destination."""
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
        table = tables.get(sr.node, [])
        tables[sr.node] = [r for r in table if r.destination != to]
        tables[sr.node].append(Route(destination=to, via=via, dev=dev, static=True))


def _router_ids(p: Plan) -> None:
    """A unique dotted-quad router id per router: its IPv4 loopback when it
    has one (what operators expect to see), else a hash of its name, moved
    on a collision in declaration order, so an appended router never changes
    an existing one's id."""
    routers = [np for np in p.nodes.values() if np.kind == "router"]
    used: set[int] = set()
    for np in routers:
        lo4 = next((a.ip for a in np.loopbacks if a.version == 4), None)
        if lo4 is not None:
            np.router_id = str(lo4)
            used.add(int(lo4))
    for np in routers:
        if np.router_id is None:
            salt = 0
            rid = 0
            while rid in used or rid == 0 or rid == 0xFFFFFFFF:
                rid = h64("router-id", p.name, np.name, str(salt)) & 0xFFFFFFFF
                salt += 1
            used.add(rid)
            np.router_id = str(ipaddress.IPv4Address(rid))


ASN_FIRST = 4_200_000_000
"""RFC 6996 private 4-byte AS numbers: 4200000000-4294967294."""
ASN_COUNT = 4_294_967_294 - ASN_FIRST + 1


def _asns(p: Plan) -> None:
    """One private AS per router, from a hash of its name (collisions move
    on in declaration order), so every BGP session is external and appending
    a router leaves the others' numbers alone."""
    used: set[int] = set()
    for np in p.nodes.values():
        if np.kind == "router":
            k = h64("asn", p.name, np.name) % ASN_COUNT
            while ASN_FIRST + k in used:
                k = (k + 1) % ASN_COUNT
            np.asn = ASN_FIRST + k
            used.add(np.asn)


def _hosts(p: Plan) -> list[HostEntry]:
    out: list[HostEntry] = []
    for name, np in p.nodes.items():
        for fam in (4, 6):
            addrs = np.addresses(fam)
            if addrs:
                out.append(HostEntry(address=addrs[0].ip, names=[name]))
    return out
