"""Decide between KVM and TCG by booting a kernel, not by looking at /dev/kvm.

A nested /dev/kvm often exists but cannot run a guest: qemu aborts with
"failed to set MSR 0x10a", the guest never prints a byte, or (kvm-pvm) it
starts and then hangs.  Neither the device's existence nor qemu's exit status
says anything, so the only honest probe is a whole boot: the host kernel
with no root file system runs every initcall (timers, interrupts, device
probing) and ends in the panic "VFS: Unable to mount root fs", within a
second or two when the accelerator works.  Only that panic on the serial
line counts; a kernel that printed its banner and then stopped does not.
The verdict is cached per boot of the host (and per probe version), because
it cannot change before a reboot.

Run as ``python -m nixslave.runtime.accel [--quiet] [--fresh]``: exit 0 when
KVM is usable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
# A KVM guest reaches the root-mount panic in 1-2 s; one that needs longer
# would be no faster than TCG (about 15 s for the same boot on 2 cores).
PROBE_TIMEOUT = 10.0
# What the probe must see: the kernel got to the end of its boot.  Its
# banner ("Linux version") alone is not enough (a guest can hang after it).
PROBE_BOOTED = b"Kernel panic - not syncing"
PROBE_STARTED = b"Linux version"
# Bumped whenever the probe gets stricter, so a verdict cached by a more
# trusting probe is not reused.
PROBE_VERSION = 2
_CACHE = Path(os.environ.get("NIXSLAVE_RUNTIME_DIR", "/run/nixslave")) / "accel.json"


@dataclass(frozen=True)
class Accel:
    """The accelerator verdict: which qemu flags to use and why."""

    kvm_usable: bool
    reason: str

    @property
    def qemu_args(self) -> list[str]:
        if self.kvm_usable:
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg", "-cpu", "max"]

    @property
    def name(self) -> str:
        return "kvm" if self.kvm_usable else "tcg"


def host_kernel() -> Path | None:
    """The newest kernel image in /boot, used for probes and the demo system."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name[8:]))
    return kernels[-1] if kernels else None


def _version_key(version: str) -> list[object]:
    import re

    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", version)]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_kvm(timeout: float | None = None, *, device: Path | None = None,
              qemu: str | None = None, kernel: Path | None = None) -> Accel:
    """Boot the host kernel under KVM and watch the serial line for the end of its boot.

    ``device``, ``qemu`` and ``kernel`` default to /dev/kvm, qemu on PATH
    and the newest kernel in /boot; they are parameters so that a test can
    hand the probe a guest that hangs.
    """
    if os.environ.get("NIXSLAVE_ACCEL") in ("tcg", "kvm"):
        forced = os.environ["NIXSLAVE_ACCEL"]
        return Accel(forced == "kvm", f"forced by NIXSLAVE_ACCEL={forced}")
    timeout = PROBE_TIMEOUT if timeout is None else timeout
    device = KVM_DEVICE if device is None else device
    qemu = qemu or QEMU
    if not device.exists():
        return Accel(False, f"{device} does not exist")
    if not os.access(device, os.R_OK | os.W_OK):
        return Accel(False, f"{device} is not accessible to this user")
    exe = shutil.which(qemu)
    if exe is None:
        return Accel(False, f"{qemu} is not installed")
    kernel = kernel or host_kernel()
    if kernel is None:
        return Accel(False, "no kernel in /boot to probe KVM with")
    with tempfile.TemporaryDirectory(prefix="nixslave-accel-") as tmp:
        serial, errlog = Path(tmp) / "serial.log", Path(tmp) / "stderr.log"
        cmd = [
            exe, "-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none",
            "-no-reboot", "-nodefaults", "-serial", f"file:{serial}",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
        ]
        # A file, not a pipe, for stderr: a chatty qemu can never block on it.
        # Its own session, so that killing the group takes any children too.
        with open(errlog, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                exited = proc.poll() is not None  # before reading: no late output is lost
                text = serial.read_bytes() if serial.exists() else b""
                if PROBE_BOOTED in text:
                    return Accel(True, "a KVM guest booted its kernel to the end")
                if exited:
                    msg = errlog.read_bytes().decode(errors="replace")
                    first = next((ln for ln in msg.splitlines() if ln.strip()), "")
                    why = first.strip() or f"exit code {proc.returncode}, no message"
                    return Accel(False, f"qemu stopped under KVM before the guest booted: {why}")
                if time.monotonic() >= deadline:
                    what = ("started but did not finish booting" if PROBE_STARTED in text
                            else "printed nothing")
                    return Accel(False, f"a KVM guest {what} in {timeout:g}s")
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def detect(*, use_cache: bool = True) -> Accel:
    """The cached verdict for this host boot, probing on first use."""
    if use_cache and "NIXSLAVE_ACCEL" not in os.environ:
        try:
            data = json.loads(_CACHE.read_text())
            if data.get("boot_id") == _boot_id() and data.get("probe") == PROBE_VERSION:
                return Accel(data["kvm_usable"], data["reason"])
        except (OSError, ValueError, KeyError):
            pass
    accel = probe_kvm()
    if "NIXSLAVE_ACCEL" not in os.environ:
        try:
            _CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = _CACHE.with_suffix(".tmp")
            tmp.write_text(json.dumps({"boot_id": _boot_id(), "probe": PROBE_VERSION,
                                       **asdict(accel)}))
            tmp.replace(_CACHE)
        except OSError:
            pass
    return accel


_announced = False


def announce(accel: Accel) -> None:
    """Say once per process that TCG is used and why."""
    global _announced
    if not accel.kvm_usable and not _announced:
        _announced = True
        print(f"nixslave: KVM unusable ({accel.reason}); using TCG", file=sys.stderr)


def guestfs_env(accel: Accel | None = None) -> dict[str, str]:
    """The environment libguestfs needs to follow the same verdict."""
    accel = accel or detect()
    env = {"LIBGUESTFS_BACKEND": "direct"}
    if not accel.kvm_usable:
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    accel = detect(use_cache="--fresh" not in args)
    if "--quiet" not in args:
        print(json.dumps(asdict(accel)))
    return 0 if accel.kvm_usable else 1


if __name__ == "__main__":
    raise SystemExit(main())
