"""Run nspawn artifacts for the demo and the tests, as run.py runs qemu.

A :class:`Container` owns one ``systemd-nspawn`` process.  nspawn runs as
``--register=no --keep-unit`` (these machines have no system bus) with
``--settings=trusted``, so the artifact's ``.nspawn`` file decides what runs
(``Parameters=<toplevel>/init``) and how it is wired; nothing on the
command line repeats it.  The console (``--console=read-only``: a pty whose
output nspawn copies to its stdout) goes to ``console.log``, and the boot
marker is awaited there, as for a VM.  ``--volatile=overlay`` (the default)
puts a tmpfs over the tree, so a run never changes the artifact, like qemu's
``snapshot=on``.

nspawn and its container die with their caller and are killed on every
exit path.  A SIGKILLed nspawn leaves its container running, so nspawn runs
as PID 1 of a PID namespace of its own (``unshare --pid --fork
--kill-child``, which itself dies with the caller through
PR_SET_PDEATHSIG): when that namespace's PID 1 dies, the kernel kills every
process in it, the container's included.

Networks: with ``netns`` the container joins a namespace someone else made
(``--network-namespace-path``; the planned NICs must already be in it, as
:func:`nixslave.netconf.wiring.netns_plan` makes them).  Otherwise nspawn
follows the ``.nspawn`` file: one ``VirtualEthernetExtra=`` veth per planned
interface, whose host ends :func:`fleet` puts on one bridge per link or
segment inside a switch namespace of its own, so nothing touches the host's
network namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from nixslave import nixos
from nixslave.backends import Artifact, publish
from nixslave.errors import RunError
from nixslave.netconf.wiring import short_id
from nixslave.runtime.console import ConsoleProcess
from nixslave.runtime.launch import PING_RE, PINGS_DONE
from nixslave.runtime.run import _die_with_parent
from nixslave.spec import check_name

BOOT_MARKER = nixos.BOOT_MARKER
__all__ = ["PINGS_DONE", "Container", "fleet", "join_bridge", "pings", "switch_namespace"]
NSPAWN = "systemd-nspawn"
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RunError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}", where="network",
                       hint="network namespaces and bridges need root")


def _bridges_of(artifact: Artifact) -> dict[str, list[str]]:
    """The host bridges recorded by the nspawn backend, checked like any input."""
    raw = artifact.extra.get("nspawnBridges") or {}
    if not isinstance(raw, dict):
        raise RunError("extra.nspawnBridges is not an object", where=str(artifact.sidecar),
                       hint="rebuild the artifact")
    out: dict[str, list[str]] = {}
    for br, ports in raw.items():
        if not isinstance(ports, list) or not all(
                isinstance(p, str) and IFNAME_RE.match(p) for p in ports) \
                or not IFNAME_RE.match(str(br)):
            raise RunError(f"bad interface names for bridge {br!r}",
                           where=str(artifact.sidecar), hint="rebuild the artifact")
        out[str(br)] = list(ports)
    return out


class Container(ConsoleProcess):
    """One running systemd-nspawn container of an nspawn artifact."""

    program = "systemd-nspawn"
    stderr_name = "nspawn.stderr"
    poll_seconds = 0.1

    def __init__(self, artifact: Artifact, rundir: Path | None = None, *,
                 netns: Path | None = None, switch_netns: Path | None = None,
                 volatile: bool = True, echo: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        if artifact.kind != "nspawn":
            raise RunError(f"cannot run a {artifact.kind} artifact under systemd-nspawn",
                           where=artifact.name,
                           hint="build it with --format nspawn (or import the tar/OCI "
                                "image with machinectl/podman)")
        self.artifact = artifact
        self.root = Path(os.path.realpath(artifact.image))
        self.machine = check_name(self.root.name)
        self.settings = self.root.with_name(f"{self.machine}.nspawn")
        self.netns = netns
        self.switch_netns = switch_netns
        self.volatile = volatile
        self.echo = echo
        self.extra_args = list(extra_args)
        self._own_rundir = rundir is None
        self.rundir = Path(rundir or tempfile.mkdtemp(prefix=f"nixslave-{artifact.name}-"))
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self._hold: int | None = None
        self._echo_pos = 0

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def where(self) -> str:
        return f"container {self.artifact.name}"

    def argv(self) -> list[str]:
        """The command line; the program and the network come from the .nspawn file."""
        argv = [NSPAWN, "--register=no", "--keep-unit", "--quiet", "--settings=trusted",
                "--console=read-only", "-M", self.machine, "-D", str(self.root)]
        if self.volatile:
            argv.append("--volatile=overlay")
        if self.netns is not None:
            argv.append(f"--network-namespace-path={self.netns}")
        argv += self.extra_args
        # nspawn does not take its container down when it is killed: the
        # container's PID 1 outlives a SIGKILLed nspawn.  So nspawn runs as
        # PID 1 of a PID namespace of its own, whose parent (unshare) dies
        # with us and kills it (--kill-child); the kernel then kills every
        # process of that namespace, the nested container included.
        argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--", *argv]
        if self.switch_netns is not None:
            # nspawn creates the host ends of its veths in its own namespace
            argv = ["nsenter", f"--net={self.switch_netns}", "--", *argv]
        return argv

    def _nspawn_pid(self) -> int | None:
        """nspawn's pid as the host sees it (the child of unshare)."""
        if self.proc is None:
            return None
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        return int(kids.split()[0]) if kids.split() else None

    def start(self) -> Container:
        for path, what in ((self.root, "machine directory"), (self.settings, "settings file")):
            if not path.exists():
                raise RunError(f"the {what} is missing", where=str(path),
                               hint="rebuild it with nixslave image build --format nspawn")
        if shutil.which(NSPAWN) is None:
            raise RunError("systemd-nspawn is not installed", where="container runner",
                           hint="apt-get install systemd-container")
        # A shared lock on the build: a rebuild's sweep keeps the tree we run on.
        self._hold = publish.hold(self.root.parent)
        argv = self.argv()
        (self.rundir / "nspawn.argv").write_text("\n".join(argv) + "\n")
        self._log = open(self.console_log, "wb")  # noqa: SIM115
        self._err = open(self.rundir / "nspawn.stderr", "wb")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=self._err, preexec_fn=_die_with_parent)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until the console shows ``pattern`` (a regex)."""
        return self._wait_for(pattern, timeout)

    def wait_boot(self, toplevel: str | None = None, timeout: float = 60.0) -> str:
        """Wait for the boot marker; returns the toplevel the container reported."""
        return self._wait_boot(toplevel or self.artifact.toplevel, timeout)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the container to end by itself (the demo powers off)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunError(f"the container still runs after {timeout:.0f}s",
                           where=f"container {self.artifact.name}",
                           hint=f"see {self.console_log}") from None

    def shutdown(self, timeout: float = 5.0) -> int | None:
        """Ask for an orderly stop (nspawn sends KillSignal to PID 1), then kill."""
        if self.proc is None:
            return None
        pid = self._nspawn_pid()
        if self.alive() and pid is not None:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for f in ("_log", "_err"):
            if hasattr(self, f):
                getattr(self, f).close()
        if self._hold is not None:
            os.close(self._hold)
            self._hold = None

    def __enter__(self) -> Container:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(timeout=5 if exc[0] is None else 1)
        if self._own_rundir and exc[0] is None:
            shutil.rmtree(self.rundir, ignore_errors=True)


@contextmanager
def switch_namespace(name: str) -> Iterator[Path]:
    """A network namespace of our own for bridges and veth host ends; removed after."""
    if not IFNAME_RE.match(name):
        raise RunError(f"{name!r} is not a usable namespace name", where="network",
                       hint="use letters, digits and '-'")
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _attach(ns: str, bridges: dict[str, list[str]], containers: dict[str, Container],
            timeout: float) -> None:
    """Put each veth host end on its bridge as soon as nspawn has made it."""
    pending = [(br, port) for br, ports in bridges.items() for port in ports]
    deadline = time.monotonic() + timeout
    while pending:
        br, port = pending[0]
        have = subprocess.run(["ip", "-n", ns, "link", "show", "dev", port],
                              capture_output=True).returncode == 0
        if have:
            _ip("-n", ns, "link", "set", "dev", port, "master", br)
            _ip("-n", ns, "link", "set", "dev", port, "up")
            pending.pop(0)
            continue
        dead = [c for c in containers.values() if not c.alive()]
        if dead:
            raise RunError(f"systemd-nspawn exited ({dead[0]._exit_reason()}) before its "
                           f"veth {port} appeared", where=f"container {dead[0].artifact.name}",
                           hint=f"see {dead[0].rundir}/nspawn.stderr")
        if time.monotonic() > deadline:
            raise RunError(f"veth {port} did not appear within {timeout:.0f}s",
                           where="network", hint="check the .nspawn file's [Network] section")
        time.sleep(0.05)


def join_bridge(ns: str, ifname: str, bridge: str, *, timeout: float = 30.0) -> None:
    """Move a host link (a qemu VM's tap) into the switch namespace, onto ``bridge``.

    qemu creates its tap in the namespace it runs in; moving the device keeps
    qemu's file descriptor attached, so a VM joins a container's segment
    without running qemu inside the namespace.
    """
    for name in (ns, ifname, bridge):
        if not IFNAME_RE.match(name):
            raise RunError(f"{name!r} is not a usable interface or namespace name",
                           where="network", hint="use letters, digits and '-'")
    deadline = time.monotonic() + timeout
    while subprocess.run(["ip", "link", "show", "dev", ifname],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RunError(f"{ifname} did not appear within {timeout:.0f}s", where="network",
                           hint="check that qemu started with -netdev tap")
        time.sleep(0.05)
    _ip("link", "set", "dev", ifname, "netns", ns)
    _ip("-n", ns, "link", "set", "dev", ifname, "master", bridge)
    _ip("-n", ns, "link", "set", "dev", ifname, "up")


@contextmanager
def fleet(artifacts: Sequence[Artifact], rundir: Path, *, volatile: bool = True,
          echo: bool = False, namespace: str | None = None) -> Iterator[dict[str, Container]]:
    """Run nspawn artifacts of one topology, wired as their .nspawn files say.

    A switch namespace (``namespace``, or one named after ``rundir``) holds
    one bridge per planned link or segment and every veth host end; it is
    removed, and every container stopped, on the way out.
    """
    rundir = Path(rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    ns = namespace or f"nxs-{short_id(str(rundir.resolve()), n=10)}"
    bridges: dict[str, list[str]] = {}
    for a in artifacts:
        for br, ports in _bridges_of(a).items():
            bridges.setdefault(br, []).extend(ports)
    with ExitStack() as stack:
        ns_path = stack.enter_context(switch_namespace(ns))
        for br in bridges:
            _ip("-n", ns, "link", "add", br, "type", "bridge")
            _ip("-n", ns, "link", "set", br, "up")
        containers: dict[str, Container] = {}
        for a in artifacts:
            c = Container(a, rundir / a.name, switch_netns=ns_path, volatile=volatile,
                          echo=echo)
            stack.callback(c.kill)
            containers[a.name] = c.start()
        try:
            _attach(ns, bridges, containers, timeout=30)
            yield containers
        finally:
            threads = [threading.Thread(target=c.shutdown, kwargs={"timeout": 3})
                       for c in containers.values()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()


def pings(text: str) -> dict[str, bool]:
    """``NIXSLAVE-PING <addr> ok|fail`` lines of a demo console (as launch.py reads them)."""
    return {m.group(1): m.group(2) == "ok" for m in PING_RE.finditer(text)}
