"""Fuzzing the input side of netconf: nothing a user can write may end in
anything but a NetconfError.

Pure noise stops at the first schema check, so the inputs here are *nearly
valid*: a well-formed topology (or containerlab/netlab lab) drawn with
values that easily collide (small pools, fixed ids, static addresses and
MACs, explicit names), then, most of the time, one or two mutations at a
random place: a value of the wrong type, of the wrong address family, a bad
or reserved name, a deleted key, a duplicated entry, a renamed key. That
reaches validation, allocation, routing and the exporters behind them. A
topology that plans must also keep the plan's promises (no MAC or address
twice), and an import's result must be plain data that YAML can write.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from random import Random
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixslave.netconf import NetconfError, load_topology, plan, topology_from_data
from nixslave.netconf.clab import import_clab_lab
from nixslave.netconf.export import to_dot, to_mermaid, to_node_link_json
from nixslave.netconf.netlab import import_netlab_lab

from .helpers import check_unique

pytestmark = [pytest.mark.unit, pytest.mark.slow]

_BASE = settings(deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(_BASE, max_examples=examples)


NODES = ["a", "b", "c", "r1", "r2", "r3", "h1", "r-1"]
SEGMENTS = ["lan", "lan2", "t1", "a-b"]
V4 = ["198.51.100.0/24", "198.51.100.0/30", "198.51.100.0/31", "198.51.100.128/25",
      "203.0.113.0/24", "10.0.0.0/24", "10.64.0.0/31", "192.0.2.0/29"]
V6 = ["2001:db8::/64", "2001:db8::/127", "2001:db8:1::/48", "2001:db8:ff::/64",
      "2001:db8:100::/64", "fe80::/64"]
ADDR4 = ["198.51.100.1/24", "198.51.100.2/24", "198.51.100.1/31", "203.0.113.7/24",
         "10.0.0.1/24", "10.64.0.0/31", "10.64.0.1/31", "192.0.2.1/29"]
ADDR6 = ["2001:db8::1/64", "2001:db8::2/64", "2001:db8::/127", "2001:db8::1/127",
         "2001:db8:100::9/64", "2001:db8:ff::1/64"]
MACS = [f"02:00:00:00:00:0{k}" for k in range(4)]
# small pools inside each role's default range, so they run out instead of
# overlapping another role's default pool
POOLS = {"p2p4": ["10.64.0.0/30", "10.64.0.0/29"], "lan4": ["10.128.0.0/23", "10.128.0.0/30"],
         "loopback4": ["10.0.0.0/30", "10.0.0.0/31"], "mgmt4": ["10.1.0.0/30"],
         "p2p6": ["2001:db8:ff::/126"], "lan6": ["2001:db8:100::/63"],
         "loopback6": ["2001:db8:ff:1::/127"], "mgmt6": ["2001:db8:fe::/126"]}

# what a mutation puts in place of a value: other types, other families,
# bad and reserved names, bad and special addresses
HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 31, 65536, 1.5, math.nan, math.inf, "", " ", "x" * 60,
    [], {}, [1, 2], ["a"], {"a": 1}, {"name": "a"}, {"node": 1},
    "A", "1x", "-a", "a_b", "a b", "a\nb", "é", "mgmt", "mgmt0", "lo", "eth0", "a-b", "lan",
    "r1", "static", "none", "router", "eth0/1",
    *V4[:3], *V6[:3], "198.51.100.1/24", "2001:db8::1/64", "198.51.100.7", "2001:db8::7",
    "300.1.1.1/8", "10.0.0.0/33", "::/129", "0.0.0.0/0", "::/0", "::ffff:1.2.3.0/120",
    "00:00:00:00:00:00", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "02-00-00-00-00-01",
    "02:00:00:00:00:0A", "zz:00:00:00:00:01", "02:00:00:00:00:00",
    "r1:eth1", "a-b-c", "lan0", "linux", "bridge",
]
KEYS: list[Any] = ["A", "1x", "mgmt", "a", "lan", "gatway", "name", 1, None, True, "x" * 60]
# hypothesis' own values at the mutated place: any text, any number
NATIVE = st.one_of(st.text(max_size=8), st.integers(), st.floats(), st.binary(max_size=4),
                   st.lists(st.text(max_size=3), max_size=3))


def _places(data: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``data``, for a mutation to hit."""
    if isinstance(data, dict):
        for k, v in data.items():
            out.append((data, k))
            _places(v, out)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.append((data, i))
            _places(v, out)
    return out


