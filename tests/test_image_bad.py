"""Bad images: every write operation refuses them clearly and writes nothing.

upgrade, repair and install write into images that may be a user's only
copy of a machine, so an image they must not touch (not NixOS, encrypted,
damaged, not a disk image at all, read-only, in use, under an overlay) has
to be refused with an ImageError that says where, what and how to go on,
and the refusal must leave every byte as it was.  For each case the sha256,
mtime, size and mode of every file in the image's directory (recursively:
published builds keep image, sidecar and lock in hidden directories) are
recorded before the operation and compared after it.

The images are made on the host (mkfs.ext4 -d, sfdisk, qemu-img,
cryptsetup), so making them needs no appliance.  Refusals that must come
before any launch run with ``guestfs_handle`` replaced by a tripwire; the
four cases that can only be decided inside the image share one module
fixture that runs their launches two at a time.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from badimages import (
    debian_mbr,
    debian_raw,
    luks_disk,
    run,
    to_qcow2,
    truncated_qcow2,
)
from clirun import nixslave

from nixslave.backends import publish
from nixslave.backends.disk import DiskOptions
from nixslave.build import build_image
from nixslave.errors import ImageError
from nixslave.image.inspect import inspect_image
from nixslave.image.install import install
from nixslave.image.repair import repair
from nixslave.image.target import open_target
from nixslave.image.upgrade import upgrade
from nixslave.root import Root
from nixslave.spec import MachineSpec

MiB = 1 << 20
WRITE_OPS = ("upgrade", "repair", "install")
Snapshot = dict[str, tuple[str, ...]]
Op = Callable[[Path], object]


# -- what "nothing was written" means ------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def snapshot(top: Path) -> Snapshot:
    """Every entry under ``top``: files by sha256, mtime, size and mode; links by target."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(st.st_mode))
            else:
                out[rel] = ("file", _sha256(p), str(st.st_mtime_ns), str(st.st_size),
                            oct(st.st_mode))
    return out


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    added = [f"new: {k}" for k in sorted(after.keys() - before.keys())]
    gone = [f"gone: {k}" for k in sorted(before.keys() - after.keys())]
    changed = [f"changed: {k}" for k in sorted(before.keys() & after.keys())
               if before[k] != after[k]]
    return added + gone + changed


def assert_unchanged(top: Path, before: Snapshot) -> None:
    changes = diff(before, snapshot(top))
    assert not changes, f"a refused operation wrote under {top}: {changes}"


def assert_clear(exc: BaseException, where: Path, *words: str) -> ImageError:
    """An ImageError naming the path the user gave, with a hint, on one line."""
    assert isinstance(exc, ImageError), f"{type(exc).__name__}: {exc}"
    assert exc.where == str(where), exc
    assert exc.hint.strip(), exc
    assert "\n" not in str(exc), exc
    text = str(exc).lower()
    assert "internal error" not in text, exc
    for w in words:
        assert w in text, f"{w!r} not in {exc}"
    return exc


def refused(op: Op, path: Path, *words: str) -> ImageError:
    """Run ``op`` on ``path``; it must refuse clearly and leave the directory as it was."""
    before = snapshot(path.parent)
    with pytest.raises(ImageError) as info:
        op(path)
    assert_unchanged(path.parent, before)
    return assert_clear(info.value, path, *words)


class Launched(Exception):
    """The operation got as far as an appliance launch."""


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire instead of libguestfs: a refusal must come before any launch."""
    def tripwire(*_a: Any, **_kw: Any) -> Any:
        raise Launched("guestfs_handle was called")

    for module in ("nixslave.image.session", "nixslave.image.inspect",
                   "nixslave.image.install"):
        # by module object: the package binds nixslave.image.install to the function
        monkeypatch.setattr(sys.modules[module], "guestfs_handle", tripwire)


@pytest.fixture
def write_op(request: pytest.FixtureRequest) -> Op:
    """upgrade, repair or install (into partition 1) as a function of the image alone."""
    name = request.param
    if name == "upgrade":
        return lambda p: upgrade(p)
    if name == "repair":
        return lambda p: repair(p)
    root: Root = request.getfixturevalue("demo_root")
    return lambda p: install(p, root, partition=1)


each_write_op = pytest.mark.parametrize("write_op", WRITE_OPS, indirect=True)


def _ops(request: pytest.FixtureRequest) -> dict[str, Op]:
    root: Root = request.getfixturevalue("demo_root")
    return {"upgrade": lambda p: upgrade(p), "repair": lambda p: repair(p),
            "install": lambda p: install(p, root, partition=1)}


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo qcow2 published by build_image, as `nixslave image build` leaves it."""
    d = tmp_path_factory.mktemp("built")
    out = d / "bad.qcow2"
    build_image(MachineSpec.parse({"name": "bad", "demo": True}), out)
    return out


