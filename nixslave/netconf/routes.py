"""Static routes over the topology graph.

Only routers forward, so shortest paths are searched on the router graph
alone: one BFS per router gives its first hop towards every other router,
and every prefix is reached through the nearest router attached to it. End
systems need only a default gateway, plus specific routes when they are
multi-homed and another router is strictly closer. This keeps a 10,000-node
plan far from all-pairs shortest paths over every node.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from itertools import count

from .errors import TopologyError
from .plan import IPAddr, IPNet, Plan, Route

Hop = tuple[str, str]  # (router, network id)
DEFAULTS = ((ipaddress.IPv4Network("0.0.0.0/0"), 4), (ipaddress.IPv6Network("::/0"), 6))


def _bfs(adj: dict[str, list[Hop]], src: str) -> tuple[dict[str, int], dict[str, Hop]]:
    dist = {src: 0}
    first: dict[str, Hop] = {}
    q = deque([src])
    while q:
        x = q.popleft()
        dx = dist[x] + 1
        for s, net in adj[x]:
            if s not in dist:
                dist[s] = dx
                first[s] = first[x] if x != src else (s, net)
                q.append(s)
    return dist, first


def compute_routes(p: Plan) -> None:
    routers = [n for n, np in p.nodes.items() if np.kind == "router"]
    rset = set(routers)
    # per network: members that are routers, with their addresses by family
    addr: dict[tuple[str, str], dict[int, IPAddr]] = {}
    ifname: dict[tuple[str, str], str] = {}
    for n, np in p.nodes.items():
        for i in np.interfaces:
            ifname[(n, i.link_id)] = i.name
            addr[(n, i.link_id)] = {a.version: a.ip for a in i.addresses}
    net_routers: dict[str, list[str]] = {}
    for nid, net in p.networks.items():
        if net.kind == "mgmt":
            continue
        net_routers[nid] = sorted({m for m, _ in net.members if m in rset})
    adj: dict[str, list[Hop]] = {r: [] for r in routers}
    for nid, rs in net_routers.items():
        for r in rs:
            adj[r].extend((s, nid) for s in rs if s != r)
    for r in routers:
        adj[r].sort()
    tables = {r: _bfs(adj, r) for r in routers}
    if routers:
        dist0 = tables[routers[0]][0]
        for r in routers:
            if r not in dist0:
                raise TopologyError(
                    f"router {r!r} cannot reach router {routers[0]!r}", where=f"nodes.{r}",
                    hint="join the routers through links or segments between routers, "
                         "or set routing: none",
                )

    # destinations: (prefixes, attached routers, connected-on nodes)
    dests: list[tuple[list[IPNet], list[str], str]] = []
    for nid, rs in net_routers.items():
        if rs:
            dests.append((p.networks[nid].prefixes, rs, nid))
    for r in routers:
        lo = [a.network for a in p.nodes[r].loopbacks]
        if lo:
            dests.append((lo, [r], ""))

    inf = 1 << 30
    # prefixes with their version, so the hot loop reads no ipaddress properties
    dests_v: list[tuple[list[tuple[IPNet, int]], list[str], str]] = [
        ([(pfx, int(pfx.version)) for pfx in prefixes], rs, nid) for prefixes, rs, nid in dests]
    near: dict[str, list[int]] = {}
    for r in routers:
        dist, first = tables[r]
        dget = dist.get
        routes: list[Route] = []
        row: list[int] = []
        for pv, rs, _ in dests_v:
            if len(rs) == 1:
                best = rs[0]
            elif len(rs) == 2:
                a, b = rs
                best = a if dget(a, inf) <= dget(b, inf) else b
            else:
                best = min(rs, key=lambda a: (dget(a, inf), a))
            if best == r or r in rs:
                row.append(0)
                continue
            row.append(dget(best, inf))
            hop = first.get(best)
            if hop is None:
                continue
            dev = ifname[(r, hop[1])]
            via = addr[hop]
            for pfx, ver in pv:
                g = via.get(ver)
                if g is not None:
                    routes.append(Route(pfx, g, dev))
        p.nodes[r].routes = routes
        near[r] = row

    for n, np in p.nodes.items():
        if np.kind != "router":
            _end_system(p, n, net_routers, near, dests_v, addr, ifname)


def _end_system(p: Plan, n: str, net_routers: dict[str, list[str]],
                near: dict[str, list[int]],
                dests: list[tuple[list[tuple[IPNet, int]], list[str], str]],
                addr: dict[tuple[str, str], dict[int, IPAddr]],
                ifname: dict[tuple[str, str], str]) -> None:
    """A default route through the gateway; a multi-homed node also gets a
    route wherever a router on another of its networks is strictly closer
    to the destination than the gateway is."""
    np = p.nodes[n]
    routed = [(i.link_id, net_routers[i.link_id]) for i in np.interfaces
              if net_routers.get(i.link_id)]
    want = p.topology.nodes[n].gateway
    gw: Hop | None = None
    if want is not None:
        if p.nodes[want].kind != "router":
            raise TopologyError(f"gateway {want!r} is a {p.nodes[want].kind}, not a router",
                                where=f"nodes.{n}.gateway", hint="name a router")
        gw = next(((want, nid) for nid, rs in routed if want in rs), None)
        if gw is None:
            raise TopologyError(f"gateway {want!r} shares no link or segment with {n!r}",
                                where=f"nodes.{n}.gateway",
                                hint="name a router on one of the node's networks")
    elif routed:
        gw = (routed[0][1][0], routed[0][0])
    if gw is None:
        return
    np.gateway = gw[0]
    routes: list[Route] = []
    gdev = ifname[(n, gw[1])]
    for fam, ver in DEFAULTS:
        g = addr[(gw[0], gw[1])].get(ver)
        if g is not None:
            routes.append(Route(fam, g, gdev))
    cands = sorted((s, nid) for nid, rs in routed for s in rs if (s, nid) != gw)
    if cands:
        mine = {nid for nid, _ in routed}
        row_gw = near[gw[0]]
        # best[i] = (distance, candidate) when strictly closer than the gateway
        best: dict[int, tuple[int, Hop]] = {}
        if len(cands) == 1:
            c = cands[0]
            best = {i: (0, c) for i, dc, dg in zip(count(), near[c[0]], row_gw) if dc < dg}
        else:
            for c in cands:
                row = near[c[0]]
                for i, dc, dg in zip(count(), row, row_gw):
                    if dc < dg and (i not in best or dc < best[i][0]):
                        best[i] = (dc, c)
        for i in sorted(best):
            pv, _, dnet = dests[i]
            if dnet in mine:
                continue
            hop = best[i][1]
            via = addr[hop]
            dev = ifname[(n, hop[1])]
            for pfx, ver in pv:
                g = via.get(ver)
                if g is not None:
                    routes.append(Route(pfx, g, dev))
    np.routes = routes
