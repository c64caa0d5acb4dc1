"""Decide between KVM and TCG by booting a kernel, not by looking at /dev/kvm.

A nested /dev/kvm often exists but cannot run a guest: qemu aborts with
"failed to set MSR 0x10a", or the guest never prints a byte.  The only honest
probe is a tiny boot: the host kernel with no root file system prints
"Linux version" within a second when the accelerator works.  The verdict is
cached per boot of the host, because it cannot change before a reboot.

Run as ``python -m nixslave.runtime.accel [--quiet]``: exit 0 when KVM is usable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT = 8.0
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


def probe_kvm(timeout: float = PROBE_TIMEOUT) -> Accel:
    """Boot the host kernel under KVM and watch the serial line."""
    if os.environ.get("NIXSLAVE_ACCEL") in ("tcg", "kvm"):
        forced = os.environ["NIXSLAVE_ACCEL"]
        return Accel(forced == "kvm", f"forced by NIXSLAVE_ACCEL={forced}")
    if not os.path.exists("/dev/kvm"):
        return Accel(False, "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel(False, "/dev/kvm is not accessible to this user")
    if shutil.which(QEMU) is None:
        return Accel(False, f"{QEMU} is not installed")
    kernel = host_kernel()
    if kernel is None:
        return Accel(False, "no kernel in /boot to probe KVM with")
    with tempfile.TemporaryDirectory(prefix="nixslave-accel-") as tmp:
        serial = Path(tmp) / "serial.log"
        cmd = [
            QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none",
            "-no-reboot", "-nodefaults", "-serial", f"file:{serial}",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 quiet=0",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if serial.exists() and b"Linux version" in serial.read_bytes():
                    return Accel(True, "a KVM guest booted")
                if proc.poll() is not None:
                    err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
                    first = next((ln for ln in err.splitlines() if ln.strip()), "no message")
                    return Accel(False, f"qemu died under KVM: {first.strip()}")
                time.sleep(0.1)
            return Accel(False, f"a KVM guest printed nothing in {timeout:.0f}s")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def detect(*, use_cache: bool = True) -> Accel:
    """The cached verdict for this host boot, probing on first use."""
    if use_cache and "NIXSLAVE_ACCEL" not in os.environ:
        try:
            data = json.loads(_CACHE.read_text())
            if data.get("boot_id") == _boot_id():
                return Accel(data["kvm_usable"], data["reason"])
        except (OSError, ValueError, KeyError):
            pass
    accel = probe_kvm()
    if "NIXSLAVE_ACCEL" not in os.environ:
        try:
            _CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = _CACHE.with_suffix(".tmp")
            tmp.write_text(json.dumps({"boot_id": _boot_id(), **asdict(accel)}))
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
