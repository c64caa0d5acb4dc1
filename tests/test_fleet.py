"""Guests wired by one plan talk to each other: p2p sockets, a vde LAN, a router.

The images are built and run through the CLI, exactly as the README demo
does; each demo guest pings every address of every other guest and prints
the results on its console.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nixslave.netconf import load_topology, plan

pytestmark = pytest.mark.boot

TOPOLOGY = Path(__file__).parent / "data" / "boot" / "routed.yml"


def nixslave(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import sys; from nixslave.cli import main; "
                           "sys.exit(main())", *args], capture_output=True, text=True,
                          timeout=timeout)


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
