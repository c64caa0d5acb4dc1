"""Boot artifacts under qemu for the demo, the tests and small fleets.

A :class:`VM` owns one qemu process: its serial console goes to a log file
(and optionally the terminal), a QMP socket allows a clean power-off, and the
process is killed on every exit path so no qemu outlives its caller.  KVM is
used when a real boot proves it works, TCG otherwise (said once).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from nixslave import nixos
from nixslave.backends import Artifact, storebind
from nixslave.errors import RunError
from nixslave.nixos import STORE_TAG
from nixslave.runtime import accel
from nixslave.runtime.console import ConsoleProcess

BOOT_MARKER = nixos.BOOT_MARKER  # the same line from the demo init and the NixOS unit
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
# Debian 12's ovmf: code and variable store come in matched pairs (a 4 MiB
# code image needs the 4 MiB variable store); the 4 MiB build is preferred.
# The plain (not .secboot/.ms) code has Secure Boot off, so the unsigned UKI
# of a uefi disk runs.
OVMF_DIR = Path("/usr/share/OVMF")
OVMF_PAIRS = (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd"))
VARS_COPY = "OVMF_VARS.fd"  # the VM's own variable store, in its run directory


@dataclass(frozen=True)
class Drive:
    path: Path
    format: str = "qcow2"
    serial: str = ""
    readonly: bool = False
    snapshot: bool = False  # writes go to a temporary overlay


@dataclass(frozen=True)
class Share:
    path: Path
    tag: str = "nixstore"
    kind: str = "9p"  # or virtiofs
    msize: int = 262144
    # zero copy: the store paths bind-mounted onto ``path`` in the private
    # mount namespace of qemu (9p) or virtiofsd; None serves ``path`` as is
    closure: tuple[str, ...] | None = None

    def view(self) -> Callable[[], None]:
        """The ``preexec_fn`` part that gives the serving process its view."""
        if self.closure is not None:
            return storebind.closure_view(self.path, list(self.closure))
        return storebind.readonly_view(self.path)


@dataclass
class VMConfig:
    """Everything qemu needs; built from an artifact and the topology plan."""

    name: str
    memory: int = 512
    cpus: int = 1
    drives: list[Drive] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)
    kernel: Path | None = None  # direct boot when set
    initrd: Path | None = None
    append: str = ""
    net_args: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    firmware: tuple[Path, Path] | None = None  # UEFI: OVMF code and variable template
    # A virtio-serial port named org.qemu.guest_agent.0 on <rundir>/qga.sock,
    # where qemu-ga (NixOS) or the demo's agent answers the host.
    agent: bool = False
    # Run qemu inside this network namespace: its taps appear there, never
    # in the host's namespace (unix sockets work across namespaces).
    netns: Path | None = None

    def prepare(self, rundir: Path) -> None:
        """Give the VM its own UEFI variable store (pflash unit 1 is writable).

        Writing to the template (or sharing one copy between guests) would
        let one guest's boot entries steer another's firmware; an existing
        copy is kept so that a guest's own entries survive a restart.
        """
        if self.firmware is not None and not (rundir / VARS_COPY).exists():
            shutil.copyfile(self.firmware[1], rundir / VARS_COPY)

    def qemu_argv(self, rundir: Path, acc: accel.Accel) -> list[str]:
        argv = [accel.QEMU, *acc.qemu_args, "-name", self.name, "-m", str(self.memory),
                "-smp", str(self.cpus), "-display", "none", "-nodefaults", "-no-reboot",
                "-chardev", f"socket,id=con0,path={rundir}/console.sock,server=on,wait=off,"
                            f"logfile={rundir}/console.log,logappend=off",
                "-serial", "chardev:con0",
                "-qmp", f"unix:{rundir}/qmp.sock,server=on,wait=off"]
        if self.firmware is not None:
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={self.firmware[0]}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={rundir / VARS_COPY}"]
        if self.kernel is not None:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
            argv += ["-append", self.append]
        for i, d in enumerate(self.drives):
            opts = [f"file={d.path}", f"format={d.format}", "if=none", f"id=drive{i}"]
            if d.readonly:
                opts.append("readonly=on")
            if d.snapshot:
                opts.append("snapshot=on")
            argv += ["-drive", ",".join(opts)]
            dev = f"virtio-blk-pci,drive=drive{i}"
            if d.serial:
                dev += f",serial={d.serial}"
            if i == 0 and self.kernel is None:
                dev += ",bootindex=1"
            argv += ["-device", dev]
        for i, s in enumerate(self.shares):
            if s.kind == "9p":
                argv += ["-fsdev", f"local,id=fs{i},path={s.path},security_model=none,readonly=on",
                         "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={s.tag}"]
            else:
                argv += ["-chardev", f"socket,id=vfs{i},path={rundir}/virtiofs{i}.sock",
                         "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag={s.tag}",
                         "-object", f"memory-backend-memfd,id=mem,size={self.memory}M,share=on",
                         "-numa", "node,memdev=mem"]
        if self.agent:
            argv += ["-chardev", f"socket,id=qga0,path={rundir}/qga.sock,server=on,wait=off",
                     "-device", "virtio-serial-pci,id=vser0",
                     "-device", "virtserialport,bus=vser0.0,chardev=qga0,"
                                "name=org.qemu.guest_agent.0"]
        argv += self.net_args + self.extra_args
        if self.netns is not None:
            # nsenter execs qemu in place: same pid, PR_SET_PDEATHSIG kept.
            argv = ["nsenter", f"--net={self.netns}", "--", *argv]
        return argv


def _die_with_parent() -> None:
    """Run in the child before exec: qemu dies if nixslave is killed outright.

    Every normal exit path already stops the guest; this covers SIGKILL of
    the Python process, after which no ``finally`` runs.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


