"""Raw and qcow2 disks in three store layouts, built without a VM.

The pipeline is: ``Root.prepare`` into a scratch tree beside the target,
``mkfs.ext4 -d`` into a raw file (at a 1 MiB partition offset for a
self-booting disk), libguestfs only to install extlinux, then ``qemu-img
convert``.  Every file of the artifact (image, sidecar, store disk or share,
overlay) is made in one build directory and published by one rename of the
target's symlink (see :mod:`nixslave.backends.publish`), so an interrupted
build leaves the previous artifact whole and never a mixed pair.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nixslave import boot, gcroots, interrupt, nix
from nixslave.backends import Artifact, storebind, storefs
from nixslave.backends.ext4 import (
    MIB,
    derived_uuid,
    mkfs,
    normalize_inode_times,
    round_up,
    tree_usage,
)
from nixslave.backends.publish import BuildSet
from nixslave.errors import BuildError
from nixslave.nixos import ROOT_LABEL, STORE_LABEL, store_kind
from nixslave.root import Root, copy_paths, force_rmtree, normalize_tree

PART_OFFSET = MIB
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DiskOptions:
    """How a disk artifact is written: format, qcow2 knobs, overlay, GC root, share.

    The machine itself (layout, boot, store file system) is the spec's; these
    are the host-side choices that do not change what the guest sees.

    Example:

        >>> from nixslave import DiskOptions
        >>> opts = DiskOptions(format="qcow2", compression="zstd", gcroot=False)
        >>> opts.check()  # raises BuildError for combinations qemu-img refuses
    """

    format: str = "qcow2"  # raw | qcow2 here; other backends read their own (build.FORMATS)
    cluster_size: int | None = None
    preallocation: Literal["off", "metadata"] = "off"
    compression: Literal["zlib", "zstd"] | None = None
    overlay: Path | None = None  # also create a per-instance overlay here
    gcroot: bool = True
    checksum: bool = False       # record the image's sha256 in the artifact
    # shared layout: "bind" serves the closure by bind mounts at run time
    # (zero copy, needs a private mount namespace); "tree" makes a hardlink
    # tree (what libvirt needs: it starts qemu itself); None picks bind
    # where namespaces are available
    share_method: Literal["bind", "tree"] | None = None

    def check(self) -> None:
        cs = self.cluster_size
        if cs is not None and (cs < 512 or cs > 2 * MIB or cs & (cs - 1)):
            raise BuildError(f"cluster size {cs} is not a power of two in 512 .. 2M",
                             where="qcow2 options", hint="use 64K (the default) or 1M")
        if self.format == "raw" and (self.compression or self.overlay or cs
                                     or self.preallocation != "off"):
            raise BuildError("compression, cluster size, preallocation and overlays need qcow2",
                             where="disk options", hint="use --format qcow2")
        if self.compression and self.preallocation == "metadata":
            raise BuildError("compressed qcow2 cannot be preallocated", where="qcow2 options",
                             hint="drop --preallocation or --compress")


def store_image_path(image: Path) -> Path:
    """The store disk's name beside its image (inside the build directory)."""
    return image.with_name(f"{image.stem}-store{image.suffix}")


def share_dir_path(image: Path) -> Path:
    """The shared store of a build: exactly its closure, beside its image."""
    return image.with_name("store")


def _say(progress: Progress | None) -> Progress:
    return progress or (lambda _m: None)


