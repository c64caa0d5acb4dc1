"""netlab import: the attribute tables, warning texts and small helpers.

Split out of ``netlab.py`` (which keeps ``import_netlab_lab`` and the
orchestration) so that each module stays small: this one holds what has no
state of its own -- which netlab keys are modules, kept, used or dropped,
netlab's default pools, the warning texts both halves of the importer give,
the records a parsed link is held in, and pure helpers (``undot`` and
``_merge`` for dotted keys, ``_fill`` for group settings, ``_index`` for
segment names). Nothing here knows about the importer's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import TopologyError

# netlab's configuration modules; their settings are kept as opaque data
MODULES = {"bfd", "bgp", "dhcp", "eigrp", "evpn", "gateway", "initial", "isis", "lag", "mpls",
           "ospf", "ripv2", "routing", "services", "sr", "srv6", "stp", "vlan", "vrf", "vxlan",
           "vlans", "vrfs", "lldp", "firewall", "vrrp", "tunnel", "multilab"}
HOST_DEVICES = {"linux", "dnsmasq"}
NODE_DROPPED = {"box", "image", "provider", "cpu", "memory", "config", "unmanaged",
                "skip_config", "mgmt", "clab", "libvirt", "virtualbox", "external", "tools",
                "netlab_interfaces", "hostname", "ansible_user", "ansible_host"}
LINK_KEPT = {"bandwidth", "tc", "ra", "shutdown", "vlan_name", "role"}
LINK_ATTRS = {"prefix", "mtu", "type", "name", "pool", "bridge", "unnumbered", "linkindex",
              "linkid", "interfaces", "disable", "group", "members", *LINK_KEPT}
LINK_USED = {"prefix", "mtu", "type", "name", "pool", "bridge", "unnumbered", "disable",
             "interfaces"}
INTERFACE_DROPPED = {"ifindex", "linkid"}
GROUP_ATTRS = {"members", "vars", "config", "node_data", "device", "module", "type"}
# netlab's own pools (addressing.yml and the legacy p2p/lan lengths)
NETLAB_POOLS: dict[str, dict[str, Any]] = {
    "loopback": {"ipv4": "10.0.0.0/24", "prefix": 32},
    "lan": {"ipv4": "172.16.0.0/16", "prefix": 24},
    "p2p": {"ipv4": "10.1.0.0/16", "prefix": 30},
    "mgmt": {"ipv4": "192.168.121.0/24"},
    "router_id": {"ipv4": "10.0.0.0/24", "prefix": 32},
    "l2only": {},
    "vrf_loopback": {"ipv4": "10.2.0.0/24", "prefix": 32},
}
TOP_DROPPED = {"provider", "plugin", "tools", "validate", "version", "message", "defaults",
               "device"}

W_KEPT = "module and link settings kept as opaque data (not planned)"
W_DROPPED = "settings with no network meaning dropped"
W_UNKNOWN = "unknown settings dropped"
W_NO_DEVICE = "nodes without a device taken as routers"
W_ROLE = "node roles other than router and host planned as routers"
W_LOOPBACK = "static loopback addresses dropped (loopbacks come from pools.loopback4/6)"
W_NODE_MTU = "node MTUs applied to their whole links and segments (the smallest wins)"
W_TYPE = "links of type loopback, tunnel or vlan_member dropped"
W_L2ONLY = "links without addresses in netlab (prefix: false, l2only pool) get addresses"
W_UNNUMBERED = "unnumbered links and interfaces get addresses of their own"
W_NO_FAMILY = "interfaces without an address in one family get one"
W_HOST_INDEX = "host numbers of links without a prefix dropped (use a link prefix)"
W_POOL = "address pool settings not used"
W_PREFIX_LEN = "prefix lengths the plan cannot use replaced by its defaults"
W_GROUP = "group variables and configuration templates dropped"
W_ALLOC = "prefixes and addresses the lab leaves to netlab are allocated by nixslave " \
          "(stable hashes), not in netlab's order"
W_FAMILY = "IPv{fam} planned on every link and loopback, though netlab gives no IPv{fam} " \
           "prefix to"


@dataclass
class _Member:
    """One node on a link, with its interface settings and where they are."""

    raw: str
    spec: dict[Any, Any]
    path: str


@dataclass
class _Link:
    path: str
    attrs: dict[Any, Any]
    members: list[_Member] = field(default_factory=list)
    kind: str = ""
    prefix: dict[int, tuple[str, str]] = field(default_factory=dict)  # fam -> (prefix, where)
    pool: str = ""
    pool_at: str = ""
    odd: bool = False  # unnumbered or address-less: warned about already


def undot(v: Any, where: str) -> Any:
    """netlab's dotted keys (``bgp.as: 65000``) as the nested mappings
    they stand for, merged with mappings written out."""
    if isinstance(v, list):
        return [undot(x, where) for x in v]
    if not isinstance(v, dict):
        return v
    out: dict[Any, Any] = {}
    for k, x in v.items():
        x = undot(x, f"{where}.{k}" if where else str(k))
        if not isinstance(k, str) or "." not in k or "/" in k:
            _merge(out, k, x, where)
            continue
        parts = k.split(".")
        if not all(parts):
            raise TopologyError(f"malformed key {k!r}", where=where or "topology",
                                hint="write a.b, not a..b")
        box = out
        for p in parts[:-1]:
            nxt = box.get(p)
            if nxt is None:
                nxt = box[p] = {}
            elif not isinstance(nxt, dict):
                raise TopologyError(f"{k!r} conflicts with {p!r}", where=where or "topology",
                                    hint="write the setting once")
            box = nxt
        _merge(box, parts[-1], x, where)
    return out


def _merge(box: dict[Any, Any], k: Any, x: Any, where: str) -> None:
    if k in box:
        if isinstance(box[k], dict) and isinstance(x, dict):
            for kk, xx in x.items():
                _merge(box[k], kk, xx, f"{where}.{k}")
            return
        raise TopologyError(f"{k!r} is given twice (once as a dotted key)",
                            where=where or "topology", hint="write the setting once")
    box[k] = x


def _fill(own: dict[Any, Any], group: dict[Any, Any]) -> dict[Any, Any]:
    """A node's setting completed from a group's, as netlab merges them:
    the node's own values win, at every level."""
    out = dict(own)
    for k, v in group.items():
        if k not in out:
            out[k] = v
        elif isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _fill(out[k], v)
    return out


def _index(path: str) -> str:
    """``links[3]`` -> ``3``; ``links[3].members[1]`` -> ``3-1``."""
    nums = [p.split("]", 1)[0] for p in path.split("[")[1:]]
    return "-".join(nums)
