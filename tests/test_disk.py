"""The disk backend without booting: sizes, formats, layouts, atomicity, reproducibility."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from clirun import nixslave_popen

from nixslave import gcroots, nix
from nixslave.backends import Artifact
from nixslave.backends.disk import (
    DiskBackend,
    DiskOptions,
    sha256_file,
    share_dir_path,
    store_image_path,
)
from nixslave.errors import BuildError
from nixslave.root import Root, build
from nixslave.spec import MachineSpec

pytestmark = pytest.mark.nix


def _root(**kw: object) -> Root:
    return build(MachineSpec.parse({"name": "disktest", "demo": True, **kw}))


def _info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _map(path: Path) -> list[dict[str, object]]:
    out = subprocess.run(["qemu-img", "map", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _debugfs_ls(image: Path, path: str) -> list[str]:
    raw = image.with_suffix(".check.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    try:
        out = subprocess.run(["debugfs", "-R", f"ls -p {path}", str(raw)], check=True,
                             capture_output=True, text=True).stdout
    finally:
        raw.unlink()
    names = [ln.split("/")[5] for ln in out.splitlines() if ln.count("/") >= 6]
    return sorted(n for n in names if n not in (".", ".."))


def test_qcow2_builds_are_bit_for_bit_reproducible(tmp_path: Path) -> None:
    root = _root()
    a = DiskBackend().materialize(root, tmp_path / "a.qcow2", DiskOptions(gcroot=False,
                                                                          checksum=True))
    b = DiskBackend().materialize(root, tmp_path / "b.qcow2", DiskOptions(gcroot=False,
                                                                          checksum=True))
    assert a.sha256 == b.sha256 == sha256_file(a.image)
    assert (tmp_path / "a.qcow2").read_bytes() == (tmp_path / "b.qcow2").read_bytes()
    # and the raw format too, from a fresh tree in another directory
    (tmp_path / "x").mkdir()
    c = DiskBackend().materialize(root, tmp_path / "x" / "c.raw",
                                  DiskOptions(format="raw", gcroot=False))
    d = DiskBackend().materialize(root, tmp_path / "d.raw", DiskOptions(format="raw",
                                                                          gcroot=False))
    assert sha256_file(c.image) == sha256_file(d.image)


def test_copy_fallback_gives_the_same_bytes(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Bind-mounted store (as root) and copied store make identical images."""
    from nixslave.backends import storebind

    root = _root()
    a = DiskBackend().materialize(root, tmp_path / "bind.raw", DiskOptions(format="raw",
                                                                             gcroot=False))
    monkeypatch.setattr(storebind, "available", lambda: False)
    b = DiskBackend().materialize(root, tmp_path / "copy.raw", DiskOptions(format="raw",
                                                                             gcroot=False))
    assert sha256_file(a.image) == sha256_file(b.image)


def test_host_store_is_never_modified(tmp_path: Path) -> None:
    root = _root()
    before = {p: os.lstat(p).st_mode for path in root.paths
              for p in [path, *(str(q) for q in Path(path).rglob("*"))]}
    DiskBackend().materialize(root, tmp_path / "a.qcow2", DiskOptions(gcroot=False))
    after = {p: os.lstat(p).st_mode for p in before}
    assert before == after


def test_too_small_size_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "small.qcow2"
    with pytest.raises(BuildError, match="cannot hold the closure"):
        DiskBackend().materialize(_root(size="20M"), out, DiskOptions(gcroot=False))
    # bigger than the closure but too small for the file system
    with pytest.raises(BuildError, match="too small: the root file system needs at least"):
        DiskBackend().materialize(_root(size="48M"), out, DiskOptions(gcroot=False))
    assert list(tmp_path.iterdir()) == []


def test_explicit_size_is_the_virtual_size(tmp_path: Path) -> None:
    a = DiskBackend().materialize(_root(size="300M"), tmp_path / "s.qcow2",
                                  DiskOptions(gcroot=False))
    assert _info(a.image)["virtual-size"] == 300 << 20




