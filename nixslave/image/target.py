"""The image an operation changes: found, checked and locked before any write.

Upgrade, repair and install write into an image that may be a user's only
copy of a machine, so every reason not to write is found first, while
nothing has been touched: the file is empty, read-only or not an image; a
running qemu holds its lock; ``nixslave run`` holds its build; an overlay
backs onto it (writing the base would change the bytes under the overlay).

A published artifact (``alpha.qcow2 -> .alpha.qcow2.nixslave/b-<id>/…``) is
changed in its build directory, where its sidecar lives, so the runner keeps
finding image and sidecar side by side.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixslave.backends import Artifact, publish, sidecar_path
from nixslave.errors import ImageError, NixslaveError
from nixslave.image.access import probe_image

STOP_HINT = "stop the guest first (nixslave down, or quit its qemu), then try again"


@dataclass
class Target:
    """One image to operate on, resolved and checked."""

    given: Path                 # what the user named (perhaps a published link)
    image: Path                 # the file itself
    info: dict[str, Any]        # qemu-img info
    artifact: Artifact | None   # its sidecar, when nixslave built it
    build: Path | None          # its build directory, when it is a published build

    @property
    def format(self) -> str:
        return str(self.info["format"])

    @property
    def where(self) -> str:
        return str(self.given)


def open_target(path: Path, *, write: bool) -> Target:
    """Resolve ``path`` and refuse, with no write, what must not be opened."""
    given = Path(path)
    image = Path(os.path.realpath(given))
    where = str(given)
    try:
        info = probe_image(image)
    except ImageError as exc:
        exc.where = where  # the name the user gave, not the build directory's
        raise
    if int(info.get("virtual-size", 0)) == 0:
        raise ImageError("the image has no blocks (virtual size 0)", where=where,
                         hint="pass a disk image")
    artifact = _artifact(image)
    build = publish.current_build(given) if given.is_symlink() else None
    if build is None and artifact is not None and image.parent.name.startswith("b-"):
        build = image.parent
    if write:
        _check_writable(image, where)
        _check_unlocked(image, where)
        if build is not None and publish._overlay_refs(build):
            raise ImageError("an overlay backs onto this image; writing it would corrupt "
                             "the overlay", where=where,
                             hint="remove the overlay first, or flatten it (qemu-img convert "
                                  "-O qcow2 OVERLAY NEW.qcow2) and work on the copy")
    return Target(given=given, image=image, info=info, artifact=artifact, build=build)


def _artifact(image: Path) -> Artifact | None:
    if not sidecar_path(image).exists():
        return None
    try:
        return Artifact.load(image)
    except NixslaveError:
        return None  # a foreign or damaged sidecar: work from the image alone


def _check_writable(image: Path, where: str) -> None:
    """Root may write anything, so a file without write bits is read-only by intent."""
    if image.stat().st_mode & 0o222 == 0:
        raise ImageError("the image is read-only (no write permission bits)", where=where,
                         hint=f"chmod u+w {image} if it may be changed")
    try:
        fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"cannot open the image for writing: {exc.strerror}", where=where,
                         hint="check its permissions and attributes (lsattr)") from None
    os.close(fd)


def _check_unlocked(image: Path, where: str) -> None:
    """qemu takes a write lock on every image it runs; qemu-img without -U honours it."""
    proc = subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "lock" in proc.stderr:
        raise ImageError("the image is in use: a running qemu holds its lock", where=where,
                         hint=STOP_HINT)


@contextmanager
def exclusive(target: Target) -> Iterator[None]:
    """Hold the build's lock exclusively: no runner, sweep or second operation meanwhile.

    ``nixslave run`` holds a shared lock on the build it boots, so a running
    nixslave guest is refused here even when its qemu's lock is not visible.
    """
    if target.build is None:
        lock = target.image.with_name(f".{target.image.name}.lock")
    else:
        lock = target.build / publish.LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ImageError("the image is in use (a running guest or another operation)",
                             where=target.where, hint=STOP_HINT) from None
        yield
    finally:
        os.close(fd)
        if target.build is None:
            lock.unlink(missing_ok=True)
