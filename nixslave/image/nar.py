"""NAR hashes of local trees and of the store paths in a tar stream.

An offline image repair has to tell which store paths of a stopped guest
image still match the narHash its manifest records.  It reads the guest's
store through the tar stream that libguestfs's ``tar_out`` writes (GNU tar's
``tar -C /nix/store -cf - .``), so no host mount of a guest file system is
ever needed, and hashes each store path here, in pure Python, as it streams
by.  The same walk notes the metadata a Nix store must not have (owners,
write and special bits, device nodes) so the repair can fix exactly those.

Tar gives a store path's members in readdir order while a NAR wants them
sorted by name bytes, so one store path at a time is buffered: its tree in
memory, its file contents in one spool that moves to disk past 8 MiB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
CHUNK = 1 << 20
SPOOL_MAX = 8 << 20
_SPECIAL = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
            tarfile.FIFOTYPE: "fifo"}
_LOCAL_SPECIAL = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
                  stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


class NarError(ValueError):
    """A tree or stream that has no NAR serialisation (or is not tar_out's)."""


def nix32(digest: bytes) -> str:
    """Nix's base-32: 5-bit groups of the little-endian digest, last group first."""
    value = int.from_bytes(digest, "little")
    n = (len(digest) * 8 + 4) // 5
    return "".join(NIX32_ALPHABET[(value >> (5 * i)) & 31] for i in range(n - 1, -1, -1))


def parse_nar_hash(s: str) -> bytes:
    """The raw sha256 of "sha256:<nix32>", "sha256:<hex>" or "sha256-<base64>".

    Manifests and Nix versions write narHash in all three forms; comparing raw
    digests makes the form irrelevant.
    """
    if s.startswith("sha256-"):
        try:
            raw = base64.b64decode(s[7:], validate=True)
        except binascii.Error as e:
            raise ValueError(f"bad SRI hash {s!r}") from e
        if len(raw) == 32:
            return raw
    elif s.startswith("sha256:"):
        body = s[7:]
        if len(body) == 64 and all(c in "0123456789abcdefABCDEF" for c in body):
            return bytes.fromhex(body)
        if len(body) == 52 and all(c in NIX32_ALPHABET for c in body):
            value = sum(NIX32_ALPHABET.index(c) << 5 * i for i, c in enumerate(reversed(body)))
            if value < 1 << 256:  # 52 digits hold 260 bits; Nix refuses the extra 4
                return value.to_bytes(32, "little")
    raise ValueError(f"not a sha256 NAR hash: {s!r}")


def store_mode(mode: int) -> int:
    """The permission bits Nix gives a file or directory: 0444, plus 0111 if owner-executable."""
    return 0o555 if mode & stat.S_IXUSR else 0o444


@dataclass(eq=False)
class _Node:
    kind: str  # "regular", "directory", "symlink", or why it cannot be in a NAR
    executable: bool = False
    target: bytes = b""  # symlink target
    source: bytes = b""  # local file to read contents from ...
    offset: int = 0  # ... else they are in the spool at offset
    size: int = 0
    children: dict[bytes, _Node] = field(default_factory=dict)


class _Nar:
    """A NAR stream that is hashed and counted, never stored."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0

    def raw(self, b: bytes) -> None:
        self.sha.update(b)
        self.size += len(b)

    def strs(self, *strings: bytes) -> None:
        for s in strings:
            self.raw(len(s).to_bytes(8, "little") + s + b"\0" * (-len(s) % 8))

    def contents(self, f: IO[bytes], offset: int, size: int) -> None:
        self.strs(b"contents")
        self.raw(size.to_bytes(8, "little"))
        f.seek(offset)
        left = size
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise NarError(f"a file of {size} bytes ended early (changed while hashed?)")
            self.raw(chunk)
            left -= len(chunk)
        self.raw(b"\0" * (-size % 8))


def _serialise(root: _Node, spool: IO[bytes] | None = None) -> tuple[str, int]:
    """Hash the NAR of a tree; iterative, so a deep hostile tree cannot overflow the stack."""
    nar = _Nar()
    nar.strs(b"nix-archive-1")
    stack: list[Iterator[tuple[bytes, _Node]]] = []

    def node(n: _Node) -> None:
        nar.strs(b"(", b"type", n.kind.encode())
        if n.kind == "directory":
            stack.append(iter(sorted(n.children.items())))
            return
        if n.kind == "symlink":
            nar.strs(b"target", n.target)
        else:
            if n.executable:
                nar.strs(b"executable", b"")
            if n.source:
                with open(n.source, "rb") as f:
                    nar.contents(f, 0, n.size)
            else:
                assert spool is not None
                nar.contents(spool, n.offset, n.size)
        nar.strs(b")")

    node(root)
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            nar.strs(b")")  # the directory node
            if stack:
                nar.strs(b")")  # the entry that held it
            continue
        nar.strs(b"entry", b"(", b"name", entry[0], b"node")
        node(entry[1])
        if entry[1].kind != "directory":
            nar.strs(b")")
    return "sha256:" + nix32(nar.sha.digest()), nar.size


def _local_node(path: bytes) -> _Node:
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        return _Node("regular", bool(st.st_mode & stat.S_IXUSR), source=path, size=st.st_size)
    if stat.S_ISDIR(st.st_mode):
        return _Node("directory")
    if stat.S_ISLNK(st.st_mode):
        return _Node("symlink", target=os.readlink(path))
    kind = _LOCAL_SPECIAL.get(stat.S_IFMT(st.st_mode), "special file")
    raise NarError(f"{os.fsdecode(path)}: a {kind} cannot be in a NAR")


def nar_hash_path(path: Path | str) -> tuple[str, int]:
    """("sha256:<nix32>", NAR size) of a local file, directory or symlink (not followed)."""
    top = os.fsencode(path)
    root = _local_node(top)
    todo = [(top, root)] if root.kind == "directory" else []
    while todo:
        where, node = todo.pop()
        for name in os.listdir(where):
            child = _local_node(os.path.join(where, name))
            node.children[name] = child
            if child.kind == "directory":
                todo.append((os.path.join(where, name), child))
    return _serialise(root)


@dataclass
class TarPath:
    """One store path of a tar stream: its NAR hash and what a store must not have.

    ``bad_modes`` holds (path relative to the store path, "" for itself; current
    mode), to be chmod'ed to ``store_mode(mode)``; ``bad_owners`` the relative
    paths to chown to 0:0.  ``unresolved_links`` are hard links to members of an
    earlier store path whose contents were no longer kept (see ``keep_bytes``):
    then ``nar_hash`` is "" and the path needs a rescan on its own (``single``),
    whose report replaces this one.
    """

    name: str
    nar_hash: str = ""
    nar_size: int = 0
    problems: list[str] = field(default_factory=list)
    bad_modes: list[tuple[str, int]] = field(default_factory=list)
    bad_owners: list[str] = field(default_factory=list)
    unresolved_links: list[str] = field(default_factory=list)


def _parts(name: str, single: str | None) -> list[str]:
    """Member name -> [store path, components...]; [] for the "." member."""
    parts = name.split("/")
    if parts[0] == ".":
        parts = parts[1:]
    if single is not None:
        parts = [single, *parts]
    if any(p in ("", ".", "..") for p in parts):
        raise NarError(f"tar member {name!r} is not a plain relative name")
    return parts


def hash_tar_stream(fileobj: BinaryIO, *, single: str | None = None,
                    keep_bytes: int = 0) -> Iterator[TarPath]:
    """Yield a TarPath for each top-level entry of ``tar -C /nix/store -cf - .``.

    Every entry is yielded, also those that are no store path (``.links``).

    With ``single=NAME`` the stream is ``tar -C /nix/store/NAME -cf - .`` and
    yields that one store path.  GNU tar sends a file with several names once
    and later names as hard links; links across store paths (an optimised
    store) resolve while the contents seen so far stay within ``keep_bytes``
    (spilled to disk), else they are reported in ``unresolved_links``.
    """
    try:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX) as spool, \
                tarfile.open(fileobj=fileobj, mode="r|", encoding="utf-8",
                             errors="surrogateescape") as tf:
            yield from _Reader(tf, spool, single, keep_bytes).run()
    except tarfile.TarError as e:
        raise NarError(f"bad tar stream: {e}") from e


class _Reader:
    """One tar stream: the store path being buffered, and what later members may link to."""

    def __init__(self, tf: tarfile.TarFile, spool: IO[bytes], single: str | None,
                 keep_bytes: int) -> None:
        self.tf, self.spool, self.single, self.keep_bytes = tf, spool, single, keep_bytes
        self.seen: set[str] = set()
        self.index: dict[str, _Node] = {}  # member "top/a/b" -> node, for hard links
        self.cur = TarPath("")
        self.root: _Node | None = None
        self.hashable = True

    def run(self) -> Iterator[TarPath]:
        while (m := self.tf.next()) is not None:
            self.tf.members.clear()  # type: ignore[attr-defined]  # stream mode keeps all headers
            parts = _parts(m.name, self.single)
            if not parts:
                continue
            if parts[0] != self.cur.name:
                if self.cur.name:
                    yield self.finish()
                if parts[0] in self.seen:
                    raise NarError(f"store path {parts[0]} reappears in the tar stream")
                self.seen.add(parts[0])
                self.cur, self.root, self.hashable = TarPath(parts[0]), None, True
            self.attach(m.name, parts, self.member(m, parts))
        if self.cur.name:
            yield self.finish()

    def finish(self) -> TarPath:
        cur = self.cur
        assert self.root is not None  # attach() saw the store path's own member first
        if self.hashable and not cur.unresolved_links:
            cur.nar_hash, cur.nar_size = _serialise(self.root, self.spool)
        if self.spool.seek(0, 2) > self.keep_bytes:
            self.spool.truncate(0)
            self.spool.seek(0)
            self.index.clear()
        return cur

    def attach(self, name: str, parts: list[str], node: _Node) -> None:
        self.index["/".join(parts)] = node
        if len(parts) == 1:
            self.root = node
            return
        parent = self.root
        for p in parts[1:-1]:
            parent = parent.children.get(os.fsencode(p)) if parent is not None else None
        key = os.fsencode(parts[-1])
        if parent is None or parent.kind != "directory" or key in parent.children:
            raise NarError(f"tar member {name!r}: no parent directory, or a duplicate")
        parent.children[key] = node

    def member(self, m: tarfile.TarInfo, parts: list[str]) -> _Node:
        """The node of one member, its contents spooled, its store defects noted."""
        cur, where, rel = self.cur, "/".join(parts), "/".join(parts[1:])
        if m.isreg():
            node = _Node("regular", bool(m.mode & stat.S_IXUSR), offset=self.spool.seek(0, 2))
            src = self.tf.extractfile(m)
            assert src is not None
            while chunk := src.read(CHUNK):
                self.spool.write(chunk)
            node.size = self.spool.tell() - node.offset
        elif m.isdir():
            node = _Node("directory")
        elif m.issym():
            node = _Node("symlink", target=os.fsencode(m.linkname))
        elif m.islnk():
            target = _parts(m.linkname, self.single)
            old = self.index.get("/".join(target))
            if old is None and target[0] != cur.name and target[0] in self.seen:
                old = _Node("unresolved")  # its contents were let go with its store path
            if old is None or old.kind == "directory":
                raise NarError(f"{where}: hard link to unknown member {m.linkname!r}")
            if old.kind == "unresolved":
                node = old
                cur.unresolved_links.append(rel)
            else:
                node = _Node(old.kind, bool(m.mode & stat.S_IXUSR), old.target,
                             offset=old.offset, size=old.size)
        elif m.type in _SPECIAL:
            node = _Node(_SPECIAL[m.type])
        else:
            raise NarError(f"{where}: tar member type {m.type!r} cannot be in a store")
        if m.uid != 0 or m.gid != 0:
            cur.problems.append(f"{where}: owner {m.uid}:{m.gid}, a store wants 0:0")
            cur.bad_owners.append(rel)
        perm = m.mode & 0o7777
        # An unresolved link may be a hard-linked symlink (mode 0777): its rescan judges it.
        if node.kind in ("regular", "directory") and perm not in (0o444, 0o555):
            why = [w for bit, w in ((0o222, "write bits"), (0o4000, "setuid"),
                                    (0o2000, "setgid"), (0o1000, "sticky bit")) if perm & bit]
            cur.problems.append(f"{where}: mode {perm:04o} ({', '.join(why) or 'unusual'}), "
                                f"a store wants {store_mode(perm):04o}")
            cur.bad_modes.append((rel, perm))
        if node.kind in _SPECIAL.values():
            cur.problems.append(f"{where}: a {node.kind} cannot be in a Nix store, "
                                "so the store path has no NAR hash")
            self.hashable = False
        return node
