"""Fleets: build what a fleet file asks for, wire it from the plan, keep it running.

``up`` builds every node's artifact that is missing or stale (judged by the
toplevel its spec builds to), computes each node's launch description from
the plan, and hands the whole set to the fleet's supervisor
(:mod:`nixslave.runtime.supervisor`), a small detached process that owns
every qemu, nspawn and vde_switch of the fleet.  The supervisor compares
each node's description with what runs and starts, restarts or stops only
the nodes that differ, so ``up`` twice changes nothing and a topology edit
touches only the nodes whose system or wiring changed.

Wiring, per planned network:

* VMs only: a p2p link is a pair of qemu ``dgram`` unix sockets, a segment
  a ``vde_switch --hub`` (as ``nixslave run`` wires them);
* any container on it: a bridge in the fleet's network namespace; the
  containers' veths (named by :func:`nixslave.netconf.wiring.nspawn_settings`)
  and the VMs' taps join it.  qemu runs inside that namespace, so its taps
  never appear in the host's.

State lives in ``<run dir>/fleet-<name>/`` (sockets, console logs, the
supervisor's ``state.json``; see :mod:`nixslave.rundir`) and artifacts in
``<state dir>/fleets/<name>/`` (images, per-node disk overlays that keep a
VM's writes across restarts, the next-boot records of ``switch``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nixslave import gcroots, rundir
from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.errors import RunError
from nixslave.netconf import Plan
from nixslave.netconf import plan as make_plan
from nixslave.netconf.wiring import SUN_PATH_MAX, nspawn_settings, short_id
from nixslave.progress import Progress
from nixslave.runtime.fleetfile import Fleet, topology_data
from nixslave.runtime.run import Drive, Share, VMConfig, vm_config
from nixslave.spec import MachineSpec, check_name
from nixslave.topology import node_network

STATE = "state.json"
DESIRED = "desired.json"
SOCK = "supervisor.sock"
LOCK = "lock"


# -- where a fleet lives ----------------------------------------------------------------

def run_dir(name: str) -> Path:
    """Sockets, console logs and the supervisor's state (tmpfs, gone at reboot)."""
    return rundir.base() / f"fleet-{check_name(name)}"


def artifacts_dir(name: str) -> Path:
    """Images and disk overlays: they outlive a host reboot."""
    return gcroots.STATE_DIR / "fleets" / check_name(name)


def netns_name(name: str) -> str:
    """The fleet's network namespace: its bridges, taps, veth ends and qemus.

    Named after the run directory too, so two run directories (two users'
    NIXSLAVE_RUN_DIR) may hold fleets of the same name.
    """
    return f"nixslave-{check_name(name)}-{short_id(str(run_dir(name)), n=6)}"


def ops_lock(name: str) -> contextlib.AbstractContextManager[None]:
    """One up/down/switch of a fleet at a time (beside the run dir, not inside it)."""
    @contextlib.contextmanager
    def held() -> Iterator[None]:
        path = rundir.base() / f"fleet-{check_name(name)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError("another up, down or switch of this fleet is running",
                               where=f"fleet {name}", hint="wait for it to finish") from None
            yield
        finally:
            os.close(fd)
    return held()


def write_json(path: Path, data: Any, mode: int = 0o600) -> None:
    """Temp file + rename: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _sock_ok(path: Path) -> str:
    if len(str(path).encode()) > SUN_PATH_MAX:
        raise RunError(f"socket path {path} is over the unix limit of {SUN_PATH_MAX} bytes",
                       where="run directory",
                       hint="use shorter fleet and node names, or a short NIXSLAVE_RUN_DIR")
    return str(path)


# -- building -------------------------------------------------------------------------

@dataclass
class Built:
    """One node's artifact and whether this ``up`` made it."""

    node: str
    spec: MachineSpec
    artifact: Artifact
    rebuilt: bool


def artifact_path(fleet_name: str, node: str, backend: str, vm_format: str = "qcow2") -> Path:
    base = artifacts_dir(fleet_name)
    if backend == "container":
        return base / node
    return base / f"{node}.{'xml' if vm_format == 'libvirt' else 'qcow2'}"


