"""Importing containerlab and netlab labs: what both importers share.

Both tools describe labs people already have; importing them gives those
labs addresses, MACs and guest configuration without rewriting them. The
result is plain topology data, validated like any other input.

An import is faithful where the lab maps onto the model and says so where
it does not: every construct that is dropped or changed becomes a warning
(one line per kind, naming the lab's keys), and settings the planner does
not use (routing protocols, VLANs, VRFs, template variables) are carried
as opaque ``data`` instead of being lost or refused. Errors, including
those found only when the imported topology is planned, name the lab file
and the lab's own key path, because that is the file the user can fix.

Lab files are loosely typed YAML, so every value is checked for its type
before it is used: a list where a mapping belongs, or a number where a name
belongs, is a TopologyError that names the element, never a crash.

The containerlab importer lives in ``clab.py``, the netlab one in
``netlab.py``; both build their result with the :class:`Builder` here.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NetconfError, TopologyError, one_line
from .load import read_data, topology_from_data
from .model import HOSTNAME_RE, IFNAME_RE

if TYPE_CHECKING:
    from .plan import Plan

MAX_KEYS = 6  # keys named per warning line; the rest are counted


# ---- reading loosely typed values ---------------------------------------

def type_name(v: Any) -> str:
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


def mapping(v: Any, where: str, hint: str = "write key: value pairs") -> dict[Any, Any]:
    """A mapping; an empty entry (``r1:`` in YAML) counts as an empty one."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TopologyError(f"expected a mapping, found {type_name(v)}", where=where, hint=hint)
    return v


def as_list(v: Any, where: str, hint: str = "write a list: [a, b] or '- a' lines") -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise TopologyError(f"expected a list, found {type_name(v)}", where=where, hint=hint)
    return v


def text(v: Any, where: str, hint: str = "write it as text") -> str:
    if not isinstance(v, str):
        raise TopologyError(f"expected text, found {type_name(v)}", where=where, hint=hint)
    return v


def name_key(v: Any, where: str) -> str:
    """A node's name as written in the lab file: YAML turns ``1:`` into a
    number and ``yes:`` into true, which no lab tool takes as a name."""
    if not isinstance(v, str):
        raise TopologyError(f"a name must be text, found {type_name(v)}", where=where,
                            hint="use names that start with a letter, or quote them")
    return v


def integer(v: Any, where: str, hint: str = "e.g. 1500") -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TopologyError(f"expected a whole number, found {type_name(v)}", where=where,
                            hint=hint)
    if isinstance(v, str):
        if not v.strip().isdigit() or len(v) > 9:
            raise TopologyError(f"{v!r} is not a whole number", where=where, hint=hint)
        return int(v)
    return v


def subnet(v: Any, version: int, where: str) -> str:
    """A pool or management prefix, host bits allowed as the lab tools do."""
    raw = text(v, where, "write a prefix, e.g. 192.0.2.0/24")
    try:
        net = ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError:
        raise TopologyError(f"{raw!r} is not a prefix", where=where,
                            hint="write address/length, e.g. 192.0.2.0/24") from None
    if net.version != version:
        raise TopologyError(f"{raw!r} is an IPv{net.version} prefix, not an IPv{version} one",
                            where=where, hint=f"put it under the ipv{net.version} key")
    return str(net)


def address(v: Any, version: int, where: str) -> str:
    """A bare address of one family (a management address or gateway)."""
    raw = text(v, where, "write an address, e.g. 192.0.2.10")
    try:
        ip = ipaddress.ip_address(raw.strip())
    except ValueError:
        raise TopologyError(f"{raw!r} is not an address", where=where,
                            hint="write a bare address, e.g. 192.0.2.10") from None
    if ip.version != version:
        raise TopologyError(f"{raw!r} is an IPv{ip.version} address, not an IPv{version} one",
                            where=where, hint=f"put it under the ipv{ip.version} key")
    return str(ip)


