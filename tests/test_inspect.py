"""inspect_image and list_files against phony images of every kind.

An appliance launch costs tens of seconds under TCG, so every launch this
module needs runs once, two at a time, in one module fixture; the tests
then only look at the results.  Refusals that need no launch are tested
directly.  Every image's sha256 is taken before the launches and compared
after them: inspection must never write.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import images  # tests/images.py, on sys.path through rootdir-relative import
import pytest

from nixslave.errors import ImageError
from nixslave.image.inspect import (
    ImageReport,
    inspect_image,
    inspect_images,
    list_files,
    probe_image,
    validate_manifest,
)
from nixslave.root import Root
from nixslave.spec import MachineSpec

pytestmark = pytest.mark.guestfs

REPORT_KEYS = {
    "path", "format", "virtual_size", "allocated_size", "backing_file", "partition_table",
    "is_nixos", "is_nixslave", "reason", "manifest_error", "nixslave_version", "name",
    "toplevel", "system_link", "layout", "store", "boot", "closure_count",
    "closure_nar_size", "store_image", "store_location", "store_paths_present",
    "store_complete", "missing_paths", "extra_paths", "root_fs", "store_fs", "has_nix_db",
    "generations", "warnings", "health",
}
# inspected together in one launch by inspect_images
BATCH = ("nixos", "plain", "random", "corrupt")
INTRUDER = "00000000000000000000000000000000-intruder"
# the closure path deleted from the "damaged" image: the demo system's busybox
DELETED_SUFFIX = "-busybox"


def _variant(root: Root, **spec: Any) -> Root:
    """The same closure under another spec (layout, boot), without a rebuild."""
    return Root(spec=MachineSpec.parse({"name": "demo", "demo": True, **spec}),
                toplevel=root.toplevel, closure=root.closure)


@pytest.fixture(scope="module")
def imgs(demo_root: Root, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("inspect")
    bios = _variant(demo_root, boot="bios", layout="store-disk")
    (work / "bios").mkdir()
    return {
        "direct": images.direct_image(demo_root, work, fmt="qcow2"),
        "bios": images.mbr_image(bios, work / "bios", include_store=False, generation=True),
        "store": images.store_image(demo_root, work / "bios", extra=INTRUDER),
        "nixos": images.plain_nixos_image(demo_root, work),
        "plain": images.plain_ext4_image(work),
        "random": images.random_image(work),
        "corrupt": images.corrupt_manifest_image(demo_root, work),
        "damaged": images.direct_image(demo_root, _mkdir(work / "damaged"), fmt="raw"),
    }


def _mkdir(d: Path) -> Path:
    d.mkdir()
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _deleted_path(root: Root) -> str:
    [path] = [p for p in root.paths if p.endswith(DELETED_SUFFIX)]
    return path


def _delete_in_image(img: Path, path: str) -> None:
    """Remove ``path`` from a raw whole-disk ext4 image, with libguestfs directly."""
    import guestfs  # type: ignore[import-not-found]

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.add_drive_opts(str(img), format="raw", readonly=False)
        g.launch()
        g.mount("/dev/sda", "/")
        assert g.is_dir(path)
        g.rm_rf(path)
        g.umount_all()
        g.shutdown()
    finally:
        g.close()


@pytest.fixture(scope="module")
def before(imgs: dict[str, Path]) -> dict[str, str]:
    """sha256 of every image before anything inspects it (the damaged one is edited)."""
    return {k: _sha256(p) for k, p in imgs.items() if k != "damaged"}


@pytest.fixture(scope="module")
def results(imgs: dict[str, Path], before: dict[str, str], demo_root: Root) -> dict[str, Any]:
    """Every launch of this module (six), two at a time; a raised error is the result."""

    def damaged() -> ImageReport:
        _delete_in_image(imgs["damaged"], _deleted_path(demo_root))
        return inspect_image(imgs["damaged"])

    calls: dict[str, Callable[[], Any]] = {
        "damaged": damaged,  # two launches: first, so the others overlap them
        "direct": lambda: inspect_image(imgs["direct"]),
        "files": lambda: list_files(imgs["direct"]),
        "bios": lambda: inspect_image(imgs["bios"], store_image=imgs["store"]),
        "batch": lambda: inspect_images([imgs[k] for k in BATCH]),
    }

    def run(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run, fn) for k, fn in calls.items()}
        out = {k: f.result() for k, f in futures.items()}
    batch = out.pop("batch")
    out.update(zip(BATCH, [batch] * len(BATCH), strict=True) if isinstance(batch, Exception)
               else zip(BATCH, batch, strict=True))
    return out


def _report(results: dict[str, Any], key: str) -> ImageReport:
    r = results[key]
    if isinstance(r, Exception):
        raise r
    assert isinstance(r, ImageReport)
    return r


def _names(paths: list[str]) -> set[str]:
    return {Path(p).name for p in paths}


def test_direct_qcow2_image(results: dict[str, Any], demo_root: Root,
                            imgs: dict[str, Path]) -> None:
    r = _report(results, "direct")
    assert (r.format, r.partition_table, r.virtual_size) == ("qcow2", "none", 256 << 20)
    assert r.allocated_size is not None and 0 < r.allocated_size < r.virtual_size
    assert r.is_nixos and r.is_nixslave and r.manifest_error is None
    assert (r.name, r.layout, r.store, r.boot) == ("demo", "disk", "disk", "direct")
    assert r.toplevel == r.system_link == demo_root.toplevel
    assert r.closure_count == len(demo_root.paths) == r.store_paths_present
    assert r.closure_nar_size == demo_root.nar_size
    assert r.store_location == "root image"
    assert r.store_complete is True
    assert r.missing_paths == [] and r.extra_paths == [] and r.generations == []
    assert r.warnings == [] and r.has_nix_db is False
    assert r.root_fs is not None and r.store_fs is None
    assert (r.root_fs.device, r.root_fs.label, r.root_fs.fstype) == (
        "/dev/sda", "nixslave-root", "ext4")
    assert r.root_fs.used >= demo_root.nar_size // 2
    assert r.root_fs.used + r.root_fs.free <= r.root_fs.size <= 256 << 20
    data = r.to_json()
    assert set(data) == REPORT_KEYS
    assert json.loads(json.dumps(data)) == data
    assert data["root_fs"]["label"] == "nixslave-root"


def test_list_files_is_exactly_the_prepared_tree(results: dict[str, Any],
                                                 demo_root: Root) -> None:
    files = results["files"]
    if isinstance(files, Exception):
        raise files
    store_top = {f for f in files if f.count("/") == 3 and f.startswith("/nix/store/")}
    assert store_top == set(demo_root.paths)
    outside = {f for f in files if not f.startswith("/nix/store/")}
    assert outside == images.ROOT_OUTSIDE_STORE | {"/lost+found"}
    assert f"{demo_root.toplevel}/init" in files


def test_bios_root_with_store_disk(results: dict[str, Any], demo_root: Root,
                                   imgs: dict[str, Path]) -> None:
    r = _report(results, "bios")
    assert (r.format, r.partition_table) == ("raw", "mbr")
    assert r.root_fs is not None and r.root_fs.device == "/dev/sda1"
    assert 50 << 20 < r.root_fs.size <= 63 << 20  # the fs fills the partition, 1 MiB in
    assert (r.layout, r.store, r.boot) == ("store-disk", "store-disk", "bios")
    assert r.toplevel == demo_root.toplevel
    assert r.store_image == str(imgs["store"]) and r.store_location == "store image"
    assert r.store_fs is not None
    assert (r.store_fs.device, r.store_fs.label) == ("/dev/sdb", "nixslave-store")
    assert r.store_paths_present == len(demo_root.paths) + 1
    assert r.store_complete is True and r.missing_paths == []
    # what must never be in a nixslave image is reported, not hidden
    assert r.extra_paths == [f"/nix/store/{INTRUDER}"]
    assert r.generations == ["system-2-link"]
    assert len(r.warnings) == 2


def test_deleted_store_path_is_missing(results: dict[str, Any], demo_root: Root) -> None:
    """Bug: inspect claiming ``store_complete`` for an image whose store lost a
    closure path (completeness taken from the manifest alone, or a count compared
    instead of the names); the path deleted with libguestfs must be reported."""
    r = _report(results, "damaged")
    deleted = _deleted_path(demo_root)
    assert r.is_nixslave and r.toplevel == demo_root.toplevel
    assert r.closure_count == len(demo_root.paths)
    assert r.store_complete is False
    assert r.missing_paths == [deleted]
    assert r.store_paths_present == len(demo_root.paths) - 1
    assert r.extra_paths == []
    assert r.to_json()["store_complete"] is False


def test_inspection_never_writes_the_image(results: dict[str, Any], imgs: dict[str, Path],
                                          before: dict[str, str]) -> None:
    """Bug: an image opened read-write (a drive added without ``readonly``, a file
    system mounted rw, a journal replayed); even mounting ext4 rw changes its
    superblock.  qcow2 (direct) and raw (bios, store, batch) images alike."""
    assert {"direct", "bios", "store", "nixos", "corrupt"} <= set(before)
    assert probe_image(imgs["direct"])["format"] == "qcow2"
    assert probe_image(imgs["bios"])["format"] == "raw"
    assert {k: _sha256(imgs[k]) for k in before} == before


def test_plain_nixos_image(results: dict[str, Any], demo_root: Root) -> None:
    r = _report(results, "nixos")
    assert r.is_nixos and not r.is_nixslave and r.to_json()["is_nixslave"] is False
    assert r.toplevel == demo_root.toplevel
    assert r.store_paths_present == len(demo_root.paths)
    assert r.closure_count is None and r.store_complete is None
    assert (r.boot, r.layout) == ("direct", None)
    assert r.root_fs is not None and r.root_fs.label == "nixos"


def test_ext4_that_is_not_nixos(results: dict[str, Any]) -> None:
    r = _report(results, "plain")
    assert not r.is_nixos and not r.is_nixslave
    assert r.reason == "no /etc/NIXOS and no nixslave manifest"
    assert r.toplevel is None and r.root_fs is not None and r.root_fs.label == "data"


def test_random_bytes_have_no_file_system(results: dict[str, Any],
                                          imgs: dict[str, Path]) -> None:
    err = results["random"]
    assert isinstance(err, ImageError), err
    assert err.what == "no file system found"
    assert err.where == str(imgs["random"]) and err.hint


def test_corrupt_manifest_is_reported(results: dict[str, Any], demo_root: Root) -> None:
    r = _report(results, "corrupt")
    assert r.is_nixos and r.is_nixslave
    assert r.manifest_error is not None and "JSON" in r.manifest_error
    assert r.closure_count is None and r.store_complete is None
    assert r.toplevel == r.system_link == demo_root.toplevel


# -- refusals before any launch ----------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist") as e:
        inspect_image(tmp_path / "nope.qcow2")
    assert e.value.where == str(tmp_path / "nope.qcow2") and e.value.hint


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a regular file"):
        inspect_image(tmp_path)


def test_unsupported_format(tmp_path: Path) -> None:
    img = tmp_path / "disk.qed"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qed", str(img), "16M"], check=True)
    with pytest.raises(ImageError, match="format 'qed' is not supported") as e:
        inspect_image(img)
    assert "qemu-img convert" in e.value.hint


def test_backing_file_must_be_beside_the_image(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    base = tmp_path / "elsewhere/base.raw"
    base.write_bytes(b"\0" * (1 << 20))
    img = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base),
                    str(img)], check=True)
    with pytest.raises(ImageError, match="outside the image's directory") as e:
        inspect_image(img)
    assert e.value.where == str(img)
    beside = tmp_path / "base.raw"
    base.rename(beside)
    ok = tmp_path / "ok.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", beside.name,
                    str(ok)], check=True)
    assert probe_image(ok)["backing-filename"] == beside.name


def test_vmdk_extents_must_be_beside_the_image(tmp_path: Path) -> None:
    img = tmp_path / "d.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat",
                    str(img), "16M"], check=True)
    assert probe_image(img)["format"] == "vmdk"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d-flat.vmdk").rename(tmp_path / "elsewhere/d-flat.vmdk")
    img.write_text(img.read_text().replace('"d-flat.vmdk"', '"elsewhere/d-flat.vmdk"'))
    with pytest.raises(ImageError, match=r"vmdk extent \S*elsewhere/d-flat\.vmdk is outside"):
        inspect_image(img)


@pytest.mark.parametrize(("data", "problem"), [
    ([], "not a JSON object"),
    ({"toplevel": "/nix/store/x", "layout": "disk", "boot": "direct"}, "no 'closure'"),
    ({"toplevel": "/etc", "layout": "disk", "boot": "direct", "closure": []},
     "not a store path"),
    ({"toplevel": "/nix/store/x", "layout": "disk", "boot": "direct",
      "closure": [{"path": "/nix/store/../etc"}]}, "bad closure entry"),
])
def test_validate_manifest(data: Any, problem: str) -> None:
    err = validate_manifest(data)
    assert err is not None and problem in err


def test_validate_real_manifest(demo_root: Root) -> None:
    assert validate_manifest(demo_root.manifest()) is None
