"""Importing containerlab and netlab topologies.

Both tools describe labs people already have; importing them gives those
labs addresses, MACs and guest configuration without rewriting them. The
result is plain topology data, validated like any other input.

Lab files are loosely typed YAML, so every value is checked for its type
before it is used: a list where a mapping belongs, or a number where a name
belongs, is a TopologyError that names the element, never a crash.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from .errors import TopologyError
from .load import read_data
from .model import HOSTNAME_RE, IFNAME_RE

CLAB_BRIDGES = {"bridge", "ovs-bridge"}
HOST_KINDS = {"linux", "host", "k8s-kind", "ext-container"}


def _type(v: Any) -> str:
    """How a value's type reads in an error message."""
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, int | float):
        return f"the number {v!r}"
    if isinstance(v, str):
        return "text"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list | tuple):
        return "a list"
    return f"a {type(v).__name__}"


def _mapping(v: Any, where: str, hint: str = "write key: value pairs") -> dict[Any, Any]:
    """A mapping; an empty entry (``r1:`` in YAML) counts as an empty one."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TopologyError(f"expected a mapping, found {_type(v)}", where=where, hint=hint)
    return v


def _list(v: Any, where: str, hint: str = "write a list: [a, b] or '- a' lines") -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise TopologyError(f"expected a list, found {_type(v)}", where=where, hint=hint)
    return v


def _text(v: Any, where: str, hint: str = "write it as text") -> str:
    if not isinstance(v, str):
        raise TopologyError(f"expected text, found {_type(v)}", where=where, hint=hint)
    return v


def _key(v: Any, where: str) -> str:
    """A node's name as written in the lab file: YAML turns ``1:`` into a
    number and ``yes:`` into true, which no lab tool takes as a name."""
    if not isinstance(v, str):
        raise TopologyError(f"a name must be text, found {_type(v)}", where=where,
                            hint="use names that start with a letter, or quote them")
    return v


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TopologyError(f"expected a whole number, found {_type(v)}", where=where,
                            hint="e.g. 1500")
    if isinstance(v, str):
        if not v.strip().isdigit() or len(v) > 9:
            raise TopologyError(f"{v!r} is not a whole number", where=where, hint="e.g. 1500")
        return int(v)
    return v


def _subnet(v: Any, version: int, where: str) -> str:
    """A pool or management prefix, host bits allowed as the lab tools do."""
    text = _text(v, where, "write a prefix, e.g. 192.0.2.0/24")
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise TopologyError(f"{text!r} is not a prefix", where=where,
                            hint="write address/length, e.g. 192.0.2.0/24") from None
    if net.version != version:
        raise TopologyError(f"{text!r} is an IPv{net.version} prefix, not an IPv{version} one",
                            where=where, hint=f"put it under the ipv{net.version} key")
    return str(net)


def _name(raw: str, where: str) -> str:
    """Lab names allow '_' and upper case; host names do not."""
    name = re.sub(r"[^a-z0-9-]", "-", raw.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"n{name}"
    if not HOSTNAME_RE.match(name):
        raise TopologyError(f"{raw!r} cannot be turned into a host name", where=where,
                            hint="rename it to lower-case letters, digits and '-'")
    return name


class _Names:
    """Lab names to host names. Two lab names may map to one host name
    (``R_1`` and ``r-1``); merging them would silently join two nodes."""

    def __init__(self) -> None:
        self.by_raw: dict[str, str] = {}
        self.owner: dict[str, str] = {}

    def add(self, raw: str, where: str) -> str:
        name = _name(raw, where)
        if name in self.owner:
            raise TopologyError(f"{raw!r} and {self.owner[name]!r} both become {name!r}",
                                where=where, hint="rename one of them")
        self.owner[name] = raw
        self.by_raw[raw] = name
        return name

    def get(self, raw: Any) -> str | None:
        return self.by_raw.get(raw) if isinstance(raw, str) else None


def _ifname(raw: Any) -> str | None:
    """A lab's interface name if Linux can use it (``e1-1`` yes,
    ``ethernet-1/1`` no: that one is named automatically)."""
    if isinstance(raw, str) and IFNAME_RE.match(raw) and raw not in (".", ".."):
        return raw
    return None


def import_clab(data: Any, *, source: str = "clab") -> dict[str, Any]:
    """containerlab ``.clab.yml``: nodes, links (brief ``"a:e1"`` and
    extended endpoint forms), bridge kinds as segments, link ``ipv4``/``ipv6``
    values and the management subnet."""
    if not isinstance(data, dict) or not isinstance(data.get("topology"), dict):
        raise TopologyError("not a containerlab topology (no 'topology' mapping)",
                            where=source, hint="a .clab.yml has name: and topology:")
    topo = data["topology"]
    defaults = _mapping(topo.get("defaults"), f"{source}: topology.defaults")
    kind_default = defaults.get("kind")
    lab = data.get("name")
    out: dict[str, Any] = {
        "name": _name(_key(lab, f"{source}: name") if lab is not None else "lab",
                      f"{source}: name"),
        "nodes": {}, "segments": {}, "links": []}
    names = _Names()
    nodes = _mapping(topo.get("nodes"), f"{source}: topology.nodes",
                     "write the nodes as name: {kind: ...} pairs")
    for raw, spec in nodes.items():
        where = f"{source}: topology.nodes.{raw}"
        name = names.add(_key(raw, where), where)
        spec = _mapping(spec, where)
        kind = _text(spec.get("kind", kind_default or "linux"), f"{where}.kind")
        if kind in CLAB_BRIDGES:
            out["segments"][name] = {}
        else:
            out["nodes"][name] = {"kind": "host" if kind in HOST_KINDS else "router"}
    links = _list(topo.get("links"), f"{source}: topology.links")
    for k, link in enumerate(links):
        where = f"{source}: topology.links[{k}]"
        link = _mapping(link, where, 'a link is a mapping: endpoints: ["a:eth1", "b:eth1"]')
        if link.get("type") not in (None, "veth"):
            continue  # host, macvlan, mgmt-net, vxlan: outside the lab's own wiring
        eps = link.get("endpoints")
        if not isinstance(eps, list) or len(eps) != 2:
            raise TopologyError("a link needs two endpoints", where=where,
                                hint='endpoints: ["node1:eth1", "node2:eth1"]')
        ends = [_clab_end(link, j, ep, names, out, f"{where}.endpoints[{j}]")
                for j, ep in enumerate(eps)]
        entry: dict[str, Any] = {"endpoints": ends}
        if link.get("mtu") is not None:
            entry["mtu"] = _int(link["mtu"], f"{where}.mtu")
        out["links"].append(entry)
    mgmt = _mapping(data.get("mgmt"), f"{source}: mgmt")
    pools: dict[str, str] = {}
    for key, fam, pool in (("ipv4-subnet", 4, "mgmt4"), ("ipv6-subnet", 6, "mgmt6")):
        if mgmt.get(key):
            pools[pool] = _subnet(mgmt[key], fam, f"{source}: mgmt.{key}")
    if pools:
        out["management"] = True
        out["pools"] = pools
    if not out["segments"]:
        del out["segments"]
    return out


def _clab_end(link: dict[Any, Any], j: int, ep: Any, names: _Names,
              out: dict[str, Any], where: str) -> dict[str, Any]:
    """One endpoint: ``"node:iface"`` or ``{node, interface, mac, ipv4, ipv6}``.
    A bridge's end carries no interface options; they belong to the node."""
    if isinstance(ep, str):
        node, _, iface = ep.partition(":")
        ep = {"node": node, "interface": iface}
    if not isinstance(ep, dict) or not isinstance(ep.get("node"), str):
        raise TopologyError("endpoint must be 'node:iface' or {node, interface}",
                            where=where, hint="fix the endpoint")
    name = names.get(ep["node"])
    if name is None:
        raise TopologyError(f"unknown node {ep['node']!r}", where=where,
                            hint="declare it under topology.nodes")
    end: dict[str, Any] = {"node": name}
    if name in out["segments"]:
        return end
    ifn = _ifname(ep.get("interface"))
    if ifn:
        end["ifname"] = ifn
    if ep.get("mac"):
        end["mac"] = _text(ep["mac"], f"{where}.mac", "write a MAC as text, e.g. "
                           '"02:00:00:00:00:01"')
    for fam in ("ipv4", "ipv6"):
        vals = link.get(fam)
        val = ep.get(fam)
        if not val and isinstance(vals, list) and j < len(vals):
            val = vals[j]
        if val:
            end[fam] = _text(val, f"{where}.{fam}", "write address/length as text")
    return end


