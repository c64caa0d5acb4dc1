"""Reading topology files (YAML, JSON, TOML) into a validated Topology.

Files are where people make mistakes, so every failure here becomes a
TopologyError that points at the element (``links[3].endpoints[0]``), not a
pydantic dump.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import TopologyError
from .model import ListFormError, Topology


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys: YAML silently keeps the last
    one, which would drop a node the author believes exists."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue  # `<<: *defaults` may be overridden by the keys beside it
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call, unused-ignore]
        line = f"line {key_node.start_mark.line + 1}"
        try:
            duplicate = key in seen
        except TypeError:  # a list or mapping used as a key (`? [a, b]`)
            raise TopologyError(f"a {type(key).__name__} cannot be a key", where=line,
                                hint="keys are names or options: plain strings") from None
        if duplicate:
            raise TopologyError(
                f"duplicate key {key!r}", where=line,
                hint="every node, segment and option may appear only once",
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)

_CSafeLoader: Any = getattr(yaml, "CSafeLoader", None)  # None without libyaml


class _CUniqueKeyLoader(_CSafeLoader or yaml.SafeLoader):  # type: ignore[misc]
    """The same loader on libyaml's parser, five times faster on a large lab.

    libyaml composes nodes by recursion in C, without Python's recursion
    limit: a file of 100,000 nested brackets overflows the C stack and
    kills the process. So :func:`_yaml_depth` first walks the file's events
    (a flat loop in C and here) and refuses deep nesting before anything is
    composed; the duplicate-key constructor is the same as above."""


_CUniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)
_START_EVENTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_END_EVENTS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _yaml_depth(text: str, limit: int) -> None:
    """Raise TopologyError when collections nest more than ``limit`` deep,
    without composing anything (so nothing here recurses)."""
    loader = _CSafeLoader(text)
    depth = 0
    try:
        while (ev := loader.get_event()) is not None:
            cls = type(ev)
            if cls in _START_EVENTS:
                depth += 1
                if depth > limit:
                    raise TopologyError(
                        f"the data is nested too deeply (more than {limit} levels)",
                        where=f"line {ev.start_mark.line + 1}",
                        hint="a topology needs only a few levels of nesting")
            elif cls in _END_EVENTS:
                depth -= 1
    finally:
        dispose = getattr(loader, "dispose", None)
        if dispose is not None:
            dispose()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects without duplicate keys, for the same reason as YAML."""
    out: dict[str, Any] = {}
    for key, val in pairs:
        if key in out:
            raise TopologyError(f"duplicate key {key!r}", where="",
                                hint="every node, segment and option may appear only once")
        out[key] = val
    return out


MAX_BYTES = 64 << 20  # far above a 100,000-node topology, far below a runaway file
MAX_DEPTH = 64  # a topology nests about six levels; the rest is a mistake or an attack
MAX_VALUES = 5_000_000  # values after expanding YAML aliases ("billion laughs")


def _children(obj: Any) -> Any:
    if isinstance(obj, dict):
        return itertools.chain.from_iterable(obj.items())
    return iter(obj)


def check_shape(data: Any, where: str) -> None:
    """Refuse data nested too deeply, referring to itself, or expanding to
    too many values. Parsers and validators recurse, so this walk does not:
    it keeps its own stack, and it counts a container shared through YAML
    aliases by its expanded size while visiting it only once."""
    containers = (dict, list, tuple, set, frozenset)
    if not isinstance(data, containers):
        return
    done: dict[int, tuple[int, int]] = {}  # id -> (depth, expanded values)
    path = {id(data)}
    stack: list[tuple[Any, Any, list[int]]] = [(data, _children(data), [0, 1])]
    while stack:
        obj, it, acc = stack[-1]
        for child in it:
            if not isinstance(child, containers):
                acc[1] += 1
                continue
            cid = id(child)
            if cid in done:
                depth, count = done[cid]
                acc[0] = max(acc[0], depth)
                acc[1] += count
            elif cid in path:
                raise TopologyError("the data refers to itself (a YAML anchor used inside "
                                    "itself)", where=where, hint="remove the recursive alias")
            else:
                if len(stack) >= MAX_DEPTH:
                    raise TopologyError(f"the data is nested too deeply (more than {MAX_DEPTH} "
                                        "levels)",
                                        where=where,
                                        hint="a topology needs only a few levels of nesting")
                path.add(cid)
                stack.append((child, _children(child), [0, 1]))
                break
            if acc[1] > MAX_VALUES:
                raise TopologyError(f"the data expands to more than {MAX_VALUES:,} values",
                                    where=where, hint="YAML aliases multiply; write the "
                                    "topology out or split it")
        else:
            stack.pop()
            path.discard(id(obj))
            done[id(obj)] = (acc[0] + 1, acc[1])
            if stack:
                parent = stack[-1][2]
                parent[0] = max(parent[0], acc[0] + 1)
                parent[1] += acc[1]
                if parent[1] > MAX_VALUES:
                    raise TopologyError(f"the data expands to more than {MAX_VALUES:,} values",
                                        where=where, hint="YAML aliases multiply; write the "
                                        "topology out or split it")


def loc_to_where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-before[_brief(), Link]", "function-before[_lists(), Topology]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