class VM(ConsoleProcess):
    """One running qemu guest."""

    program = "qemu"
    stderr_name = "qemu.stderr"
    timeout_hint = "; raise the timeout under TCG"

    def __init__(self, config: VMConfig, rundir: Path | None = None, *,
                 echo: bool = False) -> None:
        self.config = config
        self._own_rundir = rundir is None
        self.rundir = Path(rundir or tempfile.mkdtemp(prefix=f"nixslave-{config.name}-"))
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.proc: subprocess.Popen[bytes] | None = None
        self._echo_pos = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def where(self) -> str:
        return f"vm {self.config.name}"

    def start(self) -> VM:
        acc = accel.detect()
        accel.announce(acc)
        for sock in ("console.sock", "qmp.sock", "qga.sock"):
            (self.rundir / sock).unlink(missing_ok=True)
        self._start_virtiofsd()
        self.config.prepare(self.rundir)
        argv = self.config.qemu_argv(self.rundir, acc)
        (self.rundir / "qemu.argv").write_text(json.dumps(argv, indent=1))
        self._stderr = open(self.rundir / "qemu.stderr", "wb")  # noqa: SIM115
        views = [s.view() for s in self.config.shares if s.kind == "9p" and s.closure is not None]

        def enter() -> None:
            _die_with_parent()
            for view in views:  # qemu serves 9p itself: the view is qemu's
                view()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr, preexec_fn=enter)
        return self

    def _start_virtiofsd(self) -> None:
        """One virtiofsd per virtiofs share; the guest mounts it read-only."""
        self._daemons: list[subprocess.Popen[bytes]] = []
        for i, share in enumerate(self.config.shares):
            if share.kind != "virtiofs":
                continue
            if not VIRTIOFSD.exists():
                raise RunError(f"{VIRTIOFSD} is missing", where=f"vm {self.config.name}",
                               hint="apt-get install qemu-system-common, or use --share 9p")
            sock = self.rundir / f"virtiofs{i}.sock"
            sock.unlink(missing_ok=True)
            log = open(self.rundir / f"virtiofsd{i}.log", "wb")  # noqa: SIM115
            view = share.view()

            def enter(view: Callable[[], None] = view) -> None:
                _die_with_parent()
                view()

            self._daemons.append(subprocess.Popen(
                [str(VIRTIOFSD), f"--socket-path={sock}", "-o", f"source={share.path}",
                 "-o", "cache=auto", "-o", "sandbox=chroot"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=enter))
            deadline = time.monotonic() + 10
            while not sock.exists():
                if self._daemons[-1].poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RunError("virtiofsd did not start", where=f"vm {self.config.name}",
                                   hint=f"see {self.rundir}/virtiofsd{i}.log")
                time.sleep(0.05)

    def wait_for(self, pattern: str, timeout: float = 180.0) -> re.Match[str]:
        """Wait until the console shows ``pattern`` (a regex)."""
        return self._wait_for(pattern, timeout)

    def wait_boot(self, toplevel: str | None = None, timeout: float = 180.0) -> str:
        """Wait for the boot marker; returns the toplevel the guest reported."""
        return self._wait_boot(toplevel, timeout)

    def send_console(self, line: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.rundir / "console.sock"))
            s.sendall(line.encode() + b"\n")
            time.sleep(0.2)

    def qmp(self, command: str) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.rundir / "qmp.sock"))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                while True:
                    reply: dict[str, object] = json.loads(f.readline() or b"{}")
                    if "event" not in reply:
                        break
            return reply

    def shutdown(self, timeout: float = 20.0) -> int | None:
        """Ask the guest to power off, then make sure qemu is gone."""
        if self.proc is None:
            return None
        if self.alive():
            for ask in (lambda: self.send_console("poweroff"),
                        lambda: self.qmp("system_powerdown")):
                with suppress(OSError):
                    ask()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    self.qmp("quit")
                    self.proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        for d in getattr(self, "_daemons", []):
            if d.poll() is None:
                d.kill()
            d.wait()
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if hasattr(self, "_stderr"):
            self._stderr.close()

    def __enter__(self) -> VM:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(timeout=10 if exc[0] is None else 2)
        if self._own_rundir and exc[0] is None:
            shutil.rmtree(self.rundir, ignore_errors=True)


