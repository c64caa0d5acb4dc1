"""A prepared root runs as a systemd-nspawn container, on the real closure.

``nixslave root prepare`` lays out what a guest boots from; the same tree is
a container root.  nspawn runs as ``--register=no --keep-unit`` (these
machines have no system bus) and with ``--resolv-conf=off --timezone=off``,
so that nspawn itself writes nothing into the tree.  nspawn refuses a
directory without ``/usr`` ("doesn't look like it has an OS tree"), which a
prepared root does not have: the tests add an empty one.

The demo system's init runs as the container's PID 1 as it is: /proc, /sys
and /dev are already mounted, its /etc activation and host name stay inside,
and its ``poweroff -f`` ends the container with exit code 0.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from clirun import nixslave

from nixslave.root import Root

pytestmark = [pytest.mark.nspawn, pytest.mark.nix]

NSPAWN = ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet",
          "--resolv-conf=off", "--timezone=off"]
SYSTEM = "/nix/var/nix/profiles/system"
BUSYBOX = f"{SYSTEM}/sw/bin/busybox"


def nspawn(tree: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # a machine name of its own: nspawn keeps per-name state under /run
    name = f"nixslave-test-{uuid.uuid4().hex[:12]}"
    return subprocess.run([*NSPAWN, "-M", name, "-D", str(tree), *argv], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def sh(tree: Path, script: str) -> subprocess.CompletedProcess[str]:
    """A busybox shell script run in the container with the closure's busybox."""
    return nspawn(tree, BUSYBOX, "sh", "-c", f"export PATH={SYSTEM}/sw/bin; {script}")


def container_root(tree: Path) -> Path:
    (tree / "usr").mkdir()
    return tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo root prepared by the CLI, as a user would."""
    out = tmp_path_factory.mktemp("nspawn") / "root"
    r = nixslave("root", "prepare", "--demo", str(out), "--json")
    assert r.returncode == 0, r.stderr
    return container_root(out)


def _host_store_outside(closure: list[str]) -> list[str]:
    """A few host store entries that are not in the closure (the demo's .drv files
    are always there: nix-build made them)."""
    names = {Path(p).name for p in closure}
    others = sorted(n for n in os.listdir("/nix/store") if n not in names and n != ".links")
    assert others
    drvs = [n for n in others if n.endswith(".drv")]
    return [f"/nix/store/{n}" for n in (drvs[:3] + others[:3])]


def test_container_store_is_exactly_the_closure(tree: Path, demo_root: Root,
                                                tmp_path: Path) -> None:
    """Bug: the container holds more than the closure (the host's whole store,
    build-time inputs or .drv files copied by prepare, Nix's .links left behind),
    or sees the host's files at all."""
    outside = _host_store_outside(demo_root.paths)
    host_file = tmp_path / "written-on-the-host"
    host_file.write_text("outside the closure\n")
    assert all(os.path.lexists(p) for p in outside)
    probe = " ".join([*outside, str(host_file)])
    r = sh(tree, f"ls -a /nix/store; for p in {probe}; do [ -e $p ] && echo VISIBLE $p; done; "
                 "echo END")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[-1] == "END"
    assert "VISIBLE" not in lines, r.stdout
    assert set(lines[:-1]) == {".", ".."} | {Path(p).name for p in demo_root.paths}
    assert len(lines[:-1]) == len(demo_root.paths) + 2


def test_container_sees_its_own_root(tree: Path, demo_root: Root) -> None:
    """Bug: a prepared root missing what makes it NixOS (``/etc/NIXOS``), its one
    system link, or a manifest that disagrees with the closure Nix reports."""
    assert not Path("/etc/NIXOS").exists()  # the host is not NixOS: the check means something
    r = sh(tree, f"[ -f /etc/NIXOS ] && echo NIXOS; readlink {SYSTEM}; "
                 "ls /nix/var/nix/profiles; cat /nix/var/nixslave/manifest.json")
    assert r.returncode == 0, r.stderr
    nixos, system, profiles, manifest = r.stdout.split("\n", 3)
    assert (nixos, system, profiles) == ("NIXOS", demo_root.toplevel, "system")
    data = json.loads(manifest)
    assert data["toplevel"] == demo_root.toplevel
    assert {(e["path"], e["narHash"], e["narSize"]) for e in data["closure"]} == {
        (i.path, i.nar_hash, i.nar_size) for i in demo_root.closure}
    # the program the container ran came from its own store
    r = nspawn(tree, BUSYBOX, "readlink", "/proc/self/exe")
    assert r.stdout.strip() in {f"{p}/bin/busybox" for p in demo_root.paths}, r.stdout


def _store_state(paths: list[str]) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for top in paths:
        for p in [Path(top), *Path(top).rglob("*")]:
            st = os.lstat(p)
            out[str(p)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns)
    return out


def test_init_boots_as_the_containers_pid_1(demo_root: Root, tmp_path: Path) -> None:
    """Bug: a root whose init cannot start (init missing or pointing outside the
    closure, a system link to another toplevel), or whose activation reaches past
    the container: the init must print the boot marker with its own toplevel, power
    the container off cleanly, and leave the host's store and host name alone."""
    root = container_root(demo_root.prepare(tmp_path / "root"))
    before = _store_state(demo_root.paths)
    hostname = socket.gethostname()
    r = nspawn(root, f"{SYSTEM}/init")
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert f"NIXSLAVE-BOOT-OK {demo_root.toplevel}" in lines, r.stdout
    assert "NIXSLAVE-STORE rootfs" in lines  # the store is part of the root
    # activation linked the container's /etc to its own system, inside the tree
    assert os.readlink(root / "etc/static") == f"{demo_root.toplevel}/etc"
    assert os.readlink(root / "etc/hostname") == "/etc/static/hostname"
    assert socket.gethostname() == hostname
    assert _store_state(demo_root.paths) == before