def _fresh(path: Path, toplevel: str, spec: MachineSpec, kind: str) -> Artifact | None:
    """The existing artifact when it already holds ``toplevel`` the same way."""
    if not path.is_symlink():
        return None
    try:
        a = Artifact.load(path)
    except Exception:  # a broken build is rebuilt, whatever broke it
        return None
    if a.kind != kind or a.toplevel != toplevel:
        return None
    if kind != "nspawn" and (a.layout, a.boot) != (spec.layout, spec.boot):
        return None
    if kind != "nspawn" and spec.layout == "shared" and a.store != spec.share:
        return None
    return a


def build(fleet: Fleet, plan: Plan, *, nodes: list[str] | None = None,
          vm_format: str = "qcow2", progress: Progress | None = None) -> dict[str, Built]:
    """Build every node's artifact that is missing or stale.

    The demo guests are built without a ping list: the host checks
    reachability through each guest's control channel, so adding a node
    does not change every other node's system.
    """
    say = progress or (lambda _m: None)
    base = artifacts_dir(fleet.name)
    base.mkdir(parents=True, exist_ok=True)
    topo = base / "topology.json"
    data = topology_data(fleet)
    try:
        same = json.loads(topo.read_text()) == data
    except (OSError, ValueError):
        same = False
    if not same:
        write_json(topo, data, 0o644)
    out: dict[str, Built] = {}
    for node in nodes or fleet.nodes():
        spec = fleet.spec(node)
        backend = fleet.backend(node)
        net = replace(node_network(plan, node), peers=())
        root = rootmod.build(spec, network=net)
        path = artifact_path(fleet.name, node, backend, vm_format)
        kind = "nspawn" if backend == "container" else \
            "libvirt" if vm_format == "libvirt" else "disk"
        a = _fresh(path, root.toplevel, spec, kind)
        if a is not None:
            out[node] = Built(node, spec, a, False)
            continue
        say(f"{node}: materializing {root.toplevel}")
        extra: dict[str, object] = {"topology": str(topo), "node": node, "peers": [],
                                    "fleet": fleet.name}
        if backend == "container":
            from nixslave.backends.nspawn import NspawnBackend
            a = NspawnBackend().materialize(root, path, None, extra=extra)
        elif kind == "libvirt":
            from nixslave.backends.libvirt import LibvirtBackend
            a = LibvirtBackend().materialize(root, path, None, extra=extra)
        else:
            from nixslave.backends.disk import DiskBackend, DiskOptions
            a = DiskBackend().materialize(root, path, DiskOptions(format="qcow2"), extra=extra)
        a.extra.setdefault("published_as", str(path))
        out[node] = Built(node, spec, a, True)
    return out


# -- wiring ------------------------------------------------------------------------------

@dataclass
class Wiring:
    """The host's side of a plan for one mix of VMs and containers."""

    switches: dict[str, dict[str, Any]] = field(default_factory=dict)  # segment -> argv, ready
    bridges: list[str] = field(default_factory=list)                   # in the fleet netns
    net_args: dict[str, list[str]] = field(default_factory=dict)       # VM -> qemu args
    taps: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # VM -> tap
    ports: dict[str, dict[str, str]] = field(default_factory=dict)     # container veth -> br
    uses: dict[str, list[str]] = field(default_factory=dict)           # node -> its switches


def bridge_name(plan: Plan, link_id: str) -> str:
    """The bridge of a network, as nspawn_settings names it for containers."""
    return "nb" + short_id(plan.name, link_id, n=12)


