"""Graph queries the renderers and exporters rely on."""

from __future__ import annotations

import networkx as nx
import pytest

from nixslave.netconf import load_topology, plan
from nixslave.netconf.export import to_node_link_json
from nixslave.netconf.graph import interfaces, neighbours, node_graph, shortest_path

from .helpers import DATA

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def g() -> nx.MultiGraph:
    return plan(load_topology(DATA / "routed-two-lans" / "input.yml")).graph


def test_interfaces(g: nx.MultiGraph) -> None:
    assert interfaces(g, "r1") == [("eth0", "r1-r2"), ("eth1", "lana")]
    assert interfaces(g, "a1") == [("eth0", "lana")]


def test_neighbours_cross_segments(g: nx.MultiGraph) -> None:
    assert neighbours(g, "r1") == ["a1", "a2", "r2"]
    assert neighbours(g, "b1") == ["b2", "r2"]


def test_shortest_path_lists_nodes_only(g: nx.MultiGraph) -> None:
    assert shortest_path(g, "a1", "b2") == ["a1", "r1", "r2", "b2"]


def test_router_graph(g: nx.MultiGraph) -> None:
    rg = node_graph(g, kinds={"router"})
    assert set(rg.nodes) == {"r1", "r2"} and rg.has_edge("r1", "r2")
    assert nx.is_connected(node_graph(g))


def test_node_link_json_round_trips(g: nx.MultiGraph) -> None:
    import json

    p = plan(load_topology(DATA / "routed-two-lans" / "input.yml"))
    back = nx.node_link_graph(json.loads(to_node_link_json(p)), multigraph=True, edges="links")
    assert set(back.nodes) == set(g.nodes) and back.number_of_edges() == g.number_of_edges()
