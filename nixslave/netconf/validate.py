"""Structural validation: turns the input model into broadcast domains.

Every check here fails with the element's path (``links[3]``, ``nodes.r1``),
what is wrong and how to fix it, because topology files are written by hand
and a wrong network is much more expensive to debug than a refused one.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .errors import TopologyError
from .model import Endpoint, Node, Topology, check_hostname

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPIf = ipaddress.IPv4Interface | ipaddress.IPv6Interface
NetKind = Literal["p2p", "lan", "mgmt"]
MGMT = "mgmt"
MGMT_IF = "mgmt0"  # the management interface of every node


@dataclass
class Attach:
    """One interface of one node, before addresses are given."""

    node: str
    net: str
    where: str
    ifname: str = ""
    mac: str | None = None
    ipv4: ipaddress.IPv4Interface | None = None
    ipv6: ipaddress.IPv6Interface | None = None


@dataclass
class Net:
    """A broadcast domain: a p2p link, a segment, or the management network."""

    id: str
    kind: NetKind
    where: str
    members: list[Attach] = field(default_factory=list)
    prefix4: ipaddress.IPv4Network | None = None
    prefix6: ipaddress.IPv6Network | None = None
    plen4: int = 24
    plen6: int = 64
    mtu: int = 1500
    segment: str | None = None
    # addresses no member may get (the management network's gateway)
    reserved: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=list)


@dataclass
class Layout:
    topo: Topology
    nets: dict[str, Net]
    by_node: dict[str, list[Attach]]


def _err(where: str, what: str, hint: str) -> TopologyError:
    return TopologyError(what, where=where, hint=hint)


def _link_key(a: str, b: str, seen: dict[str, int], taken: Callable[[str], bool]) -> str:
    """``a-b``, then ``a-b-2``, ... skipping every id already taken: links
    named explicitly (anywhere in the file, so a name given later still
    wins), segments, and other automatic names (``a`` + ``b-c`` and ``a-b`` +
    ``c`` both make ``a-b-c``)."""
    base = "-".join(sorted((a, b)))
    while True:
        n = seen.get(base, 0) + 1
        seen[base] = n
        key = base if n == 1 else f"{base}-{n}"
        if not taken(key):
            return key


def _net4(value: str | None, where: str) -> ipaddress.IPv4Network | None:
    """The model checks families, but a Topology may be changed after it was
    validated; a wrong family must still be a TopologyError, not a crash."""
    if value is None:
        return None
    try:
        return ipaddress.IPv4Network(value)
    except ValueError:
        raise _err(f"{where}.prefix4", f"{value!r} is not an IPv4 prefix",
                   "write an IPv4 network/length here, IPv6 under prefix6") from None


def _net6(value: str | None, where: str) -> ipaddress.IPv6Network | None:
    if value is None:
        return None
    try:
        return ipaddress.IPv6Network(value)
    except ValueError:
        raise _err(f"{where}.prefix6", f"{value!r} is not an IPv6 prefix",
                   "write an IPv6 network/length here, IPv4 under prefix4") from None


def resolve(topo: Topology) -> Layout:
    """Check names and references and group interfaces by broadcast domain."""
    for name in topo.nodes:
        try:
            check_hostname(name)
        except ValueError as exc:
            raise _err(f"nodes.{name}", str(exc), "rename the node") from None
    for name in topo.segments:
        try:
            check_hostname(name)
        except ValueError as exc:
            raise _err(f"segments.{name}", str(exc), "rename the segment") from None
        if name in topo.nodes:
            raise _err(
                f"segments.{name}", f"name {name!r} is used by a node and a segment",
                "node and segment names share one namespace; rename one",
            )
    if topo.management and (MGMT in topo.segments):
        raise _err(f"segments.{MGMT}", "'mgmt' is reserved for the management network",
                   "rename the segment or set management: false")
    for name, node in topo.nodes.items():
        if node.gateway is None:
            continue
        if node.gateway not in topo.nodes:
            raise _err(f"nodes.{name}.gateway", f"unknown node {node.gateway!r}",
                       "name a router that shares a link or segment with this node")
        # a setting that is silently ignored is a wrong network nobody notices
        if node.kind == "router":
            raise _err(f"nodes.{name}.gateway", "a router takes no gateway (its routes are "
                       "computed from the topology)",
                       "remove it, or add a default route under 'routes'")
        if topo.routing == "none":
            raise _err(f"nodes.{name}.gateway", "gateway has no effect with routing: none",
                       "remove it, or set routing: static")
    _check_pools(topo)

    nets: dict[str, Net] = {}
    by_node: dict[str, list[Attach]] = {n: [] for n in topo.nodes}
    for sname, seg in topo.segments.items():
        nets[sname] = Net(
            id=sname, kind="lan", where=f"segments.{sname}",
            prefix4=_net4(seg.prefix4, f"segments.{sname}"),
            prefix6=_net6(seg.prefix6, f"segments.{sname}"),
            plen4=seg.prefix_len4 or topo.lan_prefix_len4,
            plen6=seg.prefix_len6 or topo.lan_prefix_len6,
            mtu=seg.mtu or topo.mtu, segment=sname,
        )
    seen_pairs: dict[str, int] = {}
    explicit = {link.name for link in topo.links if link.name}
    if topo.management:
        explicit.add(MGMT)  # the management network's id; a link may not take it
    seg_nodes: dict[str, set[str]] = {}
    seen_names: dict[str, str] = {}
    for i, link in enumerate(topo.links):
        where = f"links[{i}]"
        ends = link.endpoints
        for j, ep in enumerate(ends):
            if ep.node not in topo.nodes and ep.node not in topo.segments:
                raise _err(f"{where}.endpoints[{j}]", f"unknown node or segment {ep.node!r}",
                           "declare it under 'nodes' or 'segments', or fix the spelling")
        a, b = ends
        a_seg, b_seg = a.node in topo.segments, b.node in topo.segments
        if a_seg and b_seg:
            raise _err(where, f"link joins two segments ({a.node!r} and {b.node!r})",
                       "a segment is already a switch; attach nodes to one segment instead")
        if a.node == b.node:
            raise _err(where, f"link joins {a.node!r} to itself",
                       "a link needs two different nodes")
        if a_seg or b_seg:
            ep, seg_name, j = (b, a.node, 1) if a_seg else (a, b.node, 0)
            seg_ep = a if a_seg else b
            if seg_ep.ifname or seg_ep.mac or seg_ep.ipv4 or seg_ep.ipv6:
                raise _err(f"{where}.endpoints[{1 - j}]",
                           "a segment end cannot have interface options",
                           "put ifname/mac/ipv4/ipv6 on the node's end")
            if link.prefix4 or link.prefix6 or link.prefix_len4 or link.prefix_len6:
                raise _err(where, "prefix options belong to the segment, not to a leg of it",
                           f"set them under segments.{seg_name}")
            net = nets[seg_name]
            if ep.node in seg_nodes.setdefault(seg_name, set()):
                raise _err(where, f"node {ep.node!r} is attached to segment {seg_name!r} twice",
                           "remove the duplicate link")
            att = _attach(ep, seg_name, f"{where}.endpoints[{j}]")
            if link.mtu is not None:
                raise _err(where, "MTU of a segment leg must match the segment",
                           f"set mtu under segments.{seg_name}")
            net.members.append(att)
            seg_nodes[seg_name].add(ep.node)
            by_node[ep.node].append(att)
            continue
        if link.name:
            key = link.name
            if key == MGMT and topo.management:
                raise _err(f"{where}.name", f"{MGMT!r} is the management network's name",
                           "rename the link or set management: false")
            if key in nets or key in seen_names:
                other = seen_names.get(key, f"segments.{key}")
                raise _err(f"{where}.name", f"link name {key!r} is already used by {other}",
                           "give each link a unique name")
        else:
            key = _link_key(a.node, b.node, seen_pairs,
                            lambda k: k in explicit or k in nets or k in seen_names)
        seen_names[key] = where
        net = Net(
            id=key, kind="p2p", where=where,
            prefix4=_net4(link.prefix4, where),
            prefix6=_net6(link.prefix6, where),
            plen4=link.prefix_len4 or topo.p2p_prefix_len4,
            plen6=link.prefix_len6 or topo.p2p_prefix_len6,
            mtu=link.mtu or topo.mtu,
        )
        for j, ep in enumerate(ends):
            att = _attach(ep, key, f"{where}.endpoints[{j}]")
            net.members.append(att)
            by_node[ep.node].append(att)
        nets[key] = net
    if topo.management:
        mnet = Net(
            id=MGMT, kind="mgmt", where="pools",
            prefix4=ipaddress.IPv4Network(topo.pools.mgmt4),
            prefix6=ipaddress.IPv6Network(topo.pools.mgmt6), mtu=topo.mtu,
            segment=MGMT,
        )
        mnet.plen4, mnet.plen6 = mnet.prefix4.prefixlen, mnet.prefix6.prefixlen  # type: ignore[union-attr]
        mnet.reserved = _mgmt_gateways(topo, mnet)
        taken: dict[object, str] = {ip: "the management gateway" for ip in mnet.reserved}
        for n, node in topo.nodes.items():
            att = Attach(node=n, net=MGMT, where=f"nodes.{n}", ifname=MGMT_IF)
            att.ipv4, att.ipv6 = _mgmt_statics(topo, n, node, mnet, taken)  # type: ignore[assignment, unused-ignore]
            mnet.members.append(att)
            by_node[n].append(att)  # last, so it never shifts the ethN numbering
        nets[MGMT] = mnet
    else:
        for n, node in topo.nodes.items():
            if node.mgmt_ipv4 or node.mgmt_ipv6:
                key = "mgmt_ipv4" if node.mgmt_ipv4 else "mgmt_ipv6"
                raise _err(f"nodes.{n}.{key}", "a management address needs management: true",
                           "set management: true or remove the address")
    _name_interfaces(by_node)
    _check_static(topo, nets)
    return Layout(topo=topo, nets=nets, by_node=by_node)


def _mgmt_gateways(topo: Topology, mnet: Net) -> list[ipaddress.IPv4Address |
                                                      ipaddress.IPv6Address]:
    """The management gateways, checked against their pools: a gateway
    outside the management network would reserve nothing."""
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for key, gw, pfx, enabled in (("mgmt_gateway4", topo.mgmt_gateway4, mnet.prefix4, topo.ipv4),
                                  ("mgmt_gateway6", topo.mgmt_gateway6, mnet.prefix6, topo.ipv6)):
        if gw is None or not enabled:
            continue
        ip = ipaddress.ip_address(gw)
        if pfx is None or ip not in pfx:
            raise _err(key, f"gateway {ip} is outside the management network {pfx}",
                       "use an address of pools.mgmt4/pools.mgmt6")
        out.append(ip)
    return out


def _mgmt_statics(topo: Topology, n: str, node: Node, mnet: Net, taken: dict[object, str]
                  ) -> tuple[ipaddress.IPv4Interface | None, ipaddress.IPv6Interface | None]:
    """A node's static management addresses, as interfaces of the management
    network; checked here, where the path can name the field."""
    out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface | None] = []
    for fam, value, pfx, enabled in ((4, node.mgmt_ipv4, mnet.prefix4, topo.ipv4),
                                     (6, node.mgmt_ipv6, mnet.prefix6, topo.ipv6)):
        where = f"nodes.{n}.mgmt_ipv{fam}"
        if value is None:
            out.append(None)
            continue
        if not enabled:
            raise _err(where, f"IPv{fam} is disabled for this topology",
                       f"set ipv{fam}: true or remove the address")
        ip = ipaddress.ip_address(value)
        assert pfx is not None
        if ip not in pfx:
            raise _err(where, f"{ip} is outside the management network {pfx}",
                       f"use an address of pools.mgmt{fam}")
        if fam == 4 and pfx.num_addresses > 2 and ip in (pfx.network_address,
                                                        pfx.broadcast_address):
            raise _err(where, f"{ip} is the network or broadcast address of {pfx}",
                       "pick a host address")
        if ip in taken:
            raise _err(where, f"management address {ip} is used twice",
                       f"also at {taken[ip]}")
        taken[ip] = where
        out.append(ipaddress.ip_interface((ip, pfx.prefixlen)))
    return out[0], out[1]  # type: ignore[return-value]


def _attach(ep: Endpoint, net: str, where: str) -> Attach:
    ipv4 = ipv6 = None
    try:
        ipv4 = ipaddress.IPv4Interface(ep.ipv4) if ep.ipv4 else None
    except ValueError:
        raise _err(f"{where}.ipv4", f"{ep.ipv4!r} is not an IPv4 address/length",
                   "write an IPv4 address here, IPv6 under ipv6") from None
    try:
        ipv6 = ipaddress.IPv6Interface(ep.ipv6) if ep.ipv6 else None
    except ValueError:
        raise _err(f"{where}.ipv6", f"{ep.ipv6!r} is not an IPv6 address/length",
                   "write an IPv6 address here, IPv4 under ipv4") from None
    return Attach(node=ep.node, net=net, where=where, ifname=ep.ifname or "", mac=ep.mac,
                  ipv4=ipv4, ipv6=ipv6)


def _name_interfaces(by_node: dict[str, list[Attach]]) -> None:
    """eth0, eth1, ... in the order the node's links are declared, so that
    appending a link never renames an existing interface."""
    for node, atts in by_node.items():
        given = {a.ifname for a in atts if a.ifname}
        names: dict[str, str] = {}
        k = 0
        for att in atts:
            if not att.ifname:
                while f"eth{k}" in given:
                    k += 1
                att.ifname = f"eth{k}"
                k += 1
            if att.ifname in names or att.ifname == "lo":
                if att.net == MGMT:  # report it at the user's interface, not at mgmt0
                    raise _err(names[att.ifname], f"interface name {att.ifname!r} is the "
                               f"management interface of {node!r}",
                               "rename the interface or set management: false")
                raise _err(att.where, f"interface name {att.ifname!r} is used twice on {node!r}",
                           f"the other one is at {names.get(att.ifname, 'the loopback')}")
            names[att.ifname] = att.where


def _check_pools(topo: Topology) -> None:
    pools = topo.pools
    nets = [(k, ipaddress.ip_network(v)) for k, v in pools.model_dump().items()]
    for i, (ka, na) in enumerate(nets):
        for kb, nb in nets[i + 1:]:
            if na.version == nb.version and na.overlaps(nb):  # type: ignore[arg-type, unused-ignore]
                raise _err(f"pools.{kb}", f"pool {nb} overlaps pools.{ka} ({na})",
                           "give each role its own range")


def _check_static(topo: Topology, nets: dict[str, Net]) -> None:
    """Static prefixes must not overlap and static addresses must sit in
    their link's prefix; a static address with no static prefix defines it."""
    seen_addr: dict[str, str] = {}
    seen_mac: dict[str, str] = {}
    for net in nets.values():
        for fam in (4, 6):
            pfx = net.prefix4 if fam == 4 else net.prefix6
            for m in net.members:
                addr = m.ipv4 if fam == 4 else m.ipv6
                if addr is None:
                    continue
                if (fam == 4 and not topo.ipv4) or (fam == 6 and not topo.ipv6):
                    raise _err(f"{m.where}.ipv{fam}", f"IPv{fam} is disabled for this topology",
                               f"set ipv{fam}: true or remove the address")
                if pfx is None:
                    pfx = addr.network
                    if fam == 4:
                        net.prefix4 = pfx  # type: ignore[assignment]
                    else:
                        net.prefix6 = pfx  # type: ignore[assignment]
                if addr.ip not in pfx or addr.network.prefixlen != pfx.prefixlen:
                    raise _err(f"{m.where}.ipv{fam}",
                               f"static address {addr} is outside the link prefix {pfx}",
                               "use an address inside the prefix, with the same length")
                if pfx.num_addresses > 2 and addr.ip in (pfx.network_address,
                                                         pfx.broadcast_address) and fam == 4:
                    raise _err(f"{m.where}.ipv4", f"{addr.ip} is the network or broadcast "
                               f"address of {pfx}", "pick a host address")
                if str(addr.ip) in seen_addr:
                    raise _err(f"{m.where}.ipv{fam}", f"address {addr.ip} is used twice",
                               f"also at {seen_addr[str(addr.ip)]}")
                seen_addr[str(addr.ip)] = m.where
            if pfx is not None:
                if fam == 4:
                    net.plen4 = pfx.prefixlen
                else:
                    net.plen6 = pfx.prefixlen
        for m in net.members:
            if m.mac is not None:
                if m.mac in seen_mac:
                    raise _err(f"{m.where}.mac", f"MAC address {m.mac} is used twice",
                               f"also at {seen_mac[m.mac]}")
                seen_mac[m.mac] = m.where
    _check_reserved_pools(topo, nets)
    for fam in (4, 6):
        statics = sorted(
            ((p, n.where) for n in nets.values() if n.kind != "mgmt"
             for p in [n.prefix4 if fam == 4 else n.prefix6] if p is not None),
            key=lambda t: (int(t[0].network_address), -t[0].prefixlen),
        )
        for (pa, wa), (pb, wb) in itertools.pairwise(statics):
            if pa.overlaps(pb):  # type: ignore[arg-type, unused-ignore]
                raise _err(wb, f"prefix {pb} overlaps {pa} of {wa}",
                           "give every link and segment its own prefix")


