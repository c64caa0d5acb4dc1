"""containerlab and netlab import details beyond the import cases
(tests/netconf/test_import_cases.py): the command line, where errors
point, and corners too small for a case of their own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from nixslave.cli import main
from nixslave.netconf import TopologyError, plan, topology_from_data
from nixslave.netconf.clab import import_clab_lab
from nixslave.netconf.importers import import_clab, import_file, import_netlab
from nixslave.netconf.netlab import import_netlab_lab

from .helpers import DATA

pytestmark = pytest.mark.unit

CASES = DATA / "import"


def test_netlab_string_links_with_dashed_names_and_stub_lan() -> None:
    data = {"name": "x", "defaults": {"device": "frr"}, "nodes": ["core-1", "edge", "h"],
            "links": ["core-1-edge", "core-1", {"interfaces": [{"node": "edge"}, {"node": "h"}],
                                                "mtu": 1400}]}
    out = import_netlab(data)
    assert out["links"][0]["endpoints"] == [{"node": "core-1"}, {"node": "edge"}]
    # a one-node link is a stub LAN
    assert list(out["segments"]) == ["lan1"]
    assert out["links"][2]["mtu"] == 1400
    p = plan(topology_from_data(out))
    assert p.nodes["core-1"].interfaces[1].segment == "lan1"


def test_netlab_unknown_node_is_reported() -> None:
    with pytest.raises(TopologyError) as info:
        import_netlab({"name": "x", "nodes": ["a"], "links": ["a-b"]}, source="lab.yml")
    assert info.value.where == "lab.yml: links[0]" and "cannot split" in info.value.what


def test_clab_names_become_host_names_and_host_links_reach_a_host_node() -> None:
    data = {"name": "Lab_1", "topology": {"nodes": {"R_1": {"kind": "linux"},
                                                     "R2": {"kind": "nokia_srlinux"},
                                                     "host": {"kind": "linux"}},
                                          "links": [{"endpoints": ["R_1:eth1", "R2:e1-1"]},
                                                    {"type": "host",
                                                     "endpoints": ["R2:e1-2", "host:x"]}]}}
    out = import_clab(data)
    # "host:" is containerlab's host namespace even beside a node named host
    assert out["name"] == "lab-1" and list(out["nodes"]) == ["r-1", "r2", "host", "host-2"]
    assert out["nodes"]["r-1"]["kind"] == "host" and out["nodes"]["r2"]["kind"] == "router"
    assert out["links"][1]["endpoints"][1] == {"node": "host-2", "ifname": "x"}


def test_clab_bad_endpoint() -> None:
    data = {"name": "l", "topology": {"nodes": {"a": {}}, "links": [{"endpoints": ["a:e1"]}]}}
    with pytest.raises(TopologyError) as info:
        import_clab(data, source="l.clab.yml")
    assert info.value.where == "l.clab.yml: topology.links[0]"


@pytest.mark.parametrize("ep", ["a:", ":e1", "a", "a:b:c", "nope:e1"])
def test_clab_malformed_endpoints(ep: str) -> None:
    data = {"name": "l", "topology": {"nodes": {"a": {}, "b": {}},
                                      "links": [{"endpoints": [ep, "b:e1"]}]}}
    with pytest.raises(TopologyError) as info:
        import_clab(data, source="l.clab.yml")
    assert info.value.where == "l.clab.yml: topology.links[0].endpoints[0]"


def test_not_a_clab_file() -> None:
    with pytest.raises(TopologyError, match="not a containerlab topology"):
        import_clab({"name": "x"})


def test_clab_unknown_link_type() -> None:
    data = {"name": "l", "topology": {"nodes": {"a": {}},
                                      "links": [{"type": "wormhole", "endpoint": {}}]}}
    with pytest.raises(TopologyError) as info:
        import_clab(data, source="l.yml")
    assert info.value.where == "l.yml: topology.links[0].type"
    assert "unknown link type 'wormhole'" in info.value.what


def test_errors_after_import_name_the_lab_key() -> None:
    """Planning errors are found in the generated topology but reported at
    the lab's key: here a duplicate MAC set on an extended endpoint."""
    mac = "02:00:00:00:00:01"
    data = {"name": "l", "topology": {
        "nodes": {"a": {"kind": "linux"}, "b": {"kind": "linux"}, "c": {"kind": "linux"}},
        "links": [{"endpoints": [{"node": "a", "interface": "eth1", "mac": mac},
                                 {"node": "b", "interface": "eth1"}]},
                  {"endpoints": [{"node": "c", "interface": "eth1"},
                                 {"node": "b", "interface": "eth2", "mac": mac}]}]}}
    imp = import_clab_lab(data, source="l.clab.yml")
    with pytest.raises(TopologyError) as info:
        imp.check()
    assert info.value.where == "l.clab.yml (imported): topology.links[1].endpoints[1].mac"
    # a path the import did not make falls back to the generated one
    assert imp.locate("pools.lan4") == "l.clab.yml (imported): pools.lan4"
    assert imp.locate("links[0].endpoints[0].ifname") == \
        "l.clab.yml (imported): topology.links[0].endpoints[0].interface"


