"""Artifacts appear whole or not at all.

An artifact is several files: the image, its sidecar, a store disk or a share
directory, perhaps an overlay.  Written one by one, a killed build left pieces
that disagree (a new image beside the old sidecar, a store disk without its
image).  So every build writes all of its files into one directory of its
own, and publishing is a single ``rename`` of a symlink:

    alpha.qcow2 -> .alpha.qcow2.nixslave/b-<id>/alpha.qcow2
    .alpha.qcow2.nixslave/
        lock                    held while a build of alpha.qcow2 runs
        b-<id>/                 one complete build: image, sidecar, store disk
            alpha.qcow2            or share, overlays; its own ``lock`` is held
            alpha.qcow2.nixslave.json   (shared) by whoever runs it
            alpha-store.qcow2
        s-<random>/             scratch of a running (or killed) build

A reader resolves the public name and finds every other file beside the
image, so it can never pair files of two builds.  Until the rename the old
build is untouched; after it the new one is complete.  Old builds and the
scratch of killed builds are swept by the next build: a directory is removed
only when its lock can be taken, never by guessing from a pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from nixslave import interrupt, rundir
from nixslave.errors import BuildError
from nixslave.root import force_rmtree

LOCK = "lock"
OVERLAYS = "overlays"  # public overlay paths that point into a build


def store_dir(out: Path) -> Path:
    """The hidden directory that holds every build of ``out``."""
    return out.with_name(f".{out.name}.nixslave")


@contextlib.contextmanager
def _flock(path: Path, kind: int, *, block: bool = True) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, kind | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def hold(build: Path) -> int:
    """Take a shared lock on a build while it is used (a running guest).

    Returns the fd; closing it releases the lock.  Sweeps skip held builds.
    """
    fd = os.open(build / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _removable(d: Path) -> bool:
    lock = d / LOCK
    if not lock.exists():
        return True
    with _flock(lock, fcntl.LOCK_EX, block=False) as got:
        return got


def _overlay_refs(build: Path) -> bool:
    """Whether a published overlay still points into ``build``."""
    refs = build / OVERLAYS
    if not refs.exists():
        return False
    for line in refs.read_text().splitlines():
        # The overlay is published in its own build; its sidecar names the
        # base image it backs onto.
        sidecar = Path(os.path.realpath(line) + ".nixslave.json")
        with contextlib.suppress(OSError, ValueError, AttributeError):
            backing = json.loads(sidecar.read_text()).get("extra", {}).get("backing", "")
            if Path(backing).parent == build.resolve():
                return True
    return False


def current_build(out: Path) -> Path | None:
    """The build directory ``out`` points to, if it is a published artifact."""
    if not out.is_symlink():
        return None
    target = Path(os.path.realpath(out)).parent
    return target if target.parent == store_dir(out).resolve() else None


def sweep(out: Path) -> list[Path]:
    """Remove scratch of killed builds and builds nothing uses any more."""
    base = store_dir(out)
    if not base.is_dir():
        return []
    keep = current_build(out)
    gone = []
    for d in sorted(base.iterdir()):
        if not d.is_dir() or (keep is not None and d.resolve() == keep):
            continue
        if d.name.startswith("b-") and _overlay_refs(d):
            continue
        if (d.name.startswith(("s-", "b-"))) and _removable(d):
            force_rmtree(d)
            gone.append(d)
    return gone


class BuildSet:
    """The files of one build, made in scratch and published in one rename."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out).absolute()
        self.base = store_dir(self.out)
        self.id = "b-" + secrets.token_hex(6)
        self.scratch: Path | None = None
        self._lock_fd: int | None = None
        self._build_lock: int | None = None

    @property
    def dir(self) -> Path:
        """Where the build's final files go (inside scratch until published)."""
        assert self.scratch is not None, "use BuildSet as a context manager"
        return self.scratch / self.id

    @property
    def work(self) -> Path:
        """Scratch space for intermediate files; removed with the scratch."""
        assert self.scratch is not None
        return self.scratch / "work"

    @property
    def image(self) -> Path:
        return self.dir / self.out.name

    def __enter__(self) -> BuildSet:
        # One build of one target at a time; a second waits for the first.
        # The first may remove the directory when it leaves nothing behind,
        # so the lock counts only if it is still the file at that path.
        while True:
            self.base.mkdir(exist_ok=True)
            os.chmod(self.base, 0o755)
            fd = os.open(self.base / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.base / LOCK).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                break
            os.close(fd)
        sweep(self.out)
        rundir.sweep()  # sockets and appliance files of killed builds
        self.scratch = self.base / f"s-{secrets.token_hex(6)}"
        self.scratch.mkdir()
        self._build_lock = os.open(self.scratch / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                   0o644)
        fcntl.flock(self._build_lock, fcntl.LOCK_EX)
        self.dir.mkdir()
        self.work.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.scratch is not None:
            force_rmtree(self.scratch)
        if self._lock_fd is not None and {p.name for p in self.base.iterdir()} <= {LOCK}:
            # Nothing was ever published here (a failed first build): leave no trace.
            (self.base / LOCK).unlink(missing_ok=True)
            self.base.rmdir()
        for fd in (self._build_lock, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._build_lock = self._lock_fd = None

    def publish(self, overlay: Path | None = None) -> Path:
        """Make the build the artifact at ``out`` (and ``overlay``), atomically."""
        interrupt.check()
        force_rmtree(self.work)
        _sync_tree(self.dir)
        final = self.base / self.id
        self.dir.rename(final)
        _fsync_dir(self.base)
        if overlay is not None:
            (final / OVERLAYS).write_text(str(Path(overlay).absolute()) + "\n")
            _swap_link(Path(overlay).absolute(), final / Path(overlay).name)
        interrupt.check()
        _swap_link(self.out, final / self.out.name)
        for legacy in (self.out.with_name(self.out.name + ".nixslave.json"),):
            # The sidecar of a build from before build sets would now pair the
            # wrong image: it lives in the build directory instead.
            if legacy.exists() and not legacy.is_symlink():
                legacy.unlink()
        sweep(self.out)
        return final


def _swap_link(public: Path, target: Path) -> None:
    """Point ``public`` at ``target`` with one rename (relative link)."""
    if public.exists() and not public.is_symlink() and public.is_dir():
        raise BuildError("the output is a directory", where=str(public),
                         hint="give a file name such as machine.qcow2")
    tmp = public.with_name(f".{public.name}.{secrets.token_hex(4)}.link")
    tmp.symlink_to(os.path.relpath(target, public.parent))
    try:
        tmp.replace(public)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(public.parent)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(d: Path) -> None:
    """Data on disk before the rename that makes it visible."""
    for p in d.iterdir():
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(d)
