"""Read-only store disks: erofs and squashfs, built on the host without a VM.

The kernel is the judge here: images are loop-mounted read-only on the
host, so a wrong label checksum or a missing file shows as the kernel sees
it.  Booting them is tests/test_boot_matrix.py's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import nixslave

from nixslave.backends import storefs
from nixslave.backends.disk import DiskBackend, DiskOptions
from nixslave.errors import BuildError, SpecError
from nixslave.nixos import STORE_LABEL
from nixslave.root import Root, build
from nixslave.spec import MachineSpec

pytestmark = pytest.mark.nix


def _blkid(image: Path) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", str(image)], capture_output=True,
                         text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@contextlib.contextmanager
def _mounted(image: Path, fstype: str) -> Iterator[Path]:
    """The kernel's own reading of an image (loop, read-only)."""
    mp = Path(tempfile.mkdtemp(prefix="nixslave-storefs-"))
    proc = subprocess.run(["mount", "-o", "loop,ro", "-t", fstype, str(image), str(mp)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        mp.rmdir()
        if "unknown filesystem type" in proc.stderr or "loop" in proc.stderr:
            pytest.skip(f"this host cannot loop-mount {fstype}: {proc.stderr.strip()}")
        raise AssertionError(f"the kernel refuses the image: {proc.stderr}")
    try:
        yield mp
    finally:
        subprocess.run(["umount", str(mp)], check=True)
        mp.rmdir()


def test_crc32c_is_castagnoli() -> None:
    """The published check value of CRC-32C (RFC 3720 B.4) over "123456789"."""
    assert storefs.crc32c_raw(b"123456789") ^ 0xFFFFFFFF == 0xE3069283


@pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")
def test_erofs_label_is_written_and_the_kernel_still_mounts_it(tmp_path: Path) -> None:
    """Bug: writing the volume name without recomputing the superblock crc32c
    makes the kernel refuse the store disk ("bad checksum"), and stage 1 stops."""
    tree = tmp_path / "tree"
    (tree / "abc-pkg").mkdir(parents=True)
    (tree / "abc-pkg" / "file").write_text("store file\n")
    image = tmp_path / "s.erofs"
    storefs.make_erofs(image, tree, label=STORE_LABEL,
                       fs_uuid="0f0e0d0c-0b0a-4908-8706-050403020100")
    assert _blkid(image)["LABEL"] == STORE_LABEL
    assert _blkid(image)["UUID"] == "0f0e0d0c-0b0a-4908-8706-050403020100"
    with _mounted(image, "erofs") as mp:
        assert (mp / "abc-pkg" / "file").read_text() == "store file\n"
        st = os.stat(mp / "abc-pkg" / "file")
        assert (st.st_uid, st.st_gid, int(st.st_mtime)) == (0, 0, 1)


def test_a_foreign_superblock_is_refused(tmp_path: Path) -> None:
    """Bug: patching a superblock this code does not understand (another
    format or a corrupt mkfs output) would hand the guest an unmountable disk."""
    image = tmp_path / "junk"
    image.write_bytes(b"\0" * 8192)
    with pytest.raises(BuildError, match="no erofs superblock"):
        storefs.set_erofs_label(image, STORE_LABEL)
    tree = tmp_path / "t"
    tree.mkdir()
    image = tmp_path / "s.erofs"
    storefs.make_erofs(image, tree, label="x", fs_uuid="0f0e0d0c-0b0a-4908-8706-050403020100")
    with open(image, "r+b") as f:  # flip a bit the checksum covers
        f.seek(storefs.SB_OFFSET + 40)
        b = f.read(1)
        f.seek(storefs.SB_OFFSET + 40)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(BuildError, match="checksum"):
        storefs.set_erofs_label(image, STORE_LABEL)


@pytest.fixture(scope="module")
def closure_root() -> Root:
    return build(MachineSpec.parse({"name": "storefs", "demo": True,
                                    "layout": "store-disk"}))


def _variant(root: Root, **kw: object) -> Root:
    return Root(spec=root.spec.model_copy(update=kw), toplevel=root.toplevel,
                closure=root.closure)


def _allocated(path: Path) -> int:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                                     capture_output=True, text=True, check=True).stdout)
    return int(info["actual-size"])


@pytest.mark.parametrize("fs", ["erofs", "squashfs"])
def test_store_disk_costs_less_than_its_closure(fs: str, closure_root: Root,
                                                tmp_path: Path) -> None:
    """Bug: falling back to ext4 (or to an uncompressed image) makes the store
    disk allocate more than the closure's NAR size, the whole point of a
    read-only store file system.  The disk must also hold exactly the closure."""
    root = _variant(closure_root, store_fs=fs)
    a = DiskBackend().materialize(root, tmp_path / "m.qcow2",
                                  DiskOptions(format="raw", gcroot=False))
    assert a.store_image is not None and a.extra["storeFs"] == fs
    assert _blkid(a.store_image)["TYPE"] == fs
    assert _allocated(a.store_image) < root.nar_size
    if os.geteuid() != 0:
        return
    with _mounted(a.store_image, fs) as mp:
        assert sorted(p.name for p in mp.iterdir()) == sorted(Path(p).name for p in root.paths)
        kernel = Path(os.path.realpath(Path(root.toplevel) / "kernel"))
        assert (mp / kernel.name).read_bytes() == kernel.read_bytes()