@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_build_leaves_no_target(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "killed.qcow2"
    proc = nixslave_popen("image", "build", "--demo", "--name", "disktest", "-o", str(out),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".killed.qcow2.nixslave-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode != 0
        assert list(tmp_path.iterdir()) == []  # scratch removed on the way out
    # the next build of the same target sweeps a dead build's scratch away
    done = nixslave_popen("image", "build", "--demo", "--name", "disktest", "-o", str(out),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.wait(timeout=120) == 0, done.communicate()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.qcow2",
                                                          "killed.qcow2.nixslave.json"]


def test_qcow2_options(tmp_path: Path) -> None:
    root = _root()
    a = DiskBackend().materialize(root, tmp_path / "c.qcow2", DiskOptions(
        cluster_size=1 << 20, compression="zstd", gcroot=False))
    info = _info(a.image)
    assert info["cluster-size"] == 1 << 20
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    p = DiskBackend().materialize(root, tmp_path / "p.qcow2", DiskOptions(
        preallocation="metadata", overlay=tmp_path / "inst" / "p-1.qcow2", gcroot=False))
    # preallocation=metadata gives every cluster a host offset; a plain image does not
    assert all("offset" in e for e in _map(p.image))
    plain = DiskBackend().materialize(root, tmp_path / "plain.qcow2", DiskOptions(gcroot=False))
    assert not all("offset" in e for e in _map(plain.image))
    overlay = _info(tmp_path / "inst" / "p-1.qcow2")
    assert overlay["backing-filename"] == "../p.qcow2"
    assert overlay["backing-filename-format"] == "qcow2"
    inst = Artifact.load(tmp_path / "inst" / "p-1.qcow2")
    assert inst.image == (tmp_path / "inst" / "p-1.qcow2").absolute()
    assert inst.toplevel == root.toplevel


@pytest.mark.parametrize(("opts", "match"), [
    (DiskOptions(format="raw", compression="zstd"), "need qcow2"),
    (DiskOptions(cluster_size=3000), "not a power of two"),
    (DiskOptions(compression="zlib", preallocation="metadata"), "cannot be preallocated"),
])
def test_bad_options(tmp_path: Path, opts: DiskOptions, match: str) -> None:
    with pytest.raises(BuildError, match=match):
        DiskBackend().materialize(_root(), tmp_path / "x.qcow2", opts)
    assert list(tmp_path.iterdir()) == []


def test_store_disk_layout(tmp_path: Path) -> None:
    root = _root(layout="store-disk")
    a = DiskBackend().materialize(root, tmp_path / "m.qcow2", DiskOptions(gcroot=False))
    assert a.store_image == store_image_path(tmp_path / "m.qcow2")
    assert _debugfs_ls(a.image, "/nix/store") == []
    store = _debugfs_ls(a.store_image, "/")
    assert [s for s in store if s != "lost+found"] == sorted(Path(p).name for p in root.paths)
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(a.store_image)],
                           capture_output=True, text=True)
    if label.returncode == 0 and label.stdout.strip():  # blkid reads qcow2 only as raw
        assert label.stdout.strip() == "nixslave-store"
    assert "nixslave.store=store-disk" in a.cmdline


def test_shared_layout_is_exactly_the_closure(tmp_path: Path) -> None:
    root = _root(layout="shared")
    a = DiskBackend().materialize(root, tmp_path / "m.qcow2", DiskOptions(gcroot=False))
    assert a.share_dir == share_dir_path(tmp_path / "m.qcow2", "disktest")
    assert sorted(p.name for p in a.share_dir.iterdir()) == sorted(
        Path(p).name for p in root.paths)
    kernel = next(p for p in root.paths if p.endswith("-linux-kernel"))
    same_fs = os.stat(tmp_path).st_dev == os.stat(kernel).st_dev
    if same_fs:  # hardlinks: no extra bytes for file contents
        assert os.stat(a.share_dir / Path(kernel).name).st_ino == os.stat(kernel).st_ino
    assert _debugfs_ls(a.image, "/nix/store") == []
    # rebuilding replaces the share atomically and keeps it exact
    DiskBackend().materialize(root, tmp_path / "m.qcow2", DiskOptions(gcroot=False))
    assert len(list(a.share_dir.iterdir())) == len(root.paths)
    assert [p.name for p in a.share_dir.parent.iterdir()] == ["store"]


def test_gc_roots_follow_images(tmp_path: Path) -> None:
    records = tmp_path / "records"
    roots = tmp_path / "gcroots"
    root = _root()
    img = tmp_path / "g.qcow2"
    DiskBackend().materialize(root, img, DiskOptions(gcroot=False))
    nix.add_gcroot("disktest-current", root.toplevel, gcroots=roots)
    gcroots.record_image("disktest", img, root.toplevel, records=records)
    [m] = gcroots.machines(records=records, gcroots=roots)
    assert m.roots == {"current": root.toplevel} and not m.orphaned
    assert gcroots.prune(records=records, gcroots=roots) == []
    img.unlink()
    assert gcroots.prune(dry_run=True, records=records, gcroots=roots) == ["disktest"]
    assert nix.list_gcroots(gcroots=roots)
    assert gcroots.prune(records=records, gcroots=roots) == ["disktest"]
    assert nix.list_gcroots(gcroots=roots) == {}


def test_build_adds_the_current_root(tmp_path: Path) -> None:
    root = _root()
    DiskBackend().materialize(root, tmp_path / "r.qcow2")
    assert nix.list_gcroots()["disktest-current"] == root.toplevel
    m = {m.name: m for m in gcroots.machines()}["disktest"]
    assert str((tmp_path / "r.qcow2").absolute()) in m.images_present
