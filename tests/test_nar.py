"""NAR hashing checked against Nix itself.

Every expected hash, size and base-32 string comes from Nix (nix-hash,
nix-store --dump, nix-store --query), never from nar.py, so a bug in the
encoding, padding, sort order, executable bit, symlink or hard-link handling,
or a lost spilled file, shows up as a mismatch.  Tar streams come from GNU tar,
the tool libguestfs's tar_out runs, so the tests see what a repair sees.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from nixslave.image import nar
from nixslave.image.nar import NarError, TarPath, hash_tar_stream, nar_hash_path, nix32

pytestmark = pytest.mark.tools("nix-hash", "nix-store", "tar")
ROOT = os.geteuid() == 0
BIG = 9 * 2**20 + 5  # past the spool's memory limit, not a multiple of 8
# Names whose byte order differs from their str order ("\xff" is "\udcff" as
# str, below U+FF41 (fullwidth a), but its byte is above UTF-8's 0xEF) and from a
# case-insensitive order ("B" < "Z" < "_" < "a" as bytes).
NAMES = ["B", "a", "_", "é", "Z", "\uff41", os.fsdecode(b"\xff"), "ab", "a.b"]


def run(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True,
                          text=True).stdout


def nix_hashes(*paths: Path) -> list[str]:
    """Nix's NAR hash of each local path (Nix's own serialiser)."""
    return ["sha256:" + h for h in run("nix-hash", "--type", "sha256", "--base32",
                                       *paths).split()]


def nix_nar_size(path: Path) -> int:
    out = subprocess.run(["nix-store", "--dump", str(path)], check=True,
                         capture_output=True).stdout
    return len(out)


def make_tree(d: Path, big: bool = False) -> Path:
    """A directory with every kind of entry a NAR can hold, and the awkward cases."""
    rnd = random.Random(str(d))
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "sub" / "deeper" / "file").write_bytes(b"x" * 13)
    (d / "empty-dir").mkdir()
    (d / "empty-file").write_bytes(b"")
    (d / "exe").write_bytes(rnd.randbytes(1001))
    os.chmod(d / "exe", 0o755)
    for name, mode in (("owner-exec-only", 0o500), ("others-exec-only", 0o445)):
        (d / name).write_bytes(name.encode())
        os.chmod(d / name, mode)  # NAR's executable flag is the owner's bit alone
    for name in NAMES:
        (d / name).write_bytes(os.fsencode(name) * 3)
    (d / "é-dir").mkdir()
    (d / "é-dir" / "\uff5a").write_bytes(b"inside")
    os.symlink("sub/deeper/file", d / "rel-link")
    os.symlink("/nonexistent/dangling/target", d / "abs-dangling")
    os.symlink("sub", d / "dir-link")  # following it would serialise a directory
    os.link(d / "exe", d / "exe-hardlink")
    if big:
        (d / "big").write_bytes(rnd.randbytes(BIG))
    return d


def canonicalise(top: Path) -> None:
    """Give a tree the metadata of a Nix store: 0444/0555, dirs 0555, owner 0:0."""
    for where, dirs, files in os.walk(top, topdown=False):
        for name in files + dirs:
            p = Path(where) / name
            if ROOT:
                os.lchown(p, 0, 0)
            if not p.is_symlink():
                os.chmod(p, nar.store_mode(p.stat().st_mode) if p.is_file() else 0o555)
    if ROOT:
        os.lchown(top, 0, 0)
    if not top.is_symlink():
        os.chmod(top, 0o555 if top.is_dir() else nar.store_mode(top.stat().st_mode))


def gnu_tar(src: Path, *members: str) -> bytes:
    """What tar_out writes: ``tar -C src -cf - .`` (hard links kept as links)."""
    owner = [] if ROOT else ["--owner=0", "--group=0", "--numeric-owner"]
    return subprocess.run(["tar", *owner, "-C", str(src), "-cf", "-", *(members or ["."])],
                          check=True, capture_output=True).stdout


def stream(data: bytes, **kw: object) -> dict[str, TarPath]:
    out: dict[str, TarPath] = {}
    for tp in hash_tar_stream(io.BytesIO(data), **kw):  # type: ignore[arg-type]
        out[tp.name] = tp
    return out


def link_members(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m.linkname for m in tf if m.islnk()}


@pytest.mark.parametrize("algo", ["sha256", "sha1", "md5"])
def test_nix32_matches_nix(algo: str) -> None:
    """Nix's bit order (last 5-bit group first), also for lengths not a multiple of 5 bits."""
    size = hashlib.new(algo).digest_size
    digests = [bytes(size), b"\xff" * size, hashlib.new(algo, b"").digest(),
               *(random.Random(i).randbytes(size) for i in range(5))]
    want = run("nix-hash", "--type", algo, "--to-base32", *(d.hex() for d in digests)).split()
    assert [nix32(d) for d in digests] == want


