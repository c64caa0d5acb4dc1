"""Guests wired by one plan talk to each other: p2p sockets, a vde LAN, a router.

The images are built and run through the CLI, exactly as the README demo
does; each demo guest pings every address of every other guest and prints
the results on its console.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from clirun import nixslave, nixslave_popen

from nixslave.netconf import load_topology, plan

pytestmark = pytest.mark.boot

TOPOLOGY = Path(__file__).parent / "data" / "boot" / "routed.yml"




@pytest.fixture(scope="module")
def run_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("fleet")
    images = []
    for node in ("edge", "gw", "inner"):
        img = out / f"{node}.qcow2"
        r = nixslave("image", "build", "--demo", "--topology", str(TOPOLOGY), "--node", node,
                     "-o", str(img), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["extra"]["node"] == node
        images.append(str(img))
    r = nixslave("run", *images, "--json", "--rundir", str(out / "run"))
    assert r.stdout, r.stderr
    data = json.loads(r.stdout)
    data["returncode"] = r.returncode
    return data


def test_every_guest_boots_its_own_toplevel(run_result: dict) -> None:  # type: ignore[type-arg]
    guests = {g["name"]: g for g in run_result["guests"]}
    assert set(guests) == {"edge", "gw", "inner"}
    for g in guests.values():
        assert g["booted"] == g["toplevel"]


def test_every_guest_reaches_every_planned_address(run_result: dict) -> None:  # type: ignore[type-arg]
    p = plan(load_topology(TOPOLOGY))
    for g in run_result["guests"]:
        expected = {a for addrs in p.peers(g["node"]).values() for a in addrs}
        assert set(g["pings"]) == expected
        assert all(g["pings"].values()), g["pings"]
    # edge and inner are on different networks: their pings crossed the router
    assert run_result["ok"] is True and run_result["returncode"] == 0


def _qemus_in(rundir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{rundir}"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def test_no_qemu_outlives_the_runner(run_result: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    import signal
    import time

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