def _check_reserved_pools(topo: Topology, nets: dict[str, Net]) -> None:
    """Loopbacks and the management LAN take addresses from their pools
    without looking at static prefixes; a static prefix inside one of them
    would give two interfaces one address."""
    reserved: list[tuple[str, IPNet]] = []
    if any(n.loopback if n.loopback is not None else n.kind == "router"
           for n in topo.nodes.values()):
        reserved += [("loopback4", ipaddress.IPv4Network(topo.pools.loopback4)),
                     ("loopback6", ipaddress.IPv6Network(topo.pools.loopback6))]
    if topo.management:
        reserved += [("mgmt4", ipaddress.IPv4Network(topo.pools.mgmt4)),
                     ("mgmt6", ipaddress.IPv6Network(topo.pools.mgmt6))]
    enabled = {4: topo.ipv4, 6: topo.ipv6}
    for net in nets.values():
        if net.kind == "mgmt":
            continue
        for pfx in (net.prefix4, net.prefix6):
            if pfx is None or not enabled[pfx.version]:
                continue
            for role, pool in reserved:
                if pool.version == pfx.version and pool.overlaps(pfx):  # type: ignore[arg-type, unused-ignore]
                    raise _err(net.where, f"prefix {pfx} overlaps pools.{role} ({pool})",
                               f"use another prefix, or move pools.{role}")
