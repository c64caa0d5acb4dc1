"""Health checks for the host: can it build, boot and edit images here?

Each check is one small function in the CHECKS table; it returns a Finding
with ok/warn/fail and a hint.  KVM is judged by a real boot (see accel), and
libguestfs by a real appliance launch with the same TCG fallback.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nixslave import nix
from nixslave.errors import NixError
from nixslave.runtime import accel

Status = str  # "ok" | "warn" | "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    hint: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def check_nix() -> Finding:
    expr = ('derivation { name = "nixslave-doctor"; system = builtins.currentSystem; '
            'builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; '
            f'nonce = "{time.time_ns()}"; }}')
    try:
        out = nix.build(expr=expr, what="offline test build", offline=True)
    except NixError as exc:
        return Finding("nix", "fail", exc.what, "install nix-bin; nixslave sets NIX_CONFIG "
                       "for offline builds unless you set it yourself")
    return Finding("nix", "ok", f"offline build works ({out[0].name})")


def check_qemu() -> Finding:
    path = shutil.which(accel.QEMU)
    if path is None:
        return Finding("qemu", "fail", f"{accel.QEMU} not found", "apt-get install qemu-system-x86")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return Finding("qemu", "ok", version.splitlines()[0] if version else path)


def check_kvm() -> Finding:
    a = accel.detect(use_cache=False)
    if a.kvm_usable:
        return Finding("kvm", "ok", a.reason)
    return Finding("kvm", "warn", f"KVM unusable: {a.reason}; guests will run under TCG",
                   "TCG works but is 10-50x slower; on nested hosts enable nested "
                   "virtualisation in the outer hypervisor")


def check_guestfs() -> Finding:
    from nixslave.appliance import guestfs_handle
    from nixslave.errors import ToolError

    env = accel.guestfs_env()
    try:
        with guestfs_handle(env) as g:
            g.add_drive_scratch(16 << 20)
            g.launch()
    except ToolError as exc:
        return Finding("libguestfs", "fail", exc.what, exc.hint)
    except RuntimeError as exc:
        return Finding("libguestfs", "fail", f"appliance did not launch: {exc}",
                       "run libguestfs-test-tool for details")
    mode = "TCG (force_tcg)" if "LIBGUESTFS_BACKEND_SETTINGS" in env else "KVM"
    return Finding("libguestfs", "ok", f"appliance launches under {mode}")


def check_nspawn() -> Finding:
    exe = shutil.which("systemd-nspawn")
    bb = shutil.which("busybox")
    if exe is None:
        return Finding("systemd-nspawn", "fail", "not installed",
                       "apt-get install systemd-container")
    if bb is None:
        return Finding("systemd-nspawn", "warn", "busybox missing, cannot test a container",
                       "apt-get install busybox-static")
    with tempfile.TemporaryDirectory(prefix="nixslave-doctor-") as tmp:
        root = Path(tmp)
        for d in ("usr", "bin", "etc"):
            (root / d).mkdir()
        (root / "etc/os-release").write_text("ID=nixslave-doctor\n")
        shutil.copy2(bb, root / "bin/busybox")
        proc = subprocess.run([exe, "--register=no", "--keep-unit", "-q", "-D", str(root),
                               "/bin/busybox", "echo", "nspawn-ok"],
                              capture_output=True, text=True, timeout=60)
    if proc.returncode == 0 and "nspawn-ok" in proc.stdout:
        return Finding("systemd-nspawn", "ok", "a container ran (--register=no --keep-unit)")
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Finding("systemd-nspawn", "fail", err, "containers need root and cgroups")


def check_tools() -> Finding:
    tools = {"mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils", "sfdisk": "fdisk",
             "busybox": "busybox-static", "vde_switch": "vde2", "ip": "iproute2"}
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        return Finding("tools", "fail", f"missing {', '.join(missing)}",
                       f"apt-get install {' '.join(missing)}")
    return Finding("tools", "ok", "mkfs.ext4, qemu-img, sfdisk, busybox, vde_switch, ip")


CHECKS: dict[str, Callable[[], Finding]] = {
    "nix": check_nix,
    "tools": check_tools,
    "qemu": check_qemu,
    "kvm": check_kvm,
    "libguestfs": check_guestfs,
    "systemd-nspawn": check_nspawn,
}


def run_checks(names: list[str] | None = None,
               on_start: Callable[[str], None] | None = None) -> list[Finding]:
    findings = []
    for name, fn in CHECKS.items():
        if names and name not in names:
            continue
        if on_start:
            on_start(name)
        t0 = time.monotonic()
        try:
            f = fn()
        except Exception as exc:  # a check that crashes is itself a finding
            f = Finding(name, "fail", f"{type(exc).__name__}: {exc}", "rerun with --debug")
        findings.append(Finding(f.check, f.status, f.detail, f.hint,
                                round(time.monotonic() - t0, 2)))
    return findings