# -- refused before any launch ------------------------------------------------

@pytest.mark.nix
@each_write_op
def test_truncated_qcow2_refused_before_launch(write_op: Op, demo_build: Path,
                                               tmp_path: Path, no_launch: None) -> None:
    """A qcow2 cut off by a full disk or a killed copy has tables that point past its end:
    libguestfs writing through them (repair's e2fsck, upgrade's copy, install's
    partition) would corrupt it further, so ``qemu-img check`` refuses it first."""
    img = truncated_qcow2(demo_build.resolve(), tmp_path / "img")
    refused(write_op, img, "qcow2", "damaged")


@pytest.mark.nix
def test_truncated_qcow2_inspect_refused_before_launch(demo_build: Path, tmp_path: Path,
                                                       no_launch: None) -> None:
    """A truncated qcow2 is damaged as a container, not as a file system: the hint
    'try e2fsck on a copy' leads nowhere, and a launch is spent to find out."""
    img = truncated_qcow2(demo_build.resolve(), tmp_path / "img")
    refused(lambda p: inspect_image(p), img, "qcow2", "damaged")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images qemu-img reads but nixslave does not take: Hyper-V's vhdx, qemu's luks.

    Made once (a luks container costs a key derivation), each in its own directory.
    """
    out = {}
    for fmt, opts in (("vhdx", []), ("luks", ["--object", "secret,id=sec0,data=not-a-secret",
                                              "-o", "key-secret=sec0,iter-time=10"])):
        d = tmp_path_factory.mktemp(fmt)
        out[fmt] = d / f"disk.{fmt}"
        run("qemu-img", "create", "-q", "-f", fmt, *opts, out[fmt], "64M")
    return out


@pytest.mark.tools("qemu-img")
@pytest.mark.parametrize("fmt", ["vhdx", "luks"])
@pytest.mark.parametrize("op", ["upgrade", "repair", "inspect"])
def test_unsupported_format_refused(fmt: str, op: str, foreign: dict[str, Path],
                                    no_launch: None) -> None:
    """An image of a format nixslave does not accept (Hyper-V's vhdx, qemu's own luks
    container) must be refused by name: handed to libguestfs with a guessed
    format, qemu would probe it, and a raw guess writes over its header."""
    fn: Op = {"upgrade": lambda p: upgrade(p), "repair": lambda p: repair(p),
              "inspect": lambda p: inspect_image(p)}[op]
    exc = refused(fn, foreign[fmt], "not supported", fmt)
    assert "qcow2" in exc.hint  # how to convert it


@pytest.mark.nix
@pytest.mark.tools("qemu-img")
def test_unsupported_format_refused_by_install(demo_root: Root, foreign: dict[str, Path],
                                               no_launch: None) -> None:
    """install writes a partition table: into a vhdx taken for raw it would write
    an MBR over the vhdx header."""
    refused(lambda p: install(p, demo_root, partition=1), foreign["vhdx"], "not supported",
            "vhdx")


@pytest.mark.parametrize("op", ["upgrade", "repair", "inspect"])
def test_text_file_refused_before_launch(op: str, tmp_path: Path, no_launch: None) -> None:
    """Passing the machine's spec file instead of its image is an easy slip: it must be
    refused at once, not copied as a 'safety backup' and opened as a disk."""
    d = tmp_path / "img"
    d.mkdir()
    img = d / "alpha.yaml"
    img.write_text("name: alpha\ndemo: true\nmemory: 512\n")
    fn: Op = {"upgrade": lambda p: upgrade(p), "repair": lambda p: repair(p),
              "inspect": lambda p: inspect_image(p)}[op]
    refused(fn, img, "not a disk image")


@pytest.mark.nix
@each_write_op
def test_zero_length_refused(write_op: Op, tmp_path: Path, no_launch: None) -> None:
    """A zero-length file (an image whose build or download died at once) holds nothing:
    repair's safety copy of it, or a launch with an empty drive, would only hide that."""
    d = tmp_path / "img"
    d.mkdir()
    img = d / "alpha.qcow2"
    img.touch()
    refused(write_op, img, "empty")


def test_zero_length_inspect_refused_before_launch(tmp_path: Path, no_launch: None) -> None:
    """inspect of an empty file should say 'empty' at once, as the write operations do,
    instead of a launch (tens of seconds) that ends in 'no file system found'."""
    d = tmp_path / "img"
    d.mkdir()
    img = d / "alpha.qcow2"
    img.touch()
    refused(lambda p: inspect_image(p), img, "empty")