def test_parse_nar_hash_accepts_every_form_nix_writes() -> None:
    digest = hashlib.sha256(b"parse me").digest()
    b32 = run("nix-hash", "--type", "sha256", "--to-base32", digest.hex()).strip()
    sri = run("nix", "--extra-experimental-features", "nix-command", "hash", "to-sri",
              "--type", "sha256", digest.hex()).strip()
    for form in ("sha256:" + b32, "sha256:" + digest.hex(), sri):
        assert nar.parse_nar_hash(form) == digest, form


@pytest.mark.unit
@pytest.mark.parametrize("bad", [
    "md5:" + "0" * 26, "sha256:" + "0" * 51, "sha256:" + "e" * 52,  # 'e' is not nix32
    "sha256:" + "z" * 52,  # 260 bits do not fit in 256
    "sha256:" + "0" * 63, "sha256-AAAA", "sha256-" + "!" * 44, "sha512:" + "0" * 64, "",
    "0" * 52])
def test_parse_nar_hash_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        nar.parse_nar_hash(bad)


def test_local_paths_match_nix_hash(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", big=True)
    (tmp_path / "single").write_bytes(b"a single file of 29 bytes....")
    os.chmod(tmp_path / "single", 0o555)
    os.symlink("/etc/passwd", tmp_path / "top-link")  # a followed link would hash a file
    os.symlink("tree", tmp_path / "top-dir-link")
    paths = [tree, tmp_path / "single", tmp_path / "top-link", tmp_path / "top-dir-link",
             *sorted(tree.iterdir())]
    got = [nar_hash_path(p) for p in paths]
    assert [h for h, _ in got] == nix_hashes(*paths)
    for p, (_, size) in zip(paths[:4], got, strict=False):
        assert size == nix_nar_size(p), p


def test_local_special_file_raises(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe")
    with pytest.raises(NarError, match=r"pipe.*fifo"):
        nar_hash_path(tmp_path / "d")


def test_tar_stream_matches_nix_hash(tmp_path: Path) -> None:
    """Each top-level entry of a GNU tar stream hashes as Nix hashes the same entry."""
    store = tmp_path / "store"
    make_tree(store / "aaaa-tree", big=True)
    make_tree(store / "bbbb-small")
    (store / "cccc-single").write_bytes(b"#!/bin/sh\necho single\n")
    os.chmod(store / "cccc-single", 0o555)
    os.symlink("/etc/passwd", store / "dddd-link")
    (store / "eeee-empty").mkdir()
    for p in store.iterdir():
        canonicalise(p)
    data = gnu_tar(store)
    assert BIG > nar.SPOOL_MAX  # the big file really spills
    assert link_members(data), "GNU tar wrote no hard-link member; the test lost its point"
    got = stream(data)
    names = sorted(p.name for p in store.iterdir())
    assert sorted(got) == names
    assert [got[n].nar_hash for n in names] == nix_hashes(*(store / n for n in names))
    for n in names:
        assert got[n].nar_size == nix_nar_size(store / n), n
        assert (got[n].problems, got[n].bad_modes, got[n].bad_owners) == ([], [], []), n


def test_hard_link_across_store_paths(tmp_path: Path) -> None:
    """An optimised store links files across paths: kept contents resolve them."""
    store = tmp_path / "store"
    for name in ("p1", "p2"):
        (store / name).mkdir(parents=True)
    (store / "p1" / "f").write_bytes(b"shared contents, 31 bytes long.")
    os.link(store / "p1" / "f", store / "p2" / "g")
    (store / "p2" / "own").write_bytes(b"own")
    for p in store.iterdir():
        canonicalise(p)
    data = gnu_tar(store)
    (link,) = link_members(data)
    linked = link.split("/")[1]  # the path whose member is the link
    other = "p1" if linked == "p2" else "p2"
    want = dict(zip(["p1", "p2"], nix_hashes(store / "p1", store / "p2"), strict=True))

    got = stream(data)
    assert got[other].nar_hash == want[other]
    assert got[linked].nar_hash == ""
    assert got[linked].unresolved_links == ["/".join(link.split("/")[2:])]

    got = stream(data, keep_bytes=2**20)
    assert {n: tp.nar_hash for n, tp in got.items()} == want
    assert not got[linked].unresolved_links

    (single,) = stream(gnu_tar(store / linked), single=linked).values()
    assert (single.name, single.nar_hash) == (linked, want[linked])


@pytest.mark.skipif(not ROOT, reason="setting owners needs root")
def test_tar_stream_reports_store_defects(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_tree(store / "good")
    bad = store / "bad"
    (bad / "dir").mkdir(parents=True)
    for name in ("rw", "suid", "mine", "ok", "x-others"):
        (bad / name).write_bytes(name.encode())
    (store / "fifo").mkdir()
    (store / "fifo" / "x").write_bytes(b"x")
    os.mkfifo(store / "fifo" / "pipe")
    for p in store.iterdir():
        canonicalise(p)
    os.chmod(bad / "rw", 0o666)
    os.chmod(bad / "suid", 0o4555)
    os.chmod(bad / "dir", 0o755)
    os.chmod(bad / "x-others", 0o445)  # not executable in a NAR; Nix makes it 0444
    os.chown(bad / "mine", 1000, 1000)
    os.chmod(store / "fifo" / "pipe", 0o444)
    got = stream(gnu_tar(store))

    assert (got["good"].problems, got["good"].bad_modes, got["good"].bad_owners) == ([], [], [])
    b = got["bad"]
    assert sorted(b.bad_modes) == [("dir", 0o755), ("rw", 0o666), ("suid", 0o4555),
                                   ("x-others", 0o445)]
    assert b.bad_owners == ["mine"]
    text = "\n".join(b.problems)
    for needle in ("bad/rw", "write", "bad/suid", "setuid", "bad/dir", "bad/mine", "1000"):
        assert needle in text
    assert len(b.problems) == 5
    assert b.nar_hash == nix_hashes(bad)[0]  # modes other than +x are not in a NAR

    f = got["fifo"]
    assert f.nar_hash == "" and f.nar_size == 0
    assert len(f.problems) == 1 and "fifo/pipe" in f.problems[0] and "fifo" in f.problems[0]


def _store_sample() -> list[str]:
    """Valid store paths of a NixOS system closure here, small enough to hash quickly."""
    tops = [p for p in sorted(glob.glob("/nix/store/*-nixos-system-*"))
            if not p.endswith(".drv") and os.path.isdir(p)]
    if tops:
        invalid = set(run("nix-store", "--check-validity", "--print-invalid", *tops).split())
        tops = [t for t in tops if t not in invalid]
    if not tops:
        return []
    closure = run("nix-store", "--query", "--requisites", tops[0]).split()
    sizes = run("nix-store", "--query", "--size", *closure).split()
    return [p for p, s in zip(closure, sizes, strict=True) if int(s) <= 16 * 2**20][:8]


@pytest.mark.nix
def test_real_store_paths_match_recorded_nar_hash() -> None:
    sample = _store_sample()
    if not sample:
        pytest.skip("no valid NixOS system closure in /nix/store")
    hashes = run("nix-store", "--query", "--hash", *sample).split()
    sizes = [int(s) for s in run("nix-store", "--query", "--size", *sample).split()]
    want = {os.path.basename(p): (nar.parse_nar_hash(h), s)
            for p, h, s in zip(sample, hashes, sizes, strict=True)}
    for p in sample:
        h, size = nar_hash_path(p)
        assert (nar.parse_nar_hash(h), size) == want[os.path.basename(p)], p
    got = stream(gnu_tar(Path("/nix/store"), *("./" + os.path.basename(p) for p in sample)))
    assert {n: (nar.parse_nar_hash(tp.nar_hash), tp.nar_size) for n, tp in got.items()} == want
    for n, tp in got.items():
        assert tp.bad_modes == [], n
        if os.stat(f"/nix/store/{n}", follow_symlinks=False).st_uid == 0:
            assert tp.bad_owners == [], n


def _crafted(*members: tuple[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o555
            if content is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.mark.unit
@pytest.mark.parametrize(("members", "match"), [
    ([("./a", None), ("./b", None), ("./a/x", b"x")], "reappears"),
    ([("./a", None), ("./a/x/y", b"y")], "no parent"),
    ([("./a", None), ("./a/x", b"x"), ("./a/x", b"x")], "duplicate"),
    ([("./a", None), ("./a/../b", b"x")], "plain relative"),
])
def test_streams_tar_out_cannot_write_raise(members: list[tuple[str, bytes | None]],
                                            match: str) -> None:
    with pytest.raises(NarError, match=match):
        list(hash_tar_stream(io.BytesIO(_crafted(*members))))


@pytest.mark.unit
def test_garbage_stream_raises_nar_error() -> None:
    with pytest.raises(NarError):
        list(hash_tar_stream(io.BytesIO(b"not a tar archive" * 100)))
