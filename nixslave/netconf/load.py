"""Reading topology files (YAML, JSON, TOML) into a validated Topology.

Files are where people make mistakes, so every failure here becomes a
TopologyError that points at the element (``links[3].endpoints[0]``), not a
pydantic dump.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import TopologyError
from .model import Topology


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys: YAML silently keeps the last
    one, which would drop a node the author believes exists."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise TopologyError(
                f"duplicate key {key!r}",
                where=f"line {key_node.start_mark.line + 1}",
                hint="every node, segment and option may appear only once",
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


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
}


def validation_to_error(exc: ValidationError, source: str = "") -> TopologyError:
    err = exc.errors()[0]
    where = loc_to_where(tuple(err["loc"]))
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    last = next((str(x) for x in reversed(err["loc"]) if isinstance(x, str)), "")
    hint = FIELD_HINTS.get(last, "see the topology schema (nixslave net schema)")
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
    """Build a Topology from plain data, as the Python API and files both do."""
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


def read_data(path: Path) -> Any:
    """Parse a file by its extension; YAML is the default because it is what
    containerlab and netlab users already write."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(
            f"cannot read the file: {exc.strerror}", where=str(path), hint="check the path"
        ) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except TopologyError as exc:
        exc.where = f"{path}: {exc.where}"
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
        problem = getattr(exc, "problem", None) or "syntax error"
        raise TopologyError(
            f"not valid YAML: {problem}", where=f"{path}{line}", hint="fix the syntax"
        ) from None


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file (.yml/.yaml, .json or .toml)."""
    p = Path(path)
    return topology_from_data(read_data(p), source=str(p))
