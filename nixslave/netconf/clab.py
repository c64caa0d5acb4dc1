"""Importing containerlab topologies (``.clab.yml``).

Follows containerlab's own reading of the file (its documentation and
schema): a node's kind comes from the node, its group, the default group
or ``defaults``, in that order; other settings from the node, its group,
its kind's entry under ``kinds`` or ``defaults``. Bridges (``bridge``,
``ovs-bridge``) are segments. Links come in the brief form
(``endpoints: ["a:e1-1", "b:eth1"]``) and the extended one, with the
special ends ``host:``, ``mgmt-net:`` and ``macvlan:``; addresses in both
places containerlab has had them (``ipv4: [a, b]`` since 0.71,
``vars: {ipv4: [a, b]}`` in 0.70, and per endpoint). containerlab makes
every veth 9500 bytes, so links without an ``mtu`` get 9500.

What does not map is dropped or changed with a warning; see
``import_clab_lab``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .errors import TopologyError
from .importers import (
    Builder,
    Imported,
    Rec,
    address,
    as_list,
    check_ifname,
    hostname,
    integer,
    mapping,
    name_key,
    opaque,
    subnet,
    text,
)

BRIDGE_KINDS = {"bridge", "ovs-bridge"}
# kinds that run end systems rather than network operating systems
END_SYSTEM_KINDS = {"linux", "host", "k8s-kind", "ext-container", "generic_vm",
                    "keysight_ixia-c-one", "ostinato", "spirent_stc", "border0"}
# a linux node running one of these is a router in all but its kind
ROUTING_IMAGES = ("frr", "bird", "quagga", "vyos")
LINK_TYPES = {"veth", "host", "mgmt-net", "macvlan", "dummy", "vxlan", "vxlan-stitch"}
SPECIAL_ENDS = {"host", "mgmt-net", "macvlan"}
VETH_MTU = 9500  # containerlab's default for every veth it creates
DEFAULT_MGMT = {4: "172.20.20.0/24", 6: "3fff:172:20:20::/64"}  # containerlab's defaults
NODE_KEYS_USED = {"kind", "group", "mgmt-ipv4", "mgmt-ipv6", "mgmt_ipv4", "mgmt_ipv6",
                  "network-mode"}
ENDPOINT_KEYS = {"node", "interface", "mac", "ipv4", "ipv6", "vars", "labels"}
LINK_KEYS = {"type", "endpoints", "endpoint", "mtu", "ipv4", "ipv6", "vars", "labels",
             "host-interface", "mode", "remote", "vni", "udp-port"}

W_DROPPED_SETTINGS = "container settings with no network meaning dropped"
W_KEPT = "template variables and labels kept as opaque data (not planned)"
W_NO_KIND = "nodes without a kind taken as linux end systems"
W_ROUTING_IMAGE = "linux nodes with a routing image planned as routers"
W_NETMODE = "network-mode not modelled (the node gets interfaces of its own)"
W_HOST = "links to the containerlab host became links to node '{host}'"
W_MGMT_NET = "links to the management network dropped (mgmt0 is each node's one management " \
             "interface)"
W_MACVLAN = "macvlan links became legs on a segment for the host interface (the external LAN " \
            "itself is not planned)"
W_DUMMY = "dummy interfaces became segments with one member"
W_VXLAN = "vxlan links dropped (tunnels to other hosts are not planned)"
W_TWICE = "second interface of a node on one bridge dropped (one leg per node and segment)"
W_BRIDGES = "bridges linked to each other merged into one segment"
W_BRIDGE_END = "bridge-side interface settings dropped"
W_MTU_MIX = "bridge legs with different MTUs: the segment uses the smallest"
W_MGMT_DROPPED = "management settings with no network meaning dropped"
W_NO_MGMT = "management network not planned: the lab sets no mgmt subnet or mgmt " \
            "addresses (containerlab would use 172.20.20.0/24)"
W_UNKNOWN = "unknown settings dropped"


@dataclass
class _Node:
    """A lab node as containerlab resolves it."""

    name: str
    path: str
    kind: str
    bridge: bool = False


@dataclass
class _End:
    """One end of a link: a lab node (or bridge), or a special end."""

    path: str
    node: str = ""            # the lab's raw node name, or the special end's kind
    special: str = ""         # host, mgmt-net, macvlan (brief form) or ""
    iface: Any = None
    spec: dict[Any, Any] = field(default_factory=dict)


class _Clab:
    def __init__(self, data: Any, source: str) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("topology"), dict):
            raise TopologyError("not a containerlab topology (no 'topology' mapping)",
                                where=source, hint="a .clab.yml has name: and topology:")
        self.b = Builder(source)
        self.data = data
        self.topo: dict[Any, Any] = data["topology"]
        self.nodes: dict[str, _Node] = {}
        self.host: str | None = None       # the node standing for the containerlab host
        self.bridge_of: dict[str, str] = {}  # merged bridges: segment -> the segment kept
        self.legs: list[tuple[Rec, str, int]] = []  # (link, segment, mtu)
        self.macvlan: dict[str, str] = {}  # host interface -> its segment
        self.mgmt_wanted = False

    # ---- nodes

    def run(self) -> Imported:
        b = self.b
        for k in self.data:
            if k not in ("name", "topology", "mgmt"):
                b.warn(W_DROPPED_SETTINGS if k in ("prefix", "settings", "debug") else W_UNKNOWN,
                       str(k))
        lab = self.data.get("name")
        raw = name_key(lab, b.at("name")) if lab is not None else "lab"
        name = hostname(raw, b.at("name"))
        if name != raw:
            b.renamed("name", raw, name)
        b.set_top("name", name, "name")
        for k in self.topo:
            if k not in ("nodes", "kinds", "groups", "defaults", "links"):
                b.warn(W_UNKNOWN, f"topology.{k}")
        self.defaults = mapping(self.topo.get("defaults"), b.at("topology.defaults"))
        self.kinds = mapping(self.topo.get("kinds"), b.at("topology.kinds"))
        self.groups = mapping(self.topo.get("groups"), b.at("topology.groups"))
        for where, section in (("topology.kinds", self.kinds), ("topology.groups", self.groups)):
            for k, v in section.items():
                mapping(v, b.at(f"{where}.{k}"))
        self._dropped_settings("topology.defaults", self.defaults)
        for section, where in ((self.kinds, "topology.kinds"), (self.groups, "topology.groups")):
            for k, v in section.items():
                self._dropped_settings(f"{where}.{k}", v or {})
        nodes = mapping(self.topo.get("nodes"), b.at("topology.nodes"),
                        "write the nodes as name: {kind: ...} pairs")
        for raw, spec in nodes.items():
            self._node(raw, spec)
        for k, link in enumerate(as_list(self.topo.get("links"), b.at("topology.links"))):
            self._link(k, link)
        self._finish_segments()
        self._mgmt()
        return b.finish()

    def _dropped_settings(self, path: str, spec: dict[Any, Any]) -> None:
        for k in spec:
            if k not in NODE_KEYS_USED:
                self.b.warn(W_DROPPED_SETTINGS, f"{path}.{k}")

    def _setting(self, spec: dict[Any, Any], kind: str, group: str | None, key: str) -> Any:
        """A node setting as containerlab inherits it: node, group, kind, defaults."""
        for level in (spec, self.groups.get(group) if group else None, self.kinds.get(kind),
                      self.defaults):
            if isinstance(level, dict) and level.get(key) is not None:
                return level[key]
        return None

    def _node(self, raw: Any, spec: Any) -> None:
        b = self.b
        path = f"topology.nodes.{raw}"
        raw = name_key(raw, b.at(path))
        spec = mapping(spec, b.at(path))
        self._dropped_settings(path, spec)
        group = spec.get("group")
        if group is not None:
            group = text(group, b.at(f"{path}.group"), "name a group of topology.groups")
        dgroup = self.defaults.get("group")
        kind: Any = spec.get("kind")
        kind_at = f"{path}.kind"
        for g, gpath in ((group, f"topology.groups.{group}"),
                         (dgroup, f"topology.groups.{dgroup}")):
            if kind is None and isinstance(g, str) and isinstance(self.groups.get(g), dict):
                kind, kind_at = self.groups[g].get("kind"), f"{gpath}.kind"
        if kind is None:
            kind, kind_at = self.defaults.get("kind"), "topology.defaults.kind"
        if kind is None:
            kind = "linux"
            b.warn(W_NO_KIND, path)
        kind = text(kind, b.at(kind_at), "name a containerlab kind, e.g. nokia_srlinux")
        if group is None:
            kgroup = self.kinds.get(kind, {}) or {}
            group = kgroup.get("group") if isinstance(kgroup.get("group"), str) else dgroup
            group = group if isinstance(group, str) else None
        name = b.name(raw, path)
        if kind in BRIDGE_KINDS:
            self.nodes[raw] = _Node(name, path, kind, bridge=True)
            b.segments[name] = Rec({}, path)
            return
        self.nodes[raw] = _Node(name, path, kind)
        node_kind = "host" if kind in END_SYSTEM_KINDS else "router"
        image = self._setting(spec, kind, group, "image")
        if node_kind == "host" and kind == "linux" and isinstance(image, str) and any(
                r in image.lower() for r in ROUTING_IMAGES):
            node_kind = "router"
            b.warn(W_ROUTING_IMAGE, f"{path} ({image})")
        out: dict[str, Any] = {"kind": node_kind}
        rec = Rec(out, path)
        for fam in (4, 6):
            for key in (f"mgmt-ipv{fam}", f"mgmt_ipv{fam}"):
                if spec.get(key) is not None:
                    out[f"mgmt_ipv{fam}"] = address(spec[key], fam, b.at(f"{path}.{key}"))
                    rec.fields[f"mgmt_ipv{fam}"] = f"{path}.{key}"
                    self.mgmt_wanted = True
        if self._setting(spec, kind, group, "network-mode") is not None:
            b.warn(W_NETMODE, path)
        b.nodes[name] = rec

    # ---- links

    def _link(self, k: int, link: Any) -> None:
        b = self.b
        path = f"topology.links[{k}]"
        link = mapping(link, b.at(path), 'a link is a mapping: endpoints: ["a:eth1", "b:eth1"]')
        for key in link:
            if key not in LINK_KEYS:
                b.warn(W_UNKNOWN, f"{path}.{key}")
        kind = link.get("type", "veth")
        kind = text(kind, b.at(f"{path}.type"), "one of " + ", ".join(sorted(LINK_TYPES)))
        if kind not in LINK_TYPES:
            raise TopologyError(f"unknown link type {kind!r}", where=b.at(f"{path}.type"),
                                hint="one of " + ", ".join(sorted(LINK_TYPES)))
        if kind == "veth" or ("endpoints" in link and "endpoint" not in link):
            # the brief form, also under a type: its special end decides
            eps = link.get("endpoints")
            if not isinstance(eps, list) or len(eps) != 2:
                raise TopologyError("a link needs two endpoints", where=b.at(path),
                                    hint='endpoints: ["node1:eth1", "node2:eth1"]')
            ends = [self._end(ep, f"{path}.endpoints[{j}]") for j, ep in enumerate(eps)]
            specials = [e for e in ends if e.special]
            if len(specials) == 2:
                raise TopologyError("a link needs a lab node at one end at least",
                                    where=b.at(path), hint="link a node to host:, mgmt-net: "
                                    "or macvlan:")
            if specials:
                node = next(e for e in ends if not e.special)
                self._special(specials[0].special, link, path, node, ends.index(node),
                              specials[0].iface, specials[0].path)
                return
            self._veth(link, path, ends)
            return
        if kind in ("vxlan", "vxlan-stitch"):
            b.warn(W_VXLAN, path)
            return
        ep = link.get("endpoint")
        if not isinstance(ep, dict):
            raise TopologyError(f"a {kind} link needs one endpoint: {{node, interface}}",
                                where=b.at(f"{path}.endpoint"),
                                hint="endpoint: {node: r1, interface: eth1}")
        end = self._end(ep, f"{path}.endpoint")
        if end.special:
            raise TopologyError(f"a {kind} link's endpoint must be a lab node",
                                where=b.at(f"{path}.endpoint"), hint="name a node")
        host_if = link.get("host-interface")
        if kind == "dummy":
            self._special("dummy", link, path, end, None, None, "")
            return
        if host_if is None:
            raise TopologyError(f"a {kind} link needs host-interface",
                                where=b.at(path), hint="host-interface: <name on the host>")
        self._special(kind, link, path, end, None, host_if, f"{path}.host-interface")

    def _end(self, ep: Any, path: str) -> _End:
        """``"node:iface"`` or ``{node, interface, mac, ipv4, ipv6, vars}``."""
        b = self.b
        if isinstance(ep, str):
            parts = ep.split(":")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise TopologyError(f"malformed endpoint {ep!r}", where=b.at(path),
                                    hint="write node:interface, e.g. r1:eth1")
            node = parts[0]
            iface: Any = parts[1]
            spec: dict[Any, Any] = {}
        elif isinstance(ep, dict):
            spec = ep
            node = name_key(ep.get("node"), b.at(f"{path}.node"))
            iface = ep.get("interface")
            if iface is None:
                raise TopologyError("an endpoint needs an interface", where=b.at(path),
                                    hint="{node: r1, interface: eth1}")
            for key in ep:
                if key not in ENDPOINT_KEYS:
                    b.warn(W_UNKNOWN, f"{path}.{key}")
        else:
            raise TopologyError("endpoint must be 'node:iface' or {node, interface}",
                                where=b.at(path), hint="fix the endpoint")
        if isinstance(ep, str) and node in SPECIAL_ENDS:
            return _End(path, node, node, iface)
        if node not in self.nodes:
            raise TopologyError(f"unknown node {node!r}", where=b.at(path),
                                hint="declare it under topology.nodes")
        return _End(path, node, "", iface, spec)

    def _addr(self, link: dict[Any, Any], path: str, end: _End, j: int | None,
              fam: int) -> tuple[str, str] | None:
        """An end's address and where it was written: on the endpoint,
        in its vars, or at position j of the link's list (ipv4 or vars.ipv4)."""
        b = self.b
        key = f"ipv{fam}"
        evars = mapping(end.spec.get("vars"), b.at(f"{end.path}.vars"))
        for src, at in ((end.spec, end.path), (evars, f"{end.path}.vars")):
            if src.get(key) is not None:
                return text(src[key], b.at(f"{at}.{key}"), "write address/length as text"), \
                    f"{at}.{key}"
        if j is None:
            return None
        lvars = mapping(link.get("vars"), b.at(f"{path}.vars"))
        for src, at in ((link, path), (lvars, f"{path}.vars")):
            vals = src.get(key)
            if vals is None:
                continue
            vals = as_list(vals, b.at(f"{at}.{key}"), "one address per endpoint: [a/len, b/len]")
            if len(vals) != 2:
                raise TopologyError(f"{key} needs one address per endpoint",
                                    where=b.at(f"{at}.{key}"), hint="[a/len, b/len]")
            if vals[j] is None or vals[j] == "":
                return None
            return text(vals[j], b.at(f"{at}.{key}[{j}]"), "write address/length as text"), \
                f"{at}.{key}[{j}]"
        return None

    def _endpoint(self, rec: Rec, link: dict[Any, Any], path: str, end: _End, j: int | None,
                  slot: int) -> dict[str, Any]:
        """The node end of a link as an Endpoint, recording where each field
        came from (slot is its index in the generated link)."""
        b = self.b
        node = self.nodes[end.node]
        out: dict[str, Any] = {"node": node.name}
        rec.fields[f"endpoints[{slot}]"] = end.path
        iface_at = f"{end.path}.interface" if end.spec else end.path
        ifname = check_ifname(b, end.iface, iface_at)
        if ifname:
            out["ifname"] = ifname
            rec.fields[f"endpoints[{slot}].ifname"] = iface_at
        if end.spec.get("mac") is not None:
            out["mac"] = text(end.spec["mac"], b.at(f"{end.path}.mac"),
                              'write a MAC as text, e.g. "02:00:00:00:00:01"')
            rec.fields[f"endpoints[{slot}].mac"] = f"{end.path}.mac"
        for fam in (4, 6):
            found = self._addr(link, path, end, j, fam)
            if found:
                out[f"ipv{fam}"], rec.fields[f"endpoints[{slot}].ipv{fam}"] = found
        data = self._kept(end.spec, end.path)
        if data:
            out["data"] = data
        return out

    def _kept(self, spec: dict[Any, Any], path: str) -> dict[str, Any]:
        """vars (other than addresses) and labels, as opaque data."""
        b = self.b
        data: dict[str, Any] = {}
        rest = {k: v for k, v in mapping(spec.get("vars"), b.at(f"{path}.vars")).items()
                if k not in ("ipv4", "ipv6")}
        if rest:
            data["vars"] = opaque(rest, b.at(f"{path}.vars"))
            b.warn(W_KEPT, f"{path}.vars")
        if spec.get("labels") is not None:
            data["labels"] = opaque(spec["labels"], b.at(f"{path}.labels"))
            b.warn(W_KEPT, f"{path}.labels")
        return data

    def _mtu(self, link: dict[Any, Any], path: str) -> tuple[int, str | None]:
        if link.get("mtu") is None:
            return VETH_MTU, None
        return integer(link["mtu"], self.b.at(f"{path}.mtu")), f"{path}.mtu"

    def _veth(self, link: dict[Any, Any], path: str, ends: list[_End]) -> None:
        b = self.b
        mtu, mtu_at = self._mtu(link, path)
        bridges = [e for e in ends if self.nodes[e.node].bridge]
        if len(bridges) == 2:
            keep, gone = (self._segment(self.nodes[e.node].name) for e in ends)
            if keep != gone:
                self.bridge_of[gone] = keep
            b.warn(W_BRIDGES, path)
            return
        if bridges:
            br = bridges[0]
            end = ends[1] if br is ends[0] else ends[0]
            j = ends.index(end)
            if any(br.spec.get(k) is not None for k in ("mac", "ipv4", "ipv6", "vars")) or \
                    any(isinstance(link.get(k), list) and len(link[k]) == 2
                        and link[k][1 - j] is not None for k in ("ipv4", "ipv6")):
                b.warn(W_BRIDGE_END, br.path)
            rec = Rec({}, path)
            ep = self._endpoint(rec, link, path, end, j, 0)
            rec.spec["endpoints"] = [ep, self.nodes[br.node].name]
            if mtu_at:
                rec.fields["mtu"] = mtu_at
            self._kept_link(rec, link, path)
            self.legs.append((rec, self.nodes[br.node].name, mtu))
            return
        rec = Rec({}, path)
        rec.spec["endpoints"] = [self._endpoint(rec, link, path, e, j, j)
                                 for j, e in enumerate(ends)]
        rec.spec["mtu"] = mtu
        if mtu_at:
            rec.fields["mtu"] = mtu_at
        self._kept_link(rec, link, path)
        b.links.append(rec)

    def _kept_link(self, rec: Rec, link: dict[Any, Any], path: str) -> None:
        data = self._kept(link, path)
        if data:
            rec.spec["data"] = data

    def _segment(self, name: str) -> str:
        while name in self.bridge_of:
            name = self.bridge_of[name]
        return name

    def _special(self, kind: str, link: dict[Any, Any], path: str, end: _End, j: int | None,
                 host_if: Any, host_if_at: str) -> None:
        """host, mgmt-net, macvlan and dummy links: a node's interface
        whose other side is outside the lab (j: the node end's position in
        a brief link's endpoints, for the link's address lists)."""
        b = self.b
        if kind == "mgmt-net":
            b.warn(W_MGMT_NET, path)
            return
        if self.nodes[end.node].bridge:
            b.warn(W_BRIDGE_END, path)
            return
        mtu, mtu_at = self._mtu(link, path)
        if kind == "host":
            host = self._host(path)
            b.warn(W_HOST.format(host=host), path)
            rec = Rec({}, path)
            ep = self._endpoint(rec, link, path, end, j, 0)
            other: dict[str, Any] = {"node": host}
            ifname = check_ifname(b, host_if, host_if_at, "host interface")
            if ifname:
                other["ifname"] = ifname
                rec.fields["endpoints[1].ifname"] = host_if_at
            rec.fields["endpoints[1]"] = host_if_at
            if j is not None:  # the host side's address from the link's lists
                for fam in (4, 6):
                    found = self._addr(link, path, _End(host_if_at), 1 - j, fam)
                    if found:
                        other[f"ipv{fam}"], rec.fields[f"endpoints[1].ipv{fam}"] = found
            rec.spec["endpoints"] = [ep, other]
            rec.spec["mtu"] = mtu
            if mtu_at:
                rec.fields["mtu"] = mtu_at
            self._kept_link(rec, link, path)
            b.links.append(rec)
            return
        if kind == "macvlan":
            parent = text(host_if, b.at(host_if_at), "name the host's interface")
            seg = self.macvlan.get(parent)
            if seg is None:
                seg = b.names.fresh(f"ext-{parent}")
                self.macvlan[parent] = seg
                b.segments[seg] = Rec({}, host_if_at)
            b.warn(W_MACVLAN, path)
        else:  # dummy
            iface = end.iface if isinstance(end.iface, str) else "if"
            seg = b.names.fresh(f"{self.nodes[end.node].name}-{iface}")
            b.segments[seg] = Rec({}, path)
            b.warn(W_DUMMY, path)
        rec = Rec({}, path)
        rec.spec["endpoints"] = [self._endpoint(rec, link, path, end, j, 0), seg]
        if mtu_at:
            rec.fields["mtu"] = mtu_at
        self._kept_link(rec, link, path)
        self.legs.append((rec, seg, mtu))

    def _host(self, path: str) -> str:
        """The node standing for the containerlab host (made on first use)."""
        if self.host is None:
            self.host = self.b.names.fresh("host")
            self.b.nodes[self.host] = Rec({"kind": "host"}, path)
        return self.host

    def _finish_segments(self) -> None:
        """Legs go on their (possibly merged) segment, once per node; a
        segment's MTU is the smallest of its legs', as on a Linux bridge."""
        b = self.b
        seen: set[tuple[str, str]] = set()
        mtus: dict[str, list[tuple[int, str | None]]] = {}
        for rec, seg, mtu in self.legs:
            seg = self._segment(seg)
            node = rec.spec["endpoints"][0]["node"]
            if (node, seg) in seen:
                b.warn(W_TWICE, rec.at)
                continue
            seen.add((node, seg))
            rec.spec["endpoints"][1] = seg
            mtus.setdefault(seg, []).append((mtu, rec.fields.pop("mtu", None)))
            b.links.append(rec)
        for gone in self.bridge_of:
            del b.segments[gone]
        for seg, rec in b.segments.items():
            values = mtus.get(seg, [(VETH_MTU, None)])
            low, at = min(values, key=lambda v: v[0])
            rec.spec["mtu"] = low
            if at:
                rec.fields["mtu"] = at
            if len({v for v, _ in values}) > 1:
                b.warn(W_MTU_MIX, rec.at)
        # links come out in lab order
        order = {id(r): i for i, r in enumerate(b.links)}
        b.links.sort(key=lambda r: (_index(r.at), order[id(r)]))

    # ---- management

    def _mgmt(self) -> None:
        b = self.b
        mgmt = mapping(self.data.get("mgmt"), b.at("mgmt"))
        pools: dict[str, str] = {}
        for fam in (4, 6):
            for key in (f"ipv{fam}-subnet", f"ipv{fam}_subnet"):
                if mgmt.get(key):
                    pools[f"mgmt{fam}"] = subnet(mgmt[key], fam, b.at(f"mgmt.{key}"))
                    b.top_origin[f"pools.mgmt{fam}"] = f"mgmt.{key}"
        for key in mgmt:
            if key not in ("ipv4-subnet", "ipv6-subnet", "ipv4_subnet", "ipv6_subnet",
                           "ipv4-gw", "ipv6-gw", "mtu"):
                b.warn(W_MGMT_DROPPED, f"mgmt.{key}")
        if mgmt.get("mtu") is not None:
            b.set_top("mtu", integer(mgmt["mtu"], b.at("mgmt.mtu")), "mgmt.mtu")
        if not pools and not self.mgmt_wanted:
            b.warn(W_NO_MGMT, "mgmt")
            return
        b.set_top("management", True, "mgmt")
        for fam in (4, 6):
            pool = pools.setdefault(f"mgmt{fam}", DEFAULT_MGMT[fam])
            key = f"ipv{fam}-gw"
            if mgmt.get(key) is not None:
                gw = address(mgmt[key], fam, b.at(f"mgmt.{key}"))
                b.top_origin[f"mgmt_gateway{fam}"] = f"mgmt.{key}"
            else:  # containerlab gives the bridge the first address
                gw = str(next(ipaddress.ip_network(pool).hosts()))
            b.top[f"mgmt_gateway{fam}"] = gw
        b.top["pools"] = pools


def _index(path: str) -> int:
    """The link number in ``topology.links[N]...``."""
    return int(path.split("[", 1)[1].split("]", 1)[0]) if "[" in path else 0


def import_clab_lab(data: Any, *, source: str = "clab") -> Imported:
    """containerlab ``.clab.yml`` data: nodes (kind through the node, its
    group, the default group or ``defaults``), bridges as segments, veth
    links in brief and extended form with MACs, MTUs and static
    addresses, host links as links to a ``host`` node, macvlan and dummy
    interfaces as segments, and the management subnet, static management
    addresses and gateway. Returns the topology data with its warnings."""
    return _Clab(data, source).run()
