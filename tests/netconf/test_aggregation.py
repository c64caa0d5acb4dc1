"""Route aggregation must never change where a packet ends up.

Every (node, address) pair of random topologies is walked hop by hop through
the planned tables (longest-prefix match over each node's routes and
connected prefixes): every planned address is delivered, with no black hole
and no loop. Addresses outside the plan must be dropped without looping
(default routes form a tree). And every router's choice for every planned
prefix must equal the one of tests/netconf/oracle.py, a slow all-pairs
reading of the documented rule, so a cleverer shortcut in routes.py cannot
drift from what the docs promise.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixslave.netconf import Plan, plan, topology_from_data
from nixslave.netconf.plan import Route
from nixslave.netconf.routes import _has_siblings, _summarise

from . import oracle
from .helpers import check_reachability, check_unique

pytestmark = pytest.mark.unit

# small enough that allocated prefixes are often neighbours (so summaries get
# made), large enough for the largest topology drawn below
SMALL_POOLS = {"p2p4": "10.64.0.0/24", "lan4": "10.128.0.0/21", "loopback4": "10.0.0.0/27",
               "p2p6": "2001:db8:ff::/120", "lan6": "2001:db8:100::/58",
               "loopback6": "2001:db8:ff:1::/123"}


@st.composite
def topologies(draw: st.DrawFn) -> dict[str, Any]:
    """Routers joined by a random tree plus extra links (parallel ones too)
    and transit LANs; LANs and p2p links with end systems, some multi-homed;
    loopbacks switched on and off; now and then pools so small that
    neighbouring prefixes are common and summaries get made."""
    nr = draw(st.integers(1, 9))
    routers = [f"r{i}" for i in range(nr)]
    nodes: dict[str, Any] = {r: {"kind": "router"} for r in routers}
    for r in routers:
        if draw(st.integers(0, 5)) == 0:
            nodes[r]["loopback"] = False
    segments: dict[str, Any] = {}
    links: list[Any] = []
    for i in range(1, nr):
        j = draw(st.integers(0, i - 1))
        if draw(st.integers(0, 3)):
            links.append([f"r{j}", f"r{i}"])
        else:
            segments[f"t{i}"] = {}
            links += [[f"r{j}", f"t{i}"], [f"r{i}", f"t{i}"]]
    for k in range(draw(st.integers(0, nr))):  # extra links: cycles and parallel links
        a, b = draw(st.integers(0, nr - 1)), draw(st.integers(0, nr - 1))
        if a != b:
            links.append([f"r{a}", f"r{b}"])
        elif nr > 2 and draw(st.booleans()):  # a transit LAN with three routers
            segments[f"x{k}"] = {}
            links += [[f"r{(a + m) % nr}", f"x{k}"] for m in range(3)]
    nlan = draw(st.integers(0, 4))
    for k in range(nlan):
        segments[f"lan{k}"] = {}
        links.append([f"r{draw(st.integers(0, nr - 1))}", f"lan{k}"])
    for h in range(draw(st.integers(0, 6))):
        name = f"h{h}"
        nodes[name] = {"kind": draw(st.sampled_from(["vm", "container", "host"]))}
        if draw(st.integers(0, 4)) == 0:
            nodes[name]["loopback"] = True
        homes = draw(st.lists(st.integers(0, nlan + nr - 1), min_size=1, max_size=2, unique=True))
        for x in homes:
            links.append([name, f"lan{x}" if x < nlan else f"r{x - nlan}"])
    ipv4 = draw(st.sampled_from([True, True, False]))
    data: dict[str, Any] = {
        "name": "agg", "nodes": nodes, "segments": segments, "links": links,
        "ipv4": ipv4, "ipv6": True if not ipv4 else draw(st.booleans()),
        "p2p_prefix_len4": draw(st.sampled_from([30, 31])),
        "management": draw(st.integers(0, 4)) == 0,
    }
    if draw(st.booleans()):
        data["pools"] = SMALL_POOLS
        data["lan_prefix_len4"] = 26
        data["lan_prefix_len6"] = 64
    return data


def walk_unplanned(p: Plan, src: str, dst: Any) -> list[str]:
    """Follow the tables towards an address no node has: the walk must end
    at a node without a matching route, never visiting a node twice."""
    path = [src]
    cur = src
    while True:
        np = p.nodes[cur]
        cands = [r for r in np.routes if r.destination.version == dst.version
                 and dst in r.destination]
        if not cands:
            return path
        r = max(cands, key=lambda r: r.destination.prefixlen)
        link = np.interface(r.dev).link_id
        cur = next(n for n, ifn in p.networks[link].members
                   if any(a.ip == r.via for a in p.nodes[n].interface(ifn).addresses))
        assert cur not in path, f"loop towards {dst}: {[*path, cur]}"
        assert p.nodes[cur].forwarding, f"{cur} would have to forward to {dst}"
        path.append(cur)


def check_against_oracle(p: Plan) -> None:
    want = oracle.forwarding(p)
    for r, table in want.items():
        for pfx, hop in table.items():
            assert oracle.lookup(p, r, pfx) == hop, (r, pfx, hop)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_every_address_is_delivered_and_nothing_loops(data: dict[str, Any]) -> None:
    p = plan(topology_from_data(data))
    check_unique(p)
    check_reachability(p)  # every (node, routed address) pair, hop by hop
    bound = oracle.depth(p) + 2
    for n, np in p.nodes.items():
        if np.routes:
            for dst in oracle.UNPLANNED:
                assert len(walk_unplanned(p, n, dst)) <= bound
    check_against_oracle(p)


@settings(max_examples=25, deadline=None)
@given(topologies())
def test_defaults_point_up_a_tree_rooted_at_the_busiest_router(data: dict[str, Any]) -> None:
    p = plan(topology_from_data(data))
    routers = [n for n, np in p.nodes.items() if np.kind == "router"]
    if not routers:
        return
    top = oracle.root(p)
    _, adj = oracle.router_graph(p)
    parent = oracle.bfs(adj, top)[2]
    fwd = oracle.forwarding(p)
    for r in routers:
        defaults = [rt for rt in p.nodes[r].routes if rt.is_default]
        if r == top:
            assert not defaults  # the root drops what no one knows
            continue
        # a default exactly where some prefix is left to it, through the parent
        assert bool(defaults) == any(hop == parent[r] for hop in fwd[r].values())
        assert all(oracle.lookup(p, r, rt.destination) == parent[r] for rt in defaults)
        assert len(p.nodes[r].routes) <= len(p.nodes[top].routes) + 2


def test_leaf_spine_tables_stay_small() -> None:
    """The shape the aggregation is for: leaves keep their defaults and the
    other spines' loopbacks; only the root spine has a full table."""
    from nixslave.netconf.generate import leaf_spine

    p = plan(topology_from_data(leaf_spine(400, spines=4, hosts_per_leaf=8)))
    leaves = [np for n, np in p.nodes.items() if n.startswith("leaf")]
    assert len(leaves) == 44
    for np in leaves:  # 2 defaults + loopbacks of spine1..3, both families
        assert len(np.routes) == 2 + 3 * 2, [str(r.destination) for r in np.routes]
    total = sum(len(np.routes) for np in p.nodes.values())
    assert total < 10 * len(p.nodes)
    check_against_oracle(p)


