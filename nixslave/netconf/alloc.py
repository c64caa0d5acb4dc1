"""Addresses and MACs by stable key.

The NixOS test driver renumbers machines whenever one is added, so anything
derived from a position would change an existing guest's addresses. Here an
element's home slot is a hash of its name; only a hash collision moves it,
and collisions are settled in declaration order, so appending a node or a
link never moves anything that existed before.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING

from .errors import TopologyError

if TYPE_CHECKING:
    from .validate import Layout, Net

IPIf = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def h64(*parts: str) -> int:
    return int.from_bytes(
        hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest(), "big"
    )


class SubnetPool:
    """Hands out subnets of a pool; slots of several lengths may coexist.

    Taking a slot probes from its home slot onwards, but jumps over whole
    runs of taken space at once (a static prefix, a larger subnet already
    handed out), so a pool that a static prefix covers is refused at once
    instead of after a million probes."""

    MAX_PROBES = 1 << 20

    def __init__(self, pool: str, role: str) -> None:
        self.net = ipaddress.ip_network(pool)
        self.role = role
        self.bits = self.net.max_prefixlen
        self.base = int(self.net.network_address)
        self.last = int(self.net.broadcast_address)
        self.used: dict[int, set[int]] = {}
        self.blocked: list[tuple[int, int, str]] = []

    def block(self, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network,
              where: str = "") -> None:
        """Keep a static prefix out of dynamic allocation."""
        if prefix.version == self.net.version and prefix.overlaps(self.net):  # type: ignore[arg-type, unused-ignore]
            lo = max(int(prefix.network_address), self.base)
            hi = min(int(prefix.broadcast_address), self.last)
            self.blocked.append((lo, hi, where or str(prefix)))

    def _skip(self, plen: int, slot: int) -> int:
        """0 if the slot is free, else how many slots to move on to reach
        one that might be."""
        size = self.bits - plen
        lo = self.base + (slot << size)
        hi = lo + (1 << size) - 1
        for blo, bhi, _ in self.blocked:
            if blo <= hi and lo <= bhi:
                return ((bhi - self.base) >> size) + 1 - slot
        for other, used in self.used.items():
            if other == plen:
                if slot in used:
                    return 1
            elif other < plen:
                shift = plen - other
                if (slot >> shift) in used:  # inside a larger subnet: jump past it
                    return (((slot >> shift) + 1) << shift) - slot
            else:
                shift = other - plen
                if len(used) < (1 << shift):
                    if any((s >> shift) == slot for s in used):
                        return 1
                elif any((slot << shift) + k in used for k in range(1 << shift)):
                    return 1
        return 0

    def take(
        self, key: str, plen: int, where: str
    ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if plen < self.net.prefixlen:
            raise TopologyError(
                f"a /{plen} does not fit in the {self.role} pool {self.net}", where=where,
                hint=f"use a longer prefix or a larger pools.{self.role}",
            )
        for blo, bhi, bwhere in self.blocked:
            if blo == self.base and bhi == self.last:
                raise TopologyError(
                    f"the {self.role} pool {self.net} is all taken by the static prefix "
                    f"of {bwhere}", where=where,
                    hint=f"move pools.{self.role} or that prefix elsewhere",
                )
        nslots = 1 << (plen - self.net.prefixlen)
        used = self.used.setdefault(plen, set())
        slot = h64(key) % nslots
        covered = 0
        # the family's own class: ip_network() tries IPv4 first and fails slowly on IPv6
        cls = ipaddress.IPv4Network if self.net.version == 4 else ipaddress.IPv6Network
        for _ in range(self.MAX_PROBES):
            skip = self._skip(plen, slot)
            if not skip:
                used.add(slot)
                return cls((self.base + (slot << (self.bits - plen)), plen))
            covered += skip
            if covered >= nslots:
                break
            slot = (slot + skip) % nslots
        raise TopologyError(
            f"the {self.role} pool {self.net} is exhausted (no free /{plen} left)",
            where=where, hint=f"enlarge pools.{self.role} or give some links static prefixes",
        )


class HostSlots:
    """Host numbers inside one subnet."""

    def __init__(self, prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self.prefix = prefix
        # not prefix.num_addresses: that builds the broadcast address object
        size = 1 << (prefix.max_prefixlen - prefix.prefixlen)
        self.base = int(prefix.network_address)
        self.cls: type[ipaddress.IPv4Interface] | type[ipaddress.IPv6Interface] = (
            ipaddress.IPv4Interface if prefix.version == 4 else ipaddress.IPv6Interface)
        if size <= 2:  # RFC 3021 /31 and RFC 6164 /127: both addresses are usable
            self.first, self.count = 0, size
        else:
            self.first = 1
            self.count = size - 2 if prefix.version == 4 else size - 1
            # keep IPv6 host parts short (::1 to ::fffe) so people can read them
            self.count = min(self.count, 0xFFFE)
        self.used: set[int] = set()

    def reserve(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        self.used.add(int(ip) - self.base)

    def take_seq(self, where: str) -> int:
        for k in range(self.first, self.first + self.count):
            if k not in self.used:
                self.used.add(k)
                return k
        raise self._full(where)

    def take_hash(self, key: str, where: str, fixed: int | None = None) -> int:
        if fixed is not None:
            if not (self.first <= fixed < self.first + self.count):
                raise TopologyError(
                    f"fixed id {fixed} does not fit in {self.prefix}", where=where,
                    hint="use a smaller id or a shorter prefix",
                )
            if fixed in self.used:
                raise TopologyError(
                    f"fixed id {fixed} collides with another address in {self.prefix}",
                    where=where, hint="give the nodes different ids",
                )
            self.used.add(fixed)
            return fixed
        if len(self.used) >= self.count:
            raise self._full(where)
        k = self.first + h64(key) % self.count
        while k in self.used:
            k += 1
            if k >= self.first + self.count:
                k = self.first
        self.used.add(k)
        return k

    def iface(self, k: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return self.cls((self.base + k, self.prefix.prefixlen))

    def _full(self, where: str) -> TopologyError:
        return TopologyError(
            f"prefix {self.prefix} has no free host address left", where=where,
            hint="use a shorter prefix for this link or segment",
        )


def mac_for(topology: str, node: str, iface_key: str, salt: int = 0) -> str:
    """Locally administered unicast MAC from a hash: the guest's networkd
    matches on it, so it must be the same on every run and every backend."""
    b = bytearray(
        hashlib.blake2b(
            f"{topology}\x00{node}\x00{iface_key}\x00{salt}".encode(), digest_size=6
        ).digest()
    )
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def assign_addresses(layout: Layout) -> dict[str, dict[str, list[IPIf]]]:
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
    for ip in net.reserved:  # the management gateway
        if ip.version == fam:
            slots.reserve(ip)
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


def loopbacks(layout: Layout) -> dict[str, list[IPIf]]:
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


def assign_macs(layout: Layout) -> dict[tuple[str, str], str]:
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