@contextmanager
def helpers(argvs: Sequence[tuple[Sequence[str], Path | None]], rundir: Path,
            timeout: float = 10.0) -> Iterator[None]:
    """Start helper daemons (vde_switch hubs), wait until each is ready, stop them after.

    Each entry is an argv and the path whose existence says it is ready.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, (argv, _ready) in enumerate(argvs):
            log = open(rundir / f"helper{i}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=log,
                                          stderr=log, preexec_fn=_die_with_parent))
        deadline = time.monotonic() + timeout
        for p, (argv, ready) in zip(procs, argvs, strict=True):
            while ready is not None and not ready.exists():
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RunError(f"{argv[0]} did not start (exit {p.poll()})",
                                   where="network", hint=f"see {rundir}/helper*.log")
                time.sleep(0.05)
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


@contextmanager
def fleet(configs: Sequence[VMConfig], rundir: Path, *,
          helper_argvs: Sequence[tuple[Sequence[str], Path | None]] = (),
          echo: bool = False) -> Iterator[dict[str, VM]]:
    """Run several VMs of one topology at once; all are stopped on exit."""
    with ExitStack() as stack:
        stack.enter_context(helpers(helper_argvs, rundir))
        vms: dict[str, VM] = {}
        for c in configs:
            vm = VM(c, rundir / c.name, echo=echo)
            stack.callback(vm.kill)
            vms[c.name] = vm.start()
        try:
            yield vms
        finally:
            threads = [threading.Thread(target=vm.shutdown, kwargs={"timeout": 10})
                       for vm in vms.values()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()


def vm_config(artifact: Artifact, *, net_args: Sequence[str] = (), snapshot: bool = True,
              memory: int | None = None) -> VMConfig:
    """The host's side of an artifact: drives, shares and (direct) boot files.

    ``snapshot`` keeps the image pristine: guest writes go to a throw-away
    overlay, which is what tests and demos want.
    """
    if artifact.kind != "disk":
        raise RunError(f"cannot boot a {artifact.kind} artifact under qemu",
                       where=artifact.name, hint="use the container runner")
    if not artifact.image.exists():
        raise RunError("the image is missing", where=str(artifact.image),
                       hint="rebuild it with nixslave image build")
    drives = [Drive(artifact.image, artifact.format, serial="nixslave-root",
                    snapshot=snapshot)]
    if artifact.store_image is not None:
        drives.append(Drive(artifact.store_image, artifact.format, serial="nixslave-store",
                            readonly=True))
    shares = []
    if artifact.share_dir is not None:
        closure = None
        if artifact.extra.get("shareMethod") == "bind":
            closure = _share_closure(artifact)
        shares.append(Share(artifact.share_dir, tag=STORE_TAG, kind=artifact.store,
                            closure=closure))
    cfg = VMConfig(name=artifact.name, memory=memory or artifact.memory, cpus=artifact.cpus,
                   drives=drives, shares=shares, net_args=list(net_args))
    if artifact.boot == "direct":
        top = Path(artifact.toplevel)
        if not (top / "kernel").exists():
            raise RunError(f"{artifact.toplevel} is not in the host store",
                           where=artifact.name,
                           hint="direct boot reads the kernel from the host store; "
                                "rebuild the image or restore its GC root")
        cfg.kernel, cfg.initrd, cfg.append = top / "kernel", top / "initrd", artifact.cmdline
    elif artifact.boot == "uefi":
        # No -kernel: the firmware starts the UKI on the disk's ESP.
        cfg.firmware = ovmf_firmware()
    return cfg


def _share_closure(artifact: Artifact) -> tuple[str, ...]:
    """The paths a zero-copy share serves: exactly the toplevel's closure.

    They come from the host store at every start, like a direct boot's
    kernel: the artifact's GC root keeps them there.
    """
    from nixslave import nix
    from nixslave.errors import NixError

    if not storebind.available():
        raise RunError("a zero-copy shared store needs a private mount namespace",
                       where=artifact.name, hint="run as root, or rebuild the image as "
                       "non-root to get a hardlink tree")
    try:
        return tuple(nix.closure(artifact.toplevel))
    except NixError:
        raise RunError(f"{artifact.toplevel} is not in the host store", where=artifact.name,
                       hint="a shared store is served from the host store; rebuild the "
                            "image or restore its GC root") from None


def ovmf_firmware(directory: Path = OVMF_DIR) -> tuple[Path, Path]:
    """The first installed OVMF code image and its matching variable template."""
    for code, tmpl in OVMF_PAIRS:
        if (directory / code).is_file() and (directory / tmpl).is_file():
            return directory / code, directory / tmpl
    raise RunError(f"no OVMF firmware in {directory}", where="uefi boot",
                   hint="apt-get install ovmf")
