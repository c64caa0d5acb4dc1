"""examples/embed.py, run the way another tool would run its own script.

One boot of three guests: the example builds a routed lab (two demo
machines and a router) through the public API, boots it with the runner
and checks the pings from the runner's results.  This test checks the
example's exit code and its report against addresses written down here,
and that it left nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import HostState

pytestmark = pytest.mark.boot

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed.py"

# Every address of the example's nodes, written down once from
# `nixslave net plan` of the same topology; addresses are allocated by
# stable keys (pools, node and link names), so they never move.
EDGE = {"192.0.2.126", "2001:db8:10:0:9ad:dfdf:7dfe:187e"}
GW = {"203.0.113.217", "2001:db8:30::5303", "192.0.2.127", "2001:db8:10:0:9ad:dfdf:7dfe:187f",
      "198.51.100.217", "2001:db8:20:6208::5303"}
INNER = {"198.51.100.81", "2001:db8:20:6208::8db"}
EXPECTED_PINGS = {"edge": GW | INNER, "gw": EDGE | INNER, "inner": EDGE | GW}
HEADER = re.compile(r"^(\S+) \((\S+)\) booted (/nix/store/[0-9a-z]{32}-\S+) in [0-9.]+s$")
PING = re.compile(r"^  ping (\S+) (ok|FAIL)$")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: the runner's unix sockets live below it."""
    path = Path(tempfile.mkdtemp(prefix="emb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _host_state(state: HostState) -> set[str]:
    return {p.name for d in (state.gcroots, state.records) if d.is_dir() for p in d.iterdir()}


def test_embedding_example_boots_its_lab_and_cleans_up(short_tmp: Path,
                                                       host_state: HostState) -> None:
    """The example exits 0, every guest booted a store path and pinged exactly
    every other node's addresses successfully, and nothing is left behind.

    Catches: a public API that no longer covers the embedding workflow (the
    example fails to import or run); a lab whose routing is broken (a FAIL
    line, or exit 1); a check that passes on guests that pinged nothing (the
    pinned address sets would not match); images, run directories or GC
    roots leaking out of a throwaway lab.
    """
    before = _host_state(host_state)
    env = {**os.environ, "TMPDIR": str(short_tmp)}
    proc = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=1500, env=env)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"

    pings: dict[str, dict[str, str]] = {}
    current = None
    for line in proc.stdout.splitlines():
        if m := HEADER.match(line):
            current = m.group(1)
            assert m.group(2) == current  # each machine is named after its node
            pings[current] = {}
        elif m := PING.match(line):
            assert current is not None, line
            pings[current][m.group(1)] = m.group(2)
    assert {n: set(p) for n, p in pings.items()} == EXPECTED_PINGS
    assert all(r == "ok" for p in pings.values() for r in p.values()), proc.stdout
    assert proc.stdout.splitlines()[-1] == (
        "lab embedded: 3 guests booted their systems and reached every peer")
    # progress went through the callback (stderr), never onto the report
    assert "building the demo system for edge" in proc.stderr
    assert "building" not in proc.stdout

    assert list(short_tmp.iterdir()) == []  # images and the run directory are gone
    assert _host_state(host_state) == before  # no GC root, no image record
