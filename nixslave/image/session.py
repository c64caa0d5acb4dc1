"""One appliance launch that writes: the primitives upgrade, repair and install share.

Every change an operation makes inside an image is one of a few kinds, and
each is made so that a kill at any instant leaves the old state or the new:

- store paths arrive in a staging directory on the same file system
  (``/nix/store/.nixslave-staging-<id>``), are synced, and then renamed
  into the store one by one, so a store path is either absent or whole;
- a file (manifest, boot loader entry, Nix database) is written beside its
  target, synced, and renamed over it;
- a link (the ``system`` profile link) is made under a temporary name and
  renamed over the old one.

Staging directories and temporary files of a killed operation carry the
``.nixslave-`` prefix, so the next operation sweeps them before it starts.
Drives are opened with an explicit format (see :mod:`nixslave.image.access`);
a dry run adds them read-only, which libguestfs serves from a throwaway
overlay, so the whole operation can run and report without writing a byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixslave import interrupt
from nixslave.appliance import guestfs_handle
from nixslave.errors import ImageError
from nixslave.image.access import FORMATS, MANIFEST, Fs, filesystems, partition_table
from nixslave.image.inspect import MANIFEST_MAX, NO_FS_HINT, validate_manifest
from nixslave.nixos import ROOT_LABEL, STORE_LABEL
from nixslave.progress import Progress

SYSROOT = "/sysroot"   # the root file system inside the appliance
ESP = "/esp"           # the EFI system partition, when there is one
STAGING = ".nixslave-staging-"
TMP = ".nixslave-tmp-"
SYSTEM_LINK = "nix/var/nix/profiles/system"


@dataclass
class Session:
    """A launched appliance with the image's root file system mounted read-write."""

    g: Any
    where: str
    disk: str
    root: Fs
    esp: Fs | None
    parttable: str
    scratch: Path

    def p(self, path: str) -> str:
        """``path`` of the guest (absolute or relative to /) inside the appliance."""
        return f"{SYSROOT}/{path.lstrip('/')}"

    # -- reading ----------------------------------------------------------------

    def read_manifest(self) -> tuple[dict[str, Any] | None, str | None]:
        """The manifest, or why it is unusable (missing, too large, invalid)."""
        path = self.p(MANIFEST)
        if not self.g.is_file(path):
            return None, "the image has no nixslave manifest"
        if self.g.filesize(path) > MANIFEST_MAX:
            return None, "the manifest is larger than 64 MiB"
        local = self.scratch / "manifest.json"
        self.g.download(path, str(local))
        try:
            data = json.loads(local.read_bytes())
        except ValueError as exc:
            return None, f"the manifest is not valid JSON: {exc}"
        err = validate_manifest(data)
        return (None, err) if err else (data, None)

    def store_names(self, store: str) -> set[str]:
        """Entries of a store directory (appliance path), without nixslave's own."""
        if not self.g.is_dir(store):
            return set()
        return {n for n in self.g.ls(store)
                if not n.startswith((STAGING, TMP)) and n != "lost+found"}

    def system_link(self) -> str | None:
        link = self.p(SYSTEM_LINK)
        return str(self.g.readlink(link)) if self.g.is_symlink(link) else None

    # -- writing ------------------------------------------------------------------

    def sweep(self, store: str) -> list[str]:
        """Remove what a killed operation left: staging dirs and temporary files."""
        gone = []
        for d in (store, self.p("nix/var/nix/profiles"), self.p("nix/var/nixslave"),
                  self.p("nix/var/nix/db"), self.p("boot"), self.p("boot/extlinux")):
            if not self.g.is_dir(d):
                continue
            for n in self.g.ls(d):
                if n.startswith((STAGING, TMP)):
                    self.g.rm_rf(f"{d}/{n}")
                    gone.append(f"{d}/{n}")
        if self.esp is not None:
            for n in self.g.find(ESP):
                if Path(n).name.startswith(TMP):
                    self.g.rm_f(f"{ESP}{n}")
                    gone.append(f"{ESP}{n}")
        return gone

    def put_paths(self, paths: list[str], store: str, *, source: Path = Path("/nix/store"),
                  progress: Progress | None = None) -> None:
        """Copy store paths (from the host's ``source``) into ``store``, whole or not at all.

        One tar stream through a FIFO into a staging directory on the same
        file system, one sync, then a rename per path: the sync comes first,
        so a path that has its final name has its data on disk.
        """
        if not paths:
            return
        staging = f"{store}/{STAGING}{secrets.token_hex(4)}"
        self.g.mkdir(staging)
        names = sorted(Path(p).name for p in paths)
        stream_tar(self.g, source, names, staging, self.scratch)
        interrupt.check()
        self.g.sync()
        for n in names:
            self.g.rename(f"{staging}/{n}", f"{store}/{n}")
        self.g.rmdir(staging)
        self.g.sync()

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Replace ``path`` (appliance path) with ``data``: temp file, sync, rename."""
        local = self.scratch / f"put-{secrets.token_hex(4)}"
        local.write_bytes(data)
        tmp = f"{os.path.dirname(path)}/{TMP}{os.path.basename(path)}"
        self.g.upload(str(local), tmp)
        local.unlink()
        self.g.chmod(mode, tmp)
        self.g.sync()
        self.g.rename(tmp, path)

    def set_link(self, path: str, target: str) -> None:
        """Point the symlink ``path`` at ``target`` with one rename."""
        tmp = f"{os.path.dirname(path)}/{TMP}{os.path.basename(path)}"
        if self.g.exists(tmp) or self.g.is_symlink(tmp):
            self.g.rm_f(tmp)
        self.g.ln_s(target, tmp)
        self.g.rename(tmp, path)

    def remove_paths(self, names: list[str], store: str) -> None:
        """Remove store entries; each is renamed out of the way first, so none is half gone."""
        if not names:
            return
        trash = f"{store}/{STAGING}{secrets.token_hex(4)}"
        self.g.mkdir(trash)
        for n in names:
            self.g.rename(f"{store}/{n}", f"{trash}/{n}")
        self.g.sync()
        self.g.rm_rf(trash)


def stream_tar(g: Any, source: Path, names: list[str], dest: str, scratch: Path) -> None:
    """``tar`` of ``source/names`` on the host, unpacked at ``dest`` by the appliance.

    The archive goes through a FIFO, so the delta is never written to the
    host's disk.  Owners are recorded as root, as in any Nix store.
    """
    fifo = scratch / f"tar-{secrets.token_hex(4)}.fifo"
    os.mkfifo(fifo, 0o600)
    listing = scratch / f"tar-{secrets.token_hex(4)}.list"
    listing.write_bytes(b"\0".join(os.fsencode(n) for n in names) + b"\0")
    cmd = ["tar", "-C", str(source), "--numeric-owner", "--owner=0", "--group=0",
           "--null", "-T", str(listing), "-cf", str(fifo)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read() if proc.stderr
                                                           else b""), daemon=True)
    reader.start()
    try:
        g.tar_in(str(fifo), dest)
    except RuntimeError:
        proc.kill()
        raise
    finally:
        with contextlib.suppress(OSError):
            # a tar still waiting for its reader must not block forever
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
        rc = proc.wait()
        reader.join()
        fifo.unlink(missing_ok=True)
        listing.unlink(missing_ok=True)
    if rc != 0:
        msg = b" ".join(errors).decode(errors="replace").strip()[-300:]
        raise ImageError(f"tar of the store paths failed: {msg}", where=str(source),
                         hint="check that the paths are valid in the host store")


@contextlib.contextmanager
def open_session(drives: list[tuple[Path, str]], where: str, *, readonly: bool = False,
                 mount: bool = True) -> Iterator[Session]:
    """Launch once with ``drives`` (first = the image) and mount its root read-write.

    With ``readonly`` every write lands in libguestfs's throwaway overlay:
    the dry run of an operation is the operation itself.  With ``mount``
    false the root is found but left unmounted (for a file system check).
    """
    for _p, fmt in drives:
        if fmt not in FORMATS:
            raise ImageError(f"format {fmt!r} is not supported", where=where,
                             hint=f"accepted: {', '.join(FORMATS)}")
    with guestfs_handle() as g, tempfile.TemporaryDirectory(prefix="nixslave-op-") as tmp:
        try:
            for path, fmt in drives:
                g.add_drive_opts(str(path), format=fmt, readonly=readonly)
            g.launch()
            devices: list[str] = g.list_devices()
            g.mkmountpoint(SYSROOT)
            g.mkmountpoint(ESP)
            s = _session(g, where, devices[0], Path(tmp))
            if mount:
                mount_root(s)
            yield s
            g.umount_all()
            g.sync()
            g.shutdown()
        except RuntimeError as exc:
            raise ImageError(f"libguestfs: {exc}", where=where,
                             hint="the image may be damaged; `nixslave image repair` "
                                  "checks it") from None


def _session(g: Any, where: str, disk: str, scratch: Path) -> Session:
    fss = filesystems(g, disk)
    vfs = {dev: g.vfs_type(dev) for dev in [*g.list_partitions(), disk]
           if _quiet(g.vfs_type, dev)}
    if any(t == "crypto_LUKS" for t in vfs.values()):
        raise ImageError("the image holds an encrypted (LUKS) partition", where=where,
                         hint="nixslave does not open encrypted volumes; decrypt or pass "
                              "the image of the root file system")
    root = next((fs for fs in fss if fs[2] == ROOT_LABEL), None)
    if root is None:
        root = _nixos_like(g, fss)
    if root is None:
        if not fss:
            raise ImageError("no file system found", where=where, hint=NO_FS_HINT)
        raise ImageError("no NixOS root file system in the image", where=where,
                         hint="nixslave changes NixOS images only; inspect it with "
                              "`nixslave image inspect`")
    if root[1] not in ("ext4", "ext3", "ext2"):
        raise ImageError(f"the root file system is {root[1]}, not ext4", where=where,
                         hint="nixslave repairs and upgrades ext4 roots")
    esp = next((fs for fs in fss if fs[1] == "vfat"), None)
    return Session(g=g, where=where, disk=disk, root=root, esp=esp,
                   parttable=partition_table(g, disk), scratch=scratch)


def _quiet(fn: Callable[[str], str], dev: str) -> str:
    try:
        return fn(dev)
    except RuntimeError:
        return ""


def _nixos_like(g: Any, fss: list[Fs]) -> Fs | None:
    for fs in fss:
        if fs[1] not in ("ext2", "ext3", "ext4") or fs[2] == STORE_LABEL:
            continue
        try:
            # noload: a dirty journal must not be replayed into an image
            # that may turn out not to be ours to write
            g.mount_options("ro,noload", fs[0], SYSROOT)
        except RuntimeError:
            continue
        found = g.is_file(f"{SYSROOT}/etc/NIXOS") or g.is_file(f"{SYSROOT}/{MANIFEST}")
        g.umount(SYSROOT)
        if found:
            return fs
    return None


def mount_root(s: Session) -> None:
    """Mount the root (and ESP) read-write; the root must then look like NixOS."""
    s.g.mount(s.root[0], SYSROOT)
    if not (s.g.is_file(s.p("etc/NIXOS")) or s.g.is_file(s.p(MANIFEST))):
        raise ImageError("the image is not NixOS (no /etc/NIXOS, no nixslave manifest)",
                         where=s.where, hint="nixslave changes NixOS images only")
    if s.esp is not None:
        s.g.mount(s.esp[0], ESP)
