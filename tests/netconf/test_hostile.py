"""Hostile input through the real command line.

Each case is a file (or output path) a careless or malicious user could
hand to `nixslave net`, with the key word its one-line message must carry,
written by hand. Every case must exit 2 with exactly one line on stderr, no
traceback, nothing on stdout and nothing written where the output would go:
the case's directory must look the same afterwards, without stray
temporary files.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from clirun import nixslave

pytestmark = pytest.mark.unit

GOOD = ("name: lab\nnodes: {r1: {kind: router}, h1: {}}\nsegments: [lan]\n"
        "links: [[r1, lan], [h1, lan]]\n")


def _bomb() -> str:
    """"Billion laughs": nine levels of ten aliases each, 10^9 values."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(["name: lab", "nodes:", *("  " + ln for ln in lines)]) + "\n"


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # "{d}" stands for the case's own directory
    expect: str  # a regular expression the one line must match
    files: dict[str, str | bytes] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()


def t(name: str, body: str) -> dict[str, str | bytes]:
    return {name: body}


CASES: dict[str, Case] = {
    # ---- files the parsers choke on
    "yaml-nested-10000": Case(("validate", "{d}/t.yml"), r"nested too deeply",
                              t("t.yml", "name: x\nnodes: " + "[" * 10000 + "]" * 10000)),
    "yaml-mappings-nested-10000": Case(("plan", "{d}/t.yml"), r"nested too deeply",
                                       t("t.yml", "name: x\nnodes: " + "{a: " * 10000 + "1"
                                         + "}" * 10000)),
    # libyaml composes by recursion in C, without Python's limit: this depth
    # would overflow the C stack (a crash, not an error) if it got that far
    "yaml-nested-300000": Case(("plan", "{d}/t.yml", "--json"), r"nested too deeply",
                               t("t.yml", "name: x\nnodes: " + "[" * 300000 + "]" * 300000)),
    "yaml-block-nested-100000": Case(("validate", "{d}/t.yml"), r"nested too deeply",
                                     t("t.yml", "name: x\nnodes:\n" + "- " * 100000 + "x\n")),
    "json-nested-10000": Case(("validate", "{d}/t.json"), r"nested too deeply",
                              t("t.json", '{"nodes": ' + "[" * 10000 + "]" * 10000 + "}")),
    "toml-nested-10000": Case(("validate", "{d}/t.toml"), r"nested too deeply",
                              t("t.toml", "nodes = " + "[" * 10000 + "]" * 10000 + "\n")),
    "not-utf8-yaml": Case(("validate", "{d}/t.yml"), r"not UTF-8.*0xe9",
                          {"t.yml": "name: caf\xe9\n".encode("latin-1")}),
    "not-utf8-json": Case(("plan", "{d}/t.json", "--json"), r"t\.json.*not UTF-8",
                          {"t.json": b'{"name": "\xff\xfe"}'}),
    "billion-laughs": Case(("validate", "{d}/t.yml"), r"expands to more than", t("t.yml", _bomb())),
    "recursive-alias": Case(("validate", "{d}/t.yml"), r"refers to itself",
                            t("t.yml", "name: x\nnodes: &a [*a]\n")),
    "5000-digit-integer-yaml": Case(("validate", "{d}/t.yml"), r"4300 digits",
                                    t("t.yml", "name: x\nmtu: " + "9" * 5000 + "\n")),
    "5000-digit-integer-json": Case(("validate", "{d}/t.json"), r"4300 digits",
                                    t("t.json", '{"name": "x", "mtu": ' + "9" * 5000 + "}")),
    "impossible-date": Case(("validate", "{d}/t.yml"), r"month must be in 1\.\.12",
                            t("t.yml", "name: x\nnodes: {a: {id: 2024-13-45}}\n")),
    "list-as-key": Case(("validate", "{d}/t.yml"), r"list cannot be a key",
                        t("t.yml", "name: x\nnodes:\n  ? [a, b]\n  : {}\n")),
    "json-duplicate-key": Case(("validate", "{d}/t.json"), r"duplicate key 'a'",
                               t("t.json", '{"name": "x", "nodes": {"a": {}, "a": {}}}')),
    "nul-byte": Case(("validate", "{d}/t.yml"), r"not valid YAML",
                     t("t.yml", "name: x\x00\n")),
    "directory-as-file": Case(("validate", "{d}/sub"), r"cannot read the file", dirs=("sub",)),
    "missing-file": Case(("plan", "{d}/nope.yml"), r"No such file"),
    "endless-file": Case(("validate", "/dev/zero"), r"larger than 64 MiB"),
    # ---- address families mixed up
    "v6-under-segment-prefix4": Case(("validate", "{d}/t.yml"),
                                     r"segments\.lan\.prefix4.*IPv6 prefix",
                                     t("t.yml", "name: x\nnodes: [a]\nsegments: {lan: {prefix4: "
                                       "'2001:db8::/64'}}\nlinks: [[a, lan]]\n")),
    "v4-under-link-prefix6": Case(("plan", "{d}/t.yml"), r"links\[0\]\.prefix6.*IPv4 prefix",
                                  t("t.yml", "name: x\nnodes: [a, b]\nlinks: [{endpoints: [a, "
                                    "b], prefix6: 10.0.0.0/31}]\n")),
    "v6-under-endpoint-ipv4": Case(("validate", "{d}/t.yml"), r"ipv4.*IPv6 address",
                                   t("t.yml", "name: x\nnodes: [a, b]\nlinks: [{endpoints: "
                                     "[{node: a, ipv4: '2001:db8::1/64'}, b]}]\n")),
    "v6-in-v4-pool": Case(("validate", "{d}/t.yml"), r"pools\.lan4.*IPv6 prefix",
                          t("t.yml", "name: x\nnodes: [a]\npools: {lan4: '2001:db8::/32'}\n")),
    # ---- topologies that would plan a wrong network
    "node-listed-twice": Case(("plan", "{d}/t.yml"), r"nodes\[1\].*listed twice",
                              t("t.yml", "name: x\nnodes: [a, a]\n")),
    "ifname-mgmt0-with-management": Case(
        ("plan", "{d}/t.yml"), r"management interface",
        t("t.yml", "name: x\nmanagement: true\nnodes: [a, b]\n"
          "links: [{endpoints: [{node: a, ifname: mgmt0}, b]}]\n")),
    "ifname-twice": Case(("plan", "{d}/t.yml"), r"'up0' is used twice",
                         t("t.yml", "name: x\nnodes: [a, b, c]\nlinks:\n"
                           "  - [{node: a, ifname: up0}, b]\n  - [{node: a, ifname: up0}, c]\n")),
    "all-zero-mac": Case(("plan", "{d}/t.yml"), r"all-zero MAC",
                         t("t.yml", "name: x\nnodes: [a, b]\nlinks: [[{node: a, mac: "
                           "'00:00:00:00:00:00'}, b]]\n")),
    "router-with-gateway": Case(("validate", "{d}/t.yml"), r"router takes no gateway",
                                t("t.yml", "name: x\nnodes: {r1: {kind: router, gateway: r2}, "
                                  "r2: {kind: router}}\nlinks: [[r1, r2]]\n")),
    "gateway-without-routing": Case(("validate", "{d}/t.yml"), r"no effect with routing: none",
                                    t("t.yml", "name: x\nrouting: none\nnodes: {r: {kind: "
                                      "router}, h: {gateway: r}}\nlinks: [[r, h]]\n")),
    "link-named-mgmt": Case(("validate", "{d}/t.yml"), r"management network",
                            t("t.yml", "name: x\nmanagement: true\nnodes: [a, b]\n"
                              "links: [{endpoints: [a, b], name: mgmt}]\n")),
    "static-prefix-in-loopback-pool": Case(
        ("validate", "{d}/t.yml"), r"overlaps pools\.loopback4",
        t("t.yml", "name: x\nnodes: {r: {kind: router}, h: {}}\n"
          "links: [{endpoints: [r, h], prefix4: 10.0.0.0/31}]\n")),
    "newline-and-escape-in-name": Case(("plan", "{d}/t.yml"), r"not a valid host name",
                                       t("t.yml", 'name: x\nnodes: ["a\\nb\\u001b[31m"]\n')),
    # ---- outputs that cannot be written
    "render-into-missing-dir": Case(("render", "{d}/t.yml", "-n", "r1", "-o", "{d}/no/out.nix"),
                                    r"does not exist", t("t.yml", GOOD)),
    "render-networkd-onto-file": Case(("render", "{d}/t.yml", "-n", "r1", "-f", "networkd", "-o",
                                       "{d}/out"), r"not a directory",
                                      {"t.yml": GOOD, "out": "keep me\n"}),
    "render-onto-directory": Case(("render", "{d}/t.yml", "-n", "r1", "-o", "{d}/out"),
                                  r"is a directory", t("t.yml", GOOD), dirs=("out",)),
    "render-unknown-node": Case(("render", "{d}/t.yml", "-n", "r9", "-o", "{d}/out.nix"),
                                r"no node named 'r9'", t("t.yml", GOOD)),
    "graph-into-missing-dir": Case(("graph", "{d}/t.yml", "-o", "{d}/no/g.dot"),
                                   r"does not exist", t("t.yml", GOOD)),
    "graph-svg-onto-directory": Case(("graph", "{d}/t.yml", "-f", "svg", "-o", "{d}/g.svg"),
                                     r"is a directory", t("t.yml", GOOD), dirs=("g.svg",)),
    "graph-under-a-file": Case(("graph", "{d}/t.yml", "-o", "{d}/t.yml/g.dot"),
                               r"not a directory", t("t.yml", GOOD)),
    "graph-of-bad-topology": Case(("graph", "{d}/t.yml", "-o", "{d}/g.dot"),
                                  r"unknown node or segment 'c'",
                                  t("t.yml", "name: x\nnodes: [a]\nlinks: [[a, c]]\n")),
    # ---- imports of the wrong shape
    "clab-nodes-as-list": Case(("import", "clab", "{d}/l.yml", "-o", "{d}/out.yml"),
                               r"topology\.nodes.*expected a mapping",
                               t("l.yml", "name: l\ntopology:\n  nodes: [a, b]\n")),
    "clab-endpoints-as-mapping": Case(("import", "clab", "{d}/l.yml"), r"two endpoints",
                                      t("l.yml", "name: l\ntopology:\n  nodes: {a: {}, b: {}}\n"
                                        "  links: [{endpoints: {a: e1, b: e1}}]\n")),
    "clab-v6-mgmt-subnet": Case(("import", "clab", "{d}/l.yml"), r"ipv4-subnet.*IPv6 prefix",
                                t("l.yml", "name: l\nmgmt: {ipv4-subnet: '2001:db8::/64'}\n"
                                  "topology: {nodes: {a: {}}}\n")),
    "clab-self-link": Case(("import", "clab", "{d}/l.yml", "-o", "{d}/out.yml"),
                           r"\(imported\).*to itself",
                           t("l.yml", "name: l\ntopology:\n  nodes: {a: {}}\n"
                             "  links: [{endpoints: ['a:e1', 'a:e2']}]\n")),
    "clab-into-missing-dir": Case(("import", "clab", "{d}/l.yml", "-o", "{d}/no/out.yml"),
                                  r"does not exist",
                                  t("l.yml", "name: l\ntopology: {nodes: {a: {}}}\n")),
    "netlab-numbers-as-names": Case(("import", "netlab", "{d}/l.yml", "-o", "{d}/out.yml"),
                                    r"name must be text.*number 1",
                                    t("l.yml", "nodes: [1, 2]\nlinks: [[1, 2]]\n")),
    "netlab-links-as-text": Case(("import", "netlab", "{d}/l.yml"), r"expected a list",
                                 t("l.yml", "nodes: [a, b]\nlinks: a-b\n")),
    "netlab-names-collide": Case(("import", "netlab", "{d}/l.yml"), r"both become 'r-1'",
                                 t("l.yml", "nodes: [R_1, r-1]\n")),
    "netlab-bad-pool": Case(("import", "netlab", "{d}/l.yml"), r"'banana' is not a prefix",
                            t("l.yml", "nodes: [a]\naddressing: {lan: {ipv4: banana}}\n")),
    "netlab-top-level-list": Case(("import", "netlab", "{d}/l.yml"), r"not a netlab topology",
                                  t("l.yml", "- nodes\n- links\n")),
}