@pytest.mark.nix
@each_write_op
def test_read_only_file_refused(write_op: Op, tmp_path: Path, no_launch: None) -> None:
    """A user who chmods an image 0444 means 'keep it': root bypasses the mode bits, so
    without nixslave's own check an upgrade run as root would write it anyway."""
    img = debian_raw(tmp_path / "img")
    img.chmod(0o444)
    exc = refused(write_op, img, "read-only")
    assert "chmod" in exc.hint


def test_read_only_file_still_inspected(tmp_path: Path, no_launch: None) -> None:
    """Reading must not be refused for the mode bits that refuse writing: inspect of a
    0444 image passes every check before the launch (the tripwire stops it there),
    and open_target for reading accepts it."""
    img = debian_raw(tmp_path / "img")
    img.chmod(0o444)
    before = snapshot(img.parent)
    t = open_target(img, write=False)
    assert (t.image, t.format) == (img, "raw")
    with pytest.raises(Launched):
        inspect_image(img)
    assert_unchanged(img.parent, before)


@pytest.fixture
def running_qemu(tmp_path: Path) -> Iterator[Path]:
    """A paused qemu (no boot) that has the image open: it holds qemu's image lock."""
    img = to_qcow2(debian_raw(tmp_path / "img"))
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-S", "-display", "none", "-nodefaults",
         "-drive", f"file={img},format=qcow2,if=virtio"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(["qemu-img", "info", str(img)], capture_output=True,
                                   text=True)
            if probe.returncode != 0 and "lock" in probe.stderr:
                break
            if proc.poll() is not None:
                pytest.fail(f"qemu exited: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.fail("qemu did not take the image lock within 60 s")
            time.sleep(0.2)
        yield img
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.nix
@pytest.mark.tools("qemu-system-x86_64")
def test_image_in_use_by_qemu_refused(running_qemu: Path, request: pytest.FixtureRequest,
                                      no_launch: None) -> None:
    """Writing the disk of a running guest corrupts its file system under its feet
    (both kernels cache it); qemu's lock says so, and every write operation
    must honour it.  The snapshot is taken while qemu runs, so only nixslave's
    writes would show."""
    for name, op in _ops(request).items():
        exc = refused(op, running_qemu, "in use")
        assert "stop" in exc.hint, name


@pytest.mark.nix
def test_image_held_by_run_refused(demo_build: Path, request: pytest.FixtureRequest,
                                   no_launch: None) -> None:
    """`nixslave run` holds a shared lock on the build it boots; its qemu may not have
    opened the image yet (or runs it with locking off), so the build's lock is
    what keeps an upgrade from writing under a booting guest."""
    build = publish.current_build(demo_build)
    assert build is not None
    fd = publish.hold(build)
    try:
        for op in _ops(request).values():
            refused(op, demo_build, "in use")
    finally:
        os.close(fd)


@pytest.fixture
def overlaid(tmp_path: Path) -> tuple[Path, Path]:
    """A published base image and the per-instance overlay that backs onto it."""
    base, overlay = tmp_path / "base.qcow2", tmp_path / "instance.qcow2"
    build_image(MachineSpec.parse({"name": "base", "demo": True}), base,
                DiskOptions(overlay=overlay))
    return base, overlay


@pytest.mark.nix
def test_overlay_base_refused(overlaid: tuple[Path, Path],
                              request: pytest.FixtureRequest, no_launch: None) -> None:
    """An overlay stores only the clusters its guest changed and reads the rest from the
    base: upgrading the base in place changes the bytes under the overlay, whose
    guest then reads a file system that is half old, half new."""
    base, _overlay = overlaid
    for op in _ops(request).values():
        refused(op, base, "overlay")


@pytest.mark.nix
def test_overlay_hint_leads_somewhere(overlaid: tuple[Path, Path], no_launch: None) -> None:
    """A hint that leads to a second refusal leaves the user with no way on."""
    base, overlay = overlaid
    with pytest.raises(ImageError) as info:
        upgrade(base)
    assert "flatten" in info.value.hint
    flat = overlay.with_name("flat.qcow2")
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(overlay), str(flat)], check=True)
    try:
        open_target(flat, write=True)  # the hint's way on is accepted
    finally:
        flat.unlink()


# -- refused inside the image (one launch each, two at a time) -----------------