def _store_sha(out: Path, umask: int, fs: str) -> str:
    def pre() -> None:
        os.umask(umask)
    proc = subprocess.run([sys.executable, "-c", "import sys; from nixslave.cli import main; "
                           "sys.exit(main())", "image", "build", "--demo", "--name", "repro",
                           "--layout", "store-disk", "--store-fs", fs, "--format", "raw",
                           "-o", str(out), "--json"],
                          capture_output=True, text=True, preexec_fn=pre, timeout=600)
    assert proc.returncode == 0, proc.stderr
    store = Path(json.loads(proc.stdout)["store_image"])
    return hashlib.sha256(store.read_bytes()).hexdigest()


@pytest.mark.parametrize("fs", ["erofs", "squashfs"])
def test_store_disk_is_reproducible(fs: str, tmp_path: Path) -> None:
    """Bug: mkfs.erofs stamps the build time and a random UUID, mksquashfs the
    build time, and the umask leaks into the tree's modes: three builds of
    the same closure would differ."""
    sums = set()
    for umask in (0o022, 0o077):
        out = tmp_path / f"u{umask:o}"  # another scratch directory each time
        out.mkdir()
        sums.add(_store_sha(out / "r.raw", umask, fs))
    assert len(sums) == 1, sums


def test_store_fs_needs_a_store_disk() -> None:
    """Bug: --store-fs erofs on the disk layout was accepted and silently
    ignored (the root's store is ext4)."""
    with pytest.raises(SpecError, match="store-disk"):
        MachineSpec.parse({"name": "a", "demo": True, "store_fs": "erofs"})
    assert MachineSpec.parse({"name": "a", "demo": True,
                              "layout": "store-disk"}).store_fs_resolved == "erofs"
    assert MachineSpec.parse({"name": "a", "demo": True}).store_fs_resolved == "ext4"
    out = nixslave("image", "build", "--demo", "--store-fs", "squashfs", "-o", "/tmp/x.qcow2")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "store-disk" in out.stderr


def test_virtualbox_refuses_a_squashfs_store_disk(tmp_path: Path) -> None:
    """squashfs is found by its virtio serial; VirtualBox's disks have none,
    so the guest would wait for a store disk that never appears."""
    out = nixslave("image", "build", "--demo", "--format", "vdi", "--layout", "store-disk",
                   "--store-fs", "squashfs", "-o", str(tmp_path / "v.vdi"))
    assert out.returncode == 2, out.stderr
    assert "squashfs" in out.stderr and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="private mount namespaces need root")
def test_zero_copy_share_costs_nothing_and_serves_exactly_the_closure(
        tmp_path: Path) -> None:
    """Bug: a hardlink tree costs directory blocks per closure file (1.7 %),
    and a bind of the whole host store would leak every other path.  The
    share is empty on disk; the serving process alone sees exactly the
    closure, read-only, and the host's mount table never changes."""
    from nixslave.backends.storebind import closure_view
    from nixslave.runtime.run import vm_config

    root = build(MachineSpec.parse({"name": "zerocopy", "demo": True, "layout": "shared"}))
    a = DiskBackend().materialize(root, tmp_path / "z.qcow2", DiskOptions(gcroot=False))
    assert a.share_dir is not None and a.extra["shareMethod"] == "bind"
    assert list(a.share_dir.iterdir()) == []
    share = vm_config(a).shares[0]
    assert share.closure is not None and sorted(share.closure) == sorted(root.paths)

    outsider = next(p for p in Path("/nix/store").iterdir()
                    if str(p) not in root.paths and not p.name.startswith("."))
    kernel = Path(next(p for p in root.paths if p.endswith("-linux-kernel"))).name
    script = (f'ls -A "$1"; echo ---; [ -e "$1/{outsider.name}" ] && echo LEAK; '
              f'( : > "$1/{kernel}" ) 2>/dev/null && echo WROTE; '
              f'mkdir "$1/new" 2>/dev/null && echo ADDED; '
              f'cmp -s "$1/{kernel}" "{root.toplevel}/kernel" && echo SAME')
    mounts_before = Path("/proc/self/mounts").read_text()
    proc = subprocess.run(["sh", "-c", script, "sh", str(a.share_dir)], capture_output=True,
                          text=True, preexec_fn=closure_view(a.share_dir, root.paths))
    assert proc.returncode == 0, proc.stderr
    listing, _, checks = proc.stdout.partition("---\n")
    assert sorted(listing.split()) == sorted(Path(p).name for p in root.paths)
    assert checks.split() == ["SAME"]
    assert Path("/proc/self/mounts").read_text() == mounts_before
    assert list(a.share_dir.iterdir()) == []
