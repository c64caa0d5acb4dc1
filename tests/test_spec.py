"""MachineSpec validation: every bad input gets a message naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixslave.errors import SpecError
from nixslave.spec import NAME_RE, MachineSpec, json_schema, parse_size

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host"

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "Web", "demo": True}, "machine.name", "'Web' is not a machine name"),
    ({"name": "1web", "demo": True}, "machine.name", "is not a machine name"),
    ({"name": "web/../etc", "demo": True}, "machine.name", "is not a machine name"),
    ({"name": "", "demo": True}, "machine.name", "is not a machine name"),
    ({"name": "a" * 49, "demo": True}, "machine.name", "is not a machine name"),
    ({"name": "web"}, "machine web",
     "give exactly one of demo, config, flake, toplevel (got none)"),
    ({"name": "web", "demo": True, "config": "/etc/c.nix"}, "machine web",
     "(got demo, config)"),
    ({"name": "web", "demo": True, "boot": "grub"}, "machine web.boot", "Input should be"),
    ({"name": "web", "demo": True, "boot": "uefi", "size": "1M"}, "machine web.size",
     "below the 16 MiB minimum"),
    ({"name": "web", "demo": True, "layout": "nfs"}, "machine web.layout", "Input should be"),
    ({"name": "web", "demo": True, "layout": "shared", "boot": "bios"}, "machine web",
     "shared store layout needs direct boot"),
    ({"name": "web", "demo": True, "memory": 16}, "machine web.memory", "outside 64 MiB"),
    ({"name": "web", "demo": True, "cpus": 0}, "machine web.cpus", "outside 1 .. 256"),
    ({"name": "web", "demo": True, "size": "12 parsecs"}, "machine web.size", "is not a size"),
    ({"name": "web", "demo": True, "size": "1M"}, "machine web.size", "below the 16 MiB minimum"),
    ({"name": "web", "demo": True, "ssh_keys": ["hunter2"]}, "machine web.ssh_keys",
     "key 0 is not an OpenSSH public key line"),
    ({"name": "web", "toplevel": "/usr/bin"}, "machine web.toplevel", "is not a store path"),
    ({"name": "web", "flake": "./flake"}, "machine web.flake", "not a flake reference"),
    ({"name": "web", "demo": True, "nixpkgs": "/src/nixpkgs"}, "machine web",
     "nixpkgs applies only to a config source"),
    ({"name": "web", "demo": True, "colour": "red"}, "machine web.colour",
     "unknown field 'colour'"),
]


@pytest.mark.parametrize(("data", "where", "what"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_specs_name_the_field(data: dict[str, Any], where: str, what: str) -> None:
    with pytest.raises(SpecError) as err:
        MachineSpec.parse(data)
    assert err.value.where == where
    assert what in err.value.what
    assert err.value.hint


def test_good_spec_round_trips() -> None:
    spec = MachineSpec.parse({"name": "web-1", "demo": True, "size": "2G", "ssh_keys": [KEY],
                              "layout": "store-disk", "boot": "bios"})
    assert spec.size == 2 << 30
    assert spec.source == "demo"
    assert MachineSpec.parse(spec.to_json()) == spec


def test_json_schema_lists_fields() -> None:
    schema = json_schema()
    assert {"name", "boot", "layout", "toplevel"} <= set(schema["properties"])


@pytest.mark.parametrize(("text", "size"), [("512M", 512 << 20), ("2G", 2 << 30),
                                            ("1GiB", 1 << 30), ("4096", 4096), (123, 123)])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@given(st.text(max_size=60))
def test_only_safe_names_pass(name: str) -> None:
    """Whatever passes the name check is a single, safe path component."""
    try:
        spec = MachineSpec.parse({"name": name, "demo": True})
    except SpecError:
        assert not NAME_RE.fullmatch(name)
        return
    assert "/" not in spec.name and not spec.name.startswith(".") and spec.name.isascii()