NETLAB_LINK_ATTRS = {"prefix", "mtu", "type", "bandwidth", "name", "role", "pool",
                     "bridge", "unnumbered", "vlan", "linkindex", "interfaces", "disable",
                     "group", "ipv4", "ipv6"}


def import_netlab(data: Any, *, source: str = "netlab") -> dict[str, Any]:
    """netlab topology: nodes (list or dict, ``device``), links in string
    (``a-b``), list and dict form (two nodes make a p2p link, more or one a
    LAN), and addressing pools (lan, p2p, loopback, mgmt)."""
    if not isinstance(data, dict) or "nodes" not in data:
        raise TopologyError("not a netlab topology (no 'nodes')", where=source,
                            hint="a netlab topology has nodes: and links:")
    raw_nodes = data["nodes"]
    if isinstance(raw_nodes, list):
        listed: dict[Any, Any] = {}
        for i, n in enumerate(raw_nodes):
            n = _key(n, f"{source}: nodes[{i}]")
            if n in listed:
                raise TopologyError(f"{n!r} is listed twice", where=f"{source}: nodes[{i}]",
                                    hint="list each node once")
            listed[n] = {}
        raw_nodes = listed
    raw_nodes = _mapping(raw_nodes, f"{source}: nodes", "a list of names or name: {...} pairs")
    defaults = _mapping(data.get("defaults"), f"{source}: defaults")
    default_dev = data.get("device") or defaults.get("device") or "frr"
    lab = data.get("name")
    out: dict[str, Any] = {
        "name": _name(_key(lab, f"{source}: name") if lab is not None else "netlab",
                      f"{source}: name"),
        "nodes": {}, "segments": {}, "links": []}
    names = _Names()
    for raw, spec in raw_nodes.items():
        where = f"{source}: nodes.{raw}"
        name = names.add(_key(raw, where), where)
        spec = _mapping(spec, where)
        dev = spec.get("device", default_dev)
        out["nodes"][name] = {"kind": "host" if dev in ("linux", "host") else "router"}
        if spec.get("id") is not None:
            out["nodes"][name]["id"] = _int(spec["id"], f"{where}.id")
    for k, link in enumerate(_list(data.get("links"), f"{source}: links")):
        _netlab_link(k, link, names, out, f"{source}: links[{k}]")
    pools = _netlab_pools(_mapping(data.get("addressing"), f"{source}: addressing"), out,
                          f"{source}: addressing")
    if pools:
        out["pools"] = pools
    if not out["segments"]:
        del out["segments"]
    return out


