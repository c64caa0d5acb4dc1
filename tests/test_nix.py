"""The Nix wrapper against the real host store."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from nixslave import nix
from nixslave.errors import NixError

pytestmark = pytest.mark.nix


def test_closure_is_sorted_and_complete(demo_root) -> None:  # type: ignore[no-untyped-def]
    paths = nix.closure(demo_root.toplevel)
    assert paths == sorted(paths)
    assert demo_root.toplevel in paths
    # every reference of every path is inside the closure
    infos = nix.path_info(paths)
    for info in infos:
        assert set(info.references) <= set(paths)
    assert all(i.nar_hash.startswith("sha256") and i.nar_size > 0 for i in infos)


def test_path_info_matches_nix_store_query(demo_root) -> None:  # type: ignore[no-untyped-def]
    kernel = next(p for p in demo_root.closure if p.path.endswith("-linux-kernel"))
    size = subprocess.run(["nix-store", "-q", "--size", kernel.path], capture_output=True,
                          text=True, env=nix.nix_env(), check=True).stdout.strip()
    assert int(size) == kernel.nar_size


def test_registration_loads_into_another_root(demo_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from nixslave.root import copy_paths

    copy_paths(demo_root.paths, tmp_path / "nix/store")
    nix.load_db(tmp_path, nix.dump_db(demo_root.paths))
    assert nix.store_paths_of_root(tmp_path) == demo_root.paths


def test_build_failure_carries_command_and_message() -> None:
    with pytest.raises(NixError) as err:
        nix.build(expr='builtins.throw "nixslave-test-boom"')
    assert "nixslave-test-boom" in err.value.what
    assert err.value.cmd[0] == "nix-build"
    assert "nixslave-test-boom" in err.value.stderr


def test_gc_roots_add_list_remove(demo_root) -> None:  # type: ignore[no-untyped-def]
    name = f"test-{uuid.uuid4().hex[:8]}-current"
    link = nix.add_gcroot(name, demo_root.toplevel)
    try:
        assert link.parent == nix.GCROOTS_DIR
        assert nix.list_gcroots()[name] == demo_root.toplevel
        roots = subprocess.run(["nix-store", "--gc", "--print-roots"], capture_output=True,
                               text=True, env=nix.nix_env(), check=True).stdout
        assert f"{link} -> {demo_root.toplevel}" in roots
        # the root really protects the path from a collection
        dead = subprocess.run(["nix-store", "--gc", "--print-dead"], capture_output=True,
                              text=True, env=nix.nix_env(), check=True).stdout.split()
        assert demo_root.toplevel not in dead
    finally:
        assert nix.remove_gcroot(name)
    assert name not in nix.list_gcroots()
    assert not nix.remove_gcroot(name)


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden"])
def test_gc_root_names_are_checked(bad: str) -> None:
    with pytest.raises(NixError):
        nix.add_gcroot(bad, "/nix/store/x")
