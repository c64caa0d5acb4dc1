"""Properties over generated topologies: uniqueness, hop-by-hop
reachability, and stability when a node is appended."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixslave.netconf import plan, topology_from_data
from nixslave.netconf.generate import random_topology

from .helpers import check_reachability, check_unique

pytestmark = pytest.mark.unit


@st.composite
def topologies(draw: st.DrawFn) -> dict[str, Any]:
    nr = draw(st.integers(1, 5))
    nodes: dict[str, Any] = {f"r{i}": {"kind": "router"} for i in range(nr)}
    segments: dict[str, Any] = {}
    links: list[Any] = []
    for i in range(1, nr):
        j = draw(st.integers(0, i - 1))
        if draw(st.booleans()):
            links.append([f"r{j}", f"r{i}"])
        else:  # routers joined by a transit LAN
            segments[f"t{i}"] = {}
            links += [[f"r{j}", f"t{i}"], [f"r{i}", f"t{i}"]]
    nlan = draw(st.integers(0, 3))
    for k in range(nlan):
        segments[f"lan{k}"] = {}
        links.append([f"r{draw(st.integers(0, nr - 1))}", f"lan{k}"])
    for h in range(draw(st.integers(0, 6))):
        name = f"h{h}"
        nodes[name] = {"kind": draw(st.sampled_from(["vm", "container", "host"]))}
        homes = draw(st.lists(st.integers(0, nlan + nr - 1), min_size=1, max_size=2,
                              unique=True))
        for x in homes:
            links.append([name, f"lan{x}" if x < nlan else f"r{x - nlan}"])
    ipv4 = draw(st.sampled_from([True, True, False]))
    return {
        "name": "prop", "nodes": nodes, "segments": segments, "links": links,
        "ipv4": ipv4, "ipv6": True if not ipv4 else draw(st.booleans()),
        "p2p_prefix_len4": draw(st.sampled_from([30, 31])),
    }


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_unique_and_reachable(data: dict[str, Any]) -> None:
    p = plan(topology_from_data(_clean(data)))
    check_unique(p)
    check_reachability(p)


def _identity(p: Any) -> dict[str, Any]:
    return {
        n: {i.link_id: (i.mac, [str(a) for a in i.addresses], i.name) for i in np.interfaces}
        | {"lo": [str(a) for a in np.loopbacks]}
        for n, np in p.nodes.items()
    }


@settings(max_examples=60, deadline=None)
@given(topologies(), st.data())
def test_adding_a_node_changes_nothing_existing(data: dict[str, Any], more: st.DataObject) -> None:
    data = _clean(data)
    before = _identity(plan(topology_from_data(data)))
    grown = {**data, "nodes": dict(data["nodes"]), "links": list(data["links"]),
             "segments": dict(data["segments"])}
    kind = more.draw(st.sampled_from(["router", "vm", "host"]))
    grown["nodes"]["znew"] = {"kind": kind}
    targets = [n for n in data["nodes"] if data["nodes"][n]["kind"] == "router"]
    targets += list(data["segments"])
    for t in more.draw(st.lists(st.sampled_from(targets), min_size=1, max_size=2, unique=True)):
        grown["links"].append(["znew", t])
    if more.draw(st.booleans()):  # and a new LAN behind it
        grown["segments"]["znewlan"] = {}
        grown["links"].append(["znew", "znewlan"])
    after = _identity(plan(topology_from_data(grown)))
    for n, ifaces in before.items():
        for key, ident in ifaces.items():
            assert after[n][key] == ident, (n, key)


@settings(max_examples=40, deadline=None)
@given(topologies(), st.data())
def test_adding_a_link_changes_nothing_existing(data: dict[str, Any],
                                                more: st.DataObject) -> None:
    data = _clean(data)
    before = _identity(plan(topology_from_data(data)))
    names = list(data["nodes"])
    a = more.draw(st.sampled_from(names))
    b = more.draw(st.sampled_from([*names, *data["segments"]]))
    if a == b or (b in data["segments"] and [a, b] in data["links"]):
        return
    grown = {**data, "links": [*data["links"], [a, b]]}
    after = _identity(plan(topology_from_data(grown)))
    for n, ifaces in before.items():
        for key, ident in ifaces.items():
            assert after[n][key] == ident, (n, key)


def test_random_generator_is_reachable() -> None:
    p = plan(topology_from_data(random_topology(70, seed=7, router_ratio=0.1)))
    check_unique(p)
    assert check_reachability(p) > 500