@dataclass
class Outcome:
    image: Path
    error: BaseException | None
    before: Snapshot
    after: Snapshot


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory, demo_build: Path) -> dict[str, Outcome]:
    """The refusals that only a look inside the image can decide, run once."""
    work = tmp_path_factory.mktemp("launched")
    cases: dict[str, tuple[Path, Op]] = {
        "upgrade-debian-raw": (debian_raw(work / "debian-raw"), lambda p: upgrade(p)),
        "repair-debian-mbr": (debian_mbr(work / "debian-mbr"), lambda p: repair(p)),
        "repair-luks": (luks_disk(work / "luks"), lambda p: repair(p)),
        "inspect-truncated": (truncated_qcow2(demo_build.resolve(), work / "truncated"),
                              lambda p: inspect_image(p)),
    }
    befores = {k: snapshot(img.parent) for k, (img, _) in cases.items()}

    def run(key: str) -> BaseException | None:
        img, op = cases[key]
        try:
            op(img)
        except Exception as exc:
            return exc
        return None

    # one after the other: two appliances driven from threads of one process
    # have been seen to disagree about what is mounted
    errors = {k: run(k) for k in cases}
    return {k: Outcome(img, errors[k], befores[k], snapshot(img.parent))
            for k, (img, _) in cases.items()}


@pytest.mark.guestfs
@pytest.mark.nix
@pytest.mark.tools("cryptsetup")
def test_upgrade_refuses_non_nixos(launched: dict[str, Outcome]) -> None:
    """A Debian disk passed by mistake: upgrade must say it is not NixOS before it
    copies a store and a boot entry over someone's root file system."""
    o = launched["upgrade-debian-raw"]
    assert o.error is not None, "upgrade accepted a Debian image"
    assert_clear(o.error, o.image, "nixos")
    assert not diff(o.before, o.after)


@pytest.mark.guestfs
@pytest.mark.nix
@pytest.mark.tools("cryptsetup")
def test_repair_refuses_non_nixos(launched: dict[str, Outcome]) -> None:
    """repair of a partitioned Debian disk must stop at 'not NixOS' before e2fsck -y,
    relabelling or a rebuilt manifest touch the partition."""
    o = launched["repair-debian-mbr"]
    assert o.error is not None, "repair accepted a Debian image"
    assert_clear(o.error, o.image, "nixos")


@pytest.mark.guestfs
@pytest.mark.nix
@pytest.mark.tools("cryptsetup")
def test_repair_of_non_nixos_writes_nothing(launched: dict[str, Outcome]) -> None:
    """A refused repair must leave the user's directory as it was: a full copy of a
    foreign disk beside it is a surprise (and can fill the disk)."""
    o = launched["repair-debian-mbr"]
    assert not diff(o.before, o.after), diff(o.before, o.after)


@pytest.mark.guestfs
@pytest.mark.nix
@pytest.mark.tools("cryptsetup")
def test_repair_refuses_encrypted(launched: dict[str, Outcome]) -> None:
    """A disk with a LUKS partition: nixslave cannot see inside, so it must say
    'encrypted' rather than 'no NixOS' (which invites a --force-like retry)."""
    o = launched["repair-luks"]
    assert o.error is not None, "repair accepted an encrypted disk"
    assert_clear(o.error, o.image, "encrypted")


@pytest.mark.guestfs
@pytest.mark.nix
@pytest.mark.tools("cryptsetup")
def test_repair_of_encrypted_writes_nothing(launched: dict[str, Outcome]) -> None:
    """An internal snapshot rewrites the qcow2's header and refcount tables: a refused
    repair must not change the encrypted disk at all."""
    o = launched["repair-luks"]
    assert not diff(o.before, o.after), diff(o.before, o.after)


@pytest.mark.guestfs
@pytest.mark.nix
@pytest.mark.tools("cryptsetup")
def test_truncated_qcow2_inspect_is_an_image_error(launched: dict[str, Outcome]) -> None:
    """inspect of a truncated qcow2 reads garbage or I/O errors from the appliance: it
    must end as an ImageError about the file, not a RuntimeError traceback."""
    o = launched["inspect-truncated"]
    assert o.error is not None, "inspect reported on a truncated qcow2"
    assert_clear(o.error, o.image)
    assert not diff(o.before, o.after)


# -- the command line ----------------------------------------------------------

@pytest.mark.parametrize("case", ["repair-empty", "upgrade-vhdx"])
def test_cli_one_line_exit_2(case: str, tmp_path: Path) -> None:
    """Through the CLI a bad image is one line on stderr and exit 2: a traceback or
    an 'internal error' would mean a path the library did not foresee."""
    d = tmp_path / "img"
    d.mkdir()
    if case == "repair-empty":
        img = d / "alpha.qcow2"
        img.touch()
        args = ["image", "repair", str(img)]
    else:
        img = d / "alpha.vhdx"
        run("qemu-img", "create", "-q", "-f", "vhdx", img, "64M")
        args = ["image", "upgrade", str(img)]
    before = snapshot(d)
    proc = nixslave(*args, timeout=120)
    assert_unchanged(d, before)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert lines[0].startswith("nixslave image: ") and str(img) in lines[0], lines[0]
    assert "(hint: " in lines[0]