FIELD_HINTS = {
    "ifname": "at most 15 letters, digits, '_', '.' or '-'",
    "mac": "use a unicast MAC such as 02:00:00:00:00:01",
    "ipv4": "write address/length, e.g. 198.51.100.7/24",
    "ipv6": "write address/length, e.g. 2001:db8::7/64",
    "prefix4": "write the network address and length, e.g. 198.51.100.0/24",
    "prefix6": "write the network address and length, e.g. 2001:db8::/64",
    "name": "lower-case letters, digits and '-', starting with a letter",
    "mtu": "an MTU between 68 and 65535",
    "prefix_len4": "p2p links take /30 or /31; segments /8 to /30",
    "prefix_len6": "p2p links take /64 or /127; segments /48 to /126",
    "endpoints": "a link has exactly two ends: [node, node] or [node, segment]",
    "to": "write the network address and length",
    "via": "a bare address of a directly connected neighbour",
    **{f"{role}4": "an IPv4 network/length, e.g. 10.128.0.0/9"
       for role in ("p2p", "lan", "loopback", "mgmt")},
    **{f"{role}6": "an IPv6 network/length, e.g. 2001:db8:100::/40"
       for role in ("p2p", "lan", "loopback", "mgmt")},
}


def validation_to_error(exc: ValidationError, source: str = "") -> TopologyError:
    err = exc.errors()[0]
    where = loc_to_where(tuple(err["loc"]))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ListFormError):  # raised before pydantic knew the element
        where = cause.where
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    last = next((str(x) for x in reversed(err["loc"]) if isinstance(x, str)), "")
    hint = FIELD_HINTS.get(last, "see the topology schema (nixslave net schema)")
    if isinstance(cause, ListFormError):
        hint = "give each entry once, as a name or a mapping with 'name'"
    if err["type"] == "extra_forbidden":
        msg = f"unknown option {str(err['loc'][-1])!r}"
        hint = "check the spelling against the topology schema (nixslave net schema)"
    elif err["type"] == "missing":
        msg = "required option is missing"
        hint = "add it"
    elif err["type"] == "literal_error":
        hint = "use one of the listed values"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    if source:
        where = f"{source}: {where}" if where else source
    return TopologyError(msg, where=where or "topology", hint=hint)


def topology_from_data(data: Any, *, source: str = "") -> Topology:
    """Build a Topology from plain data, as the Python API and files both do.

    ``data`` is what a topology file holds, as dicts and lists; ``source``
    prefixes every error's ``where`` (a file name, say).  Invalid data
    raises :class:`TopologyError` naming the element (``links[2].endpoints``).

    Example:

        >>> from nixslave import netconf
        >>> topo = netconf.topology_from_data(
        ...     {"name": "pair", "nodes": ["a", "b"], "links": [["a", "b"]]})
        >>> sorted(topo.nodes)
        ['a', 'b']
    """
    if not isinstance(data, Mapping):
        raise TopologyError(
            "a topology must be a mapping with 'name', 'nodes' and 'links'",
            where=source or "topology",
            hint="start the file with 'name: <topology name>'",
        )
    try:
        return Topology.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_to_error(exc, source) from None
    except RecursionError:  # data built in Python can nest without bound
        raise TopologyError("the data is nested too deeply", where=source or "topology",
                            hint="a topology needs only a few levels of nesting") from None


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise TopologyError(
            f"cannot read the file: {exc.strerror or exc}", where=str(path),
            hint="check the path",
        ) from None
    if len(raw) > MAX_BYTES:
        raise TopologyError(f"the file is larger than {MAX_BYTES >> 20} MiB", where=str(path),
                            hint="is this really a topology file?")
    try:
        return raw.decode("utf-8-sig")  # a BOM left by an editor is harmless
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TopologyError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            where=f"{path}: line {line}", hint="save the file as UTF-8",
        ) from None


def _parse(text: str, suffix: str) -> Any:
    if suffix == ".json":
        return json.loads(text, object_pairs_hook=_json_object)
    if suffix == ".toml":
        return tomllib.loads(text)
    if _CSafeLoader is None:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    _yaml_depth(text, MAX_DEPTH)
    return yaml.load(text, Loader=_CUniqueKeyLoader)


def read_data(path: Path) -> Any:
    """Parse a file by its extension; YAML is the default because it is what
    containerlab and netlab users already write. Whatever the file holds,
    the only exception that leaves is a TopologyError naming the file."""
    text = _read_text(path)
    try:
        data = _parse(text, path.suffix.lower())
    except TopologyError as exc:
        exc.where = f"{path}: {exc.where}" if exc.where else str(path)
        raise
    except json.JSONDecodeError as exc:
        raise TopologyError(
            f"not valid JSON: {exc.msg}", where=f"{path}: line {exc.lineno}",
            hint="fix the syntax",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(
            f"not valid TOML: {exc}", where=str(path), hint="fix the syntax"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f": line {mark.line + 1}" if mark is not None else ""
        problem = (getattr(exc, "problem", None) or getattr(exc, "reason", None)
                   or "syntax error")
        raise TopologyError(
            f"not valid YAML: {problem}", where=f"{path}{line}", hint="fix the syntax"
        ) from None
    except RecursionError:
        raise TopologyError(
            "the data is nested too deeply to read", where=str(path),
            hint="a topology needs only a few levels of nesting",
        ) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # a value the parser cannot build: a 5,000-digit integer, the date
        # 2024-13-45, `!!int abc`
        raise TopologyError(  # Python's own advice after ';' does not apply here
            f"a value cannot be read: {str(exc).split(';')[0]}", where=str(path),
            hint="quote values that are meant as text",
        ) from None
    check_shape(data, str(path))
    return data


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file (.yml/.yaml, .json or .toml).

    The file is untrusted input: duplicate keys, deep nesting, huge files
    and invalid values are refused with a :class:`TopologyError` that names
    the file and line or element.

    Example:

        >>> from nixslave import netconf
        >>> topo = netconf.load_topology("examples/pair.yml")
        >>> topo.name, sorted(topo.nodes)
        ('pair', ['alpha', 'beta'])
    """
    from .plan import gc_paused  # a big lab is hundreds of thousands of small objects

    p = Path(path)
    with gc_paused():
        return topology_from_data(read_data(p), source=str(p))
