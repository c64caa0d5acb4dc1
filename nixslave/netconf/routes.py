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

from .errors import TopologyError
from .plan import IPAddr, IPNet, Plan, Route

Hop = tuple[str, str]  # (router, network id)


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

    for r in routers:
        dist, first = tables[r]
        np = p.nodes[r]
        mine = {i.link_id for i in np.interfaces}
        routes: list[Route] = []
        for prefixes, rs, _ in dests:
            if r in rs:
                continue
            if len(rs) == 1:
                best = rs[0]
            else:
                best = min(rs, key=lambda a: (dist.get(a, 1 << 30), a))
            hop = first.get(best)
            if hop is None:
                continue
            s, nid = hop
            dev = ifname[(r, nid)]
            via = addr[(s, nid)]
            for pfx in prefixes:
                g = via.get(pfx.version)
                if g is not None and nid in mine:
                    routes.append(Route(pfx, g, dev))
        np.routes = routes

    for n, np in p.nodes.items():
        if np.kind == "router":
            continue
        _end_system(p, n, net_routers, tables, dests, addr, ifname)


def _end_system(p: Plan, n: str, net_routers: dict[str, list[str]],
                tables: dict[str, tuple[dict[str, int], dict[str, Hop]]],
                dests: list[tuple[list[IPNet], list[str], str]],
                addr: dict[tuple[str, str], dict[int, IPAddr]],
                ifname: dict[tuple[str, str], str]) -> None:
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
    for fam, ver in ((ipaddress.IPv4Network("0.0.0.0/0"), 4), (ipaddress.IPv6Network("::/0"), 6)):
        g = addr[(gw[0], gw[1])].get(ver)
        if g is not None:
            routes.append(Route(fam, g, gdev))
    if len(routed) > 1:
        mine = {nid for nid, _ in routed}
        for prefixes, rs, dnet in dests:
            if dnet in mine:
                continue
            best: tuple[int, str, str] | None = None
            for nid, candidates in routed:
                for s in candidates:
                    d = min((tables[s][0].get(a, 1 << 30) for a in rs), default=1 << 30)
                    key = (d, s, nid)
                    if best is None or key < best:
                        best = key
            if best is None or (best[1], best[2]) == gw:
                continue
            if best[0] >= 1 << 30:
                continue
            dgw = tables[gw[0]][0]
            if min((dgw.get(a, 1 << 30) for a in rs), default=1 << 30) <= best[0]:
                continue
            for pfx in prefixes:
                g = addr[(best[1], best[2])].get(pfx.version)
                if g is not None:
                    routes.append(Route(pfx, g, ifname[(n, best[2])]))
    np.routes = routes