def wire(plan: Plan, backends: Mapping[str, str], netdir: Path, *,
         hubs: bool = True) -> Wiring:
    """Decide each network's medium and every node's NICs on it.

    ``hubs=False`` bridges VM-only segments too (libvirt has no vde).
    """
    w = Wiring()
    bridged = {nid for nid, net in plan.networks.items()
               if any(backends.get(m) == "container" for m, _ in net.members)
               or (not hubs and net.kind != "p2p")}
    for nid, net in plan.networks.items():
        if nid in bridged:
            w.bridges.append(bridge_name(plan, nid))
        elif net.kind != "p2p":
            sock = _sock_ok(netdir / f"s{short_id(plan.name, nid)}.vde")
            ports = max(32, 2 * len(net.members))
            w.switches[nid] = {"argv": ["vde_switch", "--hub", "--sock", sock, "--dirmode",
                                        "0700", "--numports", str(ports)],
                               "ready": f"{sock}/ctl"}
    for node, backend in backends.items():
        np = plan.node(node)
        if backend == "container":
            s = nspawn_settings(plan, node)
            w.ports[node] = {port: br for br, ps in s.bridges().items() for port in ps}
            continue
        args: list[str] = []
        taps: dict[str, dict[str, Any]] = {}
        uses: list[str] = []
        for k, i in enumerate(np.interfaces):
            net = plan.networks[i.link_id]
            nd = f"n{k}"
            if i.link_id in bridged:
                tap = "nt" + short_id(plan.name, node, i.link_id, n=12)
                taps[tap] = {"bridge": bridge_name(plan, i.link_id), "mtu": i.mtu}
                netdev = f"tap,id={nd},ifname={tap},script=no,downscript=no"
            elif net.kind != "p2p":
                sw = w.switches[i.link_id]
                uses.append(i.link_id)
                netdev = f"vde,id={nd},sock={sw['argv'][3]}"
            else:
                idx = [m for m, _ in net.members].index(node)
                h = short_id(plan.name, i.link_id)
                me = _sock_ok(netdir / f"l{h}-{idx}.sock")
                peer = _sock_ok(netdir / f"l{h}-{1 - idx}.sock")
                netdev = (f"dgram,id={nd},local.type=unix,local.path={me},"
                          f"remote.type=unix,remote.path={peer}")
            args += ["-netdev", netdev, "-device",
                     f"virtio-net-pci,netdev={nd},mac={i.mac},host_mtu={i.mtu}"]
        w.net_args[node] = args
        w.taps[node] = taps
        w.uses[node] = uses
    return w


# -- launch descriptions -------------------------------------------------------------------

def config_to_json(c: VMConfig) -> dict[str, Any]:
    d = asdict(c)
    d["drives"] = [{**asdict(x), "path": str(x.path)} for x in c.drives]
    d["shares"] = [{**asdict(x), "path": str(x.path)} for x in c.shares]
    for k in ("kernel", "initrd", "netns"):
        d[k] = str(d[k]) if d[k] is not None else None
    d["firmware"] = [str(p) for p in c.firmware] if c.firmware else None
    return d


def config_from_json(d: dict[str, Any]) -> VMConfig:
    d = dict(d)
    d["drives"] = [Drive(**{**x, "path": Path(x["path"])}) for x in d["drives"]]
    d["shares"] = [Share(**{**x, "path": Path(x["path"])}) for x in d["shares"]]
    for k in ("kernel", "initrd", "netns"):
        d[k] = Path(d[k]) if d.get(k) else None
    d["firmware"] = tuple(Path(p) for p in d["firmware"]) if d.get("firmware") else None
    return VMConfig(**d)


def overlay_for(fleet_name: str, node: str, a: Artifact) -> Path:
    """The VM's own root disk: a qcow2 overlay on its build's image, kept across restarts.

    Named after the build, so a rebuilt base gets a fresh overlay and a
    running guest's overlay is never replaced under it.
    """
    path = artifacts_dir(fleet_name) / f"{node}-{a.build or 'local'}.qcow2"
    if a.kind == "libvirt":  # the image is the domain XML; the disk is beside it
        base, fmt = a.image.parent / str(a.extra["disk"]), str(a.extra["diskFormat"])
    else:
        base, fmt = a.image, a.format
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b",
                               os.path.realpath(base), str(tmp)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RunError(f"qemu-img create failed: {proc.stderr.strip()}", where=str(path),
                           hint="check free space in the state directory")
        os.replace(tmp, path)
    return path


def next_boot_path(fleet_name: str, node: str) -> Path:
    return artifacts_dir(fleet_name) / f"{node}.boot.json"


