"""The topology as a networkx MultiGraph of nodes and segments.

Renderers and exporters ask graph questions (who is my neighbour, which
path joins two nodes); answering them on one graph keeps them consistent
with the plan that was built from the same layout.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from .validate import Layout


def graph_from_layout(layout: Layout) -> nx.MultiGraph:
    g: nx.MultiGraph = nx.MultiGraph(name=layout.topo.name)
    for name, node in layout.topo.nodes.items():
        g.add_node(name, type="node", kind=node.kind)
    for net in layout.nets.values():
        if net.kind == "mgmt":
            continue
        if net.kind == "lan":
            g.add_node(net.id, type="segment", kind="segment")
            for m in net.members:
                g.add_edge(m.node, net.id, key=f"{m.node}@{net.id}", net=net.id, ifname=m.ifname)
        else:
            a, b = net.members
            g.add_edge(a.node, b.node, key=net.id, net=net.id,
                       ifnames={a.node: a.ifname, b.node: b.ifname})
    return g


def is_segment(g: nx.MultiGraph, n: str) -> bool:
    return bool(g.nodes[n].get("type") == "segment")


def interfaces(g: nx.MultiGraph, node: str) -> list[tuple[str, str]]:
    """(interface name, network id) of a node, from the graph's edges."""
    out = []
    for _, _, data in g.edges(node, data=True):
        name = data["ifname"] if "ifname" in data else data["ifnames"][node]
        out.append((name, data["net"]))
    return sorted(out)


def neighbours(g: nx.MultiGraph, node: str) -> list[str]:
    """Nodes that share a link or a segment with ``node``."""
    out: set[str] = set()
    for other in g.neighbors(node):
        if is_segment(g, other):
            out.update(m for m in g.neighbors(other) if m != node)
        else:
            out.add(other)
    return sorted(out)


def node_graph(g: nx.MultiGraph, *, kinds: set[str] | None = None) -> nx.Graph:
    """A simple graph of nodes (optionally only some kinds, e.g. the router
    graph that routes are searched on), segments collapsed into cliques."""
    h: nx.Graph = nx.Graph()
    for n, d in g.nodes(data=True):
        if d.get("type") == "node" and (kinds is None or d.get("kind") in kinds):
            h.add_node(n, **d)
    for n in list(h.nodes):
        for m in neighbours(g, n):
            if m in h:
                h.add_edge(n, m)
    return h


def shortest_path(g: nx.MultiGraph, a: str, b: str) -> list[str]:
    """Nodes on a shortest path from a to b (segments are crossed, not listed)."""
    path: list[str] = nx.shortest_path(g, a, b)
    return [n for n in path if not is_segment(g, n)]


def node_link_data(g: nx.MultiGraph) -> dict[str, Any]:
    return nx.node_link_data(g, edges="links")  # type: ignore[no-any-return]
