"""containerlab and netlab import details beyond the two import cases."""

from __future__ import annotations

import pytest

from nixslave.netconf import TopologyError, plan, topology_from_data
from nixslave.netconf.importers import import_clab, import_netlab

pytestmark = pytest.mark.unit


def test_netlab_string_links_with_dashed_names_and_stub_lan() -> None:
    data = {"name": "x", "nodes": ["core-1", "edge", "h"],
            "links": ["core-1-edge", "core-1", {"interfaces": [{"node": "edge"}, {"node": "h"}],
                                                "mtu": 1400}]}
    out = import_netlab(data)
    assert out["links"][0]["endpoints"] == [{"node": "core-1"}, {"node": "edge"}]
    # a one-node link is a stub LAN
    assert len(out["segments"]) == 1
    assert out["links"][2]["mtu"] == 1400
    p = plan(topology_from_data(out))
    assert p.nodes["core-1"].interfaces[1].segment


def test_netlab_unknown_node_is_reported() -> None:
    with pytest.raises(TopologyError) as info:
        import_netlab({"name": "x", "nodes": ["a"], "links": ["a-b"]}, source="lab.yml")
    assert info.value.where == "lab.yml: links[0]" and "cannot split" in info.value.what


def test_clab_names_become_host_names_and_host_links_are_skipped() -> None:
    data = {"name": "Lab_1", "topology": {"nodes": {"R_1": {"kind": "linux"},
                                                     "R2": {"kind": "nokia_srlinux"}},
                                          "links": [{"endpoints": ["R_1:eth1", "R2:e1-1"]},
                                                    {"type": "host",
                                                     "endpoints": ["R2:e1-2", "host:x"]}]}}
    out = import_clab(data)
    assert out["name"] == "lab-1" and set(out["nodes"]) == {"r-1", "r2"}
    assert out["nodes"]["r-1"]["kind"] == "host" and out["nodes"]["r2"]["kind"] == "router"
    assert len(out["links"]) == 1


def test_clab_bad_endpoint() -> None:
    data = {"name": "l", "topology": {"nodes": {"a": {}}, "links": [{"endpoints": ["a:e1"]}]}}
    with pytest.raises(TopologyError) as info:
        import_clab(data, source="l.clab.yml")
    assert info.value.where == "l.clab.yml: topology.links[0]"


def test_not_a_clab_file() -> None:
    with pytest.raises(TopologyError, match="not a containerlab topology"):
        import_clab({"name": "x"})
