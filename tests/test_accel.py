"""The KVM probe believes a boot, never a device node or an exit status.

Every test hands the probe a fake qemu (a shell script) and a fake /dev/kvm
(a read-write file), so it runs anywhere in a few seconds and behaves like
the broken nested hosts the probe exists for: qemu that hangs without a
byte (nested KVM here), qemu that exits 0 having booted nothing, qemu that
dies with "failed to set MSR 0x10a", and a guest that prints its banner and
then hangs (kvm-pvm).  One fake that does boot to the kernel's root-mount
panic is the control: without it the others could pass because the fake
was never reached.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixslave.runtime import accel

pytestmark = pytest.mark.unit

TIMEOUT = 2.0  # the probe's timeout in these tests: a hang costs this much

# What a real kernel prints first and last when it boots with no root file
# system (Debian's 6.1 under TCG, -append "console=ttyS0 panic=-1").
BANNER = "Linux version 6.1.0-fake-amd64 (debian-kernel@lists.debian.org) #1 SMP"
PANIC = ("Kernel panic - not syncing: VFS: Unable to mount root fs on "
         "unknown-block(0,0)")
MSR = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000000001"

_PRELUDE = """#!/bin/sh
# a stand-in for qemu: records its argv and pid, finds -serial file:PATH
printf '%s\\n' "$@" > "$FAKE_DIR/argv"
echo $$ > "$FAKE_DIR/pid"
serial=
for a; do case "$a" in file:*) serial="${a#file:}" ;; esac; done
"""

BEHAVIOURS = {
    # nested KVM here: qemu runs, the guest never prints a byte
    "hang": "sleep 600 & echo $! > \"$FAKE_DIR/child\"; wait\n",
    # qemu ends without error having booted nothing
    "exit0": "exit 0\n",
    # nested KVM on older hosts
    "msr": f"echo '{MSR}' >&2; exit 1\n",
    # kvm-pvm: the kernel starts, then the guest hangs
    "banner": f"echo '{BANNER}' > \"$serial\"; exec sleep 600\n",
    # a working KVM: the kernel runs to the panic, qemu exits (-no-reboot)
    "boots": f"printf '%s\\n' '{BANNER}' '[    1.2] {PANIC}' > \"$serial\"; exit 0\n",
}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Make a fake qemu of one behaviour, first on PATH; returns its directory."""
    monkeypatch.delenv("NIXSLAVE_ACCEL", raising=False)
    monkeypatch.setattr(accel, "_CACHE", tmp_path / "run" / "accel.json")
    (tmp_path / "kvm").write_bytes(b"")       # "exists and opens read-write"
    (tmp_path / "vmlinuz").write_bytes(b"\0")

    def make(behaviour: str) -> Path:
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        exe = bindir / accel.QEMU
        exe.write_text(_PRELUDE + BEHAVIOURS[behaviour])
        exe.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_DIR", str(tmp_path))
        return tmp_path
    return make


def _probe(d: Path) -> tuple[accel.Accel, float]:
    t = time.monotonic()
    verdict = accel.probe_kvm(TIMEOUT, device=d / "kvm", kernel=d / "vmlinuz")
    return verdict, time.monotonic() - t


def _gone(pid: int, within: float = 3.0) -> bool:
    """Whether ``pid`` has ended (a zombie counts: nobody here is left to reap it).

    A process killed a moment ago may still be exiting, so this waits a little.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_control_a_guest_that_boots_is_kvm(fake) -> None:  # type: ignore[no-untyped-def]
    """The control: the fake is reached, asked for KVM, and a full boot is believed.
    Bug caught: a probe that runs its guest under TCG (always boots) or never
    gets as far as starting qemu."""
    d = fake("boots")
    verdict, _ = _probe(d)
    argv = (d / "argv").read_text().splitlines()
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-kernel") + 1] == str(d / "vmlinuz")
    assert verdict.kvm_usable is True and verdict.name == "kvm"
    assert verdict.qemu_args[:2] == ["-accel", "kvm"]


def test_a_guest_that_hangs_means_tcg(fake) -> None:  # type: ignore[no-untyped-def]
    """Bug caught: trusting /dev/kvm because it exists and opens read-write
    (nested KVM here: qemu starts and the guest never prints a byte).  The
    hung qemu and its children are killed, in about the probe's timeout."""
    d = fake("hang")
    verdict, took = _probe(d)
    assert (d / "argv").exists(), "the probe never started qemu"
    assert verdict.kvm_usable is False and verdict.name == "tcg"
    assert verdict.qemu_args[:2] == ["-accel", "tcg"]
    assert re.search(r"\b2(\.0)?\s?s\b", verdict.reason), verdict.reason  # says how long
    assert TIMEOUT <= took < TIMEOUT + 5
    for pidfile in ("pid", "child"):
        pid = int((d / pidfile).read_text())
        assert _gone(pid), f"the probe left its {pidfile} process {pid} running"