def test_opaque_data_must_survive_yaml_and_json() -> None:
    for bad in (math.nan, b"\x00", {1.5: "x"}):
        data = {"defaults": {"device": "frr"}, "nodes": {"r1": {"bgp": {"as": bad}}}}
        with pytest.raises(TopologyError, match="cannot be kept as data"):
            import_netlab(data, source="l.yml")


def test_netlab_dotted_keys_conflicting_with_nested_ones() -> None:
    data = {"nodes": {"r1": {"bgp.as": 1, "bgp": {"as": 2}}}}
    with pytest.raises(TopologyError, match="given twice"):
        import_netlab(data)


def test_netlab_group_loop() -> None:
    data = {"defaults": {"device": "frr"}, "nodes": ["r1"],
            "groups": {"a": {"members": ["b"]}, "b": {"members": ["a", "r1"]}}}
    with pytest.raises(TopologyError, match="contains itself"):
        import_netlab(data, source="l.yml")


def test_netlab_device_and_all_groups() -> None:
    """Groups named 'all' or after a device take their members from it."""
    data = {"defaults": {"device": "frr"},
            "nodes": {"r1": None, "h1": {"device": "linux"}},
            "groups": {"linux": {"ospf": {"passive": True}}, "all": {"bfd": {"min_rx": 500}}}}
    out = import_netlab_lab(data, source="l.yml").data
    assert out["nodes"]["r1"]["data"] == {"bfd": {"min_rx": 500}}
    assert out["nodes"]["h1"]["data"] == {"ospf": {"passive": True}, "bfd": {"min_rx": 500}}


def test_netlab_p2p_with_more_nodes_is_refused() -> None:
    data = {"defaults": {"device": "frr"}, "nodes": ["a", "b", "c"],
            "links": [{"interfaces": ["a", "b", "c"], "type": "p2p"}]}
    with pytest.raises(TopologyError, match="p2p link needs two nodes, found 3"):
        import_netlab(data)


def test_netlab_disabled_links_are_left_out() -> None:
    data = {"defaults": {"device": "frr"}, "nodes": ["a", "b"],
            "links": [{"a": None, "b": None, "disable": True}, "a-b"]}
    out = import_netlab(data)
    assert len(out["links"]) == 1


def test_import_file(tmp_path: Path) -> None:
    src = tmp_path / "lab.yml"
    src.write_text("nodes: [a]\ndefaults: {device: linux}\n")
    assert import_file("netlab", src)["nodes"] == {"a": {"kind": "host"}}
    with pytest.raises(TopologyError, match="unknown import format"):
        import_file("gns3", src)


