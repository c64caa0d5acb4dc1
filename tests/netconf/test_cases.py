"""Input/expected pairs: every topology under tests/data/netconf/<case>.

``NIXSLAVE_REGEN=1 pytest tests/netconf`` rewrites expected.json; review the
diff before committing it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from nixslave.netconf import plan, topology_from_data
from nixslave.netconf.renderers import render_hosts, render_networkd, render_nixos, render_sh
from nixslave.netconf.wiring import (
    libvirt_interfaces,
    netns_plan,
    nspawn_settings,
    qemu_switches,
    qemu_wiring,
    virtualbox_nics,
)

from .helpers import case_dirs, check_reachability, check_unique, expected, load_case

pytestmark = pytest.mark.unit

CASES = case_dirs()


def test_enough_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_matches_expected(case: Path) -> None:
    p = load_case(case)
    assert p.to_dict() == expected(case, p)
    # deterministic: planning again gives the same bytes
    assert load_case(case).to_dict() == p.to_dict()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_invariants(case: Path) -> None:
    p = load_case(case)
    check_unique(p)
    if p.topology.routing == "static":
        check_reachability(p)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_renderers_and_wiring_cover_every_interface(case: Path, tmp_path: Path) -> None:
    p = load_case(case)
    for node, np in p.nodes.items():
        nix, sh = render_nixos(p, node), render_sh(p, node)
        files = render_networkd(p, node)
        for i in np.interfaces:
            if np.kind == "container":  # named by the backend, MAC set by networkd
                assert f'matchConfig.Name = "{i.name}"' in nix
            else:  # renamed by MAC; the .network matches the MAC too
                assert f'linkConfig.Name = "{i.name}"' in nix
                assert nix.count(f'matchConfig.MACAddress = "{i.mac}"') == 2
            assert i.mac in nix and i.mac in sh
            assert f"{i.name}.network" in "".join(files)
            for a in i.addresses:
                assert f'"{a}"' in nix and f"ip addr add {a} dev {i.name}" in sh
        for r in np.routes:
            assert f"via {r.via} dev {r.dev}" in sh
        hosts = render_hosts(p, node)
        assert all(n in hosts for n in p.nodes)
        args = qemu_wiring(p, node, tmp_path)
        assert args.count("-netdev") == len(np.interfaces)
        assert all(f"mac={i.mac}" in " ".join(args) for i in np.interfaces)
        if len(np.interfaces) <= 8:
            assert len(virtualbox_nics(p, node)) == len(np.interfaces)
        assert nspawn_settings(p, node).ini().count("VirtualEthernetExtra=") == len(np.interfaces)
        assert libvirt_interfaces(p, node).count("<interface") == len(np.interfaces)
    segs = [n for n in p.networks.values() if n.kind != "p2p"]
    assert len(qemu_switches(p, tmp_path)) == len(segs)
    ns = netns_plan(p, prefix="t")
    assert len(ns.veths) == sum(len(n.members) for n in p.networks.values()
                                if n.kind != "p2p") + len(p.networks) - len(segs)


def _case(name: str) -> dict:
    return load_case(next(c for c in CASES if c.name == name)).to_dict()


def test_p2p_links_use_rfc3021_31() -> None:
    d = _case("p2p-chain")
    r1 = d["nodes"]["r1"]["interfaces"]
    a, b = r1[1]["addresses"][0], d["nodes"]["r2"]["interfaces"][0]["addresses"][0]
    na, nb = ipaddress.ip_interface(a), ipaddress.ip_interface(b)
    assert na.network.prefixlen == 31 and na.network == nb.network and na.ip != nb.ip
    assert {int(na.ip) % 2, int(nb.ip) % 2} == {0, 1}


def test_p2p_30_option_and_override() -> None:
    d = _case("p2p-30")
    nets = d["networks"]
    assert nets["r1-r2"]["prefixes"][0].endswith("/30")
    assert nets["r2-r3"]["prefixes"][0].endswith("/31")
    a = ipaddress.ip_interface(d["nodes"]["r1"]["interfaces"][0]["addresses"][0])
    assert int(a.ip) - int(a.network.network_address) in (1, 2)
    assert d["nodes"]["r2"]["interfaces"][1]["mtu"] == 9000


def test_lan_prefixes_are_24_and_64_by_default() -> None:
    d = _case("star-lan")
    assert [p.split("/")[1] for p in d["networks"]["lan"]["prefixes"]] == ["24", "64"]
    assert all(n["gateway"] == "gw" for k, n in d["nodes"].items() if k != "gw")


def test_ipv6_only_and_ipv4_only() -> None:
    six, four = _case("ipv6-only"), _case("ipv4-only")
    assert all(":" in a for n in six["nodes"].values() for i in n["interfaces"]
               for a in i["addresses"])
    assert all(":" not in a for n in four["nodes"].values() for i in n["interfaces"]
               for a in i["addresses"])


def test_static_addresses_are_kept_and_avoided() -> None:
    d = _case("static-addresses")
    r1 = {i["name"]: i for i in d["nodes"]["r1"]["interfaces"]}
    assert r1["eth0"]["addresses"] == ["203.0.113.0/31", "2001:db8:ff::/127"]
    assert r1["eth0"]["mac"] == "02:00:00:00:00:01"
    assert r1["dmz0"]["addresses"][0] == "198.51.100.1/26"
    office = ipaddress.ip_network(d["networks"]["office"]["prefixes"][0])
    assert not office.overlaps(ipaddress.ip_network("198.51.100.0/26"))


def test_fixed_ids_pin_host_numbers() -> None:
    d = _case("fixed-ids")
    assert d["nodes"]["a"]["interfaces"][0]["addresses"][0] == "198.51.100.10/24"
    assert d["nodes"]["r1"]["interfaces"][0]["addresses"][0] == "198.51.100.1/24"


def test_gateway_choice_and_static_routes() -> None:
    d = _case("gateway-and-static-routes")
    h1 = d["nodes"]["h1"]
    assert h1["gateway"] == "rb"
    assert {"to": "0.0.0.0/0", "via": "198.51.100.2", "dev": "eth0"} in h1["routes"]
    assert d["nodes"]["h2"]["gateway"] == "ra"
    assert {"to": "203.0.113.0/24", "via": "198.51.100.2", "dev": "eth0", "static": True} in \
        d["nodes"]["ra"]["routes"]


def test_multihomed_gets_specific_routes() -> None:
    d = _case("multihomed")
    srv = d["nodes"]["srv"]
    assert srv["gateway"] == "ra"
    # lanb is connected; everything else goes through the gateway
    assert not [r for r in srv["routes"] if r["to"] not in ("0.0.0.0/0", "::/0")
                and r["dev"] == "eth0"]


def test_management_network_is_not_routed() -> None:
    d = _case("management")
    mg = [i for n in d["nodes"].values() for i in n["interfaces"] if i["kind"] == "mgmt"]
    assert len(mg) == 3 and all(i["name"] == "mgmt0" for i in mg)
    assert all(ipaddress.ip_interface(i["addresses"][0]) in ipaddress.ip_network("192.0.2.0/24")
               for i in mg)
    assert not any("192.0.2." in r["to"] for n in d["nodes"].values() for r in n["routes"])


def test_mtu_overrides() -> None:
    d = _case("mtu-overrides")
    assert d["networks"]["r1-r2"]["mtu"] == 1280
    assert d["networks"]["jumbo"]["mtu"] == 9000
    assert d["networks"]["jumbo"]["prefixes"][0].endswith("/28")


def test_hosts_entries_cover_all_nodes() -> None:
    d = _case("leaf-spine")
    assert {h[1] for h in d["hosts"]} == set(d["nodes"])


def test_python_api_equals_file() -> None:
    import yaml

    case = next(c for c in CASES if c.name == "leaf-spine")
    data = yaml.safe_load((case / "input.yml").read_text())
    assert plan(topology_from_data(data)).to_dict() == load_case(case).to_dict()


def test_peers_lists_other_nodes() -> None:
    p = load_case(next(c for c in CASES if c.name == "routed-two-lans"))
    peers = p.peers("a1")
    assert set(peers) == set(p.nodes) - {"a1"}
    assert all(peers.values())


def test_missing_expected_file_fails_unless_regen_asked(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An expectation written by the code under test proves nothing: a case
    without expected.json fails, and only NIXSLAVE_REGEN=1 writes one."""
    from . import helpers

    p = load_case(next(c for c in CASES if c.name == "star-lan"))
    monkeypatch.setattr(helpers, "REGEN", False)
    with pytest.raises(pytest.fail.Exception, match=r"expected\.json is missing"):
        expected(tmp_path, p)
    assert not (tmp_path / "expected.json").exists()
    monkeypatch.setattr(helpers, "REGEN", True)
    assert expected(tmp_path, p) == p.to_dict()
