"""What each renderer *means* for one small, hand-written topology.

Every expectation below is written by hand from the topology, never taken
from the renderers' output, so a renderer that picks the wrong gateway,
drops an MTU, loses a route or brings back ``IPForward=`` fails here.

The topology: two routers ``ra`` and ``rb`` on a 9000-byte LAN, joined by a
1400-byte link; host ``h`` chooses ``rb`` as its gateway but reaches
192.0.2.0/24 and 2001:db8:2::/64 through ``ra``; container ``c`` takes the
first router (``ra``); ``ra`` sends 192.0.2.0/24 on to ``rb``. All
addresses, MACs and interface names are fixed, and routers have no
loopbacks, so nothing here depends on allocation.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nixslave import nix
from nixslave.netconf import plan, topology_from_data
from nixslave.netconf.plan import Plan
from nixslave.netconf.renderers import (
    SYSCTL_FILE,
    install_dir,
    render_hosts,
    render_networkd,
    render_nixos,
    render_sh,
)

from .helpers import case_dirs, load_case

MAC = {
    ("ra", "lan0"): "02:00:00:00:0a:01",
    ("ra", "up0"): "02:00:00:00:0a:02",
    ("rb", "lan0"): "02:00:00:00:0b:01",
    ("rb", "up0"): "02:00:00:00:0b:02",
    ("h", "eth0"): "02:00:00:00:01:01",
    ("c", "eth0"): "02:00:00:00:0c:01",
}


def _lan(node: str, ifname: str, v4: str, v6: str) -> dict[str, Any]:
    end = {"node": node, "ifname": ifname, "mac": MAC[(node, ifname)], "ipv4": v4, "ipv6": v6}
    return {"endpoints": [end, "lan"]}


TOPOLOGY: dict[str, Any] = {
    "name": "meaning",
    "nodes": {
        "ra": {"kind": "router", "loopback": False},
        "rb": {"kind": "router", "loopback": False},
        "h": {"kind": "host", "gateway": "rb"},
        "c": {"kind": "container"},
    },
    "segments": {"lan": {"prefix4": "198.51.100.0/24", "prefix6": "2001:db8:1::/64",
                         "mtu": 9000}},
    "links": [
        _lan("ra", "lan0", "198.51.100.1/24", "2001:db8:1::1/64"),
        _lan("rb", "lan0", "198.51.100.2/24", "2001:db8:1::2/64"),
        _lan("h", "eth0", "198.51.100.10/24", "2001:db8:1::10/64"),
        _lan("c", "eth0", "198.51.100.20/24", "2001:db8:1::20/64"),
        {"mtu": 1400, "endpoints": [
            {"node": "ra", "ifname": "up0", "mac": MAC[("ra", "up0")],
             "ipv4": "203.0.113.0/31", "ipv6": "2001:db8:ff::/127"},
            {"node": "rb", "ifname": "up0", "mac": MAC[("rb", "up0")],
             "ipv4": "203.0.113.1/31", "ipv6": "2001:db8:ff::1/127"},
        ]},
    ],
    "routes": [
        {"node": "h", "to": "192.0.2.0/24", "via": "198.51.100.1"},
        {"node": "h", "to": "2001:db8:2::/64", "via": "2001:db8:1::1"},
        {"node": "ra", "to": "192.0.2.0/24", "via": "203.0.113.1"},
    ],
}

HOSTS = {
    "198.51.100.1": ["ra"], "2001:db8:1::1": ["ra"],
    "198.51.100.2": ["rb"], "2001:db8:1::2": ["rb"],
    "198.51.100.10": ["h"], "2001:db8:1::10": ["h"],
    "198.51.100.20": ["c"], "2001:db8:1::20": ["c"],
}

# node -> interface -> (MAC, MTU, addresses, default gateways, other routes (to, via))
EXPECTED: dict[str, dict[str, tuple[str, int, list[str], list[str], list[tuple[str, str]]]]] = {
    "h": {"eth0": (MAC[("h", "eth0")], 9000, ["198.51.100.10/24", "2001:db8:1::10/64"],
                   ["198.51.100.2", "2001:db8:1::2"],
                   [("192.0.2.0/24", "198.51.100.1"), ("2001:db8:2::/64", "2001:db8:1::1")])},
    "c": {"eth0": (MAC[("c", "eth0")], 9000, ["198.51.100.20/24", "2001:db8:1::20/64"],
                   ["198.51.100.1", "2001:db8:1::1"], [])},
    "ra": {"lan0": (MAC[("ra", "lan0")], 9000, ["198.51.100.1/24", "2001:db8:1::1/64"], [], []),
           "up0": (MAC[("ra", "up0")], 1400, ["203.0.113.0/31", "2001:db8:ff::/127"], [],
                   [("192.0.2.0/24", "203.0.113.1")])},
    "rb": {"lan0": (MAC[("rb", "lan0")], 9000, ["198.51.100.2/24", "2001:db8:1::2/64"], [], []),
           "up0": (MAC[("rb", "up0")], 1400, ["203.0.113.1/31", "2001:db8:ff::1/127"], [], [])},
}
ROUTERS = {"ra", "rb"}


@pytest.fixture(scope="module")
def p() -> Plan:
    return plan(topology_from_data(TOPOLOGY))


# ---- NixOS module, evaluated -------------------------------------------------

# A stand-in for nixpkgs' lib with the three names the module may use.
# mkDefault tags its value, so the test also sees *which* settings yield.
STUB_LIB = ('{{ mkDefault = x: {{ _mkDefault = x; }}; '
            'versionAtLeast = a: b: builtins.compareVersions a b >= 0; '
            'trivial.release = "{release}"; }}')


def _eval_modules(files: list[Path], release: str) -> list[Any]:
    lib = STUB_LIB.format(release=release)
    expr = "[ " + " ".join(f"((import {f}) {{ lib = {lib}; }})" for f in files) + " ]"
    r = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                       env=nix.nix_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _nixos_expected(node: str, release: str) -> dict[str, Any]:
    """The evaluated module, from EXPECTED: what a NixOS 24.05 or 25.05 guest
    must be given."""
    def route(to: str, via: str) -> dict[str, Any]:
        body = {"Destination": to, "Gateway": via}
        return body if release >= "24.11" else {"routeConfig": body}

    links: dict[str, Any] = {}
    networks: dict[str, Any] = {}
    for ifname, (mac, mtu, addrs, gws, routes) in EXPECTED[node].items():
        unit = f"10-nxs-{ifname}"
        net: dict[str, Any] = {
            "address": addrs,
            "linkConfig": {"MTUBytes": str(mtu), "RequiredForOnline": "no"},
            "networkConfig": {"IPv6AcceptRA": False, "LinkLocalAddressing": "ipv6"},
        }
        if node == "c":  # a container's veth already has its name; it gets its MAC
            net["matchConfig"] = {"Name": ifname}
            net["linkConfig"]["MACAddress"] = mac
        else:
            match = {"MACAddress": mac, "Type": "ether"}
            links[unit] = {"matchConfig": match,
                           "linkConfig": {"Name": ifname, "MTUBytes": str(mtu)}}
            net["matchConfig"] = match
        if gws:
            net["gateway"] = gws
        if routes:
            net["routes"] = [route(to, via) for to, via in routes]
        networks[unit] = net
    network: dict[str, Any] = {
        "enable": True,
        "wait-online": {"enable": {"_mkDefault": False}},
        "networks": networks,
    }
    if links:
        network["links"] = links
    out: dict[str, Any] = {
        "networking": {"useNetworkd": {"_mkDefault": True}, "useDHCP": {"_mkDefault": False},
                       "hosts": HOSTS},
        "systemd": {"network": network},
    }
    if node in ROUTERS:
        out["networking"]["firewall"] = {"checkReversePath": {"_mkDefault": "loose"}}
        out["boot"] = {"kernel": {"sysctl": {"net.ipv4.conf.all.forwarding": 1,
                                             "net.ipv6.conf.all.forwarding": 1}}}
    return out


@pytest.mark.nix
@pytest.mark.parametrize("release", ["24.05", "25.05"])
def test_nixos_module_evaluates_to_the_plan(p: Plan, release: str, tmp_path: Path) -> None:
    """Both route forms: the plain attributes of nixpkgs >= 24.11 and the
    ``routeConfig`` wrapper before it, chosen inside the module."""
    nodes = sorted(EXPECTED)
    files = []
    for node in nodes:
        f = tmp_path / f"{node}.nix"
        f.write_text(render_nixos(p, node))
        files.append(f)
    got = _eval_modules(files, release)
    for node, value in zip(nodes, got, strict=True):
        assert value == _nixos_expected(node, release), node


@pytest.mark.nix
def test_nixos_module_parses_as_one_expression(p: Plan) -> None:
    """What nixslave.nixos imports inline must parse on its own, too."""
    for node in EXPECTED:
        nix.instantiate_parse(render_nixos(p, node))


@pytest.mark.nix
def test_every_case_module_evaluates(tmp_path: Path) -> None:
    """All test topologies, both nixpkgs route forms, one nix-instantiate
    each: no module fails to evaluate, and none sets IPForward."""
    files = []
    for case in case_dirs():
        cp = load_case(case)
        for node in cp.nodes:
            f = tmp_path / f"{case.name}-{node}.nix"
            f.write_text(render_nixos(cp, node))
            files.append(f)
    for release in ("24.05", "25.11"):
        for module in _eval_modules(files, release):
            for net in module["systemd"]["network"]["networks"].values():
                assert "IPForward" not in net.get("networkConfig", {})


# ---- networkd files ------------------------------------------------------------

def _ini(text: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """A unit file as sorted (section, sorted items): the order of keys in
    a section and of repeated sections carries no meaning here."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            sections.append((line.strip("[]"), []))
        else:
            k, v = line.split("=", 1)
            sections[-1][1].append((k, v))
    return sorted((name, tuple(sorted(items))) for name, items in sections)


