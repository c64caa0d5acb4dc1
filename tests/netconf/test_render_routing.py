"""``routing: ospf`` and ``routing: bgp``: what the NixOS module means, the
plan, the busybox fallback and the networkd files.

The topology: routers r1 and r2 on a /31 + /127 link (``up0`` on both), and
r1's LAN with host h. Loopbacks are pinned by id. Every expectation below is
written by hand from that topology; only the BGP AS numbers (hashes of the
router names) are read from the plan, and checked to be private and
distinct.

The module is evaluated with nix-instantiate and a stub ``lib`` (as in
test_render_meaning.py) for two releases: 25.05 takes FRR's integrated form
(``services.frr.<daemon>d.enable`` + ``services.frr.config``, nixpkgs >=
24.11), 24.05 the form with a file per daemon (``services.frr.<name>.{enable,
config}``); see nixos/modules/services/networking/frr.nix before and after
nixpkgs PR 327099.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixslave import nix
from nixslave.netconf import plan, topology_from_data
from nixslave.netconf.plan import Plan
from nixslave.netconf.renderers import (
    FRR_FILE,
    NETWORKD_CONF_FILE,
    install_dir,
    render_networkd,
    render_nixos,
    render_sh,
)


def topology(routing: str) -> dict[str, Any]:
    return {
        "name": "dyn",
        "routing": routing,
        "pools": {"loopback4": "10.0.0.0/24", "loopback6": "2001:db8:ff:1::/64"},
        "nodes": {"r1": {"kind": "router", "id": 1}, "r2": {"kind": "router", "id": 2},
                  "h": {"kind": "host"}},
        "segments": {"lan": {"prefix4": "198.51.100.0/24", "prefix6": "2001:db8:1::/64"}},
        "links": [
            {"endpoints": [
                {"node": "r1", "ifname": "up0", "ipv4": "192.0.2.0/31",
                 "ipv6": "2001:db8:ff::/127"},
                {"node": "r2", "ifname": "up0", "ipv4": "192.0.2.1/31",
                 "ipv6": "2001:db8:ff::1/127"}]},
            [{"node": "r1", "ifname": "lan0", "ipv4": "198.51.100.1/24",
              "ipv6": "2001:db8:1::1/64"}, "lan"],
            [{"node": "h", "ipv4": "198.51.100.10/24", "ipv6": "2001:db8:1::10/64"}, "lan"],
        ],
    }


@pytest.fixture(scope="module")
def ospf() -> Plan:
    return plan(topology_from_data(topology("ospf")))


@pytest.fixture(scope="module")
def bgp() -> Plan:
    return plan(topology_from_data(topology("bgp")))


# ---- the plan ---------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("routing", ["ospf", "bgp"])
def test_plan_leaves_router_routes_to_the_daemon(routing: str) -> None:
    p = plan(topology_from_data(topology(routing)))
    d = p.to_dict()
    assert d["routing"] == routing
    assert d["nodes"]["r1"]["routes"] == [] and d["nodes"]["r2"]["routes"] == []
    assert (d["nodes"]["r1"]["router_id"], d["nodes"]["r2"]["router_id"]) == ("10.0.0.1",
                                                                              "10.0.0.2")
    # the host runs no daemon: its default route is planned as ever
    assert d["nodes"]["h"]["gateway"] == "r1"
    assert d["nodes"]["h"]["routes"] == [
        {"to": "0.0.0.0/0", "via": "198.51.100.1", "dev": "eth0"},
        {"to": "::/0", "via": "2001:db8:1::1", "dev": "eth0"}]
    if routing == "bgp":
        a1, a2 = d["nodes"]["r1"]["asn"], d["nodes"]["r2"]["asn"]
        assert a1 != a2 and all(4_200_000_000 <= a <= 4_294_967_294 for a in (a1, a2))
    else:
        assert "asn" not in d["nodes"]["r1"]
    assert "router_id" not in d["nodes"]["h"]


@pytest.mark.unit
def test_router_id_without_loopback_is_a_stable_hash() -> None:
    data = topology("ospf")
    data["nodes"]["r1"]["loopback"] = False
    rid = plan(topology_from_data(data)).nodes["r1"].router_id
    assert rid and rid not in ("0.0.0.0", "10.0.0.2")
    assert plan(topology_from_data(data)).nodes["r1"].router_id == rid


@pytest.mark.unit
def test_busybox_falls_back_to_static_routes(ospf: Plan) -> None:
    """The demo guest has no routing daemon: its script installs the routes
    the static planner gives the same network, and says so."""
    static = plan(topology_from_data(topology("static")))
    for node in ("r1", "r2"):
        script = render_sh(ospf, node)
        assert "busybox has no routing daemon" in script
        assert [ln for ln in script.splitlines() if " route " in ln] == \
            [ln for ln in render_sh(static, node).splitlines() if " route " in ln]
    # both routers have one router neighbour and r1 is declared first, so r1
    # is the root and r2's static fallback is a default through r1
    assert "ip route replace default via 192.0.2.0 dev up0" in render_sh(ospf, "r2")
    assert "ip -6 route replace default via 2001:db8:ff:: dev up0" in render_sh(ospf, "r2")
    assert "ip route replace 198.51.100.0/24" not in render_sh(ospf, "r2")  # the default does
    assert "routing daemon" not in render_sh(ospf, "h")  # a host's routes are planned anyway


# ---- the NixOS module, evaluated ------------------------------------------------------

STUB_LIB = ('{{ mkDefault = x: {{ _mkDefault = x; }}; mkIf = c: x: {{ _mkIf = c; content = x; }}; '
            'versionAtLeast = a: b: builtins.compareVersions a b >= 0; '
            'trivial.release = "{release}"; }}')


def _eval(p: Plan, node: str, release: str, tmp: Path, nftables: bool = True) -> Any:
    f = tmp / f"{p.routing}-{node}.nix"
    f.write_text(render_nixos(p, node))
    config = f"{{ networking.nftables.enable = {'true' if nftables else 'false'}; }}"
    expr = f"(import {f}) {{ lib = {STUB_LIB.format(release=release)}; config = {config}; }}"
    r = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                       env=nix.nix_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


HEAD = ("! routing: {routing} for {node} in topology dyn; generated by nixslave.netconf\n"
        "no zebra nexthop kernel enable\n")

R1_OSPF_IF = """\
interface up0
 ip ospf area 0
 ip ospf cost 10
 ip ospf network point-to-point
