"""Guests wired by one plan talk to each other: p2p sockets, a vde LAN, a router.

The images are built and run through the CLI, exactly as the README demo
does; each demo guest pings every address of every other guest and prints
the results on its console.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clirun import nixslave, nixslave_popen

if TYPE_CHECKING:
    from conftest import HostState

pytestmark = pytest.mark.boot

TOPOLOGY = Path(__file__).parent / "data" / "boot" / "routed.yml"

# Every address of routed.yml's nodes, written down once from `nixslave net plan`
# and pinned here: addresses are allocated by stable keys, so they never move.
GW = {
    "203.0.113.217", "2001:db8:30::5303",                      # lo
    "192.0.2.127", "2001:db8:10:0:9ad:dfdf:7dfe:187f",         # eth0, link to edge
    "198.51.100.217", "2001:db8:20:6208::5303",                # eth1, segment lan
}
EDGE = {"192.0.2.126", "2001:db8:10:0:9ad:dfdf:7dfe:187e"}     # eth0, link to gw
INNER = {"198.51.100.81", "2001:db8:20:6208::8db"}             # eth0, segment lan
# each guest pings every address of every other guest
EXPECTED_PINGS = {"edge": GW | INNER, "gw": EDGE | INNER, "inner": EDGE | GW}


@pytest.fixture(scope="module")
def run_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("fleet")
    images = []
    toplevels = {}
    for node in ("edge", "gw", "inner"):
        img = out / f"{node}.qcow2"
        r = nixslave("image", "build", "--demo", "--topology", str(TOPOLOGY), "--node", node,
                     "-o", str(img), "--json")
        assert r.returncode == 0, r.stderr
        built = json.loads(r.stdout)
        assert built["extra"]["node"] == node
        toplevels[node] = built["toplevel"]
        images.append(str(img))
    started = time.time()
    r = nixslave("run", *images, "--json", "--rundir", str(out / "run"))
    assert r.stdout, r.stderr
    data = json.loads(r.stdout)
    data["returncode"] = r.returncode
    data["built"] = toplevels
    data["started"] = started
    return data


def test_every_guest_boots_its_own_toplevel(run_result: dict) -> None:  # type: ignore[type-arg]
    guests = {g["name"]: g for g in run_result["guests"]}
    assert set(guests) == {"edge", "gw", "inner"}
    for g in guests.values():
        assert g["booted"] == g["toplevel"] == run_result["built"][g["node"]]


def test_every_guest_reaches_every_planned_address(run_result: dict) -> None:  # type: ignore[type-arg]
    """Bug: a guest that pings too few addresses (a family, the router's loopback or a
    whole node left out of its peers) while every ping it does make succeeds."""
    for g in run_result["guests"]:
        assert set(g["pings"]) == EXPECTED_PINGS[g["node"]], g["node"]
        assert all(g["pings"].values()), g["pings"]
    # edge and inner are on different networks: their pings crossed the router
    assert run_result["ok"] is True and run_result["returncode"] == 0


def test_booted_and_built_closures_have_gc_roots(run_result: dict,  # type: ignore[type-arg]
                                                 host_state: HostState) -> None:
    """Bug: the ``<name>-booted`` GC root never added after a boot (or added for the
    wrong system), so a host GC removes the closure the running guest came from."""
    roots = host_state.gcroots
    for node, toplevel in run_result["built"].items():
        assert toplevel.startswith("/nix/store/") and toplevel.endswith(
            f"-nixos-system-{node}-nixslave-demo")
        booted = roots / f"{node}-booted"
        assert os.readlink(booted) == toplevel
        # made by this run, not left by an earlier one (builds are reproducible)
        assert os.lstat(booted).st_mtime >= run_result["started"] - 1
        assert os.readlink(roots / f"{node}-current") == toplevel
        record = json.loads((host_state.records / f"{node}.json").read_text())
        assert record["toplevel"] == toplevel
        assert any(i.endswith(f"/{node}.qcow2") for i in record["images"])


def _qemus_in(rundir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{rundir}"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def test_no_qemu_outlives_the_runner(run_result: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    # the finished run above left nothing behind
    assert _qemus_in(Path(run_result["guests"][0]["console_log"]).parent.parent) == []
    # a runner killed outright takes its guests with it
    image = Path(run_result["guests"][0]["console_log"]).parent.parent.parent / "edge.qcow2"
    rundir = tmp_path / "r"
    proc = nixslave_popen("run", str(image), "--rundir", str(rundir),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _qemus_in(rundir):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _qemus_in(rundir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _qemus_in(rundir) == []
