"""Static routes over the topology graph, aggregated so that tables stay small.

Only routers forward, so distances are router hops on the router graph, and
every prefix (link, segment, loopback) is reached through the nearest router
attached to it. Giving every router a route to every prefix is exact but
quadratic: a 9,000-node leaf-spine lab has 1,000 routers and 12,000
prefixes, 12 million routes. So routes are aggregated, and only in ways that
cannot change where a packet to a planned address ends up.

**The default tree.** The router with the most router neighbours is the
*root*. Every other router gets a default route to its parent in a
breadth-first tree from the root (its first hop towards the root), so the
defaults form a tree: a packet that matches nothing but defaults climbs to
the root, which has no default and drops it. Defaults never loop.

**Dropping a route.** A router ``r`` with default next hop ``d`` drops its
route to prefix ``P`` exactly when ``d`` is no farther from ``P`` than ``r``
is: ``dist(d, P) <= dist(r, P)``. Every route ``r`` keeps is a shortest-path
hop, so along any path each hop either moves strictly closer to ``P`` (a
specific route), or, through a default, reaches a router no farther from
``P`` and one step nearer the root. The pair (distance to ``P``, depth in the
default tree) therefore falls at every hop: no packet loops, and since every
router has a default or keeps every route (the root), none is dropped before
it reaches a router attached to ``P``. Dropped routes cost at most the
detours that equal distances allow (a leaf reaches a link between another
spine and another leaf through its default spine and that leaf: one hop
more); routes to loopbacks and segments behind a leaf stay shortest.

**Finding the kept routes without all-pairs searches.** ``r`` keeps ``P``
only if a router attached to ``P`` is strictly closer to ``r`` than to
``d``. Those routers are exactly ``r``'s descendants in the shortest-path
DAG of a breadth-first search from ``d`` (``r`` sits at distance 1 from
``d``), and their distance from ``r`` is their distance from ``d`` minus
one. One search from each distinct default target therefore serves all of
its children, and each child walks only its own descendants: work in
proportion to the routes kept, not to routers x prefixes.

**Summaries.** Kept routes that leave through the same next hop are merged
with :func:`ipaddress.collapse_addresses` when they are contiguous; the
summary covers exactly the same addresses, so nothing changes meaning.

End systems get a default route through their gateway, plus a specific
route wherever a router on another of their networks is strictly closer to
the destination than the gateway is. An end system's own loopback is
routed like a router's, through the routers on its networks, whose last hop
is the end system. Routers that have user routes covering
planned prefixes keep full tables, since a dropped route would otherwise
fall to the user's route instead of the default.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable

from .alloc import IPNet
from .errors import TopologyError
from .plan import IPAddr, Plan, Route

Hop = tuple[str, str]  # (router, network id): the neighbour and the network shared with it
INF = 1 << 30
DEFAULT4 = ipaddress.IPv4Network("0.0.0.0/0")
DEFAULT6 = ipaddress.IPv6Network("::/0")
DEFAULTS = ((DEFAULT4, 4), (DEFAULT6, 6))


class _Graph:
    """The router graph and the destinations, in the shapes the searches want."""

    def __init__(self, p: Plan) -> None:
        self.plan = p
        self.routers = [n for n, np in p.nodes.items() if np.kind == "router"]
        self.rset = rset = set(self.routers)
        self.order = {r: k for k, r in enumerate(self.routers)}
        # addresses and interface names per (node, network)
        self.addr: dict[Hop, dict[int, IPAddr]] = {}
        self.ifname: dict[Hop, str] = {}
        for n, np in p.nodes.items():
            for i in np.interfaces:
                self.ifname[(n, i.link_id)] = i.name
                self.addr[(n, i.link_id)] = {a.version: a.ip for a in i.addresses}
        self.net_routers: dict[str, list[str]] = {}
        for nid, net in p.networks.items():
            if net.kind != "mgmt":
                self.net_routers[nid] = sorted({m for m, _ in net.members if m in rset})
        adj: dict[str, list[Hop]] = {r: [] for r in self.routers}
        for nid, rs in self.net_routers.items():
            for r in rs:
                adj[r].extend((s, nid) for s in rs if s != r)
        for r in self.routers:
            adj[r].sort()
        self.adj = adj
        # destinations: prefixes (with their version) and the routers attached
        self.dest_pfx: list[list[tuple[IPNet, int]]] = []
        self.dest_rs: list[list[str]] = []
        self.dest_net: list[str] = []  # the network id, "" for a loopback
        for nid, rs in self.net_routers.items():
            if rs:
                self._dest(p.networks[nid].prefixes, rs, nid)
        for r in self.routers:
            lo = [a.network for a in p.nodes[r].loopbacks]
            if lo:
                self._dest(lo, [r], "")
        self.connected = {r: 0 for r in self.routers}  # destinations r is attached to
        for rs in self.dest_rs:
            for r in rs:
                self.connected[r] += 1
        # an end system's loopback (loopback: true) is reached through the
        # routers on its networks, which hand it to the end system itself
        self.last_hop: dict[tuple[int, str], Hop] = {}
        for n, np in p.nodes.items():
            if np.kind == "router" or not np.loopbacks:
                continue
            hops: dict[str, Hop] = {}
            for i in np.interfaces:
                for r in self.net_routers.get(i.link_id, ()):
                    hops.setdefault(r, (n, i.link_id))
            if hops:
                k = len(self.dest_rs)
                self._dest([a.network for a in np.loopbacks], sorted(hops), "")
                self.last_hop.update(((k, r), hop) for r, hop in hops.items())

    def _dest(self, prefixes: Iterable[IPNet], rs: list[str], nid: str) -> None:
        self.dest_pfx.append([(pfx, int(pfx.version)) for pfx in prefixes])
        self.dest_rs.append(rs)
        self.dest_net.append(nid)

    def bfs(self, src: str) -> tuple[dict[str, int], dict[str, Hop], dict[str, Hop]]:
        """Distances from ``src``, the first hop towards each router, and the
        hop each router was discovered through (its parent towards ``src``).
        Neighbours are visited in sorted order, so ties always break the same
        way."""
        adj = self.adj
        dist = {src: 0}
        first: dict[str, Hop] = {}
        parent: dict[str, Hop] = {}
        q = deque([src])
        while q:
            x = q.popleft()
            dx = dist[x] + 1
            fx = first.get(x)
            for s, net in adj[x]:
                if s not in dist:
                    dist[s] = dx
                    first[s] = fx if fx is not None else (s, net)
                    parent[s] = (x, net)
                    q.append(s)
        return dist, first, parent

    def routes_via(self, node: str, pv: list[tuple[IPNet, int]], hop: Hop) -> list[Route]:
        via = self.addr[hop]
        dev = self.ifname[(node, hop[1])]
        out = []
        for pfx, ver in pv:
            g = via.get(ver)
            if g is not None:
                out.append(Route(pfx, g, dev))
        return out

    def defaults_via(self, node: str, hop: Hop) -> list[Route]:
        return self.routes_via(node, list(DEFAULTS), hop)

    def near_row(self, r: str) -> list[int]:
        """Distance from router ``r`` to every destination (0 when attached)."""
        dist = self.bfs(r)[0]
        row = []
        for rs in self.dest_rs:
            if r in rs:
                row.append(0)
            else:
                row.append(min((dist.get(a, INF) for a in rs), default=INF))
        return row


def _root(g: _Graph) -> str:
    """The router with the most router neighbours (the first declared on a
    tie): the centre of a leaf-spine fabric, a hub of a random core."""
    return max(g.routers, key=lambda r: (len({s for s, _ in g.adj[r]}), -g.order[r]))


def _user_route_routers(p: Plan, g: _Graph) -> set[str]:
    """Routers that keep full tables (and get no default) because of the
    topology's own ``routes``:

    * a router whose user route would catch traffic for a planned prefix if
      its specific route were dropped: a user default, or a user route that
      strictly contains a planned prefix;
    * a router that a user route sends traffic to: the prefix is unknown to
      the planner, and a default there could send it back up the tree to
      the router that sent it (before aggregation it was dropped there, and
      it still is)."""
    out: set[str] = set()
    mine: dict[str, list[IPNet]] = {}
    if not p.topology.routes:
        return out
    owner = {a.ip: n for n in g.routers for i in p.nodes[n].interfaces for a in i.addresses}
    for sr in p.topology.routes:
        try:
            via = ipaddress.ip_address(sr.via)
            to = ipaddress.ip_network(sr.to)
        except ValueError:
            continue  # reported where user routes are added
        if via in owner:
            out.add(owner[via])
        if sr.node in g.rset:
            mine.setdefault(sr.node, []).append(to)
    planned = [pfx for pv in g.dest_pfx for pfx, _ in pv]
    for r, nets in mine.items():
        for to in nets:
            if to.prefixlen == 0 or any(
                    pfx.version == to.version and pfx != to and pfx.subnet_of(to)  # type: ignore[arg-type]
                    for pfx in planned):
                out.add(r)
                break
    return out


def router_tables(p: Plan, g: _Graph | None = None) -> dict[str, list[Route]]:
    """The aggregated static routes of every router (see the module doc).

    Raises TopologyError when routers cannot reach each other."""
    g = g or _Graph(p)
    if not g.routers:
        return {}
    check_connected(p, g)
    root = _root(g)
    _, _, parent = g.bfs(root)
    full = _user_route_routers(p, g) | {root}
    tables: dict[str, list[Route]] = {}
    for r in full:
        tables[r] = _full_table(g, r)
    children: dict[str, list[str]] = {}
    for r in g.routers:
        if r not in full:
            children.setdefault(parent[r][0], []).append(r)
    for d, kids in children.items():
        _children_tables(g, d, kids, parent, tables)
    statics = _user_prefixes(p)
    return {r: _summarise(tables[r], statics.get(r, ())) for r in g.routers}


def _full_table(g: _Graph, r: str) -> list[Route]:
    """A route to every destination not attached to ``r``, through the
    first hop towards the nearest router attached to it."""
    dist, first, _ = g.bfs(r)
    out: list[Route] = []
    for k, (pv, rs) in enumerate(zip(g.dest_pfx, g.dest_rs, strict=True)):
        if r in rs:
            last = g.last_hop.get((k, r))
            if last is not None:
                out += g.routes_via(r, pv, last)
            continue
        best = rs[0] if len(rs) == 1 else min(rs, key=lambda a: (dist.get(a, INF), a))
        hop = first.get(best)
        if hop is not None:
            out += g.routes_via(r, pv, hop)
    return out


def _children_tables(g: _Graph, d: str, kids: list[str], parent: dict[str, Hop],
                     tables: dict[str, list[Route]]) -> None:
    """Tables of every router whose default route points at ``d``.

    One search from ``d`` gives, for each destination, the routers attached
    to it that are nearest to ``d`` (``near``). A child ``r`` keeps a
    destination exactly when one of those is among its descendants in
    ``d``'s shortest-path DAG (then it is strictly closer to ``r`` than to
    ``d``); the nearest such router, by name on a tie, is where it goes."""
    dist_d = g.bfs(d)[0]
    adj = g.adj
    # destinations for which a router is one of the attached routers nearest to d
    near: dict[str, list[int]] = {}
    for i, rs in enumerate(g.dest_rs):
        if len(rs) == 1:
            near.setdefault(rs[0], []).append(i)
            continue
        m = min(dist_d.get(a, INF) for a in rs)
        for a in rs:
            if dist_d.get(a, INF) == m:
                near.setdefault(a, []).append(i)
    down_cache: dict[str, list[Hop]] = {}

    def down(v: str) -> list[Hop]:
        """Neighbours one step farther from d than v: v's DAG children."""
        got = down_cache.get(v)
        if got is None:
            dv = dist_d[v] + 1
            got = [(s, net) for s, net in adj[v] if dist_d.get(s) == dv]
            down_cache[v] = got
        return got

    for r in kids:
        # r's descendants, searched in r's own breadth-first order, so first
        # hops are the ones a search over the whole graph would pick
        first: dict[str, Hop | None] = {r: None}
        q = deque([r])
        while q:
            v = q.popleft()
            fv = first[v]
            for s, net in down(v):
                if s not in first:
                    first[s] = fv if fv is not None else (s, net)
                    q.append(s)
        best: dict[int, str] = {}
        for v in first:
            for i in near.get(v, ()):
                b = best.get(i)
                if b is None or v < b:
                    best[i] = v
        routes = []
        kept = 0
        for i in sorted(best):
            hop = first[best[i]] or g.last_hop.get((i, r))
            if hop is not None:  # None: r itself is attached (connected)
                routes += g.routes_via(r, g.dest_pfx[i], hop)
                kept += 1
        # a default only where some destination was left to it
        if len(g.dest_rs) - g.connected[r] > kept:
            routes = g.defaults_via(r, parent[r]) + routes
        tables[r] = routes


