"""Fuzz the two files nixslave reads back from disk: sidecars and manifests.

Both can be crafted by whoever hands you an image.  Whatever JSON they hold,
reading them must either succeed with well-typed values or fail with the
project's own error (BuildError for a sidecar, a reason string for a
manifest) — never a TypeError, KeyError or ValueError that the CLI would
report as an internal error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixslave.backends import Artifact, _validate
from nixslave.errors import BuildError
from nixslave.image.inspect import validate_manifest

pytestmark = [pytest.mark.unit, pytest.mark.slow]

TOP = "/nix/store/" + "b" * 32 + "-nixos-system-x"
GOOD_FIELDS = {"name": "x", "kind": "disk", "format": "qcow2", "image": "x.qcow2",
               "toplevel": TOP, "layout": "disk", "store": "disk", "boot": "direct"}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20)
# values that sometimes are right: reach the checks after the first one
near_paths = st.sampled_from(["x.qcow2", "../x", "/etc/passwd", "", "a/b", ".", "x\0y",
                              "store", "x-store.qcow2"])
near_sidecar = st.fixed_dictionaries(
    {k: st.one_of(st.just(v), json_values) for k, v in GOOD_FIELDS.items()},
    optional={"store_image": st.one_of(near_paths, json_values),
              "share_dir": st.one_of(near_paths, json_values),
              "memory": st.one_of(st.integers(0, 2**21), json_values),
              "cpus": st.one_of(st.integers(-1, 300), json_values),
              "build": st.one_of(st.just("b-0123456789ab"), st.text(max_size=16)),
              "sha256": st.one_of(st.just("0" * 64), st.text(max_size=70)),
              "cmdline": st.text(max_size=60),
              "extra": json_values,
              "bogus": json_values})

FUZZ = settings(max_examples=1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_sidecar(data: Any, where: Path) -> None:
    try:
        out = _validate(data, where)
    except BuildError:
        return
    a = Artifact(**out)
    assert isinstance(a.name, str) and isinstance(a.memory, int)
    for p in (a.image, a.store_image, a.share_dir):
        if p is not None:  # always inside the sidecar's directory
            assert Path(p).resolve().is_relative_to(where.parent.resolve())


@FUZZ
@given(data=json_values)
def test_sidecar_from_any_json(data: Any) -> None:
    _check_sidecar(data, Path("/srv/vm/x.qcow2.nixslave.json"))


@FUZZ
@given(data=near_sidecar)
def test_sidecar_near_valid(data: dict[str, Any]) -> None:
    _check_sidecar(data, Path("/srv/vm/x.qcow2.nixslave.json"))


near_entry = st.fixed_dictionaries({"path": st.one_of(st.just(TOP), json_values)},
                                   optional={"narSize": st.one_of(st.integers(-5, 10**12),
                                                                  json_values),
                                             "narHash": json_values})
near_manifest = st.fixed_dictionaries(
    {"toplevel": st.one_of(st.just(TOP), json_values),
     "layout": st.one_of(st.sampled_from(["disk", "store-disk", "shared"]), json_values),
     "boot": st.one_of(st.sampled_from(["direct", "bios"]), json_values),
     "closure": st.one_of(st.lists(near_entry, max_size=5), json_values)},
    optional={"narSize": st.one_of(st.integers(-1, 10**12), json_values),
              "name": json_values, "store": json_values, "nixslave": json_values})


def _check_manifest(data: Any) -> None:
    reason = validate_manifest(data)
    if reason is not None:
        assert isinstance(reason, str)
        json.dumps(reason)
        return
    # what inspect derives from an accepted manifest is well typed
    total = data.get("narSize") or sum(e.get("narSize", 0) for e in data["closure"])
    assert isinstance(total, int) and total >= 0


@FUZZ
@given(data=json_values)
def test_manifest_from_any_json(data: Any) -> None:
    _check_manifest(data)


@FUZZ
@given(data=near_manifest)
def test_manifest_near_valid(data: dict[str, Any]) -> None:
    _check_manifest(data)
