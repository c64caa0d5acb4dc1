"""Shared fixtures: expensive things (the demo closure, boots) happen once.

A tier skips only when its tool is truly absent, and says which; the
README's test command installs every tool, so nothing skips there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Host state of this test session: GC roots and image records go to a private
# directory instead of /nix/var/nix/gcroots/nixslave and /nix/var/nixslave,
# here and in every CLI subprocess.  nixslave reads these variables when it is
# imported, so they are set before the first import (checked in host_state).
# The roots stay real roots, which Nix honours only under /nix/var/nix/gcroots:
# a session directory there when it is writable, else a temporary one.
_STATE = Path(tempfile.mkdtemp(prefix="nixslave-test-state-"))
_GCROOTS = Path("/nix/var/nix/gcroots")
_ROOTS = (Path(tempfile.mkdtemp(prefix="nixslave-test-", dir=_GCROOTS))
          if os.access(_GCROOTS, os.W_OK) else _STATE / "gcroots")
os.environ["NIXSLAVE_GCROOTS_DIR"] = str(_ROOTS)
os.environ["NIXSLAVE_STATE_DIR"] = str(_STATE / "state")

from nixslave import gcroots, nix  # noqa: E402

os.environ.setdefault("NIX_CONFIG", nix.OFFLINE_CONFIG)

_TIER_TOOLS = {
    "nix": ["nix-build", "nix-store", "nix-instantiate"],
    "boot": ["qemu-system-x86_64", "mkfs.ext4", "nix-build", "vde_switch"],
    "guestfs": ["guestfish"],
    "nspawn": ["systemd-nspawn"],
    "netns": ["ip", "busybox"],
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for tier, tools in _TIER_TOOLS.items():
            if tier in item.keywords:
                missing = [t for t in tools if shutil.which(t) is None]
                if missing:
                    item.add_marker(pytest.mark.skip(reason=f"{tier} tier: {', '.join(missing)} "
                                                            "not installed"))
        for mark in item.iter_markers("tools"):  # extra tools of a single test
            missing = [t for t in mark.args if shutil.which(t) is None]
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"{', '.join(missing)} not installed"))
        for tier in ("netns", "nspawn"):
            if tier in item.keywords and os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=f"{tier} tier needs root"))


@pytest.fixture(scope="session", autouse=True)
def _guestfs_env() -> None:
    """libguestfs follows the same KVM verdict as qemu."""
    if shutil.which("qemu-system-x86_64"):
        from nixslave.runtime import accel

        os.environ.update(accel.guestfs_env())


@pytest.fixture(scope="session")
def demo_root():  # type: ignore[no-untyped-def]
    """The demo system built once for the whole session."""
    from nixslave import root
    from nixslave.spec import MachineSpec

    return root.build(MachineSpec.parse({"name": "demo", "demo": True}))


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("session")
    yield path
    from nixslave.root import force_rmtree

    force_rmtree(path)


@dataclass(frozen=True)
class HostState:
    """Where this session's GC roots and image records go (in-process and CLI alike)."""

    gcroots: Path
    records: Path


@pytest.fixture(scope="session", autouse=True)
def host_state() -> Iterator[HostState]:
    """Keep the session's GC roots and records off the host, and remove them after."""
    state = HostState(gcroots=_ROOTS, records=_STATE / "state" / "images")
    if (state.gcroots, state.records) != (nix.GCROOTS_DIR, gcroots.RECORDS_DIR):
        _remove_state()
        pytest.exit("nixslave was imported before tests/conftest.py set NIXSLAVE_GCROOTS_DIR "
                    "and NIXSLAVE_STATE_DIR: the tests would write the host's GC roots",
                    returncode=3)
    yield state
    _remove_state()


def _remove_state() -> None:
    shutil.rmtree(_STATE, ignore_errors=True)
    shutil.rmtree(_ROOTS, ignore_errors=True)