# ---- summaries ------------------------------------------------------------------

V = ipaddress.ip_address


def _routes(*spec: tuple[str, str]) -> list[Route]:
    return [Route(ipaddress.ip_network(to), V(via), "eth0") for to, via in spec]


def test_summaries_cover_exactly_their_parts() -> None:
    parts = _routes(("198.51.100.0/26", "192.0.2.1"), ("198.51.100.64/26", "192.0.2.1"),
                    ("198.51.100.128/25", "192.0.2.1"), ("203.0.113.0/25", "192.0.2.1"),
                    ("203.0.113.128/25", "192.0.2.9"), ("10.0.0.2/32", "192.0.2.1"),
                    ("10.0.0.3/32", "192.0.2.9"))
    got = _summarise(parts)
    assert [(str(r.destination), str(r.via)) for r in got] == [
        ("198.51.100.0/24", "192.0.2.1"),  # three parts, one /24, in the first part's place
        ("203.0.113.0/25", "192.0.2.1"),  # its sibling leaves elsewhere
        ("203.0.113.128/25", "192.0.2.9"),
        ("10.0.0.2/32", "192.0.2.1"),  # siblings, but not the same next hop
        ("10.0.0.3/32", "192.0.2.9"),
    ]
    # longest-prefix match gives every address of every part the same next hop
    for part in parts:
        for addr in (part.destination.network_address, part.destination.broadcast_address):
            best = max((r for r in got if addr in r.destination),
                       key=lambda r: r.destination.prefixlen)
            assert best.via == part.via