def _run(cmd: list[str], what: str, where: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split())[-300:]
        raise BuildError(f"{what} failed: {msg}", where=str(where),
                         hint=f"rerun with --debug; the command was {cmd[0]}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class DiskBackend:
    """raw/qcow2 disks; one class per output format family, as elsewhere."""

    name = "disk"

    def materialize(self, root: Root, out: Path, options: DiskOptions | None = None, *,
                    progress: Progress | None = None,
                    extra: dict[str, object] | None = None) -> Artifact:
        """Build the image(s) for ``root`` at ``out``; ``extra`` goes into the artifact."""
        opts = options or DiskOptions()
        opts.check()
        spec = root.spec
        say = _say(progress)
        out = Path(out).absolute()
        if out.is_dir():
            raise BuildError("the output is a directory", where=str(out),
                             hint="give a file name such as machine.qcow2")
        if not out.parent.is_dir():
            raise BuildError("the output directory does not exist", where=str(out.parent),
                             hint="create it first")
        self._check_size_early(root)
        if spec.boot == "uefi":
            from nixslave.backends import uefi

            uefi.check_tools()
        try:
            bs = BuildSet(out)
            bs.__enter__()
        except OSError as exc:
            raise BuildError(f"cannot write beside the output: {exc.strerror}",
                             where=str(out), hint="pick a writable directory") from None
        try:
            artifact = self._build(root, bs, opts, say, extra)
            say("publishing the artifact")
            final = bs.publish(overlay=None)
        finally:
            bs.__exit__(None, None, None)
        artifact = Artifact.load(final / out.name)
        if opts.overlay is not None:
            make_overlay(out, opts.overlay)
        if opts.gcroot:
            nix.add_gcroot(f"{spec.name}-current", root.toplevel)
            gcroots.record_image(spec.name, out, root.toplevel)
        say(f"wrote {out}")
        return artifact

    # -- steps ------------------------------------------------------------------

    def _check_size_early(self, root: Root) -> None:
        """Refuse an obviously small --size before copying anything."""
        size = root.spec.size
        if size is not None and root.spec.layout == "disk" and size < root.nar_size:
            raise BuildError(
                f"--size {size // MIB} MiB cannot hold the closure "
                f"({root.nar_size / MIB:.1f} MiB of store paths)",
                where=f"machine {root.spec.name}.size",
                hint="leave --size unset for an automatic size")

    def _fill_store(self, root: Root, store_dir: Path) -> Callable[[], None] | None:
        """Bind stubs for mkfs when possible (see storebind), else real copies."""
        if storebind.available():
            binds = storebind.stub(root.paths, store_dir)
            os.utime(store_dir, (1, 1))
            return storebind.preexec(binds)
        copy_paths(root.paths, store_dir)
        os.utime(store_dir, (1, 1))
        return None

    def _mkfs(self, root: Root, pre: Callable[[], None] | None, raw: Path, tree: Path,
              store_dir: Path, **kw: Any) -> None:
        try:
            mkfs(raw, tree, preexec=pre, **kw)
        except subprocess.SubprocessError:
            self._copy_instead(root, store_dir)
            mkfs(raw, tree, **kw)

    def _copy_instead(self, root: Root, store_dir: Path) -> None:
        """No private mount namespace after all: replace the stubs by copies."""
        for entry in store_dir.iterdir():
            force_rmtree(entry)
        copy_paths(root.paths, store_dir)
        os.utime(store_dir, (1, 1))

    def _fs_size(self, root: Root, tree: Path, *, with_store: bool) -> int:
        spec = root.spec
        extra = [Path(p) for p in root.paths] if with_store else []
        need = tree_usage(tree, *extra).min_fs_size(journal=True)
        overhead = self._overhead(root)
        if spec.size is None:
            return round_up(need + max(64 * MIB, need // 10), MIB)
        fs = spec.size - overhead
        if fs < need:
            uefi = spec.boot == "uefi"
            esp = f" ({overhead // MIB} MiB of it ESP and partition tables)" if uefi else ""
            raise BuildError(
                f"--size {spec.size // MIB} MiB is too small: the "
                f"{'disk' if uefi else 'root file system'} needs "
                f"at least {(need + overhead + MIB - 1) // MIB} MiB{esp}",
                where=f"machine {spec.name}.size",
                hint="leave --size unset for an automatic size")
        return fs

    def _overhead(self, root: Root) -> int:
        """Bytes of the disk outside the root file system (tables, ESP)."""
        if root.spec.boot == "bios":
            return PART_OFFSET
        if root.spec.boot == "uefi":
            from nixslave.backends import uefi

            return uefi.overhead(root.toplevel)
        return 0

    def _build(self, root: Root, bs: BuildSet, opts: DiskOptions,
               say: Progress, extra: dict[str, object] | None) -> Artifact:
        spec = root.spec
        work = bs.work
        out = bs.image
        kind = store_kind(spec)
        say(f"preparing the root tree ({len(root.paths)} store paths, "
            f"{root.nar_size / MIB:.1f} MiB)")
        tree = root.prepare(work / "tree", include_store=False, progress=say)
        loader: dict[str, str] = {}
        boot_info: dict[str, object] = {}  # uefi: the UKI and the disk's geometry
        if spec.boot == "bios":
            loader = self._write_extlinux_conf(root, tree)
        # measured before the store is filled, so bind stubs and copies agree
        fs_size = self._fs_size(root, tree, with_store=(kind == "disk"))
        pre = self._fill_store(root, tree / "nix/store") if kind == "disk" else None
        raw = work / "disk.raw"
        fs_uuid = derived_uuid(root.toplevel, spec.name, "root")
        say(f"making the root file system ({fs_size // MIB} MiB, mkfs.ext4 -d)")
        if spec.boot == "bios":
            from nixslave.backends import bootloader

            total = fs_size + PART_OFFSET
            with open(raw, "wb") as f:
                f.truncate(total)
            bootloader.partition(raw, disk_id=fs_uuid)
            self._mkfs(root, pre, raw, tree, tree / "nix/store", label=ROOT_LABEL,
                       size=fs_size, fs_uuid=fs_uuid, offset=PART_OFFSET, journal=False)
            say("installing extlinux (libguestfs)")
            bootloader.install_extlinux(raw, offset=PART_OFFSET,
                                        dense=(loader["kernel"], loader["initrd"]))
            bootloader.add_journal(raw, offset=PART_OFFSET)
        elif spec.boot == "uefi":
            from nixslave.backends import uefi

            geo = uefi.Geometry(esp_size=uefi.esp_size(root.toplevel), fs_size=fs_size)
            with open(raw, "wb") as f:
                f.truncate(geo.total)
            self._mkfs(root, pre, raw, tree, tree / "nix/store", label=ROOT_LABEL,
                       size=fs_size, fs_uuid=fs_uuid, offset=geo.root_offset)
            normalize_inode_times(raw, geo.root_offset)
            say("writing the ESP with a unified kernel image (objcopy, mkfs.vfat, mcopy)")
            boot_info = uefi.make_disk(raw, root, geo, work)
        else:
            self._mkfs(root, pre, raw, tree, tree / "nix/store", label=ROOT_LABEL,
                       size=fs_size, fs_uuid=fs_uuid)
            normalize_inode_times(raw)
        store_image = share_dir = None
        share_info: dict[str, object] = {}
        if kind == "store-disk":
            store_image = self._store_disk(root, out, opts, work, say)
        elif kind in ("9p", "virtiofs"):
            share_dir, method = self._share_dir(root, out, opts, say)
            share_info = {"shareMethod": method}
        say(f"writing {opts.format}")
        self._emit(raw, out, opts, work)
        artifact = Artifact(
            name=spec.name, kind="disk", format=opts.format, image=out,
            toplevel=root.toplevel, layout=spec.layout, store=kind, boot=spec.boot,
            cmdline=boot.cmdline(root.toplevel, spec), store_image=store_image,
            share_dir=share_dir, memory=spec.memory, cpus=spec.cpus,
            sha256=sha256_file(out) if opts.checksum else "",
            virtual_size=fs_size + self._overhead(root), build=bs.id,
            extra={"closurePaths": len(root.paths), "narSize": root.nar_size,
                   **({"storeFs": spec.store_fs_resolved} if kind == "store-disk" else {}),
                   **share_info,
                   "demo": spec.demo, **loader, **boot_info, **(extra or {})},
        )
        interrupt.check()
        artifact.save()
        return artifact

    def _write_extlinux_conf(self, root: Root, tree: Path) -> dict[str, str]:
        """The host writes the single boot entry before the file system exists."""
        spec = root.spec
        top = Path(root.toplevel)
        kernel = os.path.realpath(top / "kernel")
        initrd = os.path.realpath(top / "initrd")
        bootdir = tree / "boot"
        (bootdir / "extlinux").mkdir(parents=True)
        if store_kind(spec) != "disk":
            # SYSLINUX reads only its own partition: the kernel must be on it.
            shutil.copy2(kernel, bootdir / "kernel")
            shutil.copy2(initrd, bootdir / "initrd")
            kernel, initrd = "/boot/kernel", "/boot/initrd"
        conf = boot.extlinux_conf(root.toplevel, spec, kernel=kernel, initrd=initrd)
        (bootdir / "extlinux/extlinux.conf").write_text(conf)
        normalize_tree(tree)
        return {"kernel": kernel, "initrd": initrd}

    def _store_disk(self, root: Root, out: Path, opts: DiskOptions, work: Path,
                    say: Progress, target: Path | None = None) -> Path:
        fs = root.spec.store_fs_resolved
        say(f"making the read-only store disk ({fs})")
        store_tree = work / "store-tree"
        store_tree.mkdir(mode=0o755)
        os.chmod(store_tree, 0o755)  # whatever the umask
        pre = self._fill_store(root, store_tree)
        raw = work / "store.raw"
        fs_uuid = derived_uuid(root.toplevel, root.spec.name, "store")
        if fs == "ext4":
            usage = tree_usage(store_tree, *(Path(p) for p in root.paths))
            size = round_up(usage.min_fs_size(journal=False) + 8 * MIB, MIB)
            self._mkfs(root, pre, raw, store_tree, store_tree, label=STORE_LABEL, size=size,
                       journal=False, fs_uuid=fs_uuid, inodes=usage.inodes + 256)
            normalize_inode_times(raw)
        else:
            def make(pre: Callable[[], None] | None) -> None:
                if fs == "erofs":
                    storefs.make_erofs(raw, store_tree, label=STORE_LABEL, fs_uuid=fs_uuid,
                                       preexec=pre)
                else:
                    storefs.make_squashfs(raw, store_tree, preexec=pre)
            try:
                make(pre)
            except subprocess.SubprocessError:
                self._copy_instead(root, store_tree)
                make(None)
        target = target or store_image_path(out)
        self._emit(raw, target, DiskOptions(format=opts.format, cluster_size=opts.cluster_size,
                                            compression=opts.compression), work)
        return target

    def _share_dir(self, root: Root, out: Path, opts: DiskOptions, say: Progress
                   ) -> tuple[Path, str]:
        """The share of a shared layout, in the build directory: switched with the image.

        Zero copy by default: the directory stays empty and the runner
        bind-mounts exactly the toplevel's closure onto it in a private mount
        namespace (storebind.closure_view).  Where that is impossible, or
        for engines that start qemu themselves, it is a hardlink tree (else
        reflinks, else copies) of exactly the closure.
        """
        target = share_dir_path(out)
        target.mkdir()
        os.chmod(target, 0o755)
        method = opts.share_method or ("bind" if storebind.available() else "tree")
        if method == "bind":
            say("shared store: zero copy (bind mounts in the runner's private namespace)")
            os.utime(target, (1, 1))
            return target, "bind"
        how = copy_paths(root.paths, target)
        reason = "" if opts.share_method else " (no private mount namespace: not root)"
        say(f"shared store: {how} tree{reason}")
        os.utime(target, (1, 1))
        return target, how

    def _emit(self, raw: Path, target: Path, opts: DiskOptions, work: Path) -> None:
        """Convert (or move) the raw file into place with one rename."""
        tmp = work / f"out.{opts.format}"
        if opts.format == "raw":
            raw.rename(tmp)
        else:
            o = []
            if opts.cluster_size:
                o.append(f"cluster_size={opts.cluster_size}")
            if opts.preallocation != "off":
                o.append(f"preallocation={opts.preallocation}")
            if opts.compression:
                o.append(f"compression_type={opts.compression}")
            cmd = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2"]
            if o:
                cmd += ["-o", ",".join(o)]
            if opts.compression:
                cmd.append("-c")
            _run([*cmd, str(raw), str(tmp)], "qemu-img convert", target)
        tmp.replace(target)


def make_overlay(base: Path, overlay: Path) -> Artifact:
    """A qcow2 overlay for one instance's writes; the base stays pristine.

    The overlay backs onto the base's *build* (its absolute path), not onto
    the public name: a later rebuild of the base must not change the bytes
    under an overlay (qemu would read garbage), and the build directory is
    kept by the sweep while a published overlay still points into it.  The
    overlay is itself published as a build set: its file and its sidecar
    appear together.
    """
    from nixslave.backends import publish

    base = Path(base).absolute()
    overlay = Path(overlay).absolute()
    real_base = Path(os.path.realpath(base))
    a = Artifact.load(base)
    overlay.parent.mkdir(parents=True, exist_ok=True)
    with BuildSet(overlay) as bs:
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", a.format, "-b", str(real_base),
              str(bs.image)], "qemu-img create (overlay)", overlay)
        # The instance's store disk or share is its base build's; loading the
        # sidecar takes them from there (see Artifact.load).
        inst = Artifact(**{**a.__dict__, "image": bs.image, "format": "qcow2", "sha256": "",
                           "build": bs.id, "store_image": None, "share_dir": None,
                           "extra": {**{k: v for k, v in a.extra.items() if k != "published_as"},
                                     "backing": str(real_base)}})
        inst.save()
        build = publish.current_build(base)
        if build is not None:
            refs = build / publish.OVERLAYS
            old = refs.read_text() if refs.exists() else ""
            refs.write_text(old + f"{overlay}\n")
        bs.publish()
    return Artifact.load(overlay)
