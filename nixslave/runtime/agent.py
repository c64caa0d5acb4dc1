"""The host's control channel into a running guest: exec, files, ping.

VMs speak the QEMU guest agent protocol (qemu's ``qga/qapi-schema.json``)
on a virtio-serial port named ``org.qemu.guest_agent.0``: qemu-ga on NixOS
(``services.qemuGuest.enable``), a small busybox agent in the demo system.
Both answer the same subset, so one client serves both:

* ``guest-sync`` (resynchronise after a client that died mid-reply),
* ``guest-ping``,
* ``guest-exec`` with ``input-data`` (the script arrives on stdin, so no
  argument needs quoting inside the guest) and ``capture-output``, then
  ``guest-exec-status`` until it has exited (output base64),
* ``guest-file-open``/``-write``/``-read``/``-close``,
* ``guest-shutdown``.

Containers have no such port: the host enters the namespaces of the
container's PID 1 with ``nsenter`` instead.

The channel is host-only: a unix socket in the fleet's 0700 run directory
(or libvirt's own agent socket); nothing listens on a guest network.  One
client at a time may talk on a port (qemu serves one connection), so
clients take an exclusive lock beside the socket.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nixslave.errors import RunError

GUEST_PATH = "/run/current-system/sw/bin:/run/wrappers/bin"
CHUNK = 48 * 1024  # raw bytes per guest-file-write (64 KiB of base64)


@dataclass
class ExecResult:
    """What a command run in the guest did."""

    exitcode: int
    stdout: bytes
    stderr: bytes

    def to_json(self) -> dict[str, object]:
        return {"exitcode": self.exitcode, "stdout": self.stdout.decode(errors="replace"),
                "stderr": self.stderr.decode(errors="replace")}


def shell_script(argv: Sequence[str], *, env_path: str = GUEST_PATH) -> str:
    """A script that runs ``argv`` with the system's own PATH.

    The guest-exec path is ``/bin/sh`` (NixOS makes it, the demo's
    activation too), and the command travels on stdin: quoting survives
    any agent, since the JSON holds only base64.
    """
    return f"export PATH={env_path}:$PATH\nexec {shlex.join(argv)}\n"


class Control(Protocol):
    """What the fleet needs from a guest, whatever carries it."""

    def ping(self, timeout: float = 5.0) -> None: ...

    def run(self, argv: Sequence[str], *, timeout: float = 60.0,
            stdin: bytes = b"") -> ExecResult: ...

    def write_file(self, path: str, data: bytes, *,
                   progress: Callable[[int, int], None] | None = None) -> None: ...

    def shutdown(self) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def call(self, request: dict[str, Any], timeout: float) -> Any: ...

    def send(self, request: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class SocketTransport:
    """A unix socket that qemu's chardev serves; newline-delimited JSON."""

    def __init__(self, path: Path, *, where: str, timeout: float = 10.0) -> None:
        self.where = where
        self.path = Path(path)
        # qemu serves one client at a time; a second would wait unserved.
        self._lock = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._lock)
                    raise RunError("another client holds the guest agent", where=where,
                                   hint="wait for the other exec/switch to finish") from None
                time.sleep(0.1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(str(self.path))
        except OSError as exc:
            self.close()
            raise RunError(f"cannot connect to the guest agent socket: {exc.strerror or exc}",
                           where=where, hint="is the node running? see nixslave status"
                           ) from None
        self._buf = b""

    def send(self, request: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RunError("the guest agent socket closed", where=self.where,
                               hint="the VM stopped or restarted")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _reply(self, deadline: float) -> Any:
        while True:
            line = self._line(deadline).strip(b"\xff \r\t")
            if not line:
                continue
            try:
                return json.loads(line)
            except ValueError:
                continue  # a fragment of an earlier client's reply

    def call(self, request: dict[str, Any], timeout: float) -> Any:
        self.send(request)
        return self._reply(time.monotonic() + timeout)

    def sync(self, timeout: float) -> None:
        """guest-sync with a fresh id: every reply before ours is stale.

        A client killed mid-exchange leaves its reply in the channel; the
        agent may also still be booting, so the request is repeated until
        the deadline.
        """
        token = secrets.randbelow(1 << 30) + 1
        deadline = time.monotonic() + timeout
        while True:
            self.send({"execute": "guest-sync", "arguments": {"id": token}})
            try:
                step = time.monotonic() + min(2.0, max(0.1, deadline - time.monotonic()))
                while True:
                    reply = self._reply(step)
                    if isinstance(reply, dict) and reply.get("return") == token:
                        return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RunError(f"the guest agent did not answer within {timeout:.0f}s",
                                   where=self.where,
                                   hint="has the guest booted with its agent? (nixslave "
                                        "status, nixslave logs)") from None

    def close(self) -> None:
        if getattr(self, "sock", None) is not None:
            self.sock.close()
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


class QGA:
    """The guest agent protocol over a transport (a socket or libvirt)."""

    def __init__(self, transport: Transport, *, where: str) -> None:
        self.t = transport
        self.where = where

    @classmethod
    def connect(cls, sock: Path, *, where: str, timeout: float = 10.0) -> QGA:
        """Connect and resynchronise: replies of an earlier client are skipped."""
        t = SocketTransport(sock, where=where, timeout=timeout)
        try:
            t.sync(timeout)
        except BaseException:
            t.close()
            raise
        return cls(t, where=where)

    def close(self) -> None:
        self.t.close()

    def __enter__(self) -> QGA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, execute: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = 30.0) -> Any:
        request: dict[str, Any] = {"execute": execute}
        if arguments is not None:
            request["arguments"] = arguments
        try:
            reply = self.t.call(request, timeout)
        except TimeoutError:
            raise RunError(f"{execute}: no answer within {timeout:.0f}s", where=self.where,
                           hint="the guest may be hung; see nixslave logs") from None
        if "error" in reply:
            err = reply["error"]
            raise RunError(f"{execute}: {err.get('desc', err)}", where=self.where,
                           hint="see the guest agent's log in the guest")
        return reply.get("return")

    def ping(self, timeout: float = 5.0) -> None:
        self.command("guest-ping", timeout=timeout)

    def run(self, argv: Sequence[str], *, timeout: float = 60.0,
            stdin: bytes = b"") -> ExecResult:
        """Run ``argv`` through /bin/sh; ``stdin`` follows the script if given."""
        script = shell_script(argv).encode()
        if stdin:
            raise RunError("stdin is not supported through the guest agent", where=self.where,
                           hint="write a file with write_file first")
        return self.exec_script(script, timeout=timeout)

    def exec_script(self, script: bytes, *, timeout: float = 60.0) -> ExecResult:
        started = self.command("guest-exec", {
            "path": "/bin/sh", "input-data": base64.b64encode(script).decode(),
            "capture-output": True})
        pid = int(started["pid"])
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            st = self.command("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                code = st.get("exitcode")
                if code is None:
                    code = 128 + int(st.get("signal", 0))
                return ExecResult(int(code), base64.b64decode(st.get("out-data", "")),
                                  base64.b64decode(st.get("err-data", "")))
            if time.monotonic() > deadline:
                raise RunError(f"the command still runs after {timeout:.0f}s",
                               where=self.where, hint="raise --timeout")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def write_file(self, path: str, data: bytes, *,
                   progress: Callable[[int, int], None] | None = None) -> None:
        handle = self.command("guest-file-open", {"path": path, "mode": "w"})
        try:
            done = 0
            for off in range(0, len(data), CHUNK):
                piece = data[off:off + CHUNK]
                r = self.command("guest-file-write", {
                    "handle": handle, "buf-b64": base64.b64encode(piece).decode()})
                if int(r.get("count", -1)) != len(piece):
                    raise RunError(f"short write to {path}", where=self.where,
                                   hint="is the guest's disk full?")
                done += len(piece)
                if progress is not None:
                    progress(done, len(data))
        finally:
            self.command("guest-file-close", {"handle": handle})

    def read_file(self, path: str, *, limit: int = 16 << 20) -> bytes:
        handle = self.command("guest-file-open", {"path": path, "mode": "r"})
        out = b""
        try:
            while len(out) < limit:
                r = self.command("guest-file-read", {"handle": handle, "count": CHUNK})
                out += base64.b64decode(r.get("buf-b64", ""))
                if r.get("eof") or not r.get("count"):
                    break
        finally:
            self.command("guest-file-close", {"handle": handle})
        return out

    def shutdown(self) -> None:
        """guest-shutdown: qemu-ga sends no reply when it works."""
        self.t.send({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}})


# -- containers ----------------------------------------------------------------------

def _nspid(pid: int) -> list[str]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:]
    except OSError:
        pass
    return []


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def container_init(root_pid: int) -> int | None:
    """The host pid of a container's PID 1 below ``root_pid`` (unshare or nspawn).

    The container's init is the first descendant that is PID 1 of a PID
    namespace deeper than its parent's (nspawn itself is PID 1 of the
    namespace unshare made for it).
    """
    queue = [root_pid]
    while queue:
        pid = queue.pop(0)
        kids = _children(pid)
        for k in kids:
            ns = _nspid(k)
            if ns and ns[-1] == "1" and len(ns) >= 3:
                return k
        queue.extend(kids)
    return None


