"""A slow, plain reference for route aggregation, written from the rule in
docs/netconf.md rather than from nixslave/netconf/routes.py.

It searches from *every* router (all pairs), so it is quadratic and obvious:

* the root is the router with the most router neighbours, the first
  declared on a tie, and it keeps a route to every prefix;
* every other router's default goes to its parent in a breadth-first tree
  from the root;
* such a router keeps its route to a prefix exactly when its default next
  hop is farther from that prefix than the router itself; a kept route goes
  through the first hop towards the nearest attached router (sorted
  neighbours, names breaking ties), which is also what the planner did
  before aggregation; it has a default route only if it left some prefix
  to it.

The topology's own ``routes`` are out of its scope (the random topologies
that use it have none; the cases under tests/data cover them).

Tests compare the planner's tables with :func:`forwarding` (what longest-prefix
match does per prefix), so a summary that merges two routes is neither
required nor forbidden here.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Any

from nixslave.netconf import Plan

Hop = tuple[str, str]
INF = 1 << 30


def router_graph(p: Plan) -> tuple[list[str], dict[str, list[Hop]]]:
    routers = [n for n, np in p.nodes.items() if np.kind == "router"]
    adj: dict[str, list[Hop]] = {r: [] for r in routers}
    for nid, net in p.networks.items():
        if net.kind == "mgmt":
            continue
        rs = sorted({m for m, _ in net.members if m in adj})
        for r in rs:
            adj[r] += [(s, nid) for s in rs if s != r]
    for r in routers:
        adj[r].sort()
    return routers, adj


def bfs(adj: dict[str, list[Hop]], src: str) -> tuple[dict[str, int], dict[str, Hop],
                                                       dict[str, Hop]]:
    """Distances, first hops from src, and each router's parent hop."""
    dist: dict[str, int] = {src: 0}
    first: dict[str, Hop] = {}
    parent: dict[str, Hop] = {}
    q = deque([src])
    while q:
        x = q.popleft()
        for s, nid in adj[x]:
            if s not in dist:
                dist[s] = dist[x] + 1
                first[s] = first[x] if x != src else (s, nid)
                parent[s] = (x, nid)
                q.append(s)
    return dist, first, parent


def destinations(p: Plan) -> list[tuple[list[Any], list[str], dict[str, Hop]]]:
    """(prefixes, attached routers, last hops) for every routed network and
    loopback. An end system's loopback is attached to the routers on its
    networks, and their last hop is the end system (on its first network
    shared with each)."""
    routers, _ = router_graph(p)
    out: list[tuple[list[Any], list[str], dict[str, Hop]]] = []
    for net in p.networks.values():
        if net.kind == "mgmt":
            continue
        rs = sorted({m for m, _ in net.members if m in set(routers)})
        if rs:
            out.append((list(net.prefixes), rs, {}))
    for r in routers:
        lo = [a.network for a in p.nodes[r].loopbacks]
        if lo:
            out.append((lo, [r], {}))
    for n, np in p.nodes.items():
        if np.kind == "router" or not np.loopbacks:
            continue
        last: dict[str, Hop] = {}
        for i in np.interfaces:
            net = p.networks[i.link_id]
            if net.kind != "mgmt":
                for m, _ in net.members:
                    if m in set(routers):
                        last.setdefault(m, (n, i.link_id))
        if last:
            out.append(([a.network for a in np.loopbacks], sorted(last), last))
    return out


def root(p: Plan) -> str:
    routers, adj = router_graph(p)
    return max(routers, key=lambda r: (len({s for s, _ in adj[r]}), -routers.index(r)))


def forwarding(p: Plan) -> dict[str, dict[Any, Hop | None]]:
    """router -> prefix -> the (neighbour, network) its traffic must leave
    through, for every planned prefix not attached to the router."""
    routers, adj = router_graph(p)
    if not routers:
        return {}
    searches = {r: bfs(adj, r) for r in routers}
    top = root(p)
    parent = searches[top][2]
    dests = destinations(p)
    out: dict[str, dict[Any, Hop | None]] = {}
    for r in routers:
        dist_r, first_r, _ = searches[r]
        table: dict[Any, Hop | None] = {}
        for prefixes, rs, last in dests:
            if r in rs and r not in last:
                continue  # connected
            near = min(rs, key=lambda a: (dist_r.get(a, INF), a))
            hop = last[r] if r in rs else first_r.get(near)
            if r != top:
                d = parent[r][0]
                dist_d = searches[d][0]
                if min(dist_d.get(a, INF) for a in rs) <= dist_r.get(near, INF):
                    hop = parent[r]  # the default suffices
            for pfx in prefixes:
                table[pfx] = hop
        out[r] = table
    return out


def lookup(p: Plan, node: str, pfx: Any) -> Hop | None:
    """The hop longest-prefix match picks on ``node`` for the whole of
    ``pfx`` (the most specific route that contains it)."""
    np = p.nodes[node]
    cands = [r for r in np.routes if r.destination.version == pfx.version
             and pfx.subnet_of(r.destination)]
    if not cands:
        return None
    r = max(cands, key=lambda r: r.destination.prefixlen)
    link = np.interface(r.dev).link_id
    owner = next(n for n, ifn in p.networks[link].members
                 if any(a.ip == r.via for a in p.nodes[n].interface(ifn).addresses))
    return (owner, link)


def depth(p: Plan) -> int:
    """Height of the default tree: a bound on default hops in a row."""
    routers, adj = router_graph(p)
    if not routers:
        return 0
    return max(bfs(adj, root(p))[0].values())


UNPLANNED = (ipaddress.ip_address("192.0.2.77"), ipaddress.ip_address("2001:db8:dead::77"))
