"""Bad input: each file under tests/data/netconf/errors fails with the
element at fault (where), what is wrong, and a hint."""

from __future__ import annotations

import pytest

from nixslave.netconf import TopologyError, load_topology, plan

from .helpers import DATA

pytestmark = pytest.mark.unit

ERRORS = DATA / "errors"

# case -> (where ends with, what contains)
EXPECTED: dict[str, tuple[str, str]] = {
    "unknown-node": ("links[1].endpoints[1]", "unknown node or segment 'c'"),
    "unknown-segment-in-extended-link": ("links[0].endpoints[1]",
                                         "unknown node or segment 'lann'"),
    "duplicate-node-key": ("line 4", "duplicate key 'a'"),
    "node-segment-same-name": ("segments.lan", "used by a node and a segment"),
    "bad-hostname": ("nodes.Router_1", "is not a valid host name"),
    "bad-topology-name": ("name", "'1st-lab' is not a valid host name"),
    "bad-ifname-chars": ("links[0].endpoints[0].ifname", "not a valid interface name"),
    "ifname-too-long": ("links[1].endpoints[0].ifname", "longer than 15 characters"),
    "duplicate-ifname": ("links[1].endpoints[0]", "interface name 'up0' is used twice on 'a'"),
    "lan-pool-exhausted": ("segments.l3", "lan4 pool 198.51.100.0/23 is exhausted"),
    "p2p-pool-exhausted": ("links[1]", "p2p4 pool 203.0.113.0/31 is exhausted"),
    "lan-hosts-exhausted": ("links[2].endpoints[0]",
                            "prefix 198.51.100.0/30 has no free host address"),
    "overlapping-static-prefixes": ("segments.two",
                                    "198.51.100.128/25 overlaps 198.51.100.0/24"),
    "static-outside-prefix": ("links[1].endpoints[0].ipv4",
                              "192.0.2.5/24 is outside the link prefix 198.51.100.0/24"),
    "duplicate-static-address": ("links[2].endpoints[0].ipv4",
                                 "address 198.51.100.7 is used twice"),
    "duplicate-mac": ("links[1].endpoints[0].mac", "MAC address 02:00:00:00:00:aa is used twice"),
    "multicast-mac": ("links[0].endpoints[0].mac", "multicast MAC address"),
    "routers-unreachable": ("nodes.r2", "router 'r2' cannot reach router 'r1'"),
    "unknown-option": ("nodes.r1.gatway", "unknown option 'gatway'"),
    "bad-kind": ("nodes.s.kind", "'vm', 'container', 'router' or 'host'"),
    "one-endpoint": ("links[0].endpoints", "at least 2 items"),
    "segment-to-segment": ("links[0]", "link joins two segments"),
    "self-loop": ("links[0]", "link joins 'a' to itself"),
    "bad-prefix": ("segments.lan.prefix4", "has host bits set"),
    "bad-p2p-prefix-len": ("links[0].prefix_len4", "greater than or equal to 30"),
    "gateway-not-router": ("nodes.a.gateway", "gateway 'b' is a vm, not a router"),
    "gateway-not-adjacent": ("nodes.a.gateway", "shares no link or segment with 'a'"),
    "static-route-gateway-off-link": ("routes[0].via", "203.0.113.9 is not on any prefix"),
    "duplicate-fixed-id": ("links[1].endpoints[0]", "fixed id 5 collides"),
    "fixed-id-too-large": ("links[0].endpoints[0]", "fixed id 300 does not fit"),
    "network-address": ("links[0].endpoints[0].ipv4", "network or broadcast address"),
    "mtu-too-small": ("links[0].mtu", "greater than or equal to 68"),
    "overlapping-pools": ("pools.lan4", "overlaps pools.p2p4"),
    "yaml-syntax": ("line 3", "not valid YAML"),
    "not-a-mapping": ("not-a-mapping.yml", "must be a mapping"),
    "attached-twice": ("links[1]", "attached to segment 'lan' twice"),
    "ipv4-disabled-static": ("links[0].endpoints[0].ipv4", "IPv4 is disabled"),
    "address-without-length": ("links[0].endpoints[0].ipv6", "needs a prefix length"),
}


def test_every_file_has_an_expectation() -> None:
    files = {p.stem for p in ERRORS.glob("*.yml")}
    assert files == set(EXPECTED)
    assert len(files) >= 25


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_input(case: str) -> None:
    where, what = EXPECTED[case]
    with pytest.raises(TopologyError) as info:
        plan(load_topology(ERRORS / f"{case}.yml"))
    exc = info.value
    assert exc.where.endswith(where), exc.where
    assert what in exc.what, exc.what
    assert exc.hint, "every error carries a hint"
    assert exc.layer == "netconf"
    assert "\n" not in str(exc)
