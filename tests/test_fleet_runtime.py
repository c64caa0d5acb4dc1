"""The fleet runtime for real: qemu (TCG) VMs, nspawn containers, namespaces, one supervisor.

One mixed fleet (two demo VMs, a router VM, one container) is brought up
once for the module through the CLI, as a user would, and every test then
uses it in file order: idempotent up, exec, switch and rollback, a topology
edit, stopping a node, down.  Expected addresses are pinned from the plan
(netconf allocates by stable keys), expected toplevels are built with the
demo builder directly, and leftovers are looked up in /proc, ``ip netns``
and ``ip link``, never in the runtime's own state.  Each test's docstring
names the bug it catches.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clirun import nixslave, nixslave_popen

from nixslave.demo import build_demo
from nixslave.netconf import load_topology, plan
from nixslave.netconf.renderers import render_sh

pytestmark = [pytest.mark.boot, pytest.mark.nspawn, pytest.mark.netns]

DATA = Path(__file__).parent / "data" / "fleet"
MIXED = DATA / "mixed.yml"
EDITED = DATA / "mixed-edit.yml"
# Every address of mixed.yml's nodes, pinned from the plan (stable keys).
ADDR = {
    "a": {"192.0.2.10", "2001:db8:10:1:17ec:56d:1279:3c0a"},
    "b": {"198.51.100.150", "2001:db8:20:6208::19ac"},
    "c": {"192.0.2.88", "2001:db8:10:1:90f:edc0:6d9f:c158"},
    "r": {"203.0.113.88", "2001:db8:30::6da6",
          "192.0.2.11", "2001:db8:10:1:17ec:56d:1279:3c0b",
          "198.51.100.88", "2001:db8:20:6208::6da6",
          "192.0.2.89", "2001:db8:10:1:90f:edc0:6d9f:c159"},
    "d": {"198.51.100.54", "2001:db8:20:6208::4862"},  # mixed-edit.yml only
}


def _cli(*args: str, ok: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    r = nixslave(*args, timeout=timeout)
    if ok:
        assert r.returncode == 0, f"nixslave {' '.join(args)}: {r.stderr[-3000:]}"
    return r


def _json(verb: str, *args: str) -> Any:
    return json.loads(_cli(verb, "--json", *args).stdout)


def _demo(topo: Path, node: str, **kw: Any) -> str:
    """The demo toplevel a fleet node should run, built without the fleet code."""
    p = plan(load_topology_of(topo))
    return str(build_demo(node, network_script=kw.pop("script", render_sh(p, node)),
                          peers=kw.pop("peers", ()), halt=False))


def load_topology_of(path: Path) -> Any:
    """The topology part of a fleet file, read by netconf alone."""
    import yaml

    data = yaml.safe_load(path.read_text())
    tmp = Path(tempfile.mkdtemp()) / "t.json"
    tmp.write_text(json.dumps({k: v for k, v in data.items()
                               if k not in ("machines", "defaults")}))
    try:
        return load_topology(tmp)
    finally:
        shutil.rmtree(tmp.parent)


INIT_K = "nixos-system-k-nixslave-demo/init"  # solo.yml's container's PID 1


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def rundir() -> Iterator[Path]:
    """A short private run directory (unix socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="nxf-", dir="/tmp"))
    old = os.environ.get("NIXSLAVE_RUN_DIR")
    os.environ["NIXSLAVE_RUN_DIR"] = str(d)
    yield d
    for name in ("fmix", "fsolo"):
        if (d / f"fleet-{name}").exists():
            nixslave("down", name, timeout=300)
    if old is None:
        del os.environ["NIXSLAVE_RUN_DIR"]
    else:
        os.environ["NIXSLAVE_RUN_DIR"] = old
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(rundir: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    r = _cli("up", str(MIXED), "--ping", "--json", ok=False)
    data: dict[str, Any] = json.loads(r.stdout)
    assert r.returncode == 0, (r.stderr[-2000:], data.get("ping_errors"))
    data["seconds"] = time.monotonic() - t0
    return data


def _state() -> dict[str, Any]:
    return _json("status", "fmix")  # type: ignore[no-any-return]


def test_mixed_fleet_comes_up_and_every_pair_pings(fleet: dict[str, Any], rundir: Path
                                                   ) -> None:
    """Bugs: a medium wired wrong (a VM-VM link, a VM-only hub, a VM's tap on another
    bridge than the container's veth), a VM NIC without its planned MAC, a node that
    boots another system than its spec, or a host check that pings too few addresses
    while each ping it makes succeeds.  Every node must reach every planned address
    of every other node, IPv4 and IPv6, through the router where needed."""
    nodes = fleet["state"]["nodes"]
    assert set(nodes) == {"a", "b", "c", "r"}
    assert sorted(fleet["report"]["started"]) == ["a", "b", "c", "r"]
    for n, info in nodes.items():
        assert info["state"] == "running", (n, info)
        assert info["booted"] == _demo(MIXED, n), n
    for n, peers in fleet["pings"].items():
        expected = set().union(*(ADDR[m] for m in ("a", "b", "c", "r") if m != n))
        assert set(peers) == expected, n
        assert all(peers.values()), (n, peers)
    # host side: nothing in the host's namespace, the agent sockets host-only
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert " nt" not in host_links and " nb" not in host_links
    fleet_dir = rundir / "fleet-fmix"
    for n in ("a", "b", "r"):
        mode = os.stat(fleet_dir / n / "qga.sock").st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) & 0o077 == 0
        qemu = nodes[n]["pid"]
        assert os.readlink(f"/proc/{qemu}/ns/net") != os.readlink("/proc/self/ns/net")
    assert stat.S_IMODE(os.stat(fleet_dir).st_mode) == 0o700


