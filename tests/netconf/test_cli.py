"""`nixslave net` end to end through the real entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nixslave.cli import main

from .helpers import DATA, case_dirs, case_input

pytestmark = pytest.mark.unit

ROUTED = DATA / "routed-two-lans" / "input.yml"
FILE_CASES = [c for c in case_dirs() if not case_input(c).name.endswith((".clab.yml",
                                                                            ".netlab.yml"))]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["net", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.name for c in FILE_CASES])
def test_validate_plan_render_on_every_case(case: Path, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    src = str(case_input(case))
    rc, out, _ = run(["validate", src], capsys)
    assert rc == 0 and "ok" in out
    rc, out, _ = run(["plan", src, "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert d == json.loads((case / "expected.json").read_text())
    node = sorted(d["nodes"])[0]
    for fmt in ("nixos", "sh", "hosts", "networkd"):
        rc, out, err = run(["render", src, "--node", node, "--format", fmt], capsys)
        assert rc == 0 and out, err
    rc, _, _ = run(["render", src, "--node", node, "--format", "networkd", "-o",
                    str(tmp_path / "nd")], capsys)
    units = tmp_path / "nd" / "etc" / "systemd" / "network"
    assert rc == 0 and any(p.suffix == ".network" for p in units.iterdir())
    # a router's forwarding switch goes where sysctl reads it, never beside the units
    assert not any(p.suffix == ".conf" for p in units.iterdir())
    if d["nodes"][node].get("forwarding"):
        assert (tmp_path / "nd" / "etc" / "sysctl.d" / "90-nxs-forwarding.conf").is_file()


@pytest.mark.parametrize("fmt", ["dot", "mermaid", "json", "svg", "png"])
def test_graph_formats(fmt: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / f"g.{fmt}"
    rc, _, err = run(["graph", str(ROUTED), "--format", fmt, "-o", str(out)], capsys)
    assert rc == 0, err
    data = out.read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG")
    elif fmt == "svg":
        assert b"<svg" in data and b"lana" in data
    elif fmt == "dot":
        assert data.startswith(b'graph "routed"') and b'"r1" -- "r2"' in data
    elif fmt == "mermaid":
        assert data.startswith(b"graph LR")
    else:
        d = json.loads(data)
        assert {n["id"] for n in d["nodes"]} >= {"r1", "r2", "lana", "lanb"}


@pytest.mark.parametrize("kind", ["clab", "netlab"])
def test_import_writes_a_valid_topology(kind: str, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    src = next(case_input(c) for c in case_dirs() if c.name == f"{kind}-import")
    out = tmp_path / "imported.yml"
    rc, _, err = run(["import", kind, str(src), "-o", str(out)], capsys)
    assert rc == 0, err
    rc, planned, _ = run(["plan", str(out), "--json"], capsys)
    assert rc == 0
    expected = json.loads((src.parent / "expected.json").read_text())
    assert json.loads(planned) == expected
    assert yaml.safe_load(out.read_text())["nodes"]


def test_wiring_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["wiring", str(ROUTED), "--node", "r1", "--backend", "qemu"], capsys)
    assert rc == 0 and json.loads(out)["switches"][0][:2] == ["vde_switch", "--hub"]
    for backend in ("virtualbox", "nspawn", "libvirt"):
        rc, out, _ = run(["wiring", str(ROUTED), "--node", "a1", "--backend", backend], capsys)
        assert rc == 0 and out
    rc, out, _ = run(["schema"], capsys)
    assert rc == 0 and "properties" in json.loads(out)


@pytest.mark.parametrize("case", ["unknown-node", "duplicate-mac", "yaml-syntax",
                                  "unknown-option", "routers-unreachable"])
def test_bad_input_is_one_line_exit_2(case: str) -> None:
    """Through a real process: one line on stderr, no traceback, exit 2."""
    f = DATA / "errors" / f"{case}.yml"
    r = subprocess.run([sys.executable, "-c", "import sys; from nixslave.cli import main; "
                        "sys.exit(main())", "net", "validate", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"nixslave netconf: {f}: ")
    assert "(hint: " in lines[0] and "Traceback" not in r.stderr


def test_unknown_node_for_render(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(["render", str(ROUTED), "--node", "nope", "--format", "sh"], capsys)
    assert rc == 2 and "nodes.nope" in err and "no node named 'nope'" in err


def test_netconf_imports_nothing_else_from_nixslave() -> None:
    code = ("import sys, nixslave.netconf, nixslave.netconf.renderers, nixslave.netconf.wiring,"
            " nixslave.netconf.importers, nixslave.netconf.export, nixslave.netconf.routes;"
            "print(sorted(m for m in sys.modules if m.startswith('nixslave') and"
            " not m.startswith('nixslave.netconf') and m != 'nixslave'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    pkg = Path(__file__).parents[2] / "nixslave" / "netconf"
    for src in pkg.rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+nixslave\b", src.read_text(), re.M), src


def test_plan_json_is_streamed_one_entry_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`plan --json` writes node by node: the document equals the plan's
    to_dict, and every node and network is one line of its own."""
    from nixslave.netconf import load_topology, plan

    src = DATA / "leaf-spine" / "input.yml"
    rc, out, _ = run(["plan", str(src), "--json"], capsys)
    assert rc == 0
    p = plan(load_topology(src))
    assert json.loads(out) == json.loads(json.dumps(p.to_dict()))
    lines = out.splitlines()
    for name in p.nodes:
        assert sum(ln.startswith(f'"{name}": {{') for ln in lines) == 1, name
    assert lines[0] == "{" and lines[-1] == "}"


def test_yaml_loader_keeps_its_checks(tmp_path: Path) -> None:
    """The libyaml loader refuses what the pure-Python one refused: duplicate
    keys (also under a merge key), and deep nesting before composing."""
    from nixslave.netconf import TopologyError, load_topology

    f = tmp_path / "t.yml"
    f.write_text("name: x\nnodes:\n  a: {}\n  a: {kind: router}\n")
    with pytest.raises(TopologyError, match="duplicate key 'a'") as info:
        load_topology(f)
    assert info.value.where.endswith("line 4")
    f.write_text("name: x\nbase: &b {kind: router}\nnodes:\n  r1: {<<: *b, id: 3}\n")
    with pytest.raises(TopologyError, match="unknown option 'base'"):
        load_topology(f)  # the alias and merge were read; the schema refuses 'base'
    f.write_text("name: x\nnodes:\n  r1: {<<: {kind: router}, id: 3}\n")
    assert load_topology(f).nodes["r1"].kind == "router"
    f.write_text("name: x\nnodes: " + "[" * 65 + "]" * 65 + "\n")
    with pytest.raises(TopologyError, match="nested too deeply"):
        load_topology(f)
