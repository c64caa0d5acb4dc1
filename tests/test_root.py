"""Root.prepare: the tree holds exactly the closure plus nixslave's own files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import images  # tests/images.py
import pytest

from nixslave import nix
from nixslave.errors import RootError
from nixslave.root import MANIFEST_PATH, Root, build
from nixslave.spec import MachineSpec

pytestmark = pytest.mark.nix


@pytest.fixture(scope="module")
def tree(demo_root: Root, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_root.prepare(tmp_path_factory.mktemp("prep") / "root")


def _walk(top: Path) -> dict[str, int]:
    """relative path -> st_mode for everything below ``top``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out[str(p.relative_to(top))] = os.lstat(p).st_mode
    return out


def test_store_equals_closure(tree: Path, demo_root: Root) -> None:
    names = sorted(p.name for p in (tree / "nix/store").iterdir())
    assert names == sorted(Path(p).name for p in demo_root.paths)


def test_modes_and_links_preserved(tree: Path, demo_root: Root) -> None:
    for path in demo_root.paths:
        host = _walk(Path(path)) if Path(path).is_dir() else {}
        guest = _walk(tree / "nix/store" / Path(path).name) if host else {}
        assert host == guest, path
        assert os.lstat(path).st_mode == os.lstat(tree / path.lstrip("/")).st_mode
    init = tree / demo_root.toplevel.lstrip("/") / "init"
    assert init.stat().st_mode & stat.S_IXUSR


def test_nothing_else_outside_the_store(tree: Path) -> None:
    outside = {p for p in _walk(tree) if not p.startswith("nix/store/")}
    assert outside == {p.lstrip("/") for p in images.ROOT_OUTSIDE_STORE}


def test_one_system_link_no_generations_no_db(tree: Path, demo_root: Root) -> None:
    profiles = tree / "nix/var/nix/profiles"
    assert [p.name for p in profiles.iterdir()] == ["system"]
    assert os.readlink(profiles / "system") == demo_root.toplevel
    assert not (tree / "nix/var/nix/db").exists()


def test_manifest(tree: Path, demo_root: Root) -> None:
    manifest = json.loads((tree / MANIFEST_PATH).read_text())
    assert manifest["toplevel"] == demo_root.toplevel
    assert [c["path"] for c in manifest["closure"]] == demo_root.paths
    assert manifest["spec"]["name"] == "demo"
    assert manifest["narSize"] == demo_root.nar_size


def test_with_nix_gets_a_database(tmp_path: Path) -> None:
    r = build(MachineSpec.parse({"name": "demo", "demo": True, "with_nix": True}))
    t = r.prepare(tmp_path / "root")
    assert sorted(p.name for p in (t / "nix/store").iterdir()) == sorted(
        Path(p).name for p in r.paths)
    assert nix.store_paths_of_root(t) == r.paths


def test_refuses_a_non_empty_target(demo_root: Root, tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("precious")
    with pytest.raises(RootError, match="not an empty directory"):
        demo_root.prepare(tmp_path)
    assert (tmp_path / "keep").read_text() == "precious"


def test_interrupted_prepare_leaves_nothing(demo_root: Root, tmp_path: Path) -> None:
    def boom(message: str) -> None:
        if "copying" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        demo_root.prepare(tmp_path / "root", progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_toplevel_source_must_be_a_system(demo_root: Root) -> None:
    kernel = next(p for p in demo_root.paths if p.endswith("-linux-kernel"))
    with pytest.raises(RootError, match="not a system toplevel"):
        build(MachineSpec.parse({"name": "x", "toplevel": kernel}))
    r = build(MachineSpec.parse({"name": "x", "toplevel": demo_root.toplevel}))
    assert r.paths == demo_root.paths


def test_config_without_nixpkgs_says_how(tmp_path: Path) -> None:
    cfg = tmp_path / "configuration.nix"
    cfg.write_text("{ ... }: { }\n")
    env = os.environ.pop("NIX_PATH", None)
    try:
        with pytest.raises(RootError) as err:
            build(MachineSpec.parse({"name": "x", "config": str(cfg)}))
    finally:
        if env is not None:
            os.environ["NIX_PATH"] = env
    assert "--nixpkgs PATH" in err.value.hint and "NIX_PATH" in err.value.hint
