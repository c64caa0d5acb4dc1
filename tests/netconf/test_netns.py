"""Real packets: the plan is wired into network namespaces, every node runs
its rendered busybox script, and every node pings every address of every
other node over IPv4 and IPv6."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixslave.netconf import load_topology, plan
from nixslave.netconf.plan import Plan
from nixslave.netconf.renderers import render_sh
from nixslave.netconf.wiring import NetnsPlan, netns_plan

pytestmark = pytest.mark.netns  # root, ip and busybox: checked in tests/conftest.py

DATA = Path(__file__).parent.parent / "data" / "netconf"


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def wired(request: pytest.FixtureRequest) -> Iterator[tuple[Plan, NetnsPlan]]:
    p = plan(load_topology(DATA / "routed-two-lans" / "input.yml"))
    ns = netns_plan(p, prefix=f"nxs-{secrets.token_hex(3)}")
    try:
        for cmd in ns.setup_commands():
            _run(cmd)
        yield p, ns
    finally:
        for cmd in ns.teardown_commands():
            subprocess.run(cmd, capture_output=True)


def test_every_node_pings_every_other(wired: tuple[Plan, NetnsPlan], tmp_path: Path) -> None:
    p, ns = wired
    # only busybox applets on PATH: the script must not depend on iproute2
    bindir = tmp_path / "bin"
    bindir.mkdir()
    busybox = shutil.which("busybox")
    assert busybox
    for applet in ("sh", "ip", "cat", "echo", "["):
        (bindir / applet).symlink_to(busybox)
    env = {"PATH": str(bindir)}
    # twice: the script must be safe to re-run (a guest may apply it on every boot)
    for node in [*p.nodes, *p.nodes]:
        script = tmp_path / f"{node}.sh"
        script.write_text(render_sh(p, node))
        r = subprocess.run(["ip", "netns", "exec", ns.namespaces[node], "env", "-i",
                            f"PATH={env['PATH']}", busybox, "sh", str(script)],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{node}: {r.stderr}"
    # names were given by MAC: the temporary veth names are gone
    for node, np in p.nodes.items():
        out = subprocess.run(["ip", "-n", ns.namespaces[node], "-j", "link"],
                             capture_output=True, text=True, check=True).stdout
        links = {d["ifname"]: d for d in json.loads(out)}
        for i in np.interfaces:
            assert links[i.name]["address"] == i.mac
            assert links[i.name]["mtu"] == i.mtu
    pairs = [(u, v, a) for u in p.nodes for v, addrs in p.peers(u).items() for a in addrs]
    assert {a.count(":") > 0 for _, _, a in pairs} == {True, False}  # both families

    def ping_all(todo: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        procs = [(t, subprocess.Popen(["ip", "netns", "exec", ns.namespaces[t[0]], "ping",
                                       "-c", "1", "-W", "3", t[2]],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                 for t in todo]
        return [t for t, pr in procs if pr.wait() != 0]

    failed = ping_all(pairs)
    if failed:  # first packets may race neighbour discovery; one more try
        failed = ping_all(failed)
    assert not failed, f"unreachable: {failed}"
    assert len(pairs) >= 6 * 5 * 2