def describe(fleet: Fleet, plan: Plan, built: dict[str, Built], *,
             only_containers: bool = False) -> dict[str, Any]:
    """What the supervisor should run: every node's launch description.

    ``only_containers``: libvirt runs the VMs; the supervisor keeps the
    containers, the namespace and its bridges (no vde hubs).
    """
    rd = run_dir(fleet.name)
    backends = {n: fleet.backend(n) for n in fleet.nodes()}
    w = wire(plan, backends, rd / "net", hubs=not only_containers)
    ns = netns_name(fleet.name)
    nodes: dict[str, Any] = {}
    for node in fleet.nodes():
        if only_containers and backends[node] != "container":
            continue
        b = built[node]
        a = b.artifact
        _sock_ok(rd / node / "console.sock")
        entry: dict[str, Any] = {
            "kind": "container" if backends[node] == "container" else "vm",
            "artifact": str(a.extra.get("published_as") or a.image), "build": a.build,
            "toplevel": a.toplevel, "next_boot": str(next_boot_path(fleet.name, node)),
            "addresses": [str(x.ip) for x in plan.node(node).addresses()],
        }
        if backends[node] == "container":
            entry["ports"] = w.ports[node]
            entry["image"] = str(a.image)
        else:
            cfg = vm_config(a, net_args=w.net_args[node], snapshot=False,
                            memory=b.spec.memory)
            cfg.cpus = b.spec.cpus
            cfg.drives[0] = replace(cfg.drives[0], path=overlay_for(fleet.name, node, a),
                                    format="qcow2")
            cfg.agent = b.spec.agent or b.spec.demo
            cfg.netns = Path("/run/netns") / ns
            entry["config"] = config_to_json(cfg)
            entry["taps"] = w.taps[node]
            entry["switches"] = [w.switches[s]["argv"] for s in w.uses[node]]
        body = json.dumps(entry, sort_keys=True)
        entry["fingerprint"] = hashlib.sha256(body.encode()).hexdigest()[:16]
        nodes[node] = entry
    return {"fleet": fleet.name, "engine": "libvirt" if only_containers else "qemu",
            "netns": ns, "bridges": w.bridges, "switches": {} if only_containers else
            w.switches, "nodes": nodes,
            "source": str(fleet.source) if fleet.source else None}


# -- the supervisor, from the outside -----------------------------------------------------

def supervisor_alive(name: str) -> bool:
    """The supervisor holds its run dir's lock for as long as it lives."""
    try:
        return rundir.lock_held(run_dir(name) / LOCK)
    except OSError:
        return False


def request(name: str, message: dict[str, Any], *, timeout: float = 300.0) -> dict[str, Any]:
    """One request to the supervisor, one JSON reply."""
    path = run_dir(name) / SOCK
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except (OSError, TimeoutError) as exc:
            raise RunError(f"the supervisor did not answer: {exc}", where=f"fleet {name}",
                           hint=f"see {run_dir(name)}/supervisor.log") from None
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise RunError("the supervisor closed the connection", where=f"fleet {name}",
                       hint=f"see {run_dir(name)}/supervisor.log") from None
    if not reply.get("ok", False):
        raise RunError(str(reply.get("error", "failed")), where=f"fleet {name}",
                       hint=str(reply.get("hint") or f"see {run_dir(name)}/supervisor.log"))
    return reply