def mutate(draw: st.DrawFn, data: Any) -> Any:
    """Zero to two mutations at random places (zero two times in five).
    time). The choices are hypothesis draws, so a failure shrinks to the
    mutation that matters."""
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        places = _places(data, [])
        if not places:
            return copy.deepcopy(draw(st.sampled_from(HOSTILE)))
        box, key = places[draw(st.integers(0, len(places) - 1))]
        op = draw(st.integers(0, 10))
        if op <= 4:  # another value; a copy, as a later mutation may change it
            box[key] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
        elif op == 5:
            box[key] = draw(NATIVE)
        elif op == 6:  # a missing value
            del box[key]
        elif op == 7 and isinstance(box, list):  # the same entry twice
            box.append(box[key])
        elif op == 7:  # a key renamed
            box[draw(st.sampled_from(KEYS))] = box.pop(key)
        elif op == 8:  # a value wrapped in a list, as a confused author would
            box[key] = [box[key]]
        else:  # an empty entry (`r1:` in YAML)
            box[key] = None
    return data


# The well-formed part is drawn from a Random seeded by hypothesis: a
# topology takes a hundred or more choices, and as hypothesis draws they
# cost ~20 µs each, which would put 10,000 examples far past a minute. The
# seed keeps every example reproducible.
SEEDED = st.integers(0, 2**64 - 1).map(Random)


Options = dict[str, list[Any]]


def _some(rnd: Random, options: Options, odds: float = 0.3) -> dict[str, Any]:
    """Each option present with probability ``odds``, valued from its list."""
    return {k: rnd.choice(v) for k, v in options.items() if rnd.random() < odds}


NODE_OPTS: Options = {"id": list(range(1, 10)), "loopback": [True, False]}
SEGMENT_OPTS: Options = {"prefix4": V4, "prefix6": V6, "prefix_len4": [24, 29, 30],
                         "prefix_len6": [64, 120, 126], "mtu": [9000, 68]}
ENDPOINT_OPTS: Options = {"ifname": ["eth0", "eth1", "up0", "mgmt0"], "mac": MACS,
                          "ipv4": ADDR4, "ipv6": ADDR6}
LINK_OPTS: Options = {"name": ["a-b", "a-b-2", "l1", "mgmt", "lan", "r1"], "prefix4": V4,
                      "prefix6": V6, "prefix_len4": [30, 31], "prefix_len6": [64, 127],
                      "mtu": [1400, 9000]}
TOPO_OPTS: Options = {"ipv4": [True, True, False], "ipv6": [True, True, False],
                      "p2p_prefix_len4": [30, 31], "p2p_prefix_len6": [64, 127],
                      "lan_prefix_len4": [24, 29, 30], "lan_prefix_len6": [64, 126],
                      "mtu": [1500, 68], "routing": ["static", "static", "none"],
                      "management": [True, False]}


def well_formed(rnd: Random, size: int) -> dict[str, Any]:
    """A topology that is mostly valid; what goes wrong is collisions: of
    static values, of names, of fixed ids, and pools that run out."""
    nodes: dict[str, Any] = {}
    for n in rnd.sample(NODES, rnd.randint(1, size)):
        kind = rnd.choice(["router", "router", "vm"] if n.startswith("r") else
                          ["vm", "container", "host", "router"])
        nodes[n] = {"kind": kind, **_some(rnd, NODE_OPTS, 0.15)}
    segments = {s: _some(rnd, SEGMENT_OPTS, 0.2) for s in rnd.sample(SEGMENTS, rnd.randint(0, 3))}
    links: list[Any] = []
    legs: set[tuple[str, str]] = set()
    for _ in range(rnd.randint(0, size + 3)):
        a = rnd.choice(list(nodes))
        others = [n for n in [*nodes, *segments] if n != a and (a, n) not in legs]
        if not others:
            break
        b = rnd.choice(others)
        if b in segments and rnd.random() < 0.9:  # now and then a node on a segment twice
            legs.add((a, b))
        ends: list[Any] = [a, b]
        for j, e in enumerate(ends):
            if e in nodes and rnd.random() < 0.25:
                ends[j] = {"node": e, **_some(rnd, ENDPOINT_OPTS)}
        rnd.shuffle(ends)
        if b in segments or rnd.random() < 0.5:
            links.append(ends)
        else:
            links.append({"endpoints": ends, **_some(rnd, LINK_OPTS, 0.2)})
    routers = [n for n, s in nodes.items() if s["kind"] == "router"]
    for spec in nodes.values():
        if spec["kind"] != "router" and routers and rnd.random() < 0.2:
            spec["gateway"] = rnd.choice(routers)
    data: dict[str, Any] = {"name": "fuzz", "nodes": nodes, "links": links,
                            **_some(rnd, TOPO_OPTS, 0.2)}
    if segments:
        data["segments"] = segments
    if rnd.random() < 0.2:
        data["pools"] = _some(rnd, POOLS, 0.3)
    if rnd.random() < 0.2:  # list form
        data["nodes"] = [n if not s else {"name": n, **s} for n, s in nodes.items()]
    if rnd.random() < 0.1:
        data["routes"] = [{"node": rnd.choice(list(nodes)),
                           "to": rnd.choice(["203.0.113.0/24", "2001:db8:9::/48", "0.0.0.0/0"]),
                           "via": rnd.choice(["198.51.100.1", "10.64.0.1", "2001:db8::1",
                                              "198.51.100.2"])}]
    return data