def test_no_summary_over_a_users_route() -> None:
    """A user's route inside (or equal to) a summary would take traffic the
    parts used to keep: the summary is not made."""
    parts = _routes(("198.51.100.0/25", "192.0.2.1"), ("198.51.100.128/25", "192.0.2.1"))
    assert len(_summarise(parts)) == 1
    for user in ("198.51.100.0/24", "198.51.100.0/26"):
        assert _summarise(parts, [ipaddress.ip_network(user)]) == parts


def test_siblings() -> None:
    n = ipaddress.ip_network
    assert _has_siblings([n("10.0.0.0/31"), n("10.0.0.2/31")])
    assert not _has_siblings([n("10.0.0.2/31"), n("10.0.0.4/31")])
    assert _has_siblings([n("2001:db8::/127"), n("2001:db8::2/127")])
    assert not _has_siblings([n("0.0.0.0/0")])


# ---- user routes ------------------------------------------------------------------

def _chain(routes: list[dict[str, str]]) -> Plan:
    """r1 - r2 - r3, a LAN behind r3, addresses pinned."""
    return plan(topology_from_data({
        "name": "chain", "ipv6": False,
        "nodes": {"r1": {"kind": "router", "loopback": False},
                  "r2": {"kind": "router", "loopback": False},
                  "r3": {"kind": "router", "loopback": False}},
        "segments": {"lan": {"prefix4": "198.51.100.0/24"}},
        "links": [{"endpoints": [{"node": "r1", "ipv4": "192.0.2.0/31"},
                                 {"node": "r2", "ipv4": "192.0.2.1/31"}]},
                  {"endpoints": [{"node": "r2", "ipv4": "192.0.2.2/31"},
                                 {"node": "r3", "ipv4": "192.0.2.3/31"}]},
                  [{"node": "r3", "ipv4": "198.51.100.1/24"}, "lan"]],
        "routes": routes,
    }))


def test_a_users_default_keeps_the_full_table() -> None:
    """r2 is the root; r1 would need only a default through r2. With the
    user's own default on r1 (elsewhere), the planned prefixes must keep
    their specific routes, or they would follow the user's default."""
    plain = _chain([])
    assert [str(r.destination) for r in plain.nodes["r1"].routes] == ["0.0.0.0/0"]
    p = _chain([{"node": "r1", "to": "0.0.0.0/0", "via": "192.0.2.1"}])
    assert {str(r.destination) for r in p.nodes["r1"].routes} == {
        "0.0.0.0/0", "198.51.100.0/24", "192.0.2.2/31"}
    covering = _chain([{"node": "r3", "to": "192.0.2.0/24", "via": "198.51.100.9"}])
    assert {str(r.destination) for r in covering.nodes["r3"].routes} == {
        "192.0.2.0/24", "192.0.2.0/31"}  # r3's default would lose to the user's /24
    check_reachability(plain)
    check_reachability(covering)