def test_up_twice_changes_nothing(fleet: dict[str, Any]) -> None:
    """Bug: a second up that rebuilds images, restarts guests or rewires them
    (a fingerprint that includes something unstable: a time, a temp path)."""
    before = {n: (i["pid"], i["started"], i["build"]) for n, i in _state()["nodes"].items()}
    again = _json("up", str(MIXED))
    assert again["changed"] is False and again["rebuilt"] == []
    assert sorted(again["report"]["kept"]) == ["a", "b", "c", "r"]
    after = {n: (i["pid"], i["started"], i["build"]) for n, i in again["state"]["nodes"].items()}
    assert after == before


@pytest.mark.parametrize("node", ["a", "c"])
def test_exec_returns_output_and_exit_code(fleet: dict[str, Any], node: str) -> None:
    """Bugs: the exit code lost (every command 'succeeds'), stdout and stderr mixed
    or swapped, arguments re-split or unquoted on the way (the VM's agent gets the
    command as base64 stdin; the container's through nsenter)."""
    r = _cli("exec", node, "--", "sh", "-c", "echo out; echo err >&2; exit 3", ok=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = _cli("exec", node, "--", "printf", "%s|", "x y", "it's", "$HOME")
    assert r.stdout == "x y|it's|$HOME|"
    got = _json("exec", node, "--", "hostname")
    assert got["exitcode"] == 0 and got["stdout"] == f"{node}\n"


def test_console_attaches_and_detaches(fleet: dict[str, Any]) -> None:
    """Bugs: a console that shows nothing of the guest, or that cannot be left
    (the detach key passed to the guest, the terminal left in raw mode)."""
    import pty

    from clirun import _MAIN

    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", _MAIN, "console", "a"])
    out = b""
    try:
        def read_until(marker: bytes, timeout: float) -> None:
            nonlocal out
            deadline = time.monotonic() + timeout
            while marker not in out:
                assert time.monotonic() < deadline, out[-500:]
                if select.select([fd], [], [], 0.5)[0]:
                    with contextlib.suppress(OSError):
                        out += os.read(fd, 65536)
        read_until(b"Ctrl-]", 30)
        _cli("exec", "a", "--", "sh", "-c", "echo NIXSLAVE-CONSOLE-PROBE > /dev/console")
        read_until(b"NIXSLAVE-CONSOLE-PROBE", 30)
        os.write(fd, b"\x1d")
        read_until(b"detached", 30)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    # the guest is still there and did not get the detach key as input
    assert _state()["nodes"]["a"]["state"] == "running"


def test_switch_to_a_changed_demo_confirms(fleet: dict[str, Any]) -> None:
    """Bugs: new store paths not copied into the guest (disk layout, over the agent)
    or the container's tree, an activation that is not run or does not reach the
    guest, status and GC roots still naming the old system after a switch."""
    for node in ("b", "c"):
        new = _demo(MIXED, node, peers=(sorted(ADDR["r"])[0],))
        assert new != fleet["state"]["nodes"][node]["booted"]
        res = _json("switch", node, "--toplevel", new, "--timeout", "60")
        assert res["ok"] is True and res["toplevel"] == new, res
        assert res["copied"] >= 2  # the toplevel and its etc at least
        log = _cli("logs", node).stdout
        assert f"NIXSLAVE-SWITCH-OK {new}" in log
        assert _cli("exec", node, "--", "readlink", "/run/current-system").stdout.strip() == new
        assert _state()["nodes"][node]["current"] == new
        roots = Path(os.environ["NIXSLAVE_GCROOTS_DIR"])
        assert os.readlink(roots / f"{node}-current") == new


def test_switch_that_never_confirms_rolls_back(fleet: dict[str, Any]) -> None:
    """Bug: a new system that takes the node off the network is left running (the
    host trusts the activation's exit code), or the rollback comes long after the
    timeout.  The new system's network script downs its NIC: the planned addresses
    vanish and the router stops answering; the host must switch back in time."""
    old = _state()["nodes"]["a"]["current"]
    bad = _demo(MIXED, "a", script="ip link set eth0 down\n")
    t0 = time.monotonic()
    r = _cli("switch", "a", "--toplevel", bad, "--timeout", "20", "--json", ok=False)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] is False and res["rolled_back"] == "switched back", res
    assert res["toplevel"] == old and res["attempted"] == bad
    assert elapsed < 20 + 40, elapsed  # the timeout, then one switch back
    assert _cli("exec", "a", "--", "readlink", "/run/current-system").stdout.strip() == old
    assert _state()["nodes"]["a"]["current"] == old
    ping = _cli("exec", "a", "--", "ping", "-c", "1", "-W", "2", "192.0.2.11", ok=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_topology_edit_rewires_only_changed_nodes(fleet: dict[str, Any]) -> None:
    """Bugs: a topology edit that restarts the whole fleet (or nothing), a VM left on
    a vde hub after a container joined its LAN (no packet reaches the container),
    or a restarted node that forgets the system it was switched to.  Adding a
    container on the LAN rewires b and r (hub to bridge), keeps a and c, and b
    boots the system it was switched to."""
    before = _state()["nodes"]
    switched = before["b"]["current"]
    res = _json("up", str(EDITED), "--ping")
    rep = res["report"]
    assert sorted(rep["restarted"]) == ["b", "r"] and rep["started"] == ["d"], rep
    assert sorted(rep["kept"]) == ["a", "c"]
    now = res["state"]["nodes"]
    for n in ("a", "c"):
        assert now[n]["pid"] == before[n]["pid"] and now[n]["started"] == before[n]["started"]
    assert now["b"]["booted"] == switched
    assert now["d"]["booted"] == _demo(EDITED, "d")
    for n, peers in res["pings"].items():
        expected = set().union(*(ADDR[m] for m in ADDR if m != n))
        assert set(peers) == expected and all(peers.values()), (n, peers)


def test_down_of_one_node_stops_only_it(fleet: dict[str, Any]) -> None:
    """Bug: stopping one node takes others down, or leaves its container running."""
    init = f"{_state()['nodes']['d']['booted']}/init"
    assert _pids(init)
    _cli("down", "fmix", "d")
    states = {n: i["state"] for n, i in _state()["nodes"].items()}
    assert states == {"a": "running", "b": "running", "c": "running", "d": "stopped",
                      "r": "running"}
    assert _pids(init) == []


def test_down_leaves_nothing_behind(fleet: dict[str, Any], rundir: Path) -> None:
    """Bug: down leaves a qemu, nspawn, vde_switch or supervisor running, or the
    fleet's namespace (with its bridges and taps), sockets or mounts behind."""
    state = _state()
    ns = state["netns"]
    assert ns in _netns()
    t0 = time.monotonic()
    _cli("down", "fmix")
    took = time.monotonic() - t0
    assert _pids(str(rundir / "fleet-fmix")) == []
    assert _pids("nixslave.runtime.supervisor .*fleet-fmix") == []
    for info in state["nodes"].values():
        if info.get("booted"):
            assert _pids(f"{info['booted']}/init") == []
    assert ns not in _netns()
    assert not (rundir / "fleet-fmix").exists()
    mounts = Path("/proc/mounts").read_text()
    assert str(rundir) not in mounts and "/fleets/fmix/" not in mounts
    assert took < 60, took


def test_killed_supervisor_leaves_no_guest(rundir: Path) -> None:
    """Bug: qemu or the container outliving a supervisor killed outright (no
    PR_SET_PDEATHSIG, or a guest started from a thread that has exited, which
    fires it early or never).  down then removes what the kernel cannot: the
    namespace and the run directory."""
    fleet_dir = rundir / "fleet-fsolo"
    proc = nixslave_popen("up", str(DATA / "solo.yml"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (_pids(f"qemu-system.*{fleet_dir}") and _pids(INIT_K)):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2)  # the container's init is up
    sup = int((fleet_dir / "supervisor.pid").read_text())
    os.kill(sup, signal.SIGKILL)
    proc.wait(timeout=120)  # up fails: its supervisor is gone
    deadline = time.monotonic() + 30
    while (_pids(f"qemu-system.*{fleet_dir}") or _pids("nspawn.*fleets/fsolo/")
           or _pids(INIT_K)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pids(f"qemu-system.*{fleet_dir}") == []
    assert _pids("nspawn.*fleets/fsolo/") == []
    assert _pids(INIT_K) == []
    st = _json("status", "fsolo")
    assert {i["state"] for i in st["nodes"].values()} <= {"lost", "booting", "stopped"}
    assert st["netns"] in _netns()  # the kernel cannot remove it: down does
    _cli("down", "fsolo")
    assert st["netns"] not in _netns()
    assert not fleet_dir.exists()


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[str]:
    """qemu:///system: the running daemon, or one started here (and stopped after)."""
    for tool in ("libvirtd", "virtlogd", "virsh"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install libvirt-daemon-system)")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        pytest.skip("python3-libvirt is not installed")
    if subprocess.run(["id", "libvirt-qemu"], capture_output=True).returncode:
        pytest.skip("no libvirt-qemu user: libvirt-daemon-system is not installed")
    started: list[Path] = []
    pids = Path(tempfile.mkdtemp(prefix="nxf-lv-"))
    Path("/var/log/libvirt").mkdir(parents=True, exist_ok=True)
    for daemon, sock in (("virtlogd", "virtlogd-sock"), ("libvirtd", "libvirt-sock")):
        if not Path("/run/libvirt", sock).exists():
            pidfile = pids / f"{daemon}.pid"
            subprocess.run([daemon, "-d", "-p", str(pidfile)], check=True)
            started.append(pidfile)
    deadline = time.monotonic() + 30
    while not Path("/run/libvirt/libvirt-sock").exists():
        assert time.monotonic() < deadline, "libvirtd did not start"
        time.sleep(0.2)
    yield "qemu:///system"
    for pidfile in reversed(started):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    shutil.rmtree(pids, ignore_errors=True)


def test_the_same_fleet_comes_up_under_libvirt(rundir: Path, libvirtd: str) -> None:
    """Bugs: domain XML that libvirt refuses (or that validates but does not boot),
    NICs libvirt wires differently from the plan (udp ports crossed, a tap left in
    the host's namespace, off its bridge), no agent channel, or a down that leaves
    domains defined.  The mixed fleet runs with its VMs under libvirt and its
    container under nspawn; every pair pings; exec goes through libvirt's agent."""
    res = _json("up", str(MIXED), "--engine", "libvirt", "--connect", libvirtd, "--ping")
    nodes = res["state"]["nodes"]
    assert res["engine"] == "libvirt" and set(nodes) == {"a", "b", "c", "r"}
    for n in ("a", "b", "r"):
        assert nodes[n]["booted"] == _demo(MIXED, n) and nodes[n]["domain"] == f"fmix-{n}"
    listed = subprocess.run(["virsh", "-c", libvirtd, "list", "--name"], capture_output=True,
                            text=True).stdout.split()
    assert {"fmix-a", "fmix-b", "fmix-r"} <= set(listed)
    for n, peers in res["pings"].items():
        expected = set().union(*(ADDR[m] for m in ("a", "b", "c", "r") if m != n))
        assert set(peers) == expected and all(peers.values()), (n, peers)
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert " nt" not in host_links  # every tap moved into the fleet's namespace
    r = _cli("exec", "b", "--", "sh", "-c", "hostname; exit 5", ok=False)
    assert (r.returncode, r.stdout) == (5, "b\n")
    again = _json("up", str(MIXED), "--engine", "libvirt", "--connect", libvirtd)
    assert again["changed"] is False
    _cli("down", "fmix")
    left = subprocess.run(["virsh", "-c", libvirtd, "list", "--all", "--name"],
                          capture_output=True, text=True).stdout.split()
    assert not [d for d in left if d.startswith("fmix-")]
    assert _pids("guest=fmix-") == [] and res["state"]["netns"] not in _netns()
    assert not (rundir / "fleet-fmix").exists()