@st.composite
def topologies(draw: st.DrawFn, size: int = 5) -> Any:
    return mutate(draw, well_formed(draw(SEEDED), size))


def plan_or_refuse(data: Any) -> None:
    """Plan ``data``; anything but a NetconfError fails the test. A plan
    that succeeds goes through the exporters and keeps its promises."""
    try:
        p = plan(topology_from_data(data))
    except NetconfError as exc:
        assert exc.what and exc.hint and "\n" not in str(exc), exc
        return
    check_unique(p)
    json.dumps(p.to_dict())
    to_dot(p)
    to_mermaid(p)
    to_node_link_json(p)


@fuzz(3000)
@given(topologies())
def test_topologies_plan_or_refuse(data: Any) -> None:
    plan_or_refuse(data)


@fuzz(1500)
@given(topologies(size=8))
def test_bigger_topologies_plan_or_refuse(data: Any) -> None:
    plan_or_refuse(data)


# ---- files: the parsers' share of hostile input

# pieces of YAML and JSON syntax and special values, spliced into good files
TOKENS = ["&a ", "*a", "<<: *a\n", "!!binary ", "!!set ", "!!int ", "!!python/object ", "? ",
          "2024-13-45", "9" * 5000, "\t", "{", "}", "[", "]", "'", '"', ": ", "- ", "\n  ",
          "\n", "#", "%YAML 1.1\n", "---\n", "~", "yes", "0x1F", ".nan", "1e999", "\\u0000",
          "[" * 3000, "{a: " * 2000, "a: &a [*a]\n"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files")


@st.composite
def topology_files(draw: st.DrawFn) -> tuple[str, bytes]:
    data = well_formed(draw(SEEDED), 4)
    suffix = draw(st.sampled_from([".yml", ".json"]))
    text = yaml.safe_dump(data) if suffix == ".yml" else json.dumps(data, indent=1)
    raw = text.encode()
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.integers(0, 3))
        if op == 0:
            raw = raw[:at] + draw(st.sampled_from(TOKENS)).encode() + raw[at:]
        elif op == 1:
            raw = raw[:at] + raw[at + draw(st.integers(1, 20)):]
        elif op == 2:  # any bytes, so also broken UTF-8
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=3)) + raw[at:]
        else:  # a line twice: duplicate keys and entries
            lines = raw.split(b"\n")
            k = draw(st.integers(0, len(lines) - 1))
            raw = b"\n".join([*lines[:k + 1], lines[k], *lines[k + 1:]])
    return suffix, raw


@fuzz(1500)
@given(file=topology_files())
def test_files_load_or_refuse(files: Path, file: tuple[str, bytes]) -> None:
    suffix, raw = file
    path = files / f"topology{suffix}"
    path.write_bytes(raw)
    try:
        p = plan(load_topology(path))
    except NetconfError as exc:
        assert exc.what and exc.hint and "\n" not in str(exc), exc
        return
    check_unique(p)


# ---- importers: the same idea for containerlab and netlab labs

CLAB_NODES = ["srl1", "srl2", "R_1", "br-lan", "client1", "host", "ceos1"]
CLAB_KINDS = ["nokia_srlinux", "linux", "bridge", "ovs-bridge", "arista_ceos"]
CLAB_IFACES = ["e1-1", "eth1", "eth2", "ethernet-1/1", "e1-1x-very-long-name"]
CLAB_SPECIAL = ["host:veth-a", "host:veth-b", "macvlan:enp3s0", "mgmt-net:m1"]


