"""Importing containerlab and netlab topologies.

Both tools describe labs people already have; importing them gives those
labs addresses, MACs and guest configuration without rewriting them. The
result is plain topology data, validated like any other input.
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


def _name(raw: str, where: str) -> str:
    """Lab names allow '_' and upper case; host names do not."""
    name = re.sub(r"[^a-z0-9-]", "-", str(raw).lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"n{name}"
    if not HOSTNAME_RE.match(name):
        raise TopologyError(f"{raw!r} cannot be turned into a host name", where=where,
                            hint="rename it to lower-case letters, digits and '-'")
    return name


def _ifname(raw: str | None) -> str | None:
    if raw and IFNAME_RE.match(raw) and raw not in (".", ".."):
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
    kinds_default = (topo.get("defaults") or {}).get("kind")
    out: dict[str, Any] = {"name": _name(data.get("name", "lab"), f"{source}: name"),
                           "nodes": {}, "segments": {}, "links": []}
    names: dict[str, str] = {}
    for raw, spec in (topo.get("nodes") or {}).items():
        spec = spec or {}
        kind = str(spec.get("kind", kinds_default or "linux"))
        name = _name(raw, f"{source}: topology.nodes.{raw}")
        names[str(raw)] = name
        if kind in CLAB_BRIDGES:
            out["segments"][name] = {}
        else:
            out["nodes"][name] = {"kind": "host" if kind in HOST_KINDS else "router"}
    for k, link in enumerate(topo.get("links") or []):
        where = f"{source}: topology.links[{k}]"
        eps = link.get("endpoints")
        if link.get("type") not in (None, "veth"):
            continue  # host, macvlan, mgmt-net, vxlan: outside the lab's own wiring
        if not isinstance(eps, list) or len(eps) != 2:
            raise TopologyError("a link needs two endpoints", where=where,
                                hint='endpoints: ["node1:eth1", "node2:eth1"]')
        ends = []
        for j, ep in enumerate(eps):
            if isinstance(ep, str):
                node, _, iface = ep.partition(":")
                ep = {"node": node, "interface": iface}
            if not isinstance(ep, dict) or "node" not in ep:
                raise TopologyError("endpoint must be 'node:iface' or {node, interface}",
                                    where=f"{where}.endpoints[{j}]", hint="fix the endpoint")
            if ep["node"] not in names:
                raise TopologyError(f"unknown node {ep['node']!r}",
                                    where=f"{where}.endpoints[{j}]",
                                    hint="declare it under topology.nodes")
            end: dict[str, Any] = {"node": names[ep["node"]]}
            ifn = _ifname(ep.get("interface"))
            if ifn and names[ep["node"]] not in out["segments"]:
                end["ifname"] = ifn
            if ep.get("mac"):
                end["mac"] = ep["mac"]
            for fam in ("ipv4", "ipv6"):
                vals = link.get(fam)
                val = ep.get(fam) or (vals[j] if isinstance(vals, list) and j < len(vals) else None)
                if val and names[ep["node"]] not in out["segments"]:
                    end[fam] = str(val)
            ends.append(end)
        entry: dict[str, Any] = {"endpoints": ends}
        if link.get("mtu"):
            entry["mtu"] = int(link["mtu"])
        out["links"].append(entry)
    mgmt = data.get("mgmt") or {}
    if mgmt.get("ipv4-subnet") or mgmt.get("ipv6-subnet"):
        out["management"] = True
        pools: dict[str, str] = {}
        if mgmt.get("ipv4-subnet"):
            pools["mgmt4"] = str(ipaddress.ip_network(mgmt["ipv4-subnet"], strict=False))
        if mgmt.get("ipv6-subnet"):
            pools["mgmt6"] = str(ipaddress.ip_network(mgmt["ipv6-subnet"], strict=False))
        out["pools"] = pools
    if not out["segments"]:
        del out["segments"]
    return out


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
        raw_nodes = {str(n): {} for n in raw_nodes}
    default_dev = str(data.get("device") or (data.get("defaults") or {}).get("device") or "frr")
    out: dict[str, Any] = {"name": _name(data.get("name", "netlab"), f"{source}: name"),
                           "nodes": {}, "segments": {}, "links": []}
    names: dict[str, str] = {}
    for raw, spec in raw_nodes.items():
        spec = spec or {}
        name = _name(raw, f"{source}: nodes.{raw}")
        names[str(raw)] = name
        dev = str(spec.get("device", default_dev))
        out["nodes"][name] = {"kind": "host" if dev in ("linux", "host") else "router"}
        if isinstance(spec.get("id"), int):
            out["nodes"][name]["id"] = spec["id"]
    for k, link in enumerate(data.get("links") or []):
        where = f"{source}: links[{k}]"
        attrs: dict[str, Any] = {}
        members: list[tuple[str, dict[str, Any]]] = []
        if isinstance(link, str):
            members = [(n, {}) for n in _split_string_link(link, names, where)]
        elif isinstance(link, list):
            members = [(str(n), {}) for n in link]
        elif isinstance(link, dict):
            for key, val in link.items():
                if key == "interfaces":
                    members += [(str(i["node"]), i) for i in val]
                elif key in names:
                    members.append((key, val or {}))
                elif key in NETLAB_LINK_ATTRS:
                    attrs[key] = val
                else:
                    raise TopologyError(f"unknown node or link attribute {key!r}",
                                        where=where, hint="declare the node under nodes")
        else:
            raise TopologyError("a link must be a string, a list or a mapping", where=where,
                                hint="e.g. 'r1-r2' or [r1, r2]")
        for n, _ in members:
            if n not in names:
                raise TopologyError(f"unknown node {n!r}", where=where,
                                    hint="declare it under nodes")
        ends = []
        for n, spec in members:
            end: dict[str, Any] = {"node": names[n]}
            for fam in ("ipv4", "ipv6"):
                if isinstance(spec.get(fam), str):
                    end[fam] = spec[fam]
            if isinstance(spec.get("ifname"), str) and _ifname(spec["ifname"]):
                end["ifname"] = spec["ifname"]
            ends.append(end)
        prefix = attrs.get("prefix") or {}
        if isinstance(prefix, str):
            prefix = {"ipv4": prefix} if ":" not in prefix else {"ipv6": prefix}
        opts: dict[str, Any] = {}
        if isinstance(prefix.get("ipv4"), str):
            opts["prefix4"] = prefix["ipv4"]
        if isinstance(prefix.get("ipv6"), str):
            opts["prefix6"] = prefix["ipv6"]
        if attrs.get("mtu"):
            opts["mtu"] = int(attrs["mtu"])
        if len(ends) == 2 and attrs.get("type") != "lan":
            out["links"].append({"endpoints": ends, **opts})
        elif ends:
            seg = _name(str(attrs.get("name") or attrs.get("bridge") or f"lan{k}"), where)
            while seg in out["segments"] or seg in out["nodes"]:
                seg = f"{seg}x"
            out["segments"][seg] = opts
            out["links"] += [{"endpoints": [e, seg]} for e in ends]
    pools = _netlab_pools(data.get("addressing") or {}, out)
    if pools:
        out["pools"] = pools
    if not out["segments"]:
        del out["segments"]
    return out


def _split_string_link(link: str, names: dict[str, str], where: str) -> list[str]:
    """``r1-r2`` or ``r1-r2-r3``; node names may contain '-' themselves."""
    parts = link.split("-")
    out: list[str] = []
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            cand = "-".join(parts[i:j])
            if cand in names:
                out.append(cand)
                i = j
                break
        else:
            raise TopologyError(f"cannot split link {link!r} into known nodes", where=where,
                                hint="use the list form [a, b]")
    return out


def _netlab_pools(addressing: dict[str, Any], out: dict[str, Any]) -> dict[str, str]:
    pools: dict[str, str] = {}
    for role in ("lan", "p2p", "loopback", "mgmt"):
        spec = addressing.get(role) or {}
        for fam, suffix in (("ipv4", "4"), ("ipv6", "6")):
            if isinstance(spec.get(fam), str):
                pools[f"{role}{suffix}"] = str(ipaddress.ip_network(spec[fam], strict=False))
        if isinstance(spec.get("prefix"), int):
            if role == "lan":
                out["lan_prefix_len4"] = spec["prefix"]
            elif role == "p2p" and spec["prefix"] in (30, 31):
                out["p2p_prefix_len4"] = spec["prefix"]
        if isinstance(spec.get("prefix6"), int) and role == "lan":
            out["lan_prefix_len6"] = spec["prefix6"]
    return pools


def import_file(kind: str, path: Path) -> dict[str, Any]:
    data = read_data(path)
    if kind == "clab":
        return import_clab(data, source=str(path))
    if kind == "netlab":
        return import_netlab(data, source=str(path))
    raise TopologyError(f"unknown import format {kind!r}", where=str(path),
                        hint="use clab or netlab")
