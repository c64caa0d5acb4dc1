"""The CLI end to end: JSON output, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import nixslave

from nixslave.root import Root


@pytest.mark.nix
def test_root_build_json(demo_root: Root) -> None:
    out = nixslave("root", "build", "--demo", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["toplevel"] == demo_root.toplevel
    assert data["narSize"] == demo_root.nar_size > 40 << 20
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


@pytest.mark.guestfs
def test_doctor_reports_the_accelerator() -> None:
    from nixslave import accel

    out = nixslave("doctor", "--json")
    data = json.loads(out.stdout)
    checks = {c["check"]: c for c in data["checks"]}
    assert set(checks) == {"nix", "tools", "qemu", "kvm", "libguestfs", "systemd-nspawn"}
    verdict = accel.probe_kvm()
    assert data["accelerator"]["kvm_usable"] is verdict.kvm_usable
    if verdict.kvm_usable:
        assert checks["kvm"]["status"] == "ok"
    else:
        # a /dev/kvm that cannot run a guest is reported, with the TCG fallback
        assert checks["kvm"]["status"] == "warn"
        assert "TCG" in checks["kvm"]["detail"]
        assert data["accelerator"]["name"] == "tcg"
        assert "TCG" in checks["libguestfs"]["detail"]
    for name in ("nix", "qemu", "libguestfs", "systemd-nspawn", "tools"):
        assert checks[name]["status"] == "ok", checks[name]
    assert out.returncode == 0


@pytest.mark.unit
def test_spec_schema_is_exported() -> None:
    out = nixslave("root", "schema")
    assert out.returncode == 0
    schema = json.loads(out.stdout)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["layout"]["enum"] == ["disk", "store-disk", "shared"]