exit
!
interface lan0
 ip ospf area 0
 ip ospf cost 10
 ip ospf passive
exit
!
interface lo
 ip ospf area 0
 ip ospf passive
exit
!
"""
R1_OSPF6_IF = """\
interface up0
 ipv6 ospf6 area 0
 ipv6 ospf6 cost 10
 ipv6 ospf6 network point-to-point
exit
!
interface lan0
 ipv6 ospf6 area 0
 ipv6 ospf6 cost 10
 ipv6 ospf6 passive
exit
!
interface lo
 ipv6 ospf6 area 0
 ipv6 ospf6 passive
exit
!
"""
R1_INTEGRATED = HEAD.format(routing="ospf", node="r1") + """\
!
interface up0
 ip ospf area 0
 ip ospf cost 10
 ip ospf network point-to-point
 ipv6 ospf6 area 0
 ipv6 ospf6 cost 10
 ipv6 ospf6 network point-to-point
exit
!
interface lan0
 ip ospf area 0
 ip ospf cost 10
 ip ospf passive
 ipv6 ospf6 area 0
 ipv6 ospf6 cost 10
 ipv6 ospf6 passive
exit
!
interface lo
 ip ospf area 0
 ip ospf passive
 ipv6 ospf6 area 0
 ipv6 ospf6 passive
exit
!
router ospf
 ospf router-id 10.0.0.1
exit
!
router ospf6
 ospf6 router-id 10.0.0.1
exit
!
"""


@pytest.mark.nix
def test_ospf_module_integrated_form(ospf: Plan, tmp_path: Path) -> None:
    m = _eval(ospf, "r1", "25.05", tmp_path)
    assert m["services"]["frr"] == {"ospfd": {"enable": True}, "ospf6d": {"enable": True},
                                    "config": R1_INTEGRATED}
    assert m["systemd"]["network"]["config"] == {"networkConfig": {"ManageForeignRoutes": False}}
    fw = m["networking"]["firewall"]
    # OSPF from the neighbouring router only (up0; the LAN has no other router)
    assert fw["extraInputRules"] == {
        "_mkIf": True, "content": 'iifname "up0" meta l4proto 89 accept comment "OSPF"\n'}
    assert fw["extraCommands"] == {
        "_mkIf": False, "content": "ip46tables -A nixos-fw -i up0 -p 89 -j nixos-fw-accept\n"}
    # FRR owns the routes: networkd gets none on a router
    for unit in m["systemd"]["network"]["networks"].values():
        assert "routes" not in unit and "gateway" not in unit
    assert m["boot"]["kernel"]["sysctl"]["net.ipv4.conf.all.forwarding"] == 1


@pytest.mark.nix
def test_ospf_module_per_daemon_form_before_24_11(ospf: Plan, tmp_path: Path) -> None:
    m = _eval(ospf, "r1", "24.05", tmp_path, nftables=False)
    assert m["services"]["frr"] == {
        "zebra": {"config": HEAD.format(routing="ospf", node="r1")},
        "ospf": {"enable": True,
                 "config": R1_OSPF_IF + "router ospf\n ospf router-id 10.0.0.1\nexit\n"},
        "ospf6": {"enable": True,
                  "config": R1_OSPF6_IF + "router ospf6\n ospf6 router-id 10.0.0.1\nexit\n"},
    }
    assert m["networking"]["firewall"]["extraCommands"]["_mkIf"] is True


@pytest.mark.nix
def test_ospf_module_r2_and_host(ospf: Plan, tmp_path: Path) -> None:
    cfg = _eval(ospf, "r2", "25.05", tmp_path)["services"]["frr"]["config"]
    assert cfg == HEAD.format(routing="ospf", node="r2") + """\