def _user_prefixes(p: Plan) -> dict[str, list[IPNet]]:
    out: dict[str, list[IPNet]] = {}
    for sr in p.topology.routes:
        try:
            out.setdefault(sr.node, []).append(ipaddress.ip_network(sr.to))
        except ValueError:
            continue
    return out


def _summarise(routes: list[Route], statics: Iterable[IPNet] = ()) -> list[Route]:
    """Merge contiguous prefixes that leave through the same next hop.

    ``collapse_addresses`` returns the exact union, so a summary covers the
    same addresses as its parts; the one thing that could change meaning is
    a longer route lying between a part and the summary, which only a
    user's static route can be (planned prefixes never overlap), so a
    summary that contains one is not made."""
    groups: dict[tuple[str, IPAddr], list[int]] = {}
    for k, r in enumerate(routes):
        if r.destination.prefixlen:
            groups.setdefault((r.dev, r.via), []).append(k)
    statics = list(statics)
    replace: dict[int, Route | None] = {}
    for (dev, via), idx in groups.items():
        if len(idx) < 2 or not _has_siblings([routes[k].destination for k in idx]):
            continue
        nets = [routes[k].destination for k in idx]
        merged = list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]
        if len(merged) == len(nets):
            continue
        if any(s.version == m.version and s.subnet_of(m)  # type: ignore[arg-type]
               for s in statics for m in merged):
            continue
        for m in merged:  # each summary takes the place of its first part
            parts = [k for k in idx if routes[k].destination.subnet_of(m)]  # type: ignore[arg-type]
            if len(parts) > 1:
                replace[parts[0]] = Route(m, via, dev)
                replace.update((k, None) for k in parts[1:])
    if not replace:
        return routes
    out = []
    for k, r in enumerate(routes):
        if k in replace:
            new = replace[k]
            if new is not None:
                out.append(new)
        else:
            out.append(r)
    return out


