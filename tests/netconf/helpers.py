"""Checks shared by the case, property and CLI tests."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from nixslave.netconf import Plan, load_topology, plan, topology_from_data
from nixslave.netconf.importers import import_clab, import_netlab
from nixslave.netconf.load import read_data

DATA = Path(__file__).parent.parent / "data" / "netconf"
REGEN = os.environ.get("NIXSLAVE_REGEN") == "1"


def case_dirs() -> list[Path]:
    return sorted(d for d in DATA.iterdir() if d.is_dir() and d.name not in ("errors", "import"))


def case_input(d: Path) -> Path:
    return next(p for p in sorted(d.iterdir()) if p.name.startswith("input."))


def load_case(d: Path) -> Plan:
    src = case_input(d)
    if src.name.endswith(".clab.yml"):
        return plan(topology_from_data(import_clab(read_data(src))))
    if src.name.endswith(".netlab.yml"):
        return plan(topology_from_data(import_netlab(read_data(src))))
    return plan(load_topology(src))


def expected(d: Path, p: Plan) -> dict:
    """The reviewed plan of case ``d``. A missing expected.json fails the
    test instead of being written from the code under test (which would make
    the test pass whatever the code does); ``NIXSLAVE_REGEN=1`` rewrites it
    on request, for a human to review the diff."""
    path = d / "expected.json"
    if REGEN:
        path.write_text(json.dumps(p.to_dict(), indent=1, sort_keys=True) + "\n")
    if not path.exists():
        pytest.fail(f"{path} is missing: write it by hand, or run with NIXSLAVE_REGEN=1 "
                    "and review what it wrote", pytrace=False)
    return json.loads(path.read_text())


def check_unique(p: Plan) -> None:
    """No MAC twice anywhere; no address twice in a broadcast domain (nor
    anywhere else: pools never hand out one address twice)."""
    macs = [i.mac for np in p.nodes.values() for i in np.interfaces]
    assert len(macs) == len(set(macs))
    for m in macs:
        first = int(m[:2], 16)
        assert first & 2 and not first & 1, m  # locally administered, unicast
    seen: dict[str, str] = {}
    for n, np in p.nodes.items():
        for a in np.addresses(mgmt=True):
            assert str(a.ip) not in seen, (a, n, seen.get(str(a.ip)))
            seen[str(a.ip)] = n
    for nid, net in p.networks.items():
        for n, ifn in net.members:
            i = p.nodes[n].interface(ifn)
            assert len(i.name) <= 15
            for a in i.addresses:
                assert any(a.network == pfx for pfx in net.prefixes), (nid, a)
            if net.kind == "p2p":
                for a in i.addresses:
                    assert a.network.prefixlen in (30, 31, 64, 127) or a.network in net.prefixes


def owner_on(p: Plan, net_id: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for n, ifn in p.networks[net_id].members:
        if any(a.ip == ip for a in p.nodes[n].interface(ifn).addresses):
            return n
    raise AssertionError(f"{ip} is on nobody in {net_id}")


def walk(p: Plan, src: str, dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """Follow the planned routing tables hop by hop; every hop must be an
    edge of the graph (a shared link or segment) and every transit node a
    router."""
    path = [src]
    cur = src
    for _ in range(len(p.nodes) + 1):
        np = p.nodes[cur]
        if any(a.ip == dst for a in np.addresses()):
            return path
        nxt = None
        for i in np.interfaces:
            if i.kind == "mgmt":
                continue
            if any(dst in a.network for a in i.addresses if a.version == dst.version):
                nxt = (i.link_id, dst)
                break
        if nxt is None:
            cands = [r for r in np.routes if r.destination.version == dst.version
                     and dst in r.destination]
            assert cands, f"{cur} has no route to {dst} (path {path})"
            r = max(cands, key=lambda r: r.destination.prefixlen)
            link = np.interface(r.dev).link_id
            nxt = (link, r.via)
        link, hop_ip = nxt
        nxt_node = owner_on(p, link, hop_ip)
        assert p.graph.has_edge(cur, nxt_node) or (
            p.graph.has_edge(cur, link) and p.graph.has_edge(nxt_node, link))
        if nxt_node != dst and not any(a.ip == dst for a in p.nodes[nxt_node].addresses()):
            assert p.nodes[nxt_node].forwarding, f"{nxt_node} would have to forward"
        path.append(nxt_node)
        cur = nxt_node
    raise AssertionError(f"routing loop from {src} to {dst}: {path}")


def routed_addresses(p: Plan, node: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses of ``node`` that the routers know about: loopbacks and
    interfaces on a network with a router."""
    out = [a.ip for a in p.nodes[node].loopbacks]
    for i in p.nodes[node].interfaces:
        if i.kind == "mgmt":
            continue
        net = p.networks[i.link_id]
        if any(p.nodes[m].forwarding for m, _ in net.members):
            out += [a.ip for a in i.addresses]
    return out


def check_reachability(p: Plan) -> int:
    """Every ordered pair of nodes: every routed address of the second is
    reachable from the first. Returns the number of walks done."""
    count = 0
    for u in p.nodes:
        reach_any = bool(p.nodes[u].routes) or p.nodes[u].forwarding
        for v in p.nodes:
            if u == v:
                continue
            for ip in routed_addresses(p, v):
                if not reach_any and not any(
                        ip in a.network for a in p.nodes[u].addresses() if a.version == ip.version):
                    continue
                walk(p, u, ip)
                count += 1
    return count