def _netlab_link(k: int, link: Any, names: _Names, out: dict[str, Any], where: str) -> None:
    attrs: dict[str, Any] = {}
    members: list[tuple[str, dict[Any, Any]]] = []
    if isinstance(link, str):
        members = [(n, {}) for n in _split_string_link(link, names.by_raw, where)]
    elif isinstance(link, list):
        members = [(_key(n, f"{where}[{i}]"), {}) for i, n in enumerate(link)]
    elif isinstance(link, dict):
        for key, val in link.items():
            if key == "interfaces":
                for i, itf in enumerate(_list(val, f"{where}.interfaces")):
                    iw = f"{where}.interfaces[{i}]"
                    itf = _mapping(itf, iw, "each interface is {node: name, ...}")
                    members.append((_key(itf.get("node"), f"{iw}.node"), itf))
            elif names.get(key) is not None:
                members.append((key, _mapping(val, f"{where}.{key}")))
            elif isinstance(key, str) and key in NETLAB_LINK_ATTRS:
                attrs[key] = val
            else:
                raise TopologyError(f"unknown node or link attribute {key!r}",
                                    where=where, hint="declare the node under nodes")
    else:
        raise TopologyError("a link must be a string, a list or a mapping", where=where,
                            hint="e.g. 'r1-r2' or [r1, r2]")
    ends = []
    for n, spec in members:
        node = names.get(n)
        if node is None:
            raise TopologyError(f"unknown node {n!r}", where=where,
                                hint="declare it under nodes")
        end: dict[str, Any] = {"node": node}
        for fam in ("ipv4", "ipv6"):
            if isinstance(spec.get(fam), str):
                end[fam] = spec[fam]
        if _ifname(spec.get("ifname")):
            end["ifname"] = spec["ifname"]
        ends.append(end)
    opts = _netlab_link_opts(attrs, where)
    if len(ends) == 2 and attrs.get("type") != "lan":
        out["links"].append({"endpoints": ends, **opts})
    elif ends:
        label = attrs.get("name") or attrs.get("bridge") or f"lan{k}"
        seg = _name(_text(label, f"{where}.name"), where)
        while seg in out["segments"] or seg in out["nodes"]:
            seg = f"{seg}x"
        out["segments"][seg] = opts
        out["links"] += [{"endpoints": [e, seg]} for e in ends]