def start_supervisor(name: str, timeout: float = 15.0) -> None:
    """Start the fleet's supervisor, detached from this process, and wait for it."""
    rd = run_dir(name)
    rd.mkdir(mode=0o700, parents=True, exist_ok=True)
    (rd / SOCK).unlink(missing_ok=True)
    log = open(rd / "supervisor.log", "ab")  # noqa: SIM115
    try:
        proc = subprocess.Popen([sys.executable, "-m", "nixslave.runtime.supervisor", str(rd)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while True:
        if (rd / SOCK).exists() and supervisor_alive(name):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (rd / "supervisor.log").read_text(errors="replace").strip().splitlines()
            raise RunError(f"the supervisor did not start: {(tail or ['no output'])[-1]}",
                           where=f"fleet {name}", hint=f"see {rd}/supervisor.log")
        time.sleep(0.05)


def read_state(name: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((run_dir(name) / STATE).read_text())
    except (OSError, ValueError):
        return None
    return data


def status(name: str) -> dict[str, Any]:
    """The supervisor's view, or the last state it wrote (nodes then 'lost')."""
    if supervisor_alive(name):
        with contextlib.suppress(RunError):
            live: dict[str, Any] = request(name, {"op": "status"}, timeout=30)["state"]
            return live
    state = read_state(name)
    if state is None:
        raise RunError("the fleet is not running", where=f"fleet {name}",
                       hint="start it with nixslave up FLEET.yml")
    for n in state.get("nodes", {}).values():
        if n.get("state") in ("booting", "running"):
            n["state"] = "lost"
            n["pid"] = n["init_pid"] = None
    state["supervisor"] = None
    return state


def running_fleets() -> list[str]:
    """Fleets with a run directory (a live supervisor or leftovers)."""
    out = []
    for d in sorted(rundir.base().glob("fleet-*")):
        if d.is_dir():
            name = d.name.removeprefix("fleet-")
            with contextlib.suppress(ValueError):
                out.append(check_name(name))
    return out


def make_plan_of(fleet: Fleet) -> Plan:
    return make_plan(fleet.topology)


# -- up and down ---------------------------------------------------------------------------

def wait_markers(name: str, nodes: list[str], timeout: float,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Wait until each of ``nodes`` has printed its boot marker; the final state."""
    say = progress or (lambda _m: None)
    deadline = time.monotonic() + timeout
    pending = set(nodes)
    while True:
        state: dict[str, Any] = request(name, {"op": "status"}, timeout=60)["state"]
        for n in sorted(pending):
            node = state["nodes"].get(n, {})
            if node.get("booted"):
                pending.discard(n)
                say(f"{n} booted {node['booted']} in {node.get('boot_seconds')}s")
            elif node.get("state") == "exited":
                raise RunError(f"the guest stopped (exit {node.get('exitcode')}) before its "
                               "boot marker", where=f"node {n}",
                               hint=f"nixslave logs {n}; see {node.get('dir')}")
        if not pending:
            return state
        if time.monotonic() > deadline:
            n = sorted(pending)[0]
            raise RunError(f"no boot marker within {timeout:.0f}s", where=f"node {n}",
                           hint=f"nixslave logs {n}; raise --timeout under TCG")
        time.sleep(0.5)


def up(fleet: Fleet, *, timeout: float = 600.0,
       progress: Progress | None = None) -> dict[str, Any]:
    """Build what is missing or stale, start or rewire what changed, wait for markers."""
    say = progress or (lambda _m: None)
    plan = make_plan_of(fleet)
    with ops_lock(fleet.name):
        if (run_dir(fleet.name) / "libvirt.json").exists():
            raise RunError("the fleet runs under libvirt", where=f"fleet {fleet.name}",
                           hint="nixslave down it first, or keep --engine libvirt")
        built = build(fleet, plan, progress=say)
        desired = describe(fleet, plan, built)
        if not supervisor_alive(fleet.name):
            say(f"starting the supervisor of fleet {fleet.name}")
            start_supervisor(fleet.name)
        report = request(fleet.name, {"op": "apply", "desired": desired}, timeout=900)["report"]
        for key in ("stopped", "restarted", "started"):
            if report[key]:
                say(f"{key} {', '.join(report[key])}")
        fresh = report["started"] + report["restarted"]
        state = wait_markers(fleet.name, fresh, timeout, say)
        _drop_stale_overlays(fleet.name, desired)
    return {"fleet": fleet.name, "report": report, "rebuilt": sorted(
        n for n, b in built.items() if b.rebuilt), "state": state,
        "changed": bool(fresh or report["stopped"])}


def _drop_stale_overlays(name: str, desired: dict[str, Any]) -> None:
    """Overlays of builds no node runs any more (their base is gone or going)."""
    keep = {Path(n["config"]["drives"][0]["path"]).name
            for n in desired["nodes"].values() if n["kind"] == "vm"}
    for p in artifacts_dir(name).glob("*-b-*.qcow2"):
        if p.name not in keep:
            p.unlink(missing_ok=True)


def down(name: str, nodes: list[str] | None = None, *, timeout: float = 20.0,
         progress: Progress | None = None) -> dict[str, Any]:
    """Stop some nodes, or the whole fleet: then nothing of it is left running.

    The whole fleet: the supervisor powers every guest off (killing what does
    not stop within ``timeout``), deletes the namespace with its bridges and
    taps, and exits; the run directory goes too.  If the supervisor was
    killed, its guests died with it, and what it left (namespace, run
    directory) is removed here.
    """
    say = progress or (lambda _m: None)
    with ops_lock(name):
        alive = supervisor_alive(name)
        if nodes:
            if not alive:
                raise RunError("the fleet is not running", where=f"fleet {name}",
                               hint="nothing to stop")
            request(name, {"op": "stop", "nodes": nodes, "timeout": timeout},
                    timeout=timeout * 3 + 60)
            say(f"stopped {', '.join(nodes)}")
            return {"fleet": name, "stopped": nodes}
        if alive:
            say(f"stopping fleet {name}")
            request(name, {"op": "shutdown", "timeout": timeout}, timeout=timeout * 3 + 60)
            deadline = time.monotonic() + 30
            while supervisor_alive(name) and time.monotonic() < deadline:
                time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", netns_name(name)], capture_output=True)
        rd = run_dir(name)
        if rd.exists():
            from nixslave.root import force_rmtree
            force_rmtree(rd)
        (rundir.base() / f"fleet-{name}.lock").unlink(missing_ok=True)
    return {"fleet": name, "stopped": "all"}
