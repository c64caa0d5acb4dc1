"""Store-aware offline repair of a stopped NixOS image, with a way back.

Before the first write the image gets a safety snapshot (a qcow2 internal
snapshot, or a copy of a raw file) and the report says how to return to it.
Then one appliance launch checks, in the order in which each check's answer
depends on the one before:

1. the file system (``e2fsck -f -y``; the store disk is only checked);
2. leftovers of killed operations, stale lock and pid files;
3. the manifest (rebuilt from the system link and the host's store when
   lost), and the ``system`` link;
4. every store path against the manifest's narHash: missing or corrupt
   paths are copied again from the host's store (or listed, with how to get
   them, when the host lacks them), wrong modes and owners are fixed;
5. the guest's Nix database knows every path;
6. the boot loader: extlinux, its entry and the MBR code for bios images,
   the unified kernel image for uefi images; /etc/fstab; the root's label.

A dry run adds the drives read-only, so libguestfs serves every write from
a throwaway overlay: the report of a dry run is that of the real repair.
Nothing outside the store, the boot files and the listed state files is
touched, so user data (say under /var) survives byte for byte.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nixslave import nix
from nixslave.errors import ImageError, NixslaveError
from nixslave.image import nixdb
from nixslave.image.access import MANIFEST, filesystems
from nixslave.image.nar import store_mode
from nixslave.image.repairs import boot_checks, state_checks
from nixslave.image.session import Session, mount_root, open_session
from nixslave.image.target import Target, exclusive, open_target
from nixslave.image.verify import StoreCheck, expected_hashes, verify_store
from nixslave.nixos import ROOT_LABEL, STORE_LABEL
from nixslave.progress import Progress
from nixslave.root import Root
from nixslave.spec import MachineSpec


@dataclass
class Finding:
    """One thing found wrong, and what was (or would be) done about it.

    ``check`` names the check that found it (``filesystem``, ``store``,
    ``manifest``, ``boot loader``, ...), so a tool can group findings
    without parsing the text.

    Example:

        >>> report = nixslave.repair_image(Path("web-1.qcow2"), dry_run=True)
        >>> for f in report.findings:
        ...     print(f"{f.check}: {f.problem} -> {f.action or 'left alone'}")
    """

    check: str
    problem: str
    action: str = ""
    fixed: bool = False


@dataclass
class RepairReport:
    """Findings and actions; the CLI prints this with ``--json``.

    ``clean`` means nothing was wrong; ``healthy`` that everything found was
    fixed (or would be, in a dry run).  ``backup`` says how to return to the
    image as it was before the repair; ``missing_on_host`` lists store paths
    that were damaged in the image and absent from the host's store, so
    could not be copied again.

    Example:

        >>> report = nixslave.repair_image(Path("web-1.qcow2"))
        >>> if not report.healthy:
        ...     print("still broken; back with:", report.backup)
    """

    image: str
    dry_run: bool
    backup: str | None = None          # how to go back to the state before the repair
    toplevel: str | None = None
    findings: list[Finding] = field(default_factory=list)
    missing_on_host: list[str] = field(default_factory=list)
    verified_paths: int = 0
    verified_bytes: int = 0
    verify_seconds: float = 0.0
    verify_mb_per_s: float = 0.0       # MiB of NAR per second
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """Nothing was wrong."""
        return not self.findings

    @property
    def healthy(self) -> bool:
        """Everything found was fixed (or would be, in a dry run)."""
        return all(f.fixed for f in self.findings)

    def add(self, check: str, problem: str, action: str = "", fixed: bool = True) -> None:
        self.findings.append(Finding(check, problem, action, fixed))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean, "healthy": self.healthy}


def repair(image: Path, *, dry_run: bool = False, backup: bool = True,
           store_image: Path | None = None, progress: Progress | None = None) -> RepairReport:
    """Check the stopped image at ``image`` and fix what can be fixed.

    One appliance launch checks, in order, the file system, leftovers of
    killed operations, the manifest and ``system`` link, every store path
    against its NAR hash (damaged ones are copied again from the host's
    store), the guest's Nix database and the boot loader.  Before the first
    write the image gets a safety snapshot (qcow2) or copy (raw, when
    ``backup``), named in ``RepairReport.backup``.  ``dry_run`` adds the
    drives read-only: the report is that of the real repair and nothing is
    written.  User data outside the store and boot files is never touched.
    ``store_image`` is the store disk of a store-disk image, by default the
    one the image's own build made (found through its sidecar).

    The guest must be stopped: a running qemu's lock, or a ``run`` holding
    the build, makes this raise :class:`nixslave.ImageError` before
    anything is read.

    Example:

        >>> import nixslave
        >>> report = nixslave.repair_image(Path("web-1.qcow2"), progress=print)
        >>> report.healthy, [f.check for f in report.findings]
        (True, ['store'])
    """
    say = progress or (lambda _m: None)
    start = time.monotonic()
    t = open_target(Path(image), write=not dry_run)
    with exclusive(t):
        drives = [(t.image, t.format)]
        store_disk = _store_disk(t, store_image)
        if store_disk is not None:
            drives.append(store_disk)
        way_back = None
        if not dry_run and t.format == "qcow2":
            # An internal snapshot cannot be taken while the appliance holds
            # the image, and must not be taken of an image that is then
            # refused: look first (read-only), and write only if needed.
            look = _repair(t, drives, dry_run=True, backup=False, say=say)
            if look.clean:
                look.dry_run = False
                look.seconds = round(time.monotonic() - start, 2)
                return look
            way_back = _safety_copy(t, backup, say)
        report = _repair(t, drives, dry_run=dry_run, backup=backup, say=say)
        report.backup = report.backup or way_back
    report.seconds = round(time.monotonic() - start, 2)
    return report


def _repair(t: Target, drives: list[tuple[Path, str]], *, dry_run: bool, backup: bool,
            say: Progress) -> RepairReport:
    """One launch: every check, and (unless ``dry_run``) every fix."""
    report = RepairReport(image=t.where, dry_run=dry_run)
    with open_session(drives, t.where, readonly=dry_run, mount=False) as s:
        if not dry_run and t.format != "qcow2":
            # the session's checks (NixOS, no LUKS) have passed and nothing
            # has been written yet: the copy is of the original
            report.backup = _safety_copy(t, backup, say)
        say("checking the file system")
        _fsck(s, report)
        _label(s, report)
        mount_root(s)
        _repair_mounted(s, t, report, len(drives) > 1, say)
    return report


def _store_disk(t: Target, given: Path | None) -> tuple[Path, str] | None:
    path = given or (t.artifact.store_image if t.artifact is not None else None)
    if path is None or not Path(path).exists():
        return None
    from nixslave.image.access import probe_image

    return Path(path), str(probe_image(Path(path))["format"])


# -- before any write -------------------------------------------------------------

def _safety_copy(t: Target, backup: bool, say: Progress) -> str | None:
    """A qcow2 internal snapshot, or a copy of any other image; returns how to go back."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if t.format == "qcow2":
        name = f"nixslave-repair-{stamp}"
        proc = subprocess.run(["qemu-img", "snapshot", "-c", name, str(t.image)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"the safety snapshot failed: {proc.stderr.strip()[-200:]}",
                             where=t.where, hint="free some space, or check the image")
        say(f"safety snapshot {name}")
        return f"qemu-img snapshot -a {name} {t.image}"
    if not backup:
        return None
    copy = t.image.with_name(f"{t.image.name}.pre-repair-{stamp}")
    say(f"safety copy {copy}")
    tmp = copy.with_name(f".{copy.name}.tmp")
    proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(t.image), str(tmp)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ImageError(f"the safety copy failed: {proc.stderr.strip()[-200:]}",
                         where=t.where, hint="free some space, or pass --no-backup")
    tmp.rename(copy)
    return f"mv {copy} {t.image}"


# -- the file system ----------------------------------------------------------------

def _fsck(s: Session, report: RepairReport) -> None:
    # The appliance's own device names are not stable (its disks are scanned
    # in parallel; the API translates names, a shell does not), so the shell
    # names the file system by its UUID, read through the translating API.
    uuid = str(s.g.vfs_uuid(s.root[0]))
    if not uuid or any(c not in "0123456789abcdef-" for c in uuid.lower()):
        s.g.e2fsck(s.root[0], forceall=True)  # no output to report, but fixed
        return
    out = str(s.g.debug("sh", [f"e2fsck -f -y UUID={uuid} 2>&1; echo rc=$?"]))
    rc = int(out.rsplit("rc=", 1)[-1].strip() or 8)
    fixes = [ln.strip() for ln in out.splitlines() if ln.rstrip().endswith(("? yes", "yes"))]
    if rc in (1, 2):
        report.add("filesystem", f"e2fsck fixed {max(len(fixes), 1)} problems "
                   f"({'; '.join(fixes[:3])[:200]})", "e2fsck -f -y")
    elif rc >= 4:
        tail = " ".join(out.split()[-40:])[-300:]
        report.add("filesystem", f"e2fsck could not fix the file system (exit {rc}): {tail}",
                   "none", fixed=False)
        raise ImageError(f"the root file system is damaged beyond e2fsck (exit {rc}: "
                         f"{tail})", where=s.where,
                         hint=f"restore it: {report.backup or 'from a backup'}")


def _label(s: Session, report: RepairReport) -> None:
    """The direct-boot command line finds the root by its label."""
    if s.root[2] != ROOT_LABEL and _is_nixslave(s):
        s.g.set_label(s.root[0], ROOT_LABEL)
        report.add("label", f"the root file system is labelled {s.root[2]!r}",
                   f"labelled {ROOT_LABEL}")


def _is_nixslave(s: Session) -> bool:
    s.g.mount_ro(s.root[0], "/sysroot")
    try:
        return bool(s.g.is_file(s.p(MANIFEST))) or bool(s.g.is_dir(s.p("nix/var/nixslave")))
    finally:
        s.g.umount("/sysroot")


# -- everything that needs the root mounted ------------------------------------------

def _repair_mounted(s: Session, t: Target, report: RepairReport, has_store_disk: bool,
                    say: Progress) -> None:
    for gone in s.sweep(s.p("nix/store")):
        report.add("leftovers", f"{gone} was left by a killed operation", "removed")
    state_checks(s, report)
    manifest = _manifest(s, t, report)
    if manifest is None:
        return
    report.toplevel = manifest["toplevel"]
    _system_link(s, manifest, report)
    layout = manifest.get("layout", "disk")
    if layout == "disk":
        say("verifying the store (NAR hashes)")
        check = verify_store(s.g, s.p("nix/store"), expected_hashes(manifest), s.scratch)
        _record_check(report, check)
        _fix_store(s, s.p("nix/store"), manifest, check, report, say)
    elif layout == "store-disk" and has_store_disk:
        say("verifying the store disk (NAR hashes)")
        _check_store_disk(s, t, manifest, report)
    _nix_db(s, manifest, report)
    boot_checks(s, t, manifest, report)


def _manifest(s: Session, t: Target, report: RepairReport) -> dict[str, Any] | None:
    manifest, err = s.read_manifest()
    if manifest is not None:
        return manifest
    toplevel = s.system_link() or (t.artifact.toplevel if t.artifact else None)
    if toplevel is None or not nix.is_valid_path(toplevel):
        report.add("manifest", f"{err}; the system is unknown or not in the host store",
                   "none", fixed=False)
        return None
    a = t.artifact
    spec = MachineSpec.parse({
        "name": a.name if a else "nixslave", "toplevel": toplevel,
        "layout": a.layout if a else "disk", "boot": _boot_of(s, a),
        "with_nix": bool(s.g.is_file(s.p(nixdb.DB)))})
    root = Root(spec=spec, toplevel=toplevel, closure=nix.path_info(nix.closure(toplevel)))
    data = root.manifest()
    s.write_file(s.p(MANIFEST), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    report.add("manifest", err or "the manifest is unusable",
               f"rebuilt from {toplevel} and the host's store")
    return data


def _boot_of(s: Session, a: Any) -> str:
    if a is not None:
        return str(a.boot)
    if s.esp is not None:
        return "uefi"
    return "bios" if s.g.is_dir(s.p("boot/extlinux")) else "direct"


def _system_link(s: Session, manifest: dict[str, Any], report: RepairReport) -> None:
    link = s.system_link()
    want = manifest["toplevel"]
    if link == want:
        return
    s.g.mkdir_p(s.p("nix/var/nix/profiles"))
    s.set_link(s.p("nix/var/nix/profiles/system"), want)
    report.add("system link", "missing" if link is None else f"points to {link}",
               f"points to {want}")


def _record_check(report: RepairReport, check: StoreCheck) -> None:
    report.verified_paths += check.checked
    report.verified_bytes += check.bytes
    report.verify_seconds = round(report.verify_seconds + check.seconds, 3)
    if report.verify_seconds:
        report.verify_mb_per_s = round(report.verified_bytes / (1 << 20)
                                       / report.verify_seconds, 1)


def _fix_store(s: Session, store: str, manifest: dict[str, Any], check: StoreCheck,
               report: RepairReport, say: Progress) -> None:
    full = {Path(e["path"]).name: e["path"] for e in manifest["closure"]}
    redo = check.missing + check.corrupt
    on_host = [full[n] for n in redo if nix.is_valid_path(full[n])]
    lacking = sorted(full[n] for n in redo if full[n] not in on_host)
    for n in check.missing:
        report.add("store", f"/nix/store/{n} is missing", "copied from the host store",
                   fixed=full[n] in on_host)
    for n in check.corrupt:
        report.add("store", f"/nix/store/{n} differs from its narHash",
                   "copied again from the host store", fixed=full[n] in on_host)
    for n in check.unverified:
        report.add("store", f"{n} could not be verified (not representable as a NAR)",
                   "none", fixed=False)
    if lacking:
        report.missing_on_host = lacking
        report.add("store", f"{len(lacking)} paths are in neither the image nor the host "
                   "store", "get them with `nix-store --realise PATH` or `nix copy --from "
                   "URL PATH`, then repair again", fixed=False)
    if on_host:
        say(f"copying {len(on_host)} store paths again")
        s.remove_paths([Path(p).name for p in on_host if Path(p).name in check.corrupt], store)
        s.put_paths(on_host, store)
    for name, modes in check.bad_modes.items():
        if name in check.corrupt:
            continue
        for rel, mode in modes:
            s.g.chmod(store_mode(mode), f"{store}/{name}/{rel}".rstrip("/"))
        report.add("store modes", f"{len(modes)} entries of {name} have wrong modes "
                   f"(e.g. {modes[0][0] or '.'} {oct(modes[0][1])})", "chmod to 0444/0555")
    for name, owners in check.bad_owners.items():
        if name in check.corrupt:
            continue
        for rel in owners:
            s.g.lchown(0, 0, f"{store}/{name}/{rel}".rstrip("/"))
        report.add("store owners", f"{len(owners)} entries of {name} are not owned by root",
                   "chown 0:0")


def _check_store_disk(s: Session, t: Target, manifest: dict[str, Any],
                      report: RepairReport) -> None:
    """A read-only store disk is checked, never edited: it is rebuilt whole if bad."""
    disk = s.g.list_devices()[1]
    fss = filesystems(s.g, disk)
    fs = next((f for f in fss if f[2] == STORE_LABEL), fss[0] if fss else None)
    if fs is None:
        report.add("store disk", "no file system on the store disk", "none", fixed=False)
        return
    s.g.mkmountpoint("/storedisk")
    s.g.mount_ro(fs[0], "/storedisk")
    check = verify_store(s.g, "/storedisk", expected_hashes(manifest), s.scratch)
    s.g.umount("/storedisk")
    _record_check(report, check)
    if check.ok:
        return
    problems = len(check.missing) + len(check.corrupt) + len(check.bad_modes)
    report.add("store disk", f"{problems} store paths are missing or damaged",
               "rebuild the store disk: `nixslave image upgrade IMG --toplevel "
               f"{manifest['toplevel']}` writes a fresh one", fixed=False)


def _nix_db(s: Session, manifest: dict[str, Any], report: RepairReport) -> None:
    path = s.p(nixdb.DB)
    if not s.g.is_file(path):
        return
    local = s.scratch / "db.sqlite"
    s.g.download(path, str(local))
    wal = s.p(nixdb.DB + "-wal")
    if s.g.is_file(wal) and s.g.filesize(wal) > 0:
        s.g.download(wal, str(local) + "-wal")
    try:
        known = nixdb.valid_paths(local)
    except Exception as exc:
        report.add("nix database", f"unreadable: {exc}", "none", fixed=False)
        return
    lacking = [e["path"] for e in manifest["closure"] if e["path"] not in known]
    if not lacking:
        return
    try:
        nixdb.register(local, nixdb.registrations(lacking))
    except NixslaveError as exc:
        report.add("nix database", f"{len(lacking)} store paths are not registered",
                   f"none: {exc.what}", fixed=False)
        return
    s.write_file(path, local.read_bytes())
    if s.g.is_file(wal):
        s.g.rm(wal)
    report.add("nix database", f"{len(lacking)} store paths are not registered", "registered")


@dataclass
class Health:
    """The health summary `inspect --health` prints: a dry-run repair, condensed.

    Example:

        >>> h = nixslave.image_health(Path("web-1.qcow2"))
        >>> (h.filesystem, h.store, h.boot, h.state)
        ('clean', 'verified', 'consistent', 'clean')
    """

    filesystem: str          # clean | errors
    store: str               # verified | damaged | incomplete on host | not checked
    boot: str                # consistent | inconsistent
    state: str               # clean | stale files
    verified_paths: int
    findings: list[Finding]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def health(image: Path, *, store_image: Path | None = None,
           progress: Progress | None = None) -> Health:
    """Check ``image`` without writing it (every write goes to a throwaway overlay).

    The checks are the repair's (a dry run, one launch); the answer is
    condensed into a word per area, with the findings beside it.
    ``store_image`` is as for :func:`repair_image`.

    Example:

        >>> import nixslave
        >>> h = nixslave.image_health(Path("web-1.qcow2"))
        >>> h.store == "verified" or print(h.findings)
        True
    """
    r = repair(image, dry_run=True, store_image=store_image, progress=progress)
    checks = {f.check for f in r.findings}
    store_bad = checks & {"store", "store modes", "store owners", "store disk"}
    return Health(
        filesystem="errors" if "filesystem" in checks else "clean",
        store=("damaged" if store_bad else "verified" if r.verified_paths else "not checked"),
        boot="inconsistent" if checks & {"boot loader", "system link", "manifest",
                                         "label", "fstab"} else "consistent",
        state="stale files" if checks & {"stale state", "leftovers"} else "clean",
        verified_paths=r.verified_paths, findings=r.findings)