class NsenterControl:
    """A container's control channel: nsenter into its PID 1's namespaces."""

    def __init__(self, init_pid: int, *, where: str) -> None:
        self.pid = init_pid
        self.where = where

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                "--", *argv]

    def ping(self, timeout: float = 5.0) -> None:
        if not Path(f"/proc/{self.pid}").exists():
            raise RunError("the container's init is gone", where=self.where,
                           hint="see nixslave status and nixslave logs")

    def run(self, argv: Sequence[str], *, timeout: float = 60.0,
            stdin: bytes = b"") -> ExecResult:
        script = shell_script(argv)
        return self._sh(script, timeout=timeout, stdin=stdin)

    def exec_script(self, script: bytes, *, timeout: float = 60.0) -> ExecResult:
        return self._sh(script.decode(), timeout=timeout)

    def _sh(self, script: str, *, timeout: float, stdin: bytes = b"") -> ExecResult:
        self.ping()
        try:
            proc = subprocess.run(self._argv(["/bin/sh", "-c", script]), input=stdin,
                                  capture_output=True, timeout=timeout,
                                  env={"PATH": "/usr/bin:/bin", "HOME": "/"})
        except subprocess.TimeoutExpired:
            raise RunError(f"the command still runs after {timeout:.0f}s", where=self.where,
                           hint="raise --timeout") from None
        return ExecResult(proc.returncode, proc.stdout, proc.stderr)

    def write_file(self, path: str, data: bytes, *,
                   progress: Callable[[int, int], None] | None = None) -> None:
        r = self._sh(f"cat > {shlex.quote(path)}", timeout=600, stdin=data)
        if r.exitcode != 0:
            raise RunError(f"cannot write {path}: {r.stderr.decode(errors='replace').strip()}",
                           where=self.where, hint="is the container's disk full?")
        if progress is not None:
            progress(len(data), len(data))

    def read_file(self, path: str, *, limit: int = 16 << 20) -> bytes:
        r = self._sh(f"head -c {int(limit)} {shlex.quote(path)}", timeout=60)
        if r.exitcode != 0:
            raise RunError(f"cannot read {path}", where=self.where, hint="check the path")
        return r.stdout

    def shutdown(self) -> None:
        os.kill(self.pid, 37)  # SIGRTMIN+3, systemd's power-off (and the demo's)

    def close(self) -> None:
        pass

    def __enter__(self) -> NsenterControl:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
