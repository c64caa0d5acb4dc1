"""The disk backend without booting: sizes, formats, layouts, atomicity, reproducibility."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from clirun import nixslave_popen

from nixslave import gcroots, nix
from nixslave.backends import Artifact, disk
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

if TYPE_CHECKING:
    from conftest import HostState

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
    nar_mib = _root().nar_size >> 20
    assert nar_mib > 16  # the smallest size a spec takes
    with pytest.raises(BuildError, match="cannot hold the closure"):
        DiskBackend().materialize(_root(size="16M"), out, DiskOptions(gcroot=False))
    # bigger than the closure but too small for the file system (no room for a journal)
    with pytest.raises(BuildError, match="too small: the root file system needs at least"):
        DiskBackend().materialize(_root(size=f"{nar_mib + 1}M"), out, DiskOptions(gcroot=False))
    assert list(tmp_path.iterdir()) == []


def test_explicit_size_is_the_virtual_size(tmp_path: Path) -> None:
    a = DiskBackend().materialize(_root(size="300M"), tmp_path / "s.qcow2",
                                  DiskOptions(gcroot=False))
    assert _info(a.image)["virtual-size"] == 300 << 20


def _published(out: Path) -> list[str]:
    """The files of the one build ``out`` publishes; asserts nothing else is left.

    Beside ``out`` there is only its hidden build directory, which holds the
    lock and exactly one build (no scratch, no older build).
    """
    siblings = sorted(p.name for p in out.parent.iterdir())
    assert siblings == sorted([out.name, f".{out.name}.nixslave"]), siblings
    assert out.is_symlink()
    base = out.parent / f".{out.name}.nixslave"
    builds = sorted(p.name for p in base.iterdir() if p.name != "lock")
    assert len(builds) == 1 and builds[0].startswith("b-"), builds
    build = base / builds[0]
    assert Path(os.path.realpath(out)).parent == build
    return sorted(p.name for p in build.iterdir() if p.name not in ("lock", "overlays"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_build_leaves_no_target(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "killed.qcow2"
    proc = nixslave_popen("image", "build", "--demo", "--name", "disktest", "-o", str(out),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".killed.qcow2.nixslave/s-*")):
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
    assert _published(out) == ["killed.qcow2", "killed.qcow2.nixslave.json"]


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
    # the overlay backs onto the base's build, never onto its public name
    assert overlay["backing-filename"] == os.path.realpath(tmp_path / "p.qcow2")
    assert overlay["backing-filename-format"] == "qcow2"
    inst = Artifact.load(tmp_path / "inst" / "p-1.qcow2")
    assert inst.toplevel == root.toplevel
    assert _published(tmp_path / "inst" / "p-1.qcow2") == ["p-1.qcow2",
                                                           "p-1.qcow2.nixslave.json"]


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
    root = _root(layout="store-disk", store_fs="ext4")
    a = DiskBackend().materialize(root, tmp_path / "m.qcow2", DiskOptions(gcroot=False))
    assert a.store_image == store_image_path(a.image)
    assert a.store_image.parent == Path(os.path.realpath(tmp_path / "m.qcow2")).parent
    assert _published(tmp_path / "m.qcow2") == ["m-store.qcow2", "m.qcow2",
                                                "m.qcow2.nixslave.json"]
    assert _debugfs_ls(a.image, "/nix/store") == []
    store = _debugfs_ls(a.store_image, "/")
    assert [s for s in store if s != "lost+found"] == sorted(Path(p).name for p in root.paths)
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(a.store_image)],
                           capture_output=True, text=True)
    if label.returncode == 0 and label.stdout.strip():  # blkid reads qcow2 only as raw
        assert label.stdout.strip() == "nixslave-store"
    assert "nixslave.store=store-disk" in a.cmdline


def test_shared_layout_is_exactly_the_closure(tmp_path: Path) -> None:
    """The hardlink tree (libvirt's, and the fallback without namespaces)."""
    root = _root(layout="shared")
    a = DiskBackend().materialize(root, tmp_path / "m.qcow2",
                                  DiskOptions(gcroot=False, share_method="tree"))
    assert a.share_dir == share_dir_path(a.image) and a.extra["shareMethod"] in (
        "hardlink", "reflink", "copy")
    assert sorted(p.name for p in a.share_dir.iterdir()) == sorted(
        Path(p).name for p in root.paths)
    kernel = next(p for p in root.paths if p.endswith("-linux-kernel"))
    same_fs = os.stat(tmp_path).st_dev == os.stat(kernel).st_dev
    if same_fs:  # hardlinks: no extra bytes for file contents
        assert os.stat(a.share_dir / Path(kernel).name).st_ino == os.stat(kernel).st_ino
    assert _debugfs_ls(a.image, "/nix/store") == []
    # rebuilding switches the share with the image and keeps it exact; the old
    # build's share is gone, and nothing like .store.old.* is left behind
    b = DiskBackend().materialize(root, tmp_path / "m.qcow2",
                                  DiskOptions(gcroot=False, share_method="tree"))
    assert b.share_dir != a.share_dir and not a.share_dir.exists()
    assert len(list(b.share_dir.iterdir())) == len(root.paths)
    assert _published(tmp_path / "m.qcow2") == ["m.qcow2", "m.qcow2.nixslave.json", "store"]


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


def test_build_adds_the_current_root(tmp_path: Path, host_state: HostState) -> None:
    """Bug: a build that no longer adds ``<name>-current`` (or records its image),
    so a host GC deletes the closure an offline upgrade of the image needs."""
    root = _root()
    DiskBackend().materialize(root, tmp_path / "r.qcow2")
    link = host_state.gcroots / "disktest-current"
    assert os.readlink(link) == root.toplevel
    record = json.loads((host_state.records / "disktest.json").read_text())
    assert str(tmp_path / "r.qcow2") in record["images"]
    assert record["toplevel"] == root.toplevel


# -- the image appears atomically ----------------------------------------------

def _sha256_fd(f: object) -> str:
    h = hashlib.sha256()
    f.seek(0)  # type: ignore[attr-defined]
    while chunk := f.read(1 << 20):  # type: ignore[attr-defined]
        h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_rebuild_replaces_the_image_by_rename(tmp_path: Path, fmt: str) -> None:
    """Bug: the image written in place (qemu-img convert or a copy straight to the
    target) instead of into a temporary file renamed over it.  A reader of the old
    image (a running guest, a copy in progress) must keep the old bytes, and the
    new image must be a new inode; writing in place rewrites the same inode."""
    out = tmp_path / f"m.{fmt}"
    DiskBackend().materialize(_root(), out, DiskOptions(format=fmt, gcroot=False))
    with open(out, "rb") as old:
        old_st = os.fstat(old.fileno())
        old_sha = _sha256_fd(old)
        # another size, so the new image's bytes differ from the old ones
        DiskBackend().materialize(_root(size="300M"), out,
                                  DiskOptions(format=fmt, gcroot=False))
        new_st = os.stat(out)
        assert new_st.st_ino != old_st.st_ino
        assert os.fstat(old.fileno()).st_nlink == 0  # unlinked by the rename
        assert _sha256_fd(old) == old_sha
    assert _info(out)["virtual-size"] == 300 << 20
    assert sha256_file(out) != old_sha
    assert _published(out) == [out.name, f"{out.name}.nixslave.json"]


def test_interrupted_conversion_keeps_the_old_image(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the image converted straight to the target (or the target removed
    first): a build that dies while qemu-img writes leaves a torn image where a
    good one was.  qemu-img is made to write half an image to the output it was
    given and the build is interrupted there."""
    out = tmp_path / "m.qcow2"
    DiskBackend().materialize(_root(), out, DiskOptions(gcroot=False))
    old_sha = sha256_file(out)
    old_sidecar = Artifact.load(out).sidecar.read_bytes()
    real_run = disk._run

    def dying_qemu_img(cmd: list[str], what: str, where: Path) -> None:
        if cmd[:2] != ["qemu-img", "convert"]:
            return real_run(cmd, what, where)
        with open(cmd[-1], "wb") as f:  # qemu-img's last argument is its output
            f.write(b"QFI\xfb" + b"\0" * 4096)
        raise KeyboardInterrupt

    monkeypatch.setattr(disk, "_run", dying_qemu_img)
    with pytest.raises(KeyboardInterrupt):
        DiskBackend().materialize(_root(size="300M"), out, DiskOptions(gcroot=False))
    assert sha256_file(out) == old_sha
    assert Artifact.load(out).sidecar.read_bytes() == old_sidecar
    assert _published(out) == ["m.qcow2", "m.qcow2.nixslave.json"]


# -- qcow2 compression is really applied ----------------------------------------

def _check(path: Path) -> dict[str, int]:
    out = subprocess.run(["qemu-img", "check", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _cluster_stats(raw: Path, cluster: int) -> tuple[int, int, int]:
    """Of the guest's bytes, computed here with zlib and independent of nixslave:
    the clusters holding data, those raw deflate (qcow2's zlib: window 2^12,
    memLevel 9) makes smaller than a cluster, and those it shrinks by a tenth."""
    import zlib

    data = smaller = tenth = 0
    with open(raw, "rb") as f:
        while block := f.read(cluster):
            if block.count(0) == len(block):
                continue
            data += 1
            z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9)
            n = len(z.compress(block) + z.flush())
            smaller += n < cluster
            tenth += n < cluster * 0.9
    return data, smaller, tenth


def test_compression_is_applied(tmp_path: Path) -> None:
    """Bug: ``--compress zstd|zlib`` silently not applied (``-c`` dropped, only the
    header's compression type set, or the store disk converted without it).  The
    clusters qemu stored compressed are counted by ``qemu-img check`` and compared
    with what zlib can shrink of the same guest bytes."""
    root = _root()
    plain = DiskBackend().materialize(root, tmp_path / "plain.qcow2",
                                      DiskOptions(gcroot=False)).image
    raw = tmp_path / "guest.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(plain), str(raw)], check=True)
    cluster = int(_info(plain)["cluster-size"])  # type: ignore[call-overload]
    data, smaller, tenth = _cluster_stats(raw, cluster)
    raw.unlink()
    assert tenth > 20  # busybox, the etc tree and fs metadata compress
    assert _check(plain).get("compressed-clusters", 0) == 0
    assert _check(plain)["allocated-clusters"] == data
    compressed = {}
    for kind in ("zstd", "zlib"):
        img = DiskBackend().materialize(root, tmp_path / f"{kind}.qcow2", DiskOptions(
            compression=kind, gcroot=False)).image  # type: ignore[arg-type]
        chk = _check(img)
        assert chk["allocated-clusters"] == data, kind
        compressed[kind] = chk.get("compressed-clusters", 0)
        # zstd keeps a cluster compressed only for a gain of about 1/64, so
        # only what deflate shrinks by a tenth is sure to be compressed by both
        assert compressed[kind] >= tenth, (kind, compressed, tenth)
        assert _info(img)["format-specific"]["data"]["compression-type"] == kind  # type: ignore[index]
        assert img.stat().st_size < plain.stat().st_size
        # same guest bytes
        subprocess.run(["qemu-img", "compare", "-q", str(plain), str(img)], check=True)
    # with zlib, qcow2 keeps every cluster compressed that deflate makes smaller
    assert abs(compressed["zlib"] - smaller) <= max(2, smaller // 50), (compressed, smaller)
    # the store disk of a store-disk layout is compressed too
    a = DiskBackend().materialize(_root(layout="store-disk"), tmp_path / "s.qcow2",
                                  DiskOptions(compression="zstd", gcroot=False))
    assert a.store_image is not None
    assert _check(a.store_image).get("compressed-clusters", 0) > 20
    assert _info(a.store_image)["format-specific"]["data"]["compression-type"] == "zstd"  # type: ignore[index]


def test_a_held_build_survives_a_rebuild(tmp_path: Path) -> None:
    """Bug: the sweep removes the build a running guest uses (its share or store
    disk vanishes under qemu), or an overlay's base build after a rebuild of the
    base.  Both are kept while held or referenced, and swept once they are not."""
    from nixslave.backends import publish

    out = tmp_path / "h.qcow2"
    a = DiskBackend().materialize(_root(layout="shared"), out, DiskOptions(gcroot=False))
    fd = publish.hold(a.image.parent)
    try:
        DiskBackend().materialize(_root(layout="shared"), out, DiskOptions(gcroot=False))
        assert a.share_dir is not None and a.share_dir.is_dir()  # still held: kept
    finally:
        os.close(fd)
    b = DiskBackend().materialize(_root(layout="shared"), out, DiskOptions(gcroot=False))
    assert not a.image.parent.exists() and b.image.parent.exists()
    # an overlay keeps its base build alive across rebuilds of the base
    base = tmp_path / "p.qcow2"
    DiskBackend().materialize(_root(), base, DiskOptions(overlay=tmp_path / "i.qcow2",
                                                         gcroot=False))
    backing = Path(_info(tmp_path / "i.qcow2")["backing-filename"])
    DiskBackend().materialize(_root(), base, DiskOptions(gcroot=False))
    assert backing.exists() and os.path.realpath(base) != str(backing)
