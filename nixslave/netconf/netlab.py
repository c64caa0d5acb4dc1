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

The importer is split in three modules, each under the project's size
limit: this one keeps the public entry point ``import_netlab_lab`` and the
``_Netlab`` class that runs the import -- the top level, nodes, groups and
node MTUs; ``netlab_links.py`` holds the addressing, link and output
methods as a mixin of ``_Netlab`` (they share its state); and
``netlab_schema.py`` the attribute tables, warning texts and stateless
helpers both use.
"""

from __future__ import annotations

from typing import Any

from .errors import TopologyError
from .importers import (
    Builder,
    Imported,
    Rec,
    as_list,
    hostname,
    integer,
    mapping,
    name_key,
    opaque,
    text,
)
from .netlab_links import _LinksMixin
from .netlab_schema import (
    GROUP_ATTRS,
    HOST_DEVICES,
    MODULES,
    NODE_DROPPED,
    TOP_DROPPED,
    W_DROPPED,
    W_GROUP,
    W_KEPT,
    W_LOOPBACK,
    W_NO_DEVICE,
    W_NODE_MTU,
    W_ROLE,
    W_UNKNOWN,
    _fill,
    undot,
)


class _Netlab(_LinksMixin):
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


def import_netlab_lab(data: Any, *, source: str = "netlab") -> Imported:
    """netlab topology data: nodes in every form, groups, links in every
    form, addressing pools and named prefixes, module settings as opaque
    data. Returns the topology data with its warnings."""
    return _Netlab(data, source).run()