def clab_well_formed(rnd: Random) -> dict[str, Any]:
    nodes = {n: {"kind": rnd.choice(CLAB_KINDS)} if rnd.random() < 0.5 else {}
             for n in rnd.sample(CLAB_NODES, rnd.randint(1, 6))}
    for spec in nodes.values():
        if rnd.random() < 0.15:
            spec["group"] = rnd.choice(["spines", "edge", "nope"])
        if rnd.random() < 0.1:
            spec["mgmt-ipv4"] = rnd.choice(["172.20.20.5", "192.0.2.7", "10.1.0.1"])
        if rnd.random() < 0.1:
            spec["image"] = rnd.choice(["frrouting/frr", "alpine"])
    links: list[Any] = []
    for _ in range(rnd.randint(0, 7)):
        ends: list[Any] = []
        pair = rnd.sample(list(nodes), 2) if len(nodes) > 1 else [*nodes, *nodes]
        for node in pair:
            iface = rnd.choice(CLAB_IFACES)
            if rnd.random() < 0.5:
                ends.append(f"{node}:{iface}")
            else:
                opts = _some(rnd, {k: v for k, v in ENDPOINT_OPTS.items() if k != "ifname"})
                if rnd.random() < 0.2:
                    opts["vars"] = {"ipv4": rnd.choice(ADDR4), "note": "x"}
                ends.append({"node": node, "interface": iface, **opts})
        if rnd.random() < 0.15:
            ends[1] = rnd.choice(CLAB_SPECIAL)
        link: dict[str, Any] = {"endpoints": ends}
        if rnd.random() < 0.25:
            link["ipv4"] = rnd.sample(ADDR4, 2)
        if rnd.random() < 0.1:
            link["vars"] = {"ipv6": rnd.sample(ADDR6, 2), "cost": 5}
        if rnd.random() < 0.15:
            link["mtu"] = rnd.choice([9000, "9000", 1400])
        if rnd.random() < 0.1:
            link["type"] = rnd.choice(["veth", "host", "macvlan"])
        if rnd.random() < 0.1:  # the one-ended kinds
            kind = rnd.choice(["host", "macvlan", "dummy", "vxlan", "mgmt-net"])
            link = {"type": kind, "endpoint": {"node": pair[0], "interface": "eth7"},
                    "host-interface": rnd.choice(["enp3s0", "veth-x"])}
        links.append(link)
    lab: dict[str, Any] = {"name": rnd.choice(["lab", "Lab_1"]),
                           "topology": {"nodes": nodes, "links": links}}
    if rnd.random() < 0.5:
        lab["topology"]["defaults"] = {"kind": rnd.choice(CLAB_KINDS)}
    if rnd.random() < 0.3:
        lab["topology"]["groups"] = {"spines": {"kind": rnd.choice(CLAB_KINDS)},
                                     "edge": {"image": "frrouting/frr"}}
    if rnd.random() < 0.2:
        lab["topology"]["kinds"] = {"linux": {"image": rnd.choice(["frrouting/frr", "alpine"])}}
    if rnd.random() < 0.3:
        lab["mgmt"] = {"ipv4-subnet": rnd.choice(["192.0.2.0/24", "10.1.0.0/30"]),
                       "ipv6-subnet": rnd.choice(POOLS["mgmt6"] + ["2001:db8:c1ab::/64"])}
        if rnd.random() < 0.3:
            lab["mgmt"]["ipv4-gw"] = rnd.choice(["192.0.2.1", "192.0.2.254", "10.1.0.2"])
    return lab


@st.composite
def clab_labs(draw: st.DrawFn) -> Any:
    return mutate(draw, clab_well_formed(draw(SEEDED)))


NETLAB_NODES = ["r1", "r2", "core-1", "edge", "h1", "R_1", "r3"]
NETLAB_IFADDR = [*ADDR4, "198.51.100.9", 3, True, False, "2001:db8::9"]