def _has_siblings(nets: list[IPNet]) -> bool:
    """Whether any two of ``nets`` are the halves of one larger prefix: the
    only way collapse_addresses can merge disjoint prefixes. Cheap, so the
    collapse runs only where it can do something."""
    seen = {(int(n.network_address), n.prefixlen, n.version) for n in nets}
    for a, plen, ver in seen:
        if plen == 0:
            continue
        size = 1 << ((32 if ver == 4 else 128) - plen)
        if (a ^ size, plen, ver) in seen:
            return True
    return False


def end_system_tables(p: Plan,
                      g: _Graph | None = None) -> dict[str, tuple[str | None, list[Route]]]:
    """Gateway and routes of every node that is not a router."""
    g = g or _Graph(p)
    rows: dict[str, list[int]] = {}

    def near(r: str) -> list[int]:
        row = rows.get(r)
        if row is None:
            row = rows[r] = g.near_row(r)
        return row

    out: dict[str, tuple[str | None, list[Route]]] = {}
    for n, np in p.nodes.items():
        if np.kind != "router":
            out[n] = _end_system(p, g, n, near)
    return out


def _end_system(p: Plan, g: _Graph, n: str,
                near: Callable[[str], list[int]]) -> tuple[str | None, list[Route]]:
    """A default route through the gateway; a multi-homed node also gets a
    route wherever a router on another of its networks is strictly closer
    to the destination than the gateway is."""
    np = p.nodes[n]
    routed = [(i.link_id, g.net_routers[i.link_id]) for i in np.interfaces
              if g.net_routers.get(i.link_id)]
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
        return None, []
    routes = g.defaults_via(n, gw)
    cands = sorted((s, nid) for nid, rs in routed for s in rs if (s, nid) != gw)
    if cands:
        mine = {nid for nid, _ in routed}
        row_gw = near(gw[0])
        best: dict[int, tuple[int, Hop]] = {}  # destination -> (distance, router), if closer
        for c in cands:
            for i, (dc, dg) in enumerate(zip(near(c[0]), row_gw, strict=True)):
                if dc < dg and (i not in best or dc < best[i][0]):
                    best[i] = (dc, c)
        for i in sorted(best):
            if g.dest_net[i] not in mine:
                routes += g.routes_via(n, g.dest_pfx[i], best[i][1])
    statics = _user_prefixes(p).get(n, ())
    return gw[0], _summarise(routes, statics)


def compute_routes(p: Plan, *, routers: bool = True) -> None:
    """Fill in every node's routes (routers only when ``routers``: with a
    routing daemon they learn theirs at run time, but end systems still
    need a gateway, and routers must still be able to reach each other)."""
    g = _Graph(p)
    if routers:
        for r, table in router_tables(p, g).items():
            p.nodes[r].routes = table
    else:
        check_connected(p, g)
    for n, (gw, table) in end_system_tables(p, g).items():
        p.nodes[n].gateway = gw
        p.nodes[n].routes = table


def check_connected(p: Plan, g: _Graph | None = None) -> None:
    """Refuse routers that cannot reach each other (unless routing: none),
    naming the first one that cannot reach the first declared router."""
    g = g or _Graph(p)
    if not g.routers:
        return
    dist = g.bfs(g.routers[0])[0]
    for r in g.routers:
        if r not in dist:
            raise TopologyError(
                f"router {r!r} cannot reach router {g.routers[0]!r}", where=f"nodes.{r}",
                hint="join the routers through links or segments between routers, "
                     "or set routing: none",
            )
