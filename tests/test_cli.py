"""The CLI end to end: JSON output, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from clirun import _MAIN as MAIN
from clirun import nixslave

from nixslave.root import Root


@pytest.mark.nix
def test_root_build_json(demo_root: Root) -> None:
    out = nixslave("root", "build", "--demo", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["toplevel"] == demo_root.toplevel
    # the kernel alone is several MiB: a closure that small lost it
    kernel = Path(demo_root.toplevel, "kernel").resolve().stat().st_size
    assert data["narSize"] == demo_root.nar_size > kernel
    assert data["closurePaths"] == len(demo_root.paths)


@pytest.mark.nix
def test_root_prepare_holds_closure_nixos_and_manifest(demo_root: Root, tmp_path: Path) -> None:
    out = nixslave("root", "prepare", "--demo", str(tmp_path / "t"), "--json")
    assert out.returncode == 0, out.stderr
    t = tmp_path / "t"
    assert (t / "etc/NIXOS").exists()
    manifest = json.loads((t / "nix/var/nixslave/manifest.json").read_text())
    assert manifest["toplevel"] == demo_root.toplevel
    assert sorted(p.name for p in (t / "nix/store").iterdir()) == sorted(
        Path(p).name for p in demo_root.paths)


@pytest.mark.unit
@pytest.mark.parametrize(("args", "needle"), [
    (["root", "build", "--name", "Bad", "--demo"], "nixslave spec: machine.name:"),
    (["root", "build", "--demo", "--toplevel", "/nix/store/" + "a" * 32 + "-x"],
     "give exactly one of demo, config, flake, toplevel"),
    (["root", "build", "--config", "/nonexistent/configuration.nix"], "does not exist"),
    (["doctor", "--check", "nope"], "unknown check"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    out = nixslave(*args)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("•")]
    assert any(needle in ln for ln in lines), out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.unit
def test_debug_shows_the_traceback() -> None:
    out = nixslave("--debug", "root", "build", "--name", "Bad", "--demo")
    assert out.returncode == 2
    assert "Traceback" in out.stderr


CHECKS = {"nix", "tools", "qemu", "kvm", "libguestfs", "systemd-nspawn"}


def _kvm_boots(timeout: float = 15.0) -> bool:
    """Whether a KVM guest runs here, found out by the test itself: boot the host
    kernel under KVM, with no disk and no initrd, and wait for it to get as far
    as failing to mount a root.  Its first line is not enough: on a kvm-pvm
    host a guest prints "Linux version" and then hangs."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    kernel = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
    with tempfile.TemporaryDirectory() as tmp:
        serial = Path(tmp) / "serial"
        qemu = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "accel=kvm", "-cpu", "host", "-m", "128",
             "-display", "none", "-nodefaults", "-no-reboot", "-serial", f"file:{serial}",
             "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while True:
                ended = qemu.poll() is not None  # -no-reboot: it stops at the panic
                if serial.exists() and b"Kernel panic" in serial.read_bytes():
                    return True
                if ended or time.monotonic() > deadline:
                    return False
                time.sleep(0.2)
        finally:
            qemu.kill()
            qemu.wait()


def _doctor_json(*args: str, runtime: Path, wrap: list[str] | None = None
                 ) -> subprocess.Popen[str]:
    """Start ``nixslave doctor --json`` with its own KVM verdict cache, not the host's."""
    env = {**os.environ, "NIXSLAVE_RUNTIME_DIR": str(runtime)}
    env.pop("NIXSLAVE_ACCEL", None)
    argv = [*(wrap or []), sys.executable, "-c", MAIN, "doctor", "--json", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    return proc


def _finish(proc: subprocess.Popen[str]) -> dict:  # type: ignore[type-arg]
    out, err = proc.communicate(timeout=600)
    assert out, err
    return json.loads(out)  # type: ignore[no-any-return]


def _assert_tcg_fallback(data: dict) -> None:  # type: ignore[type-arg]
    kvm = {c["check"]: c for c in data["checks"]}["kvm"]
    assert kvm["status"] == "warn" and "TCG" in kvm["detail"] and kvm["hint"]
    assert data["accelerator"]["name"] == "tcg"
    assert data["accelerator"]["kvm_usable"] is False


@pytest.mark.guestfs
def test_doctor_reports_the_accelerator(tmp_path: Path) -> None:
    """Bug: doctor judging KVM by /dev/kvm's existence (or a stale verdict) where
    a guest cannot run, or reporting a verdict that qemu and libguestfs then do
    not follow.  The expectation comes from a KVM boot this test makes itself."""
    proc = _doctor_json(runtime=tmp_path)
    kvm_boots = _kvm_boots()  # while the doctor runs
    data = _finish(proc)
    checks = {c["check"]: c for c in data["checks"]}
    assert set(checks) == CHECKS and len(data["checks"]) == len(CHECKS)
    for c in data["checks"]:
        assert set(c) == {"check", "status", "detail", "hint", "seconds"}
        assert c["status"] in ("ok", "warn", "fail") and c["detail"]
    assert set(data["accelerator"]) == {"name", "kvm_usable", "reason"}
    assert data["accelerator"]["kvm_usable"] is kvm_boots
    if kvm_boots:
        assert checks["kvm"]["status"] == "ok"
        assert data["accelerator"]["name"] == "kvm"
        assert "KVM" in checks["libguestfs"]["detail"]
    else:
        # a missing or broken /dev/kvm is reported, with the TCG fallback
        _assert_tcg_fallback(data)
        assert "TCG" in checks["libguestfs"]["detail"]
    for name in CHECKS - {"kvm"}:
        assert checks[name]["status"] == "ok", checks[name]
    assert data["ok"] is True and proc.returncode == 0


@pytest.mark.tools("unshare", "qemu-system-x86_64")
def test_doctor_falls_back_to_tcg_on_a_broken_kvm(tmp_path: Path) -> None:
    """Bug: a /dev/kvm that exists but cannot run a guest reported as usable.
    /dev/kvm is replaced by /dev/null in a private mount namespace: the device
    node opens read-write, but no VM can be made with it."""
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace needs root")
    wrap = ["unshare", "--mount", "--propagation", "private", "--"]
    if Path("/dev/kvm").exists():
        wrap += ["sh", "-ec", 'mount --bind /dev/null /dev/kvm; exec "$@"', "sh"]
    proc = _doctor_json("--check", "kvm", runtime=tmp_path, wrap=wrap)
    data = _finish(proc)
    assert [c["check"] for c in data["checks"]] == ["kvm"]
    _assert_tcg_fallback(data)
    assert data["ok"] is True and proc.returncode == 0  # a warning, not a failure
    # the namespace's verdict went to this run's cache, not to the host's
    assert json.loads((tmp_path / "accel.json").read_text())["kvm_usable"] is False


@pytest.mark.unit
def test_spec_schema_is_exported() -> None:
    out = nixslave("root", "schema")
    assert out.returncode == 0
    schema = json.loads(out.stdout)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["layout"]["enum"] == ["disk", "store-disk", "shared"]