def test_management_gateway_is_never_handed_out() -> None:
    """The gateway takes a host number no node may get, even in a network
    with room for exactly the nodes and the gateway."""
    topo = {"name": "m", "management": True, "pools": {"mgmt4": "192.0.2.0/29"},
            "mgmt_gateway4": "192.0.2.1", "nodes": [f"n{k}" for k in range(5)]}
    p = plan(topology_from_data(topo))
    got = sorted(str(a.ip) for np in p.nodes.values() for i in np.interfaces
                 for a in i.addresses if a.version == 4)
    assert got == [f"192.0.2.{k}" for k in range(2, 7)]


@pytest.mark.parametrize(("extra", "where", "what"), [
    ({"nodes": {"a": {"mgmt_ipv4": "192.0.2.9"}}}, "nodes.a.mgmt_ipv4",
     "a management address needs management: true"),
    ({"management": True, "pools": {"mgmt4": "192.0.2.0/24"},
      "nodes": {"a": {"mgmt_ipv4": "198.51.100.9"}}}, "nodes.a.mgmt_ipv4",
     "outside the management network"),
    ({"management": True, "pools": {"mgmt4": "192.0.2.0/24"}, "mgmt_gateway4": "192.0.2.1",
      "nodes": {"a": {"mgmt_ipv4": "192.0.2.1"}}}, "nodes.a.mgmt_ipv4", "used twice"),
    ({"management": True, "mgmt_gateway4": "192.0.2.1", "nodes": ["a"]}, "mgmt_gateway4",
     "outside the management network"),
])
def test_management_address_mistakes(extra: dict, where: str, what: str) -> None:
    with pytest.raises(TopologyError) as info:
        plan(topology_from_data({"name": "m", "nodes": ["a"], **extra}))
    assert info.value.where == where and what in info.value.what


# ---- the command line

def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["net", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case", ["clab-special-links", "netlab-modules"])
def test_cli_prints_the_warnings(case: str, capsys: pytest.CaptureFixture[str],
                                 tmp_path: Path) -> None:
    """The golden warnings, as the command prints them: one line each,
    after the import is known to be good, the output still written."""
    d = CASES / case
    src = next(d.glob("input.*"))
    kind = "clab" if src.name.endswith(".clab.yml") else "netlab"
    out = tmp_path / "topology.yml"
    rc, stdout, err = run(["import", kind, str(src), "-o", str(out)], capsys)
    assert rc == 0 and stdout == ""
    want = [f"nixslave netconf: warning: {src.parent}/{line}"
            for line in (d / "warnings.txt").read_text().splitlines()]
    assert err.splitlines() == want
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(
        yaml.safe_dump(json.loads((d / "expected.json").read_text())))


def test_cli_strict_refuses_what_a_warning_would_change(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    src = CASES / "clab-bridges" / "input.clab.yml"
    out = tmp_path / "t.yml"
    rc, stdout, err = run(["import", "clab", "--strict", str(src), "-o", str(out)], capsys)
    assert rc == 2 and stdout == "" and not out.exists()
    assert err.splitlines() == [
        f"nixslave netconf: {src} (--strict): bridges linked to each other merged into one "
        "segment: topology.links[3] (hint: the import would drop or change this; 4 more kinds "
        "of warning; run without --strict to see them all)"]


def test_cli_strict_accepts_a_lab_that_maps_fully(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    src = CASES / "clab-mgmt-defaults" / "input.clab.yml"
    rc, stdout, err = run(["import", "clab", "--strict", str(src)], capsys)
    assert rc == 0 and err == "" and yaml.safe_load(stdout)["management"] is True


def test_cli_error_after_import_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    src = CASES / "clab-error-planned" / "input.clab.yml"
    rc, stdout, err = run(["import", "clab", str(src)], capsys)
    assert rc == 2 and stdout == ""
    assert err.splitlines() == [
        f"nixslave netconf: {src} (imported): topology.links[1].vars.ipv4[1]: static address "
        "198.51.100.1/31 is outside the link prefix 192.0.2.0/31 (hint: use an address inside "
        "the prefix, with the same length)"]