def netlab_well_formed(rnd: Random) -> dict[str, Any]:
    names = rnd.sample(NETLAB_NODES, rnd.randint(1, 6))
    nodes: Any = {n: {"device": rnd.choice(["frr", "linux", "eos"])}
                  if rnd.random() < 0.5 else None for n in names}
    for spec in nodes.values():
        if spec is not None and rnd.random() < 0.2:
            spec[rnd.choice(["bgp.as", "ospf.area", "mtu", "id", "role"])] = rnd.choice(
                [65000, "0.0.0.0", 1400, 3, "host"])
    if rnd.random() < 0.25:
        nodes = list(names)
    links: list[Any] = []
    for _ in range(rnd.randint(0, 7)):
        members = rnd.sample(names, min(len(names), rnd.choice([1, 2, 2, 2, 3])))
        form = rnd.randint(0, 4)
        if form == 0:
            links.append(rnd.choice(["-", " - "]).join(members))
        elif form == 1:
            links.append(members)
        elif form == 4:
            links.append({"group": "g", "members": ["-".join(members)],
                          "mtu": rnd.choice([1400, 9000])})
        else:
            attrs: dict[str, Any] = {}
            if rnd.random() < 0.5:
                attrs["prefix"] = rnd.choice([*V4, *V6, {"ipv4": rnd.choice(V4)}, False, "named",
                                              {"ipv4": rnd.choice(V4), "ipv6": rnd.choice(V6)}])
            if rnd.random() < 0.2:
                attrs["mtu"] = rnd.choice([1400, "9000"])
            if rnd.random() < 0.2:
                attrs["type"] = rnd.choice(["lan", "p2p", "stub", "loopback"])
            if rnd.random() < 0.15:
                attrs[rnd.choice(["pool", "role"])] = rnd.choice(["core", "lan", "p2p"])
            if rnd.random() < 0.1:
                attrs["unnumbered"] = True
            if rnd.random() < 0.15:
                attrs[rnd.choice(["ospf.cost", "name", "bridge", "bandwidth"])] = rnd.choice(
                    [10, "uplink", "br_1", 1000])
            specs = [{"node": m, **_some(rnd, ENDPOINT_OPTS, 0.2)} for m in members]
            for spec in specs:
                if rnd.random() < 0.15:
                    spec["ipv4"] = rnd.choice(NETLAB_IFADDR)
            if form == 2:
                attrs["interfaces"] = specs
            else:
                for spec in specs:
                    attrs[spec.pop("node")] = spec or None
            links.append(attrs)
    lab: dict[str, Any] = {"name": rnd.choice(["lab", "Lab_1"]), "nodes": nodes,
                           "links": links}
    if rnd.random() < 0.3:
        lab["addressing"] = {"lan": {"ipv4": rnd.choice(POOLS["lan4"]), "prefix": 26},
                             "p2p": {"ipv6": rnd.choice(POOLS["p2p6"])}}
        if rnd.random() < 0.5:
            lab["addressing"]["core"] = {"ipv4": "10.200.0.0/24", "prefix": rnd.choice([30, 31])}
        if rnd.random() < 0.3:
            for pool in ("lan", "p2p"):
                lab["addressing"][pool]["ipv4"] = False
            lab["addressing"]["loopback"] = {"ipv4": False, "ipv6": "2001:db8:ff:1::/64"}
    if rnd.random() < 0.2:
        lab["prefix"] = {"named": {"ipv4": rnd.choice(V4)}}
    if rnd.random() < 0.25:
        lab["defaults"] = {"device": "linux"}
    elif rnd.random() < 0.3:
        lab["defaults.device"] = "frr"
    if rnd.random() < 0.25:
        lab["groups"] = {"g1": {"members": [*rnd.sample(names, 1), "extra"],
                                "device": rnd.choice(["frr", "linux"]), "module": ["ospf"]},
                         "_auto_create": rnd.random() < 0.7}
    return lab


@st.composite
def netlab_labs(draw: st.DrawFn) -> Any:
    return mutate(draw, netlab_well_formed(draw(SEEDED)))


def import_or_refuse(importer: Any, data: Any) -> None:
    """Import, then write (as the CLI does) and plan the result; anything
    but a NetconfError fails the test."""
    try:
        imported = importer(data, source="lab.yml")
    except NetconfError as exc:
        assert exc.what and exc.hint and "\n" not in str(exc), exc
        return
    out = imported.data
    text = yaml.safe_dump(out, sort_keys=False)
    assert yaml.safe_load(text) == out
    json.dumps(out)
    for w in imported.warnings:  # one line each, naming the lab's keys
        assert "\n" not in w.line() and w.keys
    try:
        imported.check()
    except NetconfError as exc:  # named at the lab file, whatever went wrong
        assert exc.where.startswith("lab.yml (imported)"), exc
    plan_or_refuse(out)


@fuzz(3000)
@given(clab_labs())
def test_clab_import_or_refuse(data: Any) -> None:
    import_or_refuse(import_clab_lab, data)


@fuzz(3000)
@given(netlab_labs())
def test_netlab_import_or_refuse(data: Any) -> None:
    import_or_refuse(import_netlab_lab, data)
