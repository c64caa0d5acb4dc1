"""The input model: what a person writes to describe a network.

The model is deliberately strict (``extra="forbid"``) because a typo in a
topology file otherwise silently produces a different network; every
pydantic error is turned into a TopologyError that names the element.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HOSTNAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,46}[a-z0-9])?$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

NodeKind = Literal["vm", "container", "router", "host"]


def check_hostname(name: str) -> str:
    if not HOSTNAME_RE.match(name):
        raise ValueError(
            f"{name!r} is not a valid host name (lower-case letters, digits and '-', "
            "starting with a letter, at most 48 characters)"
        )
    return name


def check_ifname(name: str) -> str:
    if len(name) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 characters")
    if not IFNAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not a valid interface name")
    return name


def check_mac(mac: str) -> str:
    mac = mac.lower().replace("-", ":")
    if not MAC_RE.match(mac):
        raise ValueError(f"{mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{mac!r} is a multicast MAC address; a NIC needs a unicast one")
    if mac == "00:00:00:00:00:00":
        # the kernel treats an all-zero address as "none" and replaces it
        raise ValueError(f"{mac!r} is the all-zero MAC address; a NIC needs a real one")
    return mac


def check_prefix(v: str, version: int) -> str:
    """A network address/length of one family. The family is checked here,
    not later, so a v6 prefix under ``prefix4`` is an error at that field
    instead of a crash where an IPv4Network is built from it."""
    net = ipaddress.ip_network(v, strict=True)
    if net.version != version:
        other = 6 if version == 4 else 4
        raise ValueError(f"{v!r} is an IPv{other} prefix, not an IPv{version} one")
    return str(net)


def check_interface(v: str, version: int) -> str:
    """An address/length of one family (``ipv4``/``ipv6`` of an endpoint)."""
    if "/" not in v:
        raise ValueError(f"{v!r} needs a prefix length (address/len)")
    iface = ipaddress.ip_interface(v)
    if iface.version != version:
        other = 6 if version == 4 else 4
        raise ValueError(f"{v!r} is an IPv{other} address, not an IPv{version} one")
    return str(iface)


def check_label(v: str) -> str:
    """A free-text label (an imported lab's link description): one printable
    line, since it ends up in comments and diagrams."""
    if len(v) > 200:
        raise ValueError("a label is at most 200 characters")
    if any(not ch.isprintable() for ch in v):
        raise ValueError(f"{v!r} is not one line of printable text")
    return v


def check_address(v: str, version: int) -> str:
    """A bare address of one family (a static management address)."""
    addr = ipaddress.ip_address(v)
    if addr.version != version:
        raise ValueError(f"{v!r} is an IPv{addr.version} address, not an IPv{version} one")
    return str(addr)


# Opaque data carried for other tools (an imported lab's routing-protocol,
# VLAN or VRF settings): kept as written, never read by the planner.
Data = dict[str, Any] | None


class ListFormError(ValueError):
    """A bad entry of the list form of nodes or segments; ``where`` points at
    the entry, since pydantic reports a before-validator's errors at the top."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(what)
        self.where = where


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Pools(_Strict):
    """Where dynamic addresses come from; each role has its own pool so that
    prefixes can be read at a glance (a /31 from p2p4 is always a link)."""

    p2p4: str = "10.64.0.0/10"
    lan4: str = "10.128.0.0/9"
    loopback4: str = "10.0.0.0/16"
    mgmt4: str = "10.1.0.0/16"
    p2p6: str = "2001:db8:ff::/64"
    lan6: str = "2001:db8:100::/40"
    loopback6: str = "2001:db8:ff:1::/64"
    mgmt6: str = "2001:db8:fe::/64"

    @field_validator("p2p4", "lan4", "loopback4", "mgmt4")
    @classmethod
    def _v4(cls, v: str) -> str:
        return check_prefix(v, 4)

    @field_validator("p2p6", "lan6", "loopback6", "mgmt6")
    @classmethod
    def _v6(cls, v: str) -> str:
        return check_prefix(v, 6)


class Node(_Strict):
    kind: NodeKind = "vm"
    id: int | None = Field(default=None, ge=1, le=65534)
    gateway: str | None = None
    loopback: bool | None = None
    # static addresses on the management network (with management: true)
    mgmt_ipv4: str | None = None
    mgmt_ipv6: str | None = None
    data: Data = None

    @field_validator("mgmt_ipv4")
    @classmethod
    def _mgmt4(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v, 4)

    @field_validator("mgmt_ipv6")
    @classmethod
    def _mgmt6(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v, 6)


class Segment(_Strict):
    prefix4: str | None = None
    prefix6: str | None = None
    prefix_len4: int | None = Field(default=None, ge=8, le=30)
    prefix_len6: int | None = Field(default=None, ge=48, le=126)
    mtu: int | None = Field(default=None, ge=68, le=65535)
    label: str | None = None
    data: Data = None

    @field_validator("prefix4")
    @classmethod
    def _prefix4(cls, v: str | None) -> str | None:
        return None if v is None else check_prefix(v, 4)

    @field_validator("prefix6")
    @classmethod
    def _prefix6(cls, v: str | None) -> str | None:
        return None if v is None else check_prefix(v, 6)

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return None if v is None else check_label(v)


class Endpoint(_Strict):
    node: str
    ifname: str | None = None
    mac: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    data: Data = None

    @field_validator("ifname")
    @classmethod
    def _ifname(cls, v: str | None) -> str | None:
        return None if v is None else check_ifname(v)

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return None if v is None else check_mac(v)

    @field_validator("ipv4")
    @classmethod
    def _ipv4(cls, v: str | None) -> str | None:
        return None if v is None else check_interface(v, 4)

    @field_validator("ipv6")
    @classmethod
    def _ipv6(cls, v: str | None) -> str | None:
        return None if v is None else check_interface(v, 6)


class Link(_Strict):
    """A point-to-point link between two nodes, or a node's leg on a segment."""

    endpoints: list[Endpoint] = Field(min_length=2, max_length=2)
    name: str | None = None
    prefix4: str | None = None
    prefix6: str | None = None
    prefix_len4: int | None = Field(default=None, ge=30, le=31)
    prefix_len6: int | None = Field(default=None, ge=64, le=127)
    mtu: int | None = Field(default=None, ge=68, le=65535)
    label: str | None = None  # free text, unlike name (which is the link's id)
    data: Data = None

    @model_validator(mode="before")
    @classmethod
    def _brief(cls, data: Any) -> Any:
        # `[a, b]` is the brief form; endpoints may be bare names too
        if isinstance(data, list | tuple):
            data = {"endpoints": list(data)}
        if isinstance(data, dict) and isinstance(data.get("endpoints"), list):
            data = dict(data)
            data["endpoints"] = [
                {"node": e} if isinstance(e, str) else e for e in data["endpoints"]
            ]
        return data

    @field_validator("prefix4")
    @classmethod
    def _prefix4(cls, v: str | None) -> str | None:
        return None if v is None else check_prefix(v, 4)

    @field_validator("prefix6")
    @classmethod
    def _prefix6(cls, v: str | None) -> str | None:
        return None if v is None else check_prefix(v, 6)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_hostname(v)

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return None if v is None else check_label(v)


class StaticRoute(_Strict):
    node: str
    to: str
    via: str

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        return str(ipaddress.ip_network(v, strict=True))

    @field_validator("via")
    @classmethod
    def _via(cls, v: str) -> str:
        return str(ipaddress.ip_address(v))


class Topology(_Strict):
    """A whole network: the single description every backend is wired from.

    Nodes (``vm``, ``router``, ...), LAN segments, links (a ``[a, b]`` pair
    is a p2p link; ``[a, segment]`` puts ``a`` on the segment), address
    pools and routing.  Build it from data with :func:`topology_from_data`
    or from a file with :func:`load_topology`, which turn every mistake into
    a :class:`TopologyError` that names the element; :func:`json_schema`
    gives the schema for editors.

    Example:

        >>> from nixslave import netconf
        >>> topo = netconf.topology_from_data({
        ...     "name": "lab",
        ...     "nodes": {"a": {"kind": "vm"}, "r": {"kind": "router"}, "b": {}},
        ...     "segments": {"lan": {}},
        ...     "links": [["a", "r"], ["r", "lan"], ["b", "lan"]],
        ... })
        >>> topo.nodes["r"].kind
        'router'
    """

    name: str
    nodes: dict[str, Node] = Field(default_factory=dict)
    segments: dict[str, Segment] = Field(default_factory=dict)
    links: list[Link] = Field(default_factory=list)
    pools: Pools = Field(default_factory=Pools)
    ipv4: bool = True
    ipv6: bool = True
    p2p_prefix_len4: Literal[30, 31] = 31
    p2p_prefix_len6: Literal[64, 127] = 127
    lan_prefix_len4: int = Field(default=24, ge=8, le=30)
    lan_prefix_len6: int = Field(default=64, ge=48, le=126)
    mtu: int = Field(default=1500, ge=68, le=65535)
    # static: the planner computes every route (aggregated); ospf/bgp: FRR on
    # the routers learns them and the planner routes only end systems; none:
    # no routes beyond the topology's own ``routes``
    routing: Literal["static", "none", "ospf", "bgp"] = "static"
    management: bool = False
    # the management network's gateway (the lab host's bridge): no node gets it
    mgmt_gateway4: str | None = None
    mgmt_gateway6: str | None = None
    routes: list[StaticRoute] = Field(default_factory=list)
    data: Data = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_hostname(v)

    @field_validator("mgmt_gateway4")
    @classmethod
    def _gw4(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v, 4)

    @field_validator("mgmt_gateway6")
    @classmethod
    def _gw6(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v, 6)

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: Any) -> Any:
        # nodes/segments may be given as a list of names when they need no options
        if isinstance(data, dict):
            data = dict(data)
            for key in ("nodes", "segments"):
                val = data.get(key)
                if isinstance(val, list):
                    data[key] = _from_list(key, val)
                elif isinstance(val, dict):
                    data[key] = {k: ({} if v is None else v) for k, v in val.items()}
        return data


def _from_list(key: str, items: list[Any]) -> dict[Any, Any]:
    """The list form of nodes or segments as a mapping. A name given twice
    is an error: in mapping form YAML refuses the duplicate key, and merging
    two list entries silently would drop one's options."""
    out: dict[Any, Any] = {}
    for i, item in enumerate(items):
        if isinstance(item, str):
            name: Any = item
            rest: Any = {}
        elif isinstance(item, dict) and "name" in item:
            rest = dict(item)
            name = rest.pop("name")
            if not isinstance(name, str):
                raise ListFormError(f"the name must be a string, not {type(name).__name__}",
                                    f"{key}[{i}].name")
        else:
            raise ListFormError(f"{key} entries must be names or mappings with a 'name'",
                                f"{key}[{i}]")
        if name in out:
            raise ListFormError(f"{name!r} is listed twice", f"{key}[{i}]")
        out[name] = rest
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of topology files, for editors and other tools.

    Example:

        >>> import json
        >>> from nixslave import netconf
        >>> Path("topology.schema.json").write_text(json.dumps(netconf.json_schema()))
    """
    return Topology.model_json_schema()
