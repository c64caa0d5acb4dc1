"""Importing netlab topologies.

Follows netlab's own reading of the file (its documentation and its
topology transformation): dotted keys (``defaults.device: eos``) are
nested mappings; nodes come as a mapping, a list of names or a list of
mappings with ``name``; groups add members (creating nodes with
``_auto_create``) and pass ``device``, ``module`` and node settings on,
inner groups first; links come as ``a-b`` strings, lists, mappings with
node keys or ``interfaces``, and link groups. A link's type is its
``type`` or its size (one node: stub, two: p2p, more, or a host on it:
lan); p2p links become links, the others segments. Addresses follow
netlab's pools (its defaults where the lab sets none) and families: a
family is planned when some pool, prefix or address of the lab has it,
so an IPv6-only lab gets no IPv4.

Module settings (bgp, ospf, vlan, vrf, ...) are kept as opaque ``data``
on nodes, links and interfaces. What does not map is dropped or changed
with a warning; see ``import_netlab_lab``.
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


class _Netlab:
    def __init__(self, data: Any, source: str) -> None:
        if not isinstance(data, dict) or "nodes" not in data:
            raise TopologyError("not a netlab topology (no 'nodes')", where=source,
                                hint="a netlab topology has nodes: and links:")
        self.b = Builder(source)
        try:
            self.data: dict[Any, Any] = undot(data, "")
        except RecursionError:
            raise TopologyError("the data is nested too deeply", where=source,
                                hint="a topology needs only a few levels of nesting") from None
        except TopologyError as exc:
            exc.where = self.b.at(exc.where)
            raise
        self.specs: dict[str, dict[Any, Any]] = {}  # raw node name -> merged settings
        self.paths: dict[str, str] = {}             # raw node name -> its lab key
        self.set_at: dict[str, dict[str, str]] = {}  # raw -> setting -> the key that set it
        self.kinds: dict[str, str] = {}              # raw -> router/host
        self.node_mtu: dict[str, tuple[int, str]] = {}  # raw -> (MTU, the key that set it)
        self.mtu_of: dict[int, list[str]] = {}       # generated link/segment -> its lab nodes
        self.bridges: dict[str, str] = {}            # bridge name -> its segment
        self.other_groups: dict[str, Any] = {}       # VLAN and VRF groups, kept as data

    # ---- top level

    def run(self) -> Imported:
        b, data = self.b, self.data
        lab = data.get("name")
        raw = name_key(lab, b.at("name")) if lab is not None else "netlab"
        name = hostname(raw, b.at("name"))
        if name != raw and lab is not None:
            b.renamed("name", raw, name)
        b.set_top("name", name, "name")
        defaults = mapping(data.get("defaults"), b.at("defaults"))
        self.device = data.get("device") or defaults.get("device")
        self.device_at = "device" if data.get("device") else "defaults.device"
        for k in defaults:
            if k != "device":
                b.warn(W_DROPPED, f"defaults.{k}")
        top_data: dict[str, Any] = {}
        for k in data:
            if k in ("name", "nodes", "links", "groups", "addressing", "prefix"):
                continue
            if k in MODULES or k == "module":
                top_data[str(k)] = opaque(data[k], b.at(str(k)))
                b.warn(W_KEPT, str(k))
            elif k not in TOP_DROPPED:
                b.warn(W_UNKNOWN, str(k))
            elif k not in ("defaults", "device"):
                b.warn(W_DROPPED, str(k))
        self._nodes()
        self._groups()
        if self.other_groups:
            top_data["groups"] = self.other_groups
        for raw in self.specs:
            self._node(raw)
        self._pools()
        links = self._links()
        self._families(links)
        for link in links:
            self._emit(link)
        self._node_mtus()
        if top_data:
            b.set_top("data", top_data, "module")
        return b.finish()

    # ---- nodes and groups

    def _nodes(self) -> None:
        b = self.b
        raw_nodes = self.data["nodes"]
        if isinstance(raw_nodes, list):
            for i, n in enumerate(raw_nodes):
                path = f"nodes[{i}]"
                if isinstance(n, dict):
                    spec = dict(n)
                    nm = name_key(spec.pop("name", None), b.at(f"{path}.name"))
                else:
                    nm, spec = name_key(n, b.at(path)), {}
                if nm in self.specs:
                    raise TopologyError(f"{nm!r} is listed twice", where=b.at(path),
                                        hint="list each node once")
                self._add_node(nm, spec, path)
        else:
            for nm, spec in mapping(raw_nodes, b.at("nodes"),
                                    "a list of names or name: {...} pairs").items():
                path = f"nodes.{nm}"
                nm = name_key(nm, b.at(path))
                spec = dict(mapping(spec, b.at(path)))
                spec.pop("name", None)
                self._add_node(nm, spec, path)

    def _add_node(self, nm: str, spec: dict[Any, Any], path: str) -> None:
        self.specs[nm] = spec
        self.paths[nm] = path
        self.set_at[nm] = {str(k): f"{path}.{k}" for k in spec}

    def _groups(self) -> None:
        """Members (nested groups expanded, nodes created with
        ``_auto_create``), then device, module and node settings from each
        group, inner groups first, never over the node's own."""
        b = self.b
        groups_raw = mapping(self.data.get("groups"), b.at("groups"))
        auto_all = groups_raw.get("_auto_create") is True
        groups: dict[str, dict[Any, Any]] = {}
        for g, spec in groups_raw.items():
            path = f"groups.{g}"
            g = name_key(g, b.at(path))
            if g.startswith("_"):
                continue
            if isinstance(spec, list):
                spec = {"members": spec}
            spec = dict(mapping(spec, b.at(path)))
            spec["members"] = [name_key(m, b.at(f"{path}.members[{i}]")) for i, m in
                               enumerate(as_list(spec.get("members"), b.at(f"{path}.members")))]
            if spec.get("type", "node") != "node":
                self.other_groups[g] = opaque(spec, b.at(path))
                b.warn(W_KEPT, path)
                continue
            groups[g] = spec
        for nm, spec in self.specs.items():  # node-level group: [...]
            if spec.get("group") is None:
                continue
            gl = spec["group"]
            gl = [gl] if isinstance(gl, str) else as_list(gl, b.at(f"{self.paths[nm]}.group"))
            for i, g in enumerate(gl):
                g = name_key(g, b.at(f"{self.paths[nm]}.group[{i}]"))
                groups.setdefault(g, {"members": []})["members"].append(nm)
        for g, spec in groups.items():
            for i, m in enumerate(spec["members"]):
                if m in self.specs or m in groups:
                    continue
                if spec.get("_auto_create") is True or auto_all:
                    self._add_node(m, {}, f"groups.{g}.members[{i}]")
                    continue
                raise TopologyError(f"unknown node {m!r}", where=b.at(f"groups.{g}.members[{i}]"),
                                    hint="declare it under nodes, or set _auto_create: true "
                                         "on the group")
        order = self._topsort(groups)
        members = {g: self._members(g, groups, set()) for g in groups}
        for g in order:  # devices first: device groups and modules depend on them
            if groups[g].get("device") is not None:
                for m in members[g]:
                    if self.specs[m].get("device") is None:
                        self.specs[m]["device"] = groups[g]["device"]
                        self.set_at[m]["device"] = f"groups.{g}.device"
        for g in groups:
            if g == "all" or (not groups[g]["members"] and any(
                    self.specs[m].get("device", self.device) == g for m in self.specs)):
                members[g] = [m for m in self.specs if g == "all" or
                              self.specs[m].get("device", self.device) == g]
        for g in order:
            spec = groups[g]
            path = f"groups.{g}"
            for k in ("vars", "config"):
                if spec.get(k) is not None:
                    b.warn(W_GROUP, f"{path}.{k}")
            settings = {k: v for k, v in spec.items()
                        if k not in GROUP_ATTRS and not str(k).startswith("_")}
            settings.update(mapping(spec.get("node_data"), b.at(f"{path}.node_data")))
            for m in members[g]:
                node = self.specs[m]
                if spec.get("module") is not None:
                    mods = as_list(spec["module"], b.at(f"{path}.module"))
                    have = node.get("module") or []
                    if isinstance(have, list):
                        node["module"] = have + [x for x in mods if x not in have]
                        self.set_at[m].setdefault("module", f"{path}.module")
                for k, v in settings.items():
                    if k not in node:
                        node[k] = v
                        self.set_at[m][str(k)] = f"{path}.{k}"
                    elif isinstance(node[k], dict) and isinstance(v, dict):
                        node[k] = _fill(node[k], v)

    def _members(self, g: str, groups: dict[str, dict[Any, Any]], seen: set[str]) -> list[str]:
        out: list[str] = []
        for m in groups[g]["members"]:
            if m in groups:
                if m in seen or m == g:
                    raise TopologyError(f"group {g!r} contains itself through {m!r}",
                                        where=self.b.at(f"groups.{g}"),
                                        hint="remove the loop between the groups")
                out += [x for x in self._members(m, groups, seen | {g}) if x not in out]
            elif m not in out:
                out.append(m)
        return out

    def _topsort(self, groups: dict[str, dict[Any, Any]]) -> list[str]:
        """netlab's order: repeatedly, by name, the groups none of whose
        members is a group still waiting."""
        left = dict(groups)
        order: list[str] = []
        while left:
            ready = [g for g in sorted(left) if not any(m in left for m in left[g]["members"])]
            if not ready:
                g = sorted(left)[0]
                raise TopologyError(f"group {g!r} contains itself", where=self.b.at(f"groups.{g}"),
                                    hint="remove the loop between the groups")
            for g in ready:
                order.append(g)
                del left[g]
        return order

    def _node(self, raw: str) -> None:
        b = self.b
        spec = self.specs[raw]
        path = self.paths[raw]
        at = self.set_at[raw]
        name = b.name(raw, path)
        dev = spec.get("device", self.device)
        if dev is None:
            b.warn(W_NO_DEVICE, path)
        else:
            dev = text(dev, b.at(at.get("device", self.device_at)), "name a netlab device")
        kind = "host" if dev in HOST_DEVICES else "router"
        role = spec.get("role")
        if role is not None:
            role = text(role, b.at(at["role"]), "router or host")
            if role == "host":
                kind = "host"
            elif role == "router":
                kind = "router"
            else:
                kind = "router"
                b.warn(W_ROLE, at["role"])
        self.kinds[raw] = kind
        out: dict[str, Any] = {"kind": kind}
        rec = Rec(out, path)
        data: dict[str, Any] = {}
        for k, v in spec.items():
            key = str(k)
            where = at.get(key, f"{path}.{key}")
            if key in ("device", "role", "group", "name"):
                continue
            if key == "id":
                out["id"] = integer(v, b.at(where), "a node id, e.g. 3")
                rec.fields["id"] = where
            elif key == "loopback":
                if isinstance(v, bool):
                    out["loopback"] = v
                    rec.fields["loopback"] = where
                else:
                    mapping(v, b.at(where), "true, false or {ipv4: ..., ipv6: ...}")
                    b.warn(W_LOOPBACK, where)
            elif key == "mtu":
                self.node_mtu[raw] = (integer(v, b.at(where)), where)
            elif key == "interfaces":
                if as_list(v, b.at(where)):
                    b.warn(W_UNKNOWN, where)
            elif key in MODULES or key in ("module", "router_id"):
                data[key] = opaque(v, b.at(where))
                b.warn(W_KEPT, where)
            elif key in NODE_DROPPED or key.startswith("_"):
                b.warn(W_DROPPED, where)
            else:
                b.warn(W_UNKNOWN, where)
        if data:
            out["data"] = data
        b.nodes[name] = rec

    # ---- addressing

    def _pools(self) -> None:
        """netlab's pools merged with the lab's, as netlab merges them."""
        b = self.b
        addressing = mapping(self.data.get("addressing"), b.at("addressing"))
        self.pools: dict[str, dict[str, Any]] = {k: dict(v) for k, v in NETLAB_POOLS.items()}
        self.pool_at: dict[str, dict[str, str]] = {k: {} for k in NETLAB_POOLS}
        for pname, spec in addressing.items():
            path = f"addressing.{pname}"
            pname = name_key(pname, b.at(path))
            spec = mapping(spec, b.at(path))
            pool = self.pools.setdefault(pname, {})
            at = self.pool_at.setdefault(pname, {})
            for k, v in spec.items():
                pool[str(k)] = v
                at[str(k)] = f"{path}.{k}"
            if pname not in NETLAB_POOLS and "ipv4" in spec and "prefix" not in spec:
                pool["prefix"] = 32 if "loopback" in pname else 24
            for k in spec:
                if k in ("start", "allocation", "mac"):
                    b.warn(W_POOL, f"{path}.{k}")
                elif k not in ("ipv4", "ipv6", "prefix", "prefix6", "unnumbered"):
                    b.warn(W_UNKNOWN, f"{path}.{k}")
        for pname, pool in self.pools.items():
            at = self.pool_at[pname]
            for fam in (4, 6):
                v = pool.get(f"ipv{fam}")
                if v is not None and not isinstance(v, bool):
                    pool[f"ipv{fam}"] = subnet(v, fam, b.at(at.get(f"ipv{fam}", "addressing")))
            for k in ("prefix", "prefix6"):
                if pool.get(k) is not None:
                    pool[k] = integer(pool[k], b.at(at.get(k, "addressing")), "a prefix length")
        named = mapping(self.data.get("prefix"), b.at("prefix"))
        self.named: dict[str, dict[str, Any]] = {}
        for pname, spec in named.items():
            path = f"prefix.{pname}"
            pname = name_key(pname, b.at(path))
            if isinstance(spec, str):
                spec = {"ipv6" if ":" in spec else "ipv4": spec}
            self.named[pname] = {"spec": mapping(spec, b.at(path)), "path": path}

    def _plen(self, pool: str, fam: int) -> int:
        p = self.pools.get(pool, {})
        if fam == 4:
            return int(p.get("prefix") or (32 if "loopback" in pool else 24))
        return int(p.get("prefix6") or 64)

    # ---- links

    def _links(self) -> list[_Link]:
        b = self.b
        out: list[_Link] = []
        for k, link in enumerate(as_list(self.data.get("links"), b.at("links"))):
            path = f"links[{k}]"
            if isinstance(link, dict) and "group" in link and "members" in link:
                shared = {kk: v for kk, v in link.items() if kk not in ("group", "members")}
                for i, m in enumerate(as_list(link["members"], b.at(f"{path}.members"))):
                    parsed = self._link(m, f"{path}.members[{i}]")
                    if parsed is not None:
                        for kk, v in shared.items():
                            parsed.attrs.setdefault(kk, v)
                        out.append(parsed)
                continue
            parsed = self._link(link, path)
            if parsed is not None:
                out.append(parsed)
        for link in out:
            self._classify(link)
        self._prefixes([ln for ln in out if ln.kind])
        return [ln for ln in out if ln.kind]

    def _link(self, link: Any, path: str) -> _Link | None:
        """One link in any of netlab's forms, as attributes and members."""
        b = self.b
        out = _Link(path, {})
        if isinstance(link, str):
            out.members = [_Member(n, {}, path) for n in
                           self._split(link, b.at(path))]
        elif isinstance(link, list):
            for i, n in enumerate(link):
                mpath = f"{path}[{i}]"
                if isinstance(n, dict):
                    out.members.append(_Member(name_key(n.get("node"), b.at(f"{mpath}.node")),
                                               n, mpath))
                else:
                    out.members.append(_Member(name_key(n, b.at(mpath)), {}, mpath))
        elif isinstance(link, dict):
            for key, val in link.items():
                kpath = f"{path}.{key}"
                if key == "interfaces":
                    for i, itf in enumerate(as_list(val, b.at(kpath))):
                        ipath = f"{kpath}[{i}]"
                        if isinstance(itf, str):
                            out.members.append(_Member(itf, {}, ipath))
                            continue
                        itf = mapping(itf, b.at(ipath), "each interface is {node: name, ...}")
                        out.members.append(_Member(name_key(itf.get("node"),
                                                            b.at(f"{ipath}.node")), itf, ipath))
                elif isinstance(key, str) and key in self.specs:
                    out.members.append(_Member(key, mapping(val, b.at(kpath)), kpath))
                elif isinstance(key, str) and (key in LINK_ATTRS or key in MODULES
                                               or key.startswith("_")):
                    out.attrs[key] = val
                else:
                    raise TopologyError(f"unknown node or link attribute {key!r}",
                                        where=b.at(path), hint="declare the node under nodes")
        else:
            raise TopologyError("a link must be a string, a list or a mapping", where=b.at(path),
                                hint="e.g. 'r1-r2' or [r1, r2]")
        for m in out.members:
            if m.raw not in self.specs:
                raise TopologyError(f"unknown node {m.raw!r}", where=b.at(m.path),
                                    hint="declare it under nodes")
        if out.attrs.get("disable") is True:  # netlab leaves the link out
            return None
        return out

    def _split(self, link: str, where: str) -> list[str]:
        """``r1-r2``, ``r1 - r2`` or ``r1-r2-r3``. netlab splits on '-';
        names with '-' are taken too, the longest known name winning at
        each step. Only candidates as long as the longest name are tried,
        which keeps a hostile ``a-a-a-...`` linear."""
        parts = [p.strip() for p in link.split("-")]
        names = self.specs
        longest = max((len(n) for n in names), default=0)
        out: list[str] = []
        i = 0
        while i < len(parts):
            best = 0
            cand = parts[i]
            for j in range(i + 1, len(parts) + 1):
                if j > i + 1:
                    cand = f"{cand}-{parts[j - 1]}"
                if len(cand) > longest:
                    break
                if cand in names:
                    best = j
            if not best:
                raise TopologyError(f"cannot split link {link!r} into known nodes", where=where,
                                    hint="use the list form [a, b]")
            out.append("-".join(parts[i:best]))
            i = best
        return out

    def _classify(self, link: _Link) -> None:
        """The link's type as netlab sets it, and the pool it draws from."""
        b = self.b
        t = link.attrs.get("type")
        n = len(link.members)
        if t is not None:
            t = text(t, b.at(f"{link.path}.type"), "lan, p2p or stub")
            if t in ("loopback", "tunnel", "vlan_member"):
                b.warn(W_TYPE, link.path)
                return
            if t not in ("lan", "p2p", "stub"):
                raise TopologyError(f"unknown link type {t!r}", where=b.at(f"{link.path}.type"),
                                    hint="lan, p2p or stub")
            if t == "p2p" and n != 2:
                raise TopologyError(f"a p2p link needs two nodes, found {n}",
                                    where=b.at(link.path), hint="use type: lan")
        elif n == 0:
            raise TopologyError("a link needs one node at least", where=b.at(link.path),
                                hint="e.g. 'r1-r2' or [r1, r2]")
        elif n == 2 and not any(self.kinds[m.raw] == "host" for m in link.members):
            t = "p2p"
        else:
            t = "stub" if n == 1 else "lan"
        link.kind = t
        pool = "p2p" if t == "p2p" else "lan"
        for key in ("pool", "role"):
            v = link.attrs.get(key)
            if v is None:
                continue
            v = text(v, b.at(f"{link.path}.{key}"), "name an address pool")
            if v in self.pools:
                link.pool, link.pool_at = v, f"{link.path}.{key}"
                return
            if key == "pool":
                raise TopologyError(f"unknown address pool {v!r}",
                                    where=b.at(f"{link.path}.pool"),
                                    hint="define it under addressing")
        link.pool = pool

    def _prefixes(self, links: list[_Link]) -> None:
        """Static prefixes: written on the link (or named under prefix:),
        then, for links drawing from a pool other than their type's, the
        pool's next free subnet in link order, as netlab allocates them."""
        b = self.b
        taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for link in links:
            pfx = link.attrs.get("prefix")
            at = f"{link.path}.prefix"
            if pfx is None:
                continue
            if pfx is False:
                b.warn(W_L2ONLY, at)
                link.odd = True
                continue
            if isinstance(pfx, str):
                try:
                    net = ipaddress.ip_network(pfx, strict=False)
                    pfx = {f"ipv{net.version}": pfx}
                except ValueError:
                    if pfx not in self.named:
                        raise TopologyError(f"{pfx!r} is neither a prefix nor a named prefix",
                                            where=b.at(at), hint="define it under prefix:, "
                                            "or write address/length") from None
                    named = self.named[pfx]
                    pfx, at = named["spec"], named["path"]
            pfx = mapping(pfx, b.at(at), "write a prefix, or {ipv4: ..., ipv6: ...}")
            for fam in (4, 6):
                v = pfx.get(f"ipv{fam}")
                if v is True:
                    b.warn(W_UNNUMBERED, f"{at}.ipv{fam}")
                elif v is False:
                    b.warn(W_NO_FAMILY, f"{at}.ipv{fam}")
                elif v is not None:
                    value = subnet(v, fam, b.at(f"{at}.ipv{fam}"))
                    link.prefix[fam] = (value, f"{at}.ipv{fam}")
                    taken.append(ipaddress.ip_network(value))
            for k in pfx:
                if k not in ("ipv4", "ipv6"):
                    b.warn(W_POOL, f"{at}.{k}")
        default_pool = {"p2p": "p2p", "lan": "lan", "stub": "lan"}
        nxt: dict[tuple[str, int], int] = {}
        for link in links:
            if link.attrs.get("unnumbered") is True or self.pools[link.pool].get("unnumbered"):
                b.warn(W_UNNUMBERED, link.pool_at or f"{link.path}.unnumbered")
                link.odd = True
                continue
            if link.attrs.get("prefix") is False:
                continue
            pool = self.pools[link.pool]
            if not any(isinstance(pool.get(f"ipv{f}"), str) for f in (4, 6)):
                b.warn(W_L2ONLY, link.pool_at or link.path)
                link.odd = True
                continue
            if link.pool == default_pool[link.kind]:
                continue
            for fam in (4, 6):
                base = pool.get(f"ipv{fam}")
                if fam in link.prefix or not isinstance(base, str):
                    continue
                link.prefix[fam] = (self._next(link.pool, fam, base, nxt, taken, link),
                                    link.pool_at)

    def _next(self, pname: str, fam: int, base: str, nxt: dict[tuple[str, int], int],
              taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network], link: _Link) -> str:
        pool = ipaddress.ip_network(base)
        plen = self._plen(pname, fam)
        if plen < pool.prefixlen or plen > pool.max_prefixlen:
            raise TopologyError(f"a /{plen} does not fit in pool {pname} ({pool})",
                                where=self.b.at(link.pool_at), hint="fix the pool's prefix")
        k = nxt.get((pname, fam), 0)
        size = 1 << (pool.max_prefixlen - plen)
        while True:
            if (k + 1) * size > pool.num_addresses:
                raise TopologyError(f"address pool {pname} ({pool}) is exhausted",
                                    where=self.b.at(link.pool_at), hint="enlarge the pool")
            cand = ipaddress.ip_network((int(pool.network_address) + k * size, plen))
            k += 1
            if not any(cand.overlaps(t) for t in taken if t.version == fam):  # type: ignore[arg-type]
                break
        nxt[(pname, fam)] = k
        taken.append(cand)
        return str(cand)

    def _families(self, links: list[_Link]) -> None:
        """IPv4 and IPv6 are planned when some pool the lab uses, some
        prefix or some address has them; a family planned everywhere that
        netlab gives only some links is warned about."""
        b = self.b
        used = {"loopback"} if "router" in self.kinds.values() else set()
        used |= {ln.pool for ln in links}
        statics = {4: False, 6: False}
        for ln in links:
            for fam in ln.prefix:
                statics[fam] = True
            for m in ln.members:
                for fam in (4, 6):
                    if isinstance(m.spec.get(f"ipv{fam}"), str):
                        statics[fam] = True
        for fam in (4, 6):
            has = [p for p in sorted(used) if isinstance(self.pools[p].get(f"ipv{fam}"), str)]
            on = bool(has) or statics[fam]
            b.set_top(f"ipv{fam}", on, "addressing")
            if on:
                for p in sorted(used):
                    if not isinstance(self.pools[p].get(f"ipv{fam}"), str) and p in (
                            "lan", "p2p", "loopback"):
                        key = self.pool_at[p].get(f"ipv{fam}", f"addressing.{p}")
                        b.warn(W_FAMILY.format(fam=fam), key)
        pools: dict[str, str] = {}
        for role in ("lan", "p2p", "loopback", "mgmt"):
            for fam in (4, 6):
                v = self.pools[role].get(f"ipv{fam}")
                if isinstance(v, str):
                    pools[f"{role}{fam}"] = v
                    b.top_origin[f"pools.{role}{fam}"] = self.pool_at[role].get(
                        f"ipv{fam}", f"addressing.{role}")
        b.set_top("pools", pools, "addressing")
        for key, role, fam, lo, hi in (("lan_prefix_len4", "lan", 4, 8, 30),
                                       ("p2p_prefix_len4", "p2p", 4, 30, 31),
                                       ("lan_prefix_len6", "lan", 6, 48, 126),
                                       ("p2p_prefix_len6", "p2p", 6, 64, 127)):
            if not isinstance(self.pools[role].get(f"ipv{fam}"), str):
                continue
            plen = self._plen(role, fam)
            at = self.pool_at[role].get("prefix" if fam == 4 else "prefix6",
                                        f"addressing.{role}")
            if lo <= plen <= hi and (plen in (lo, hi) or role == "lan"):
                b.set_top(key, plen, at)
            elif plen != (24 if fam == 4 else 64) or role != "lan":
                b.warn(W_PREFIX_LEN, f"{at} (/{plen})")
        lo_len = self._plen("loopback", 4)
        if lo_len != 32:
            b.warn(W_PREFIX_LEN, self.pool_at["loopback"].get("prefix", "addressing.loopback"))

    # ---- output

    def _emit(self, link: _Link) -> None:
        """A p2p link, or a segment with a leg per member."""
        b = self.b
        attrs = link.attrs
        members = list(link.members)
        if link.kind == "p2p" and not any(
                isinstance(m.spec.get(f"ipv{f}"), str | int) and not isinstance(
                    m.spec.get(f"ipv{f}"), bool) for m in members for f in (4, 6)):
            members.sort(key=lambda m: m.raw)  # netlab gives the lower name the first address
        seg_opts: dict[str, Any] = {}
        rec = Rec(seg_opts, link.path)
        for fam, (pfx, at) in sorted(link.prefix.items()):
            seg_opts[f"prefix{fam}"] = pfx
            rec.fields[f"prefix{fam}"] = at
        if not link.prefix and not link.odd and not any(
                isinstance(m.spec.get(f"ipv{f}"), str) for m in members for f in (4, 6)):
            b.warn(W_ALLOC, link.path)
        if attrs.get("mtu") is not None:
            seg_opts["mtu"] = integer(attrs["mtu"], b.at(f"{link.path}.mtu"))
            rec.fields["mtu"] = f"{link.path}.mtu"
        if attrs.get("name") is not None:
            seg_opts["label"] = text(attrs["name"], b.at(f"{link.path}.name"),
                                     "a link name is text")
            rec.fields["label"] = f"{link.path}.name"
        data: dict[str, Any] = {}
        for k, v in attrs.items():
            key = str(k)
            if key in MODULES or key in LINK_KEPT:
                data[key] = opaque(v, b.at(f"{link.path}.{key}"))
                b.warn(W_KEPT, f"{link.path}.{key}")
            elif key in ("linkindex", "linkid"):
                b.warn(W_DROPPED, f"{link.path}.{key}")
            elif key not in LINK_USED and not key.startswith("_"):
                b.warn(W_UNKNOWN, f"{link.path}.{key}")
        if data:
            seg_opts["data"] = data
        bridge = attrs.get("bridge")
        if bridge is not None:
            bridge = text(bridge, b.at(f"{link.path}.bridge"), "a bridge name is text")
        ends = [self._end(link, m) for m in members]
        if link.kind == "p2p":
            rec.spec = {"endpoints": [e for e, _ in ends], **seg_opts}
            if bridge is not None:
                rec.spec["name"] = b.names.fresh(bridge)
                rec.fields["name"] = f"{link.path}.bridge"
            for i, (_, fields) in enumerate(ends):
                rec.fields.update({f"endpoints[{i}]{k}": v for k, v in fields.items()})
            b.links.append(rec)
            self.mtu_of[id(rec)] = [m.raw for m in members]
            return
        if bridge is not None and bridge in self.bridges:
            seg = self.bridges[bridge]
        else:
            seg = b.names.fresh(bridge if bridge is not None else f"lan{_index(link.path)}")
            if bridge is not None:
                self.bridges[bridge] = seg
            b.segments[seg] = rec
        self.mtu_of[id(b.segments[seg])] = self.mtu_of.get(id(b.segments[seg]), []) + [
            m.raw for m in members]
        for (ep, fields), m in zip(ends, members, strict=True):
            leg = Rec({"endpoints": [ep, seg]}, m.path)
            leg.fields.update({f"endpoints[0]{k}": v for k, v in fields.items()})
            b.links.append(leg)

    def _end(self, link: _Link, m: _Member) -> tuple[dict[str, Any], dict[str, str]]:
        """A member as an Endpoint, with the lab keys of its fields."""
        b = self.b
        out: dict[str, Any] = {"node": b.names.get(m.raw)}
        fields: dict[str, str] = {"": m.path}
        data: dict[str, Any] = {}
        for k, v in m.spec.items():
            key = str(k)
            at = f"{m.path}.{key}"
            if key == "node":
                continue
            if key == "ifname":
                ifname = check_ifname(b, v, at)
                if ifname:
                    out["ifname"], fields[".ifname"] = ifname, at
            elif key in ("ipv4", "ipv6"):
                fam = int(key[-1])
                addr = self._address(link, fam, v, at)
                if addr:
                    out[key], fields[f".{key}"] = addr, at
            elif key in MODULES:
                data[key] = opaque(v, b.at(at))
                b.warn(W_KEPT, at)
            elif key in INTERFACE_DROPPED or key.startswith("_"):
                b.warn(W_DROPPED, at)
            else:
                b.warn(W_UNKNOWN, at)
        if data:
            out["data"] = data
        return out, fields

    def _address(self, link: _Link, fam: int, v: Any, at: str) -> str | None:
        """An interface address: with a length, without one (the link's
        prefix length), a host number in the link's prefix, or true/false
        (unnumbered, none)."""
        b = self.b
        if v is True:
            b.warn(W_UNNUMBERED, at)
            return None
        if v is False:
            b.warn(W_NO_FAMILY, at)
            return None
        if isinstance(v, int):
            if fam not in link.prefix:
                b.warn(W_HOST_INDEX, at)
                return None
            net = ipaddress.ip_network(link.prefix[fam][0])
            if not 0 < v < net.num_addresses:
                raise TopologyError(f"host number {v} is outside {net}", where=b.at(at),
                                    hint="use a smaller number")
            return f"{net.network_address + v}/{net.prefixlen}"
        v = text(v, b.at(at), "write an address, or address/length")
        if "/" in v:
            return v
        if fam in link.prefix:
            plen = ipaddress.ip_network(link.prefix[fam][0]).prefixlen
        else:
            plen = self._plen(link.pool, fam)
            if link.kind == "p2p" and link.pool == "p2p" and fam == 4 and plen not in (30, 31):
                plen = 30
        return f"{v}/{plen}"

    def _node_mtus(self) -> None:
        """netlab sets MTUs per node too; the model has one per link or
        segment, so a node's MTU applies to its links, the smallest winning."""
        b = self.b
        for rec in [*b.links, *b.segments.values()]:
            raws = self.mtu_of.get(id(rec))
            if not raws or "mtu" in rec.spec:
                continue
            mtus = [self.node_mtu[r] for r in raws if r in self.node_mtu]
            if mtus:
                rec.spec["mtu"], rec.fields["mtu"] = min(mtus)
        for _, at in self.node_mtu.values():
            b.warn(W_NODE_MTU, at)


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


def import_netlab_lab(data: Any, *, source: str = "netlab") -> Imported:
    """netlab topology data: nodes in every form, groups, links in every
    form, addressing pools and named prefixes, module settings as opaque
    data. Returns the topology data with its warnings."""
    return _Netlab(data, source).run()