!
interface up0
 ip ospf area 0
 ip ospf cost 10
 ip ospf network point-to-point
 ipv6 ospf6 area 0
 ipv6 ospf6 cost 10
 ipv6 ospf6 network point-to-point
exit
!
interface lo
 ip ospf area 0
 ip ospf passive
 ipv6 ospf6 area 0
 ipv6 ospf6 passive
exit
!
router ospf
 ospf router-id 10.0.0.2
exit
!
router ospf6
 ospf6 router-id 10.0.0.2
exit
!
"""
    host = _eval(ospf, "h", "25.05", tmp_path)
    assert "frr" not in host.get("services", {})
    net = host["systemd"]["network"]["networks"]["10-nxs-eth0"]
    assert net["gateway"] == ["198.51.100.1", "2001:db8:1::1"]


def _bgp_block(p: Plan) -> str:
    a2 = p.nodes["r2"].asn
    return f"""\
router bgp {p.nodes["r1"].asn}
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 bgp bestpath as-path multipath-relax
 neighbor 192.0.2.1 remote-as {a2}
 neighbor 2001:db8:ff::1 remote-as {a2}
 !
 address-family ipv4 unicast
  network 192.0.2.0/31
  network 198.51.100.0/24
  network 10.0.0.1/32
  neighbor 192.0.2.1 activate
 exit-address-family
 !
 address-family ipv6 unicast
  network 2001:db8:ff::/127
  network 2001:db8:1::/64
  network 2001:db8:ff:1::1/128
  neighbor 2001:db8:ff::1 activate
 exit-address-family
exit
"""


@pytest.mark.nix
def test_bgp_module_both_forms(bgp: Plan, tmp_path: Path) -> None:
    new = _eval(bgp, "r1", "25.11", tmp_path)
    head = HEAD.format(routing="bgp", node="r1")
    assert new["services"]["frr"] == {"bgpd": {"enable": True},
                                      "config": head + "!\n" + _bgp_block(bgp) + "!\n"}
    # BGP is TCP 179, from the neighbouring router's interface only
    assert new["networking"]["firewall"]["interfaces"] == {"up0": {"allowedTCPPorts": [179]}}
    assert "extraInputRules" not in new["networking"]["firewall"]
    old = _eval(bgp, "r1", "24.05", tmp_path)
    assert old["services"]["frr"] == {"zebra": {"config": head},
                                      "bgp": {"enable": True, "config": _bgp_block(bgp)}}


@pytest.mark.nix
def test_static_modules_do_not_take_config(tmp_path: Path) -> None:
    """Only an OSPF router's module asks for ``config`` (the nftables switch):
    the others stay ``{ lib, ... }:`` for callers that pass only lib."""
    p = plan(topology_from_data(topology("static")))
    for node in p.nodes:
        assert render_nixos(p, node).splitlines()[1] == "{ lib, ... }:"


# ---- networkd --------------------------------------------------------------------------

@pytest.mark.unit
def test_networkd_gets_frr_conf_and_keeps_off_foreign_routes(ospf: Plan) -> None:
    files = render_networkd(ospf, "r1")
    assert files[FRR_FILE] == ("! daemons: ospfd ospf6d\nservice integrated-vtysh-config\n"
                               + R1_INTEGRATED)
    assert "ManageForeignRoutes=no" in files[NETWORKD_CONF_FILE]
    assert install_dir(FRR_FILE) == "/etc/frr"
    assert install_dir(NETWORKD_CONF_FILE) == "/etc/systemd/networkd.conf.d"
    assert FRR_FILE not in render_networkd(ospf, "h")
    assert not any("[Route]" in t for t in files.values())