def _sysctl(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _networkd_expected(node: str) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for ifname, (mac, mtu, addrs, gws, routes) in EXPECTED[node].items():
        link = [("MTUBytes", str(mtu)), ("RequiredForOnline", "no")]
        if node == "c":
            match = [("Name", ifname)]
            link.append(("MACAddress", mac))
        else:
            match = [("MACAddress", mac), ("Type", "ether")]
            files[f"10-nxs-{ifname}.link"] = sorted([
                ("Match", tuple(sorted(match))),
                ("Link", tuple(sorted([("Name", ifname), ("MTUBytes", str(mtu))]))),
            ])
        network = [("Address", a) for a in addrs] + [("Gateway", g) for g in gws]
        network += [("IPv6AcceptRA", "no"), ("LinkLocalAddressing", "ipv6")]
        sections = [("Match", tuple(sorted(match))), ("Link", tuple(sorted(link))),
                    ("Network", tuple(sorted(network)))]
        sections += [("Route", tuple(sorted([("Destination", to), ("Gateway", via)])))
                     for to, via in routes]
        files[f"10-nxs-{ifname}.network"] = sorted(sections)
    if node in ROUTERS:
        files["90-nxs-forwarding.conf"] = {"net.ipv4.conf.all.forwarding": "1",
                                           "net.ipv6.conf.all.forwarding": "1"}
    return files


@pytest.mark.unit
@pytest.mark.parametrize("node", sorted(EXPECTED))
def test_networkd_files_mean_the_plan(p: Plan, node: str) -> None:
    files = render_networkd(p, node)
    got = {name: (_sysctl(text) if name == SYSCTL_FILE else _ini(text))
           for name, text in files.items()}
    assert got == _networkd_expected(node)
    assert {install_dir(n) for n in files} == (
        {"/etc/systemd/network", "/etc/sysctl.d"} if node in ROUTERS
        else {"/etc/systemd/network"})


@pytest.mark.unit
def test_no_case_renders_ipforward() -> None:
    """systemd 256 ignores IPForward= and nixpkgs rejects it; forwarding is a
    sysctl file, present exactly on routers."""
    for case in case_dirs():
        cp = load_case(case)
        for node, np in cp.nodes.items():
            files = render_networkd(cp, node)
            assert not any("IPForward" in t for t in files.values()), (case.name, node)
            assert "IPForward" not in render_nixos(cp, node)
            assert (SYSCTL_FILE in files) == np.forwarding
            for name, text in files.items():
                if name.endswith(".link"):
                    assert "\nType=ether\n" in text


# ---- shell script ----------------------------------------------------------------

def _sh_meaning(script: str) -> dict[str, Any]:
    """What the script does, read from its commands: interface name -> (MAC,
    MTU), addresses, routes and the /proc switches it writes 1 to."""
    claims: dict[str, tuple[str, str]] = {}  # temporary name -> (MAC, final name)
    ifaces: dict[str, tuple[str, int]] = {}
    addrs: set[tuple[str, str]] = set()
    routes: set[tuple[str, str, str]] = set()
    procs: set[str] = set()
    for line in script.splitlines():
        w = line.split()
        if w[:1] == ["nxs_claim"]:
            claims[w[2]] = (w[1], w[3])
        elif w[:1] == ["nxs_up"]:
            mac, name = claims[w[1]]
            assert name == w[2]
            ifaces[name] = (mac, int(w[3]))
        elif w[:3] == ["ip", "addr", "add"]:
            addrs.add((w[5], w[3]))
        elif (m := re.fullmatch(r"ip (?:-6 )?route replace (\S+) via (\S+) dev (\S+)", line)):
            routes.add((m.group(1), m.group(2), m.group(3)))
        elif (m := re.fullmatch(r"echo 1 > (/proc/sys/\S+)", line)):
            procs.add(m.group(1))
    return {"ifaces": ifaces, "addrs": addrs, "routes": routes, "procs": procs}


@pytest.mark.unit
@pytest.mark.parametrize("node", sorted(EXPECTED))
def test_sh_script_means_the_plan(p: Plan, node: str) -> None:
    want: dict[str, Any] = {"ifaces": {}, "addrs": set(), "routes": set(), "procs": set()}
    for ifname, (mac, mtu, addrs, gws, routes) in EXPECTED[node].items():
        want["ifaces"][ifname] = (mac, mtu)
        want["addrs"] |= {(ifname, a) for a in addrs}
        want["routes"] |= {("default", g, ifname) for g in gws}
        want["routes"] |= {(to, via, ifname) for to, via in routes}
    if node in ROUTERS:
        want["procs"] = {"/proc/sys/net/ipv4/ip_forward",
                         "/proc/sys/net/ipv6/conf/all/forwarding"}
    assert _sh_meaning(render_sh(p, node)) == want


# ---- /etc/hosts ----------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("node", sorted(EXPECTED))
def test_hosts_file_means_the_plan(p: Plan, node: str) -> None:
    got: dict[str, list[str]] = {}
    for line in render_hosts(p, node).splitlines():
        if line and not line.startswith("#"):
            addr, *names = line.split()
            got.setdefault(addr, []).extend(names)
    assert got == {"127.0.0.1": ["localhost"], "::1": ["localhost"], **HOSTS}
