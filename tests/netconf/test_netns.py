"""Real packets: the plan is wired into network namespaces, every node runs
its rendered busybox script, and every node pings every address of every
other node over IPv4 and IPv6.

The topology has a 9000-byte segment and a 1400-byte router link. The wiring
creates veths at the planned MTU, so each node's NIC is put back to the
kernel default (1500) before its script runs: the MTU the test reads
afterwards is then the one the script set.
"""

from __future__ import annotations

import re
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


def _links(ns: str) -> dict[str, tuple[str, int]]:
    """name -> (MAC, MTU) as ``ip -o link show`` prints them inside ``ns``."""
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"],
                         capture_output=True, text=True, check=True).stdout
    links = {}
    for line in out.splitlines():
        m = re.match(r"\d+: ([^:@]+)[@:].* mtu (\d+) .*link/\S+ ([0-9a-f:]{17})", line)
        if m:
            links[m.group(1)] = (m.group(3), int(m.group(2)))
    return links


@pytest.fixture
def wired(request: pytest.FixtureRequest) -> Iterator[tuple[Plan, NetnsPlan]]:
    p = plan(load_topology(DATA / "routed-two-lans" / "input.yml"))
    ns = netns_plan(p, prefix=f"nxs-{secrets.token_hex(3)}")
    try:
        for cmd in ns.setup_commands():
            _run(cmd)
        for v in ns.veths:  # a fresh NIC: kernel default MTU, the script must fix it
            _run(["ip", "-n", v.ns_a, "link", "set", v.name_a, "mtu", "1500"])
            if v.bridge_b is None:
                _run(["ip", "-n", v.ns_b, "link", "set", v.name_b, "mtu", "1500"])
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
    seen_mtus = set()
    for node, np in p.nodes.items():
        links = _links(ns.namespaces[node])
        for i in np.interfaces:
            assert links[i.name] == (i.mac, i.mtu), (node, i.name)
            seen_mtus.add(links[i.name][1])
    assert seen_mtus == {1400, 1500, 9000}  # the topology's MTUs, written by hand
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