def _snapshot(d: Path) -> dict[str, str]:
    """Every path under ``d`` with a digest of its content."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(d.rglob("*"))}


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    where: Path
    before: dict[str, str]


def _run(name: str, d: Path) -> Run:
    case = CASES[name]
    d.mkdir()
    for sub in case.dirs:
        (d / sub).mkdir()
    for fname, body in case.files.items():
        (d / fname).write_bytes(body.encode() if isinstance(body, str) else body)
    before = _snapshot(d)
    r = nixslave("net", *(a.replace("{d}", str(d)) for a in case.argv), timeout=300)
    return Run(r, d, before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """All cases at once, two at a time: each is a fresh interpreter, and
    one after the other they take most of a minute."""
    base = tmp_path_factory.mktemp("hostile")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {n: pool.submit(_run, n, base / n) for n in CASES}
        return {n: f.result() for n, f in futures.items()}


def test_the_table_is_large() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(name: str, runs: dict[str, Run]) -> None:
    run = runs[name]
    r = run.result
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("nixslave netconf: "), line
    assert "Traceback" not in r.stderr and "internal error" not in line
    assert re.search(CASES[name].expect, line), line
    assert r.stdout == ""
    assert _snapshot(run.where) == run.before, "something was written"


def test_output_to_a_device_is_written_into(tmp_path: Path) -> None:
    """Writing by rename must not replace a device: `-o /dev/null` (as root,
    where /dev is writable) has to stay the character device it was."""
    src = tmp_path / "t.yml"
    src.write_text(GOOD)
    for argv in (("graph", str(src), "-o", "/dev/null"),
                 ("graph", str(src), "-f", "svg", "-o", "/dev/null"),
                 ("render", str(src), "-n", "r1", "-o", "/dev/null")):
        r = nixslave("net", *argv, timeout=120)
        assert r.returncode == 0, r.stderr
        assert Path("/dev/null").is_char_device()
