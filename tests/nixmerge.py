"""A small model of the NixOS module system's priority merge, for tests.

Real NixOS cannot be evaluated here (no nixpkgs), so the generated modules
are evaluated by Nix against a fake lib (tests/data/nix/fakelib.nix) and
merged here with the rules of nixpkgs' lib/modules.nix:

* an option's definitions are filtered to the highest priority (the lowest
  number; a plain definition is 100, mkDefault 1000, mkForce 50,
  mkVMOverride 10) — definitions of lower priority are discarded whole;
* ``mkIf false`` definitions vanish;
* the remaining definitions merge by type: lists concatenate, attribute sets
  of submodules merge key by key, and two different scalar values conflict.

Which paths are options (rather than attribute sets of options) is declared
by the caller, as nixpkgs' option declarations would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "nix"
PLAIN = 100


class Conflict(Exception):
    """Two definitions of one option at the same priority disagree."""


def eval_modules(file: Path, *, release: str = "25.05", nix_enable: bool = False
                 ) -> list[dict[str, Any]]:
    """Every module in ``file`` (imports included) evaluated to JSON data."""
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(DATA / "evalmodules.nix"),
         "--argstr", "file", str(file.resolve()), "--argstr", "release", release,
         "--arg", "nixEnable", "true" if nix_enable else "false"],
        capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise AssertionError(f"evaluation of {file} failed:\n{out.stderr}")
    return list(json.loads(out.stdout))


def _defs(value: Any, path: tuple[str, ...], options: set[tuple[str, ...]],
          prio: int, out: dict[tuple[str, ...], list[tuple[int, Any]]]) -> None:
    if isinstance(value, dict) and value.get("_type") == "if":
        if value["condition"]:
            _defs(value["content"], path, options, prio, out)
        return
    if isinstance(value, dict) and value.get("_type") == "override":
        _defs(value["content"], path, options, value["priority"], out)
        return
    if isinstance(value, dict) and value.get("_type") == "merge":
        for c in value["contents"]:
            _defs(c, path, options, prio, out)
        return
    if path in options or not isinstance(value, dict):
        out.setdefault(path, []).append((prio, _strip(value)))
        return
    for k, v in value.items():
        _defs(v, (*path, k), options, prio, out)


def _strip(value: Any) -> Any:
    """Properties below an option's level (fileSystems."/".device = mkForce ...)."""
    if isinstance(value, dict):
        if value.get("_type") == "override":
            return _strip(value["content"])
        return {k: _strip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _merge(a: Any, b: Any, where: str) -> Any:
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        merged = dict(a)
        for k, v in b.items():
            merged[k] = _merge(merged[k], v, f"{where}.{k}") if k in merged else v
        return merged
    if a != b:
        raise Conflict(f"{where}: {a!r} != {b!r}")
    return a


def merge(modules: list[dict[str, Any]], options: set[tuple[str, ...]]) -> dict[str, Any]:
    """Option path (dotted) -> final value of every defined option."""
    defs: dict[tuple[str, ...], list[tuple[int, Any]]] = {}
    for m in modules:
        _defs(m, (), options, PLAIN, defs)
    result: dict[str, Any] = {}
    for path, ds in defs.items():
        best = min(p for p, _ in ds)
        values = [v for p, v in ds if p == best]
        value = values[0]
        for v in values[1:]:
            value = _merge(value, v, ".".join(path))
        result[".".join(path)] = value
    return result
