"""The fleet supervisor: one small detached process that owns a fleet's guests.

``nixslave up`` starts it (``python -m nixslave.runtime.supervisor RUNDIR``)
in a session of its own, so it outlives the command.  It holds ``RUNDIR/lock``
for as long as it lives (that is how everyone else tells a live fleet from
leftovers) and answers one JSON request per connection on
``RUNDIR/supervisor.sock`` (mode 0600, in a 0700 directory):

* ``apply`` with the launch description of every node (see
  :func:`nixslave.runtime.fleet.describe`): nodes whose description
  (``fingerprint``) differs from what runs are restarted, new ones started,
  removed ones stopped; unchanged nodes are not touched;
* ``stop`` / ``restart`` of some nodes, ``status``, ``shutdown``.

Every qemu, nspawn (through ``unshare --kill-child``) and vde_switch is its
child with PR_SET_PDEATHSIG, started from the main thread (the signal
follows the thread that forked, not the process): if the supervisor is
killed outright, the kernel kills every guest with it.  Nothing else writes
``state.json``; it is rewritten (temp file + rename) whenever a node
changes state, and the main loop watches every console for the boot marker
(``NIXSLAVE-BOOT-OK``) and the demo's switch marker.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from nixslave import nix
from nixslave.backends import Artifact, publish
from nixslave.errors import NixslaveError, RunError
from nixslave.runtime.agent import QGA, container_init
from nixslave.runtime.container import Container, _attach
from nixslave.runtime.fleet import DESIRED, LOCK, SOCK, STATE, config_from_json, write_json
from nixslave.runtime.run import VM, _die_with_parent
from nixslave.spec import check_name

BOOT_RE = re.compile(r"NIXSLAVE-BOOT-OK (/nix/store/\S+)")
SWITCH_RE = re.compile(r"NIXSLAVE-SWITCH-OK (/nix/store/\S+)")
STORE_RE = re.compile(r"/nix/store/[0-9a-z]{32}-[^/\s]+")


def _ip(*args: str, check: bool = True) -> bool:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RunError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}", where="network",
                       hint="network namespaces and bridges need root")
    return proc.returncode == 0


class Node:
    """One running (or stopped) guest and what the supervisor knows of it."""

    def __init__(self, name: str, entry: dict[str, Any], rd: Path) -> None:
        self.name = check_name(name)  # it becomes a directory name
        self.entry = entry
        self.dir = rd / name
        self.vm: VM | None = None
        self.ct: Container | None = None
        self.state = "stopped"
        self.started = 0.0
        self.booted: str | None = None
        self.boot_seconds: float | None = None
        self.current: str | None = None
        self.exitcode: int | None = None
        self.pos = 0
        self._hold: int | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.vm.proc if self.vm else self.ct.proc if self.ct else None

    def alive(self) -> bool:
        p = self.proc
        return p is not None and p.poll() is None

    def next_boot(self) -> dict[str, Any] | None:
        """The system ``switch`` confirmed for this build, if any."""
        try:
            nb = json.loads(Path(self.entry["next_boot"]).read_text())
        except (OSError, ValueError, KeyError):
            return None
        if nb.get("build") != self.entry["build"] or not STORE_RE.fullmatch(
                str(nb.get("toplevel", ""))):
            return None
        return dict(nb)

    def start(self, netns: str) -> None:
        """Start the guest; only the main thread may call this (PR_SET_PDEATHSIG)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        nb = self.next_boot()
        self.booted = self.current = None
        self.boot_seconds = self.exitcode = None
        self.pos = 0
        # the last run's markers must not count for this one
        (self.dir / "console.log").unlink(missing_ok=True)
        if self.entry["kind"] == "vm":
            cfg = config_from_json(self.entry["config"])
            if nb is not None and self.entry.get("config", {}).get("kernel"):
                top = Path(nb["toplevel"])
                cfg.kernel, cfg.initrd, cfg.append = top / "kernel", top / "initrd", nb["append"]
                # a zero-copy share serves exactly the booted system's closure
                cfg.shares = [replace(sh, closure=tuple(nix.closure(top)))
                              if sh.closure is not None else sh for sh in cfg.shares]
            self._hold = publish.hold(Path(os.path.realpath(self.entry["artifact"])).parent)
            self.vm = VM(cfg, self.dir)
            self.vm.start()
        else:
            art = Artifact.load(Path(self.entry["artifact"]))
            extra = [f"{nb['toplevel']}/init"] if nb is not None else []
            self.ct = Container(art, self.dir, switch_netns=Path("/run/netns") / netns,
                                volatile=False, extra_args=extra)
            self.ct.start()
        self.started = time.time()
        self.state = "booting"

    def wire(self, ns: str, timeout: float = 30.0) -> None:
        """Put the guest's taps (VM) or veth host ends (container) on their bridges."""
        if self.ct is not None:
            ports: dict[str, list[str]] = {}
            for port, br in self.entry.get("ports", {}).items():
                ports.setdefault(br, []).append(port)
            _attach(ns, ports, {self.name: self.ct}, timeout)
            return
        deadline = time.monotonic() + timeout
        for tap, t in self.entry.get("taps", {}).items():
            while not _ip("-n", ns, "link", "show", "dev", tap, check=False):
                if not self.alive() or time.monotonic() > deadline:
                    raise RunError(f"tap {tap} did not appear", where=f"node {self.name}",
                                   hint=f"see {self.dir}/qemu.stderr")
                time.sleep(0.05)
            _ip("-n", ns, "link", "set", "dev", tap, "mtu", str(t["mtu"]))
            _ip("-n", ns, "link", "set", "dev", tap, "master", t["bridge"])
            _ip("-n", ns, "link", "set", "dev", tap, "up")

    def stop(self, timeout: float) -> None:
        """Ask for a power-off (agent, then console and ACPI), kill after ``timeout``."""
        if self.vm is not None:
            if self.alive() and self.entry["config"].get("agent"):
                with suppress(NixslaveError, OSError, TimeoutError), \
                        QGA.connect(self.dir / "qga.sock", where=self.name, timeout=2) as q:
                    q.shutdown()
            self.vm.shutdown(timeout=timeout)
        elif self.ct is not None:
            self.ct.shutdown(timeout=timeout)
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None
        if self.state in ("booting", "running"):
            self.state = "stopped"

    def scan(self) -> bool:
        """Read new console output: boot and switch markers.  True if anything changed."""
        changed = False
        log = self.dir / "console.log"
        try:
            with open(log, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return False
        cut = data.rfind(b"\n") + 1
        self.pos += cut
        text = data[:cut].decode(errors="replace")
        for m in BOOT_RE.finditer(text):
            self.booted = self.current = m.group(1)
            self.boot_seconds = round(time.time() - self.started, 1)
            self.state = "running"
            changed = True
            with suppress(OSError, NixslaveError):
                nix.add_gcroot(f"{self.name}-booted", m.group(1))
        for m in SWITCH_RE.finditer(text):
            self.current = m.group(1)
            changed = True
        if self.state in ("booting", "running") and not self.alive():
            p = self.proc
            self.exitcode = p.returncode if p is not None else None
            self.state = "exited"
            if self._hold is not None:
                os.close(self._hold)
                self._hold = None
            changed = True
        return changed

    def to_json(self) -> dict[str, Any]:
        p = self.proc
        init = None
        if self.ct is not None and self.alive() and p is not None:
            init = container_init(p.pid)
        return {"kind": self.entry["kind"], "state": self.state,
                "pid": p.pid if p is not None and self.alive() else None,
                "init_pid": init, "started": self.started or None,
                "booted": self.booted, "current": self.current,
                "boot_seconds": self.boot_seconds, "toplevel": self.entry["toplevel"],
                "build": self.entry["build"], "exitcode": self.exitcode,
                "artifact": self.entry["artifact"],
                "fingerprint": self.entry["fingerprint"], "dir": str(self.dir),
                "addresses": self.entry.get("addresses", []),
                "agent": bool(self.entry.get("config", {}).get("agent"))}


class Supervisor:
    def __init__(self, rd: Path) -> None:
        self.rd = rd
        self.nodes: dict[str, Node] = {}
        self.switches: dict[str, tuple[list[str], subprocess.Popen[bytes]]] = {}
        self.bridges: set[str] = set()
        self.desired: dict[str, Any] = {}
        self.netns: str | None = None
        self.quit = False
        self.started = time.time()

    # -- state ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"fleet": self.desired.get("fleet"), "engine": "qemu",
                "supervisor": os.getpid(), "started": self.started, "netns": self.netns,
                "source": self.desired.get("source"), "bridges": sorted(self.bridges),
                "switches": {k: p.pid for k, (_a, p) in self.switches.items()},
                "nodes": {n: node.to_json() for n, node in sorted(self.nodes.items())}}

    def save(self) -> None:
        write_json(self.rd / STATE, self.state())

    # -- network -------------------------------------------------------------------
    def _netns(self, name: str) -> None:
        if self.netns == name:
            return
        if not Path(f"/run/netns/{name}").exists():
            _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        self.netns = name

    def _switch(self, seg: str, sw: dict[str, Any]) -> None:
        ready = Path(sw["ready"])
        for old in (ready.parent,):
            if old.exists():
                subprocess.run(["rm", "-rf", str(old)], check=False)
        log = open(self.rd / f"switch-{seg}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(sw["argv"], stdin=subprocess.PIPE, stdout=log, stderr=log,
                             preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + 10
        while not ready.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RunError(f"vde_switch for {seg} did not start", where="network",
                               hint=f"see {self.rd}/switch-{seg}.log")
            time.sleep(0.05)
        self.switches[seg] = (sw["argv"], p)

    def _stop_switch(self, seg: str) -> None:
        _argv, p = self.switches.pop(seg)
        if p.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    # -- operations ----------------------------------------------------------------
    def stop_nodes(self, names: list[str], timeout: float = 20.0) -> None:
        t0 = time.monotonic()
        threads = [threading.Thread(target=self.nodes[n].stop, args=(timeout,))
                   for n in names if n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if names:
            print(f"stopped {', '.join(names)} in {time.monotonic() - t0:.1f}s", flush=True)

    def apply(self, desired: dict[str, Any]) -> dict[str, list[str]]:
        """Make what runs match ``desired``; touch only what differs."""
        self.desired = desired
        write_json(self.rd / DESIRED, desired)
        want = desired["nodes"]
        report: dict[str, list[str]] = {"started": [], "restarted": [], "stopped": [],
                                        "kept": []}
        changed = [n for n, node in self.nodes.items()
                   if node.alive() and (n not in want
                                        or want[n]["fingerprint"] != node.entry["fingerprint"])]
        self.stop_nodes(changed)
        for n in list(self.nodes):
            if n not in want:
                if self.nodes[n].alive():
                    self.stop_nodes([n])
                del self.nodes[n]
                report["stopped"].append(n)
        for seg in [s for s, (argv, p) in self.switches.items()
                    if s not in desired["switches"] or desired["switches"][s]["argv"] != argv
                    or p.poll() is not None]:
            self._stop_switch(seg)
        self._netns(desired["netns"])
        (self.rd / "net").mkdir(mode=0o700, exist_ok=True)
        for br in sorted(self.bridges - set(desired["bridges"])):
            _ip("-n", self.netns or "", "link", "del", br, check=False)
            self.bridges.discard(br)
        for br in desired["bridges"]:
            if br not in self.bridges:
                if not _ip("-n", desired["netns"], "link", "show", "dev", br, check=False):
                    _ip("-n", desired["netns"], "link", "add", br, "type", "bridge")
                _ip("-n", desired["netns"], "link", "set", br, "up")
                self.bridges.add(br)
        for seg, sw in desired["switches"].items():
            if seg not in self.switches:
                self._switch(seg, sw)
        starting = []
        for n, entry in sorted(want.items()):
            node = self.nodes.get(n)
            if node is not None and node.alive() and node.entry["fingerprint"] == \
                    entry["fingerprint"]:
                node.entry = entry
                report["kept"].append(n)
                continue
            key = "restarted" if n in changed else "started"
            node = self.nodes[n] = Node(n, entry, self.rd)
            self._unlink_sockets(entry)
            node.start(desired["netns"])
            starting.append(node)
            report[key].append(n)
        self.save()
        for node in starting:
            node.wire(desired["netns"])
        self.save()
        return report

    @staticmethod
    def _unlink_sockets(entry: dict[str, Any]) -> None:
        """A restarted VM binds its dgram sockets again; the old files are in the way."""
        for arg in entry.get("config", {}).get("net_args", []):
            for m in re.finditer(r"local\.path=([^,]+)", arg):
                Path(m.group(1)).unlink(missing_ok=True)

    def restart(self, names: list[str]) -> None:
        self.stop_nodes(names, timeout=5)
        for n in names:
            node = self.nodes[n]
            fresh = self.nodes[n] = Node(n, node.entry, self.rd)
            self._unlink_sockets(node.entry)
            fresh.start(self.desired["netns"])
        self.save()
        for n in names:
            self.nodes[n].wire(self.desired["netns"])

    def shutdown(self, timeout: float = 20.0) -> None:
        self.stop_nodes(list(self.nodes), timeout)
        for seg in list(self.switches):
            self._stop_switch(seg)
        if self.netns is not None:
            _ip("netns", "del", self.netns, check=False)
        for n in self.nodes.values():
            n.scan()
        self.bridges.clear()
        self.save()

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "status":
            return {"ok": True, "state": self.state()}
        if op == "apply":
            return {"ok": True, "report": self.apply(msg["desired"])}
        if op == "shutdown":
            self.shutdown(float(msg.get("timeout", 20)))
            self.quit = True
            return {"ok": True}
        names = [str(n) for n in msg.get("nodes", [msg.get("node", "")])]
        unknown = [n for n in names if n not in self.nodes]
        if unknown:
            return {"ok": False, "error": f"no node {unknown[0]!r} in this fleet",
                    "hint": "see nixslave status"}
        if op == "stop":
            self.stop_nodes(names, float(msg.get("timeout", 20)))
            self.save()
            return {"ok": True}
        if op == "set-current":
            top = str(msg.get("toplevel", ""))
            if not STORE_RE.fullmatch(top):
                return {"ok": False, "error": f"{top!r} is not a store path"}
            self.nodes[str(msg.get("node"))].current = top
            self.save()
            return {"ok": True}
        if op == "restart":
            self.restart(names)
            return {"ok": True}
        return {"ok": False, "error": f"unknown operation {op!r}"}

    # -- main loop -----------------------------------------------------------------
    def serve(self) -> None:
        lock = os.open(self.rd / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another supervisor runs this fleet", file=sys.stderr)
            raise SystemExit(1) from None
        (self.rd / "supervisor.pid").write_text(f"{os.getpid()}\n")
        sock_path = self.rd / SOCK
        sock_path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            srv.bind(str(sock_path))
        finally:
            os.umask(old)
        srv.listen(16)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "quit", True))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.save()
        try:
            while not self.quit:
                if select.select([srv], [], [], 0.5)[0]:
                    conn, _ = srv.accept()
                    self._serve_one(conn)
                if any([n.scan() for n in self.nodes.values()]):
                    self.save()
        finally:
            if self.nodes and any(n.alive() for n in self.nodes.values()):
                self.shutdown(5)
            srv.close()
            sock_path.unlink(missing_ok=True)
            (self.rd / "supervisor.pid").unlink(missing_ok=True)
            os.close(lock)

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    data += chunk
                msg = json.loads(data)
                try:
                    reply = self.handle(msg)
                except NixslaveError as exc:
                    reply = {"ok": False, "error": f"{exc.where}: {exc.what}".strip(": "),
                             "hint": exc.hint}
                except Exception as exc:  # the supervisor must survive any request
                    traceback.print_exc()
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                conn.settimeout(30)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError):
                return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nixslave.runtime.supervisor RUNDIR", file=sys.stderr)
        return 2
    rd = Path(args[0])
    # Every socket of the fleet (qemu's console, QMP and agent ones, vde's)
    # is made by a child: none may be reachable by another user.
    os.umask(0o077)
    rd.mkdir(mode=0o700, parents=True, exist_ok=True)
    Supervisor(rd).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
