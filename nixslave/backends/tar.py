"""A deterministic tarball of a container root, and the tar writer OCI layers use.

The tarball is what ``machinectl import-tar`` and LXC take: the prepared
root (see :func:`nixslave.backends.nspawn.container_tree`) with exactly the
closure under ``nix/store``.  The closure is read straight from the host
store and the rest from a small prepared tree, so nothing is copied first.

Two builds of the same inputs give the same bytes, on any host:

* entries in byte order of their names (a parent sorts before its
  children, so every directory comes before its contents);
* every mtime 1 (the store's epoch), owner and group 0 with empty names,
  modes as the files have them (store paths: 0444/0555);
* GNU format: long names get ``././@LongLink`` records, never pax headers,
  so no atime/ctime or sub-second times ever appear;
* no hard links: whether two store files share an inode depends on the
  host's ``nix-store --optimise`` history, so every file is stored whole;
* gzip (optional) with mtime 0 and no file name; the tar itself is the
  reproducible part, ``diff_id`` in OCI terms.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from nixslave.backends import Artifact
from nixslave.backends.nspawn import (
    STORE,
    base_extra,
    check_output,
    container_tree,
    options_of,
    publish_container,
)
from nixslave.backends.publish import BuildSet
from nixslave.errors import BuildError
from nixslave.progress import Progress
from nixslave.root import Root

EPOCH = 1
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Entry:
    """One archive member: where its bytes come from and how it is recorded."""

    name: str                  # relative, no leading "./" or "/", no trailing "/"
    kind: Literal["dir", "file", "symlink"]
    mode: int                  # permission bits only
    source: Path | None = None  # the file to read (kind == "file")
    size: int = 0
    target: str = ""           # kind == "symlink"


def scan(src: Path, prefix: str = "") -> list[Entry]:
    """Every entry below ``src`` (and ``src`` itself when ``prefix`` is set).

    ``prefix`` is the archive name of ``src``: ``""`` for a root whose
    children are top-level entries, ``nix/store/<name>`` for a store path.
    Symlinks are recorded, never followed.  Devices, sockets and FIFOs have
    no place in a closure or a prepared root and are refused.
    """
    out: list[Entry] = []

    def add(path: Path, name: str) -> None:
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            out.append(Entry(name, "dir", mode))
        elif stat.S_ISREG(st.st_mode):
            out.append(Entry(name, "file", mode, source=path, size=st.st_size))
        elif stat.S_ISLNK(st.st_mode):
            out.append(Entry(name, "symlink", 0o777, target=os.readlink(path)))
        else:
            raise BuildError("a special file (device, socket or FIFO) in the tree",
                             where=str(path), hint="a container root holds none; rebuild it")

    if prefix:
        add(src, prefix)
        if not src.is_dir() or src.is_symlink():
            return out
    def fail(exc: OSError) -> None:
        raise BuildError(f"cannot read the tree: {exc.strerror}", where=str(exc.filename),
                         hint="check permissions") from exc

    for dirpath, dirnames, filenames in os.walk(src, onerror=fail):
        d = Path(dirpath)
        rel = d.relative_to(src)
        base = prefix if str(rel) == "." else (f"{prefix}/{rel}" if prefix else str(rel))
        for n in dirnames + filenames:
            # symlinks to directories are in dirnames; os.walk does not follow them
            add(d / n, f"{base}/{n}" if base else n)
    return out


def _info(e: Entry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.name)
    ti.mtime = EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = e.mode
    if e.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif e.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = e.target
    else:
        ti.type = tarfile.REGTYPE
        ti.size = e.size
    return ti


def write_tar(entries: Iterable[Entry], f: BinaryIO) -> int:
    """Write ``entries`` as a deterministic tar stream to ``f``; the entry count.

    Duplicate names must agree (the same directory from two sources); a
    file that changes size while it is read fails the build.
    """
    by_name: dict[str, Entry] = {}
    for e in entries:
        old = by_name.get(e.name)
        if old is not None and old != e:
            raise BuildError(f"two different entries named {e.name!r}", where="tar writer",
                             hint="this is a bug in nixslave")
        by_name[e.name] = e
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        for name in sorted(by_name, key=lambda n: n.encode("utf-8", "surrogateescape")):
            e = by_name[name]
            ti = _info(e)
            if e.kind == "file":
                assert e.source is not None
                with open(e.source, "rb") as src:
                    if os.fstat(src.fileno()).st_size != e.size:
                        raise BuildError("a file changed while it was archived",
                                         where=str(e.source), hint="rebuild")
                    tf.addfile(ti, src)
            else:
                tf.addfile(ti)
    return len(by_name)


class HashingWriter:
    """A write-only file that hashes (and optionally forwards) what passes through."""

    def __init__(self, inner: BinaryIO | None = None) -> None:
        self.inner = inner
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        if self.inner is not None:
            self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        if self.inner is not None:
            self.inner.flush()


@dataclass(frozen=True)
class Written:
    """What one archive came to: digests of the tar and of the file on disk."""

    tar_sha256: str     # of the uncompressed tar (OCI's diff_id)
    file_sha256: str    # of the bytes written (the blob digest)
    size: int           # bytes written
    entries: int


def write_archive(entries: Iterable[Entry], path: Path,
                  compression: Literal["gzip"] | None) -> Written:
    """Write a tar (optionally gzipped) to ``path``, hashing both layers on the way."""
    with open(path, "wb") as raw:
        outer = HashingWriter(raw)  # type: ignore[arg-type, unused-ignore]
        if compression == "gzip":
            # filename="" and mtime=0 keep the gzip header free of host facts
            with gzip.GzipFile(filename="", mode="wb", fileobj=outer,  # type: ignore[arg-type, unused-ignore]
                               compresslevel=GZIP_LEVEL, mtime=0) as gz:
                inner = HashingWriter(gz)  # type: ignore[arg-type]
                n = write_tar(entries, inner)  # type: ignore[arg-type]
        else:
            inner = outer
            n = write_tar(entries, inner)  # type: ignore[arg-type]
        raw.flush()
        os.fsync(raw.fileno())
    return Written(tar_sha256=inner.sha256.hexdigest(), file_sha256=outer.sha256.hexdigest(),
                   size=outer.size, entries=n)


def root_entries(root: Root, tree: Path) -> list[Entry]:
    """The whole container root: the prepared tree plus the closure from the host store."""
    entries = scan(tree)
    for p in root.paths:
        entries += scan(Path(p), f"nix/store/{Path(p).name}")
    return entries


@dataclass(frozen=True)
class TarOptions:
    """Options of the tar backend."""

    compression: Literal["gzip"] | None = None
    gcroot: bool = True


class TarBackend:
    """A reproducible tarball of the container root (machinectl import-tar, LXC)."""

    name = "tar"

    def materialize(self, root: Root, out: Path, options: object = None, *,
                    progress: Progress | None = None,
                    extra: dict[str, object] | None = None) -> Artifact:
        """Write the tarball for ``root`` at ``out`` (e.g. ``alpha.tar``)."""
        opts = options_of(options, TarOptions)
        if opts.compression not in (None, "gzip"):
            raise BuildError(f"unknown tar compression {opts.compression!r}",
                             where="tar options", hint="use gzip or none")
        out = check_output(out)

        def make(bs: BuildSet, say: Progress) -> Artifact:
            spec = root.spec
            say(f"preparing the container root ({len(root.paths)} store paths)")
            tree = container_tree(root, bs.work / "tree", copy_store=False, progress=say)
            say("writing the tarball")
            w = write_archive(root_entries(root, tree), bs.image, opts.compression)
            return Artifact(
                name=spec.name, kind="tar", format="tar", image=bs.image,
                toplevel=root.toplevel, layout="disk", store=STORE, boot="direct",
                memory=spec.memory, cpus=spec.cpus, build=bs.id, sha256=w.file_sha256,
                extra={**base_extra(root, extra), "compression": opts.compression or "none",
                       "entries": w.entries})

        return publish_container(root, out, gcroot=opts.gcroot, progress=progress, make=make)