def _netlab_link_opts(attrs: dict[str, Any], where: str) -> dict[str, Any]:
    """A link's prefix (text, or per family; true/false means unnumbered or
    off in netlab and is not a prefix) and MTU."""
    prefix = attrs.get("prefix")
    if isinstance(prefix, str):
        prefix = {"ipv4": prefix} if ":" not in prefix else {"ipv6": prefix}
    prefix = _mapping(None if isinstance(prefix, bool) else prefix, f"{where}.prefix",
                      "write a prefix, or {ipv4: ..., ipv6: ...}")
    opts: dict[str, Any] = {}
    for fam, key in (("ipv4", "prefix4"), ("ipv6", "prefix6")):
        val = prefix.get(fam)
        if val is not None and not isinstance(val, bool):
            opts[key] = _text(val, f"{where}.prefix.{fam}", "write a prefix as text")
    if attrs.get("mtu"):
        opts["mtu"] = _int(attrs["mtu"], f"{where}.mtu")
    return opts


def _split_string_link(link: str, names: dict[str, str], where: str) -> list[str]:
    """``r1-r2`` or ``r1-r2-r3``; node names may contain '-' themselves, so
    the longest known name wins at each step. Only candidates as long as the
    longest name are tried, which keeps a hostile ``a-a-a-...`` linear."""
    parts = link.split("-")
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


def _netlab_pools(addressing: dict[Any, Any], out: dict[str, Any],
                  where: str) -> dict[str, str]:
    pools: dict[str, str] = {}
    for role in ("lan", "p2p", "loopback", "mgmt"):
        rw = f"{where}.{role}"
        spec = _mapping(addressing.get(role), rw)
        for fam, ver in (("ipv4", 4), ("ipv6", 6)):
            val = spec.get(fam)
            if val is not None and not isinstance(val, bool):  # true: netlab's own choice
                pools[f"{role}{ver}"] = _subnet(val, ver, f"{rw}.{fam}")
        if spec.get("prefix") is not None:
            plen = _int(spec["prefix"], f"{rw}.prefix")
            if role == "lan":
                out["lan_prefix_len4"] = plen
            elif role == "p2p" and plen in (30, 31):
                out["p2p_prefix_len4"] = plen
        if spec.get("prefix6") is not None and role == "lan":
            out["lan_prefix_len6"] = _int(spec["prefix6"], f"{rw}.prefix6")
    return pools


def import_file(kind: str, path: Path) -> dict[str, Any]:
    data = read_data(path)
    if kind == "clab":
        return import_clab(data, source=str(path))
    if kind == "netlab":
        return import_netlab(data, source=str(path))
    raise TopologyError(f"unknown import format {kind!r}", where=str(path),
                        hint="use clab or netlab")