def hostname(raw: str, where: str) -> str:
    """Lab names allow '_' and upper case; host names do not."""
    name = re.sub(r"[^a-z0-9-]", "-", raw.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"n{name}"
    if not HOSTNAME_RE.match(name):
        raise TopologyError(f"{raw!r} cannot be turned into a host name", where=where,
                            hint="rename it to lower-case letters, digits and '-'")
    return name


def opaque(v: Any, where: str) -> Any:
    """A value kept as opaque data: it must survive being written as YAML
    and JSON and read back unchanged, so dates become text and values no
    format can carry (NaN, bytes, sets) are refused."""
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise TopologyError(f"{v!r} cannot be kept as data", where=where,
                                hint="use a finite number or text")
        return v
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, list):
        return [opaque(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        out: dict[Any, Any] = {}
        for k, x in v.items():
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise TopologyError(f"a key that is {type_name(k)} cannot be kept as data",
                                    where=where, hint="use text keys")
            out[k] = opaque(x, f"{where}.{k}")
        return out
    raise TopologyError(f"{type_name(v)} cannot be kept as data", where=where,
                        hint="use text, numbers, lists or mappings")


LINUX_IFNAME_CHARS = re.compile(r"^[A-Za-z0-9_.-]+$")


# ---- warnings -----------------------------------------------------------

@dataclass
class ImportWarning:
    """One kind of thing an import dropped or changed, with every lab key
    where it happened (the first few are named, the rest counted)."""

    source: str
    what: str
    keys: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One printable line: keys quote the lab's names, which may hold
        anything, so each is made one bounded line as error parts are."""
        shown = ", ".join(one_line(k, 120) for k in self.keys[:MAX_KEYS])
        more = len(self.keys) - MAX_KEYS
        tail = f" and {more} more" if more > 0 else ""
        return f"{one_line(self.source)}: {self.what}: {shown}{tail}"

    def __str__(self) -> str:
        return self.line()


# ---- building the result ------------------------------------------------

@dataclass
class Rec:
    """A generated element (node, segment or link) with where it came
    from: ``at`` is its lab key path, ``fields`` maps a generated sub-path
    (``mtu``, ``endpoints[1].ipv4``) to the lab key that set it."""

    spec: dict[str, Any]
    at: str
    fields: dict[str, str] = field(default_factory=dict)


class Names:
    """Lab names to host names. Two lab names may map to one host name
    (``R_1`` and ``r-1``); merging them would silently join two nodes.
    Names the importer makes up (the containerlab host, a macvlan's
    external segment) take a free name instead of colliding."""

    def __init__(self) -> None:
        self.by_raw: dict[str, str] = {}
        self.owner: dict[str, str] = {}

    def add(self, raw: str, where: str) -> str:
        name = hostname(raw, where)
        if name in self.owner:
            raise TopologyError(f"{raw!r} and {self.owner[name]!r} both become {name!r}",
                                where=where, hint="rename one of them")
        self.owner[name] = raw
        self.by_raw[raw] = name
        return name

    def get(self, raw: Any) -> str | None:
        return self.by_raw.get(raw) if isinstance(raw, str) else None

    def fresh(self, base: str) -> str:
        """A free host name made from ``base`` (any text)."""
        stem = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40].strip("-") or "n"
        if not stem[0].isalpha():
            stem = f"n{stem}"
        name, k = stem, 1
        while name in self.owner:
            k += 1
            name = f"{stem}-{k}"
        self.owner[name] = base
        return name


class Builder:
    """Collects an import: nodes, segments and links with their origins,
    top-level settings and warnings. Links are numbered only at the end, so
    an error found in the finished topology still leads back to the lab."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names = Names()
        self.nodes: dict[str, Rec] = {}
        self.segments: dict[str, Rec] = {}
        self.links: list[Rec] = []
        self.top: dict[str, Any] = {}
        self.top_origin: dict[str, str] = {}
        self.warnings: dict[str, ImportWarning] = {}

    def at(self, path: str) -> str:
        """A lab key path as an error's ``where``."""
        return f"{self.source}: {path}" if path else self.source

    def warn(self, what: str, key: str) -> None:
        w = self.warnings.setdefault(what, ImportWarning(self.source, what))
        if key not in w.keys:
            w.keys.append(key)

    def name(self, raw: str, path: str) -> str:
        """A lab name as a host name; a name that had to change is warned
        about, since the user will look for the lab's name in the plan."""
        name = self.names.add(raw, self.at(path))
        if name != raw:
            self.renamed(path, raw, name)
        return name

    def renamed(self, path: str, raw: str, name: str) -> None:
        self.warn("names changed to host names", f"{path} ({raw} -> {name})")

    def set_top(self, key: str, value: Any, path: str) -> None:
        self.top[key] = value
        self.top_origin[key] = path

    def finish(self) -> Imported:
        """Demote routers cut off from the rest, number the links and map
        every generated path back to its lab key."""
        self._islands()
        origin: dict[str, str] = dict(self.top_origin)
        data: dict[str, Any] = {}
        for key in ("name", "ipv4", "ipv6"):
            if key in self.top:
                data[key] = self.top[key]
        nodes: dict[str, Any] = {}
        for n, rec in self.nodes.items():
            nodes[n] = rec.spec
            origin[f"nodes.{n}"] = rec.at
            origin.update({f"nodes.{n}.{k}": v for k, v in rec.fields.items()})
        data["nodes"] = nodes
        if self.segments:
            data["segments"] = {}
            for s, rec in self.segments.items():
                data["segments"][s] = rec.spec
                origin[f"segments.{s}"] = rec.at
                origin.update({f"segments.{s}.{k}": v for k, v in rec.fields.items()})
        data["links"] = []
        for i, rec in enumerate(self.links):
            data["links"].append(rec.spec)
            origin[f"links[{i}]"] = rec.at
            origin.update({f"links[{i}].{k}": v for k, v in rec.fields.items()})
        for key, value in self.top.items():
            if key not in data:
                data[key] = value
        return Imported(data=data, warnings=list(self.warnings.values()), origin=origin,
                        source=self.source)

    def _islands(self) -> None:
        """Routers that cannot reach each other cannot be planned with
        static routes. A lab may have them (a router with only stub links
        next to another one), so instead of refusing the lab, the routers
        outside the largest group are planned as end systems (without a
        loopback nobody could route to), and the import warns about each."""
        routers = [n for n, rec in self.nodes.items() if rec.spec.get("kind") == "router"]
        if len(routers) < 2:
            return
        parent = {r: r for r in routers}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def join(a: str, b: str) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra

        on_segment: dict[str, str] = {}
        for rec in self.links:
            a, b = (e if isinstance(e, str) else e["node"] for e in rec.spec["endpoints"])
            if a in parent and b in parent:
                join(a, b)
            for r, s in ((a, b), (b, a)):
                if r in parent and s in self.segments:
                    if s in on_segment:
                        join(on_segment[s], r)
                    else:
                        on_segment[s] = r
        groups: dict[str, list[str]] = {}
        for r in routers:
            groups.setdefault(find(r), []).append(r)
        if len(groups) < 2:
            return
        main = max(groups.values(), key=len)  # the first largest group wins ties
        for r in routers:
            if r not in main:
                spec = self.nodes[r].spec
                spec["kind"] = "host"
                spec.pop("loopback", None)
                self.warn("routers that cannot reach the other routers planned as end systems "
                          "(no forwarding, no routes)", self.nodes[r].at)


@dataclass
class Imported:
    """The result of an import: topology data, warnings, and the map from
    generated paths (``links[3].endpoints[1].ipv4``) to lab keys."""

    data: dict[str, Any]
    warnings: list[ImportWarning]
    origin: dict[str, str]
    source: str

    def locate(self, where: str) -> str:
        """An error's ``where`` in the generated topology as the lab file
        and its own key path (the longest generated path that leads to it)."""
        best = ""
        for k in self.origin:
            if (where == k or where.startswith((f"{k}.", f"{k}["))) and len(k) > len(best):
                best = k
        head = f"{self.source} (imported)"
        if best:
            return f"{head}: {self.origin[best]}"
        return f"{head}: {where}" if where else head

    def check(self) -> Plan:
        """Validate and plan the imported topology; a failure names the lab
        file and key, not an element of a file the user never wrote."""
        from .plan import plan

        try:
            return plan(topology_from_data(self.data))
        except NetconfError as exc:
            exc.where = self.locate(exc.where)
            raise


def check_ifname(b: Builder, raw: Any, path: str, what: str = "interface") -> str | None:
    """A lab's interface name if Linux can use it. Names Linux cannot take
    (``ethernet-1/1``) are aliases the lab tool maps itself: the planned
    ethN name replaces them, with a warning. A name of Linux characters
    that is too long is a mistake in the lab (the kernel refuses it)."""
    name = text(raw, b.at(path), f"write the {what} name as text")
    if not name:
        raise TopologyError(f"the {what} name is empty", where=b.at(path),
                            hint="write node:interface, e.g. r1:eth1")
    if LINUX_IFNAME_CHARS.match(name):
        if len(name) > 15:
            raise TopologyError(f"interface name {name!r} is longer than 15 characters",
                                where=b.at(path), hint="Linux interface names have at most "
                                "15 characters")
        if IFNAME_RE.match(name) and name not in (".", ".."):
            return name
    b.warn("interface names Linux cannot use replaced by planned ethN names", f"{path} ({name})")
    return None


# ---- entry points -------------------------------------------------------

def import_lab(kind: str, path: Path) -> Imported:
    """Read and import a lab file, with warnings and origins."""
    data = read_data(path)
    if kind == "clab":
        from .clab import import_clab_lab

        return import_clab_lab(data, source=str(path))
    if kind == "netlab":
        from .netlab import import_netlab_lab

        return import_netlab_lab(data, source=str(path))
    raise TopologyError(f"unknown import format {kind!r}", where=str(path),
                        hint="use clab or netlab")


def import_file(kind: str, path: Path) -> dict[str, Any]:
    """Read and import a lab file; the topology data only."""
    return import_lab(kind, path).data


def import_clab(data: Any, *, source: str = "clab") -> dict[str, Any]:
    """containerlab ``.clab.yml`` data to topology data (see clab.py)."""
    from .clab import import_clab_lab

    return import_clab_lab(data, source=source).data


def import_netlab(data: Any, *, source: str = "netlab") -> dict[str, Any]:
    """netlab topology data to topology data (see netlab.py)."""
    from .netlab import import_netlab_lab

    return import_netlab_lab(data, source=source).data