def test_qemu_that_exits_cleanly_without_a_boot_means_tcg(fake) -> None:  # type: ignore[no-untyped-def]
    """Bug caught: trusting qemu's exit status (0 here, and nothing booted)."""
    d = fake("exit0")
    verdict, took = _probe(d)
    assert (d / "argv").exists()
    assert verdict.kvm_usable is False
    assert took < TIMEOUT  # an exit is seen at once, not after the timeout


def test_a_guest_that_hangs_after_its_banner_means_tcg(fake) -> None:  # type: ignore[no-untyped-def]
    """Bug caught: stopping at the kernel's first line ("Linux version"), which
    a kvm-pvm guest prints before it hangs."""
    d = fake("banner")
    verdict, _ = _probe(d)
    assert verdict.kvm_usable is False
    assert _gone(int((d / "pid").read_text()))


def test_qemu_that_dies_is_tcg_with_its_message(fake) -> None:  # type: ignore[no-untyped-def]
    """Bug caught: a reason that hides why (the user must see qemu's own error)."""
    d = fake("msr")
    verdict, _ = _probe(d)
    assert verdict.kvm_usable is False
    assert "failed to set MSR 0x10a" in verdict.reason


def test_a_verdict_cached_by_a_more_trusting_probe_is_not_reused(  # type: ignore[no-untyped-def]
        fake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: "KVM usable", cached for this host boot by a probe that
    believed the banner, outliving the probe that knows better."""
    d = fake("hang")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cache = accel._CACHE
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"boot_id": boot_id, "kvm_usable": True,
                                 "reason": "a KVM guest booted"}))
    monkeypatch.setattr(accel, "KVM_DEVICE", d / "kvm")
    monkeypatch.setattr(accel, "PROBE_TIMEOUT", TIMEOUT)
    monkeypatch.setattr(accel, "host_kernel", lambda: d / "vmlinuz")
    verdict = accel.detect()
    assert verdict.kvm_usable is False
    assert (d / "argv").exists(), "the stale verdict was used without a probe"
    assert json.loads(cache.read_text())["kvm_usable"] is False


# The CLI as a user runs it, with the probe pointed at the fake device and
# kernel and given the short timeout (qemu comes from PATH, as it would).
_DOCTOR = """
import sys
from pathlib import Path
from nixslave.runtime import accel
accel.KVM_DEVICE = Path(sys.argv[1])
accel.PROBE_TIMEOUT = float(sys.argv[2])
accel.host_kernel = lambda: Path(sys.argv[3])
from nixslave.cli import main
sys.exit(main(["doctor", "--json", "--check", "kvm"]))
"""


@pytest.mark.parametrize(("behaviour", "needle"), [
    ("hang", None),
    ("msr", "failed to set MSR 0x10a"),
])
def test_doctor_names_the_reason(fake, behaviour: str, needle: str | None) -> None:  # type: ignore[no-untyped-def]
    """Bug caught: ``nixslave doctor`` saying "KVM unusable" without why, or
    naming a reason other than the verdict qemu and libguestfs then follow."""
    d = fake(behaviour)
    env = {**os.environ, "NIXSLAVE_RUNTIME_DIR": str(d / "run")}
    proc = subprocess.run([sys.executable, "-c", _DOCTOR, str(d / "kvm"), str(TIMEOUT),
                           str(d / "vmlinuz")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr  # TCG is a warning, not a failure
    data = json.loads(proc.stdout)
    assert (d / "argv").exists(), "doctor never started the probe's qemu"
    kvm = data["checks"][0]
    assert kvm["check"] == "kvm" and kvm["status"] == "warn" and kvm["hint"]
    reason = data["accelerator"]["reason"]
    assert data["accelerator"]["kvm_usable"] is False and data["accelerator"]["name"] == "tcg"
    assert reason and reason in kvm["detail"]
    assert "TCG" in kvm["detail"]
    if needle is not None:
        assert needle in kvm["detail"]
    else:
        assert re.search(r"\b2(\.0)?\s?s\b", kvm["detail"]), kvm["detail"]
