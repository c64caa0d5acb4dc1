"""Profile-less roots: a built system closure and the tree a guest boots from.

``build`` turns a MachineSpec into a :class:`Root` (the toplevel plus its
closure with hashes and sizes).  ``Root.prepare`` lays out a directory the
way nixos-install would, minus everything a self-managing system needs: no
channels, no generations, one ``system`` link, and a Nix database only when
the guest has Nix at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from nixslave import __version__, nix, rundir
from nixslave.demo import build_demo
from nixslave.errors import NixError, RootError
from nixslave.nixos import guest_module, store_kind
from nixslave.progress import Progress
from nixslave.spec import MachineSpec

MANIFEST_PATH = Path("nix/var/nixslave/manifest.json")
MANIFEST_SCHEMA = 1
MOUNT_POINTS = ("dev", "proc", "sys", "run", "tmp", "etc", "root", "var", "nix/store")


@dataclass(frozen=True)
class NodeNetwork:
    """What a node's guest needs from the topology plan.

    Made by :func:`nixslave.node_network` from a plan; :func:`build_root`
    renders it into the guest (a script for the demo system, a
    systemd-networkd module for NixOS).

    Example:

        >>> net = nixslave.node_network(plan, "edge")
        >>> root = nixslave.build_root(spec, network=net)
    """

    script: str = ""               # POSIX shell, for the demo system
    nixos_module: str | None = None  # systemd-networkd module, for NixOS
    peers: tuple[str, ...] = ()    # addresses the demo guest pings after boot


@dataclass
class Root:
    """A built system: toplevel, closure (with NAR hashes and sizes), spec.

    What every backend materializes and what ``upgrade_image`` and
    ``install_root`` put into existing images.  ``prepare(tree)`` lays the
    guest's root file system out in a directory, profile-less: exactly the
    closure, one ``system`` link, ``/etc/NIXOS``, the manifest, and a Nix
    database only when ``spec.with_nix``.

    Example:

        >>> root = nixslave.build_root(nixslave.MachineSpec(name="web-1", demo=True))
        >>> print(len(root.closure), "store paths,", root.nar_size, "bytes")
        >>> tree = root.prepare(Path("/srv/trees/web-1"))
    """

    spec: MachineSpec
    toplevel: str
    closure: list[nix.PathInfo]
    _registration: str | None = field(default=None, repr=False)

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.closure]

    @property
    def nar_size(self) -> int:
        return sum(p.nar_size for p in self.closure)

    @property
    def registration(self) -> str:
        """``nix-store --dump-db`` of the closure, for a guest that has Nix."""
        if self._registration is None:
            self._registration = nix.dump_db(self.paths)
        return self._registration

    def manifest(self) -> dict[str, object]:
        """What every artifact carries so that inspect/upgrade need no host state."""
        return {
            "schema": MANIFEST_SCHEMA,
            "nixslave": __version__,
            "name": self.spec.name,
            "spec": self.spec.to_json(),
            "toplevel": self.toplevel,
            "layout": self.spec.layout,
            "store": store_kind(self.spec),
            "boot": self.spec.boot,
            "closure": [{"path": p.path, "narHash": p.nar_hash, "narSize": p.nar_size}
                        for p in self.closure],
            "narSize": self.nar_size,
        }

    def to_json(self) -> dict[str, object]:
        return {"name": self.spec.name, "toplevel": self.toplevel,
                "closurePaths": len(self.closure), "narSize": self.nar_size,
                "closure": [p.to_json() for p in self.closure]}

    def copy_store(self, store_dir: Path) -> str:
        """Put exactly the closure into ``store_dir``; say which method worked."""
        return copy_paths(self.paths, store_dir)

    def prepare(self, tree: Path, *, include_store: bool = True,
                progress: Progress | None = None) -> Path:
        """Populate ``tree`` as the guest's root file system.

        The tree is built beside its target and renamed into place, so an
        interrupted prepare never leaves a half-populated ``tree``.
        """
        say = progress or (lambda _m: None)
        tree = Path(tree)
        check_new_dir(tree)
        tree.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{tree.name}.", dir=tree.parent))
        try:
            for d in MOUNT_POINTS:
                (work / d).mkdir(parents=True, exist_ok=True)
            (work / "tmp").chmod(0o1777)
            (work / "nix/store").chmod(0o1775)
            if include_store:
                say(f"copying {len(self.paths)} store paths")
                self.copy_store(work / "nix/store")
            profiles = work / "nix/var/nix/profiles"
            profiles.mkdir(parents=True)
            (profiles / "system").symlink_to(self.toplevel)
            (work / "etc/NIXOS").touch()
            if self.spec.with_nix:
                say("registering the closure in the guest's Nix database")
                self._load_db(work, include_store)
            write_manifest(work, self.manifest())
            normalize_tree(work)
            if tree.exists():
                tree.rmdir()
            work.rename(tree)
        except BaseException:
            force_rmtree(work)
            raise
        return tree

    def _load_db(self, work: Path, include_store: bool) -> None:
        if include_store:
            nix.load_db(work, self.registration)
            fix_registration_times(work)
            # Nix creates its hardlink-optimisation directory; the guest's
            # store must hold the closure and nothing else.
            links = work / "nix/store/.links"
            if links.is_dir() and not any(links.iterdir()):
                links.rmdir()
            return
        # The store lives elsewhere (store disk or share): register it from a
        # scratch root that has the paths, then keep only the database.
        with tempfile.TemporaryDirectory(dir=work.parent) as scratch:
            s = Path(scratch)
            self.copy_store(s / "nix/store")
            nix.load_db(s, self.registration)
            fix_registration_times(s)
            shutil.copytree(s / "nix/var/nix/db", work / "nix/var/nix/db")
            force_rmtree(s / "nix/store")


def check_new_dir(tree: Path) -> None:
    """Refuse to populate anything but a new or empty directory."""
    if tree.exists() and (not tree.is_dir() or any(tree.iterdir())):
        raise RootError(f"{tree} exists and is not an empty directory",
                        where="prepare", hint="choose a new directory or remove it")


def write_manifest(tree: Path, manifest: dict[str, object]) -> None:
    path = tree / MANIFEST_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def copy_paths(paths: list[str], store_dir: Path) -> str:
    """Copy store paths by hardlink, else reflink, else plain copy.

    Hardlinks are free but only work on the host store's file system; a
    reflink shares extents on CoW file systems; a copy always works.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    methods = (("hardlink", ["cp", "-a", "--link"]),
               ("reflink", ["cp", "-a", "--reflink=always"]),
               ("copy", ["cp", "-a"]))
    for name, cmd in methods:
        proc = subprocess.run([*cmd, *paths, str(store_dir)], capture_output=True, text=True)
        if proc.returncode == 0:
            return name
        for p in paths:
            force_rmtree(store_dir / Path(p).name)
    raise RootError(f"cannot copy the closure into {store_dir}: {proc.stderr.strip()}",
                    where="prepare", hint="check free space and permissions")


def normalize_tree(tree: Path) -> None:
    """Fix modes and times of everything outside the store, for reproducible images.

    Directories the builder creates get their mode from its umask, and mkfs
    copies modes as it finds them: with umask 077 or 002 the same inputs would
    give different images.  So every directory is 0755 (``/tmp`` 1777, the
    store 1775), every file 0644 or 0755 by its owner's execute bit, and every
    time the store's epoch (1).  Store paths keep Nix's own modes.
    """
    store = tree / "nix/store"
    special = {tree / "tmp": 0o1777, store: 0o1775}
    for dirpath, dirnames, filenames in os.walk(tree, topdown=True):
        d = Path(dirpath)
        if d == store:
            dirnames[:] = []
        for n in filenames + dirnames:
            p = d / n
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                if p != store:
                    os.chmod(p, special.get(p, 0o755))
            elif stat.S_ISREG(st.st_mode) and d != store:
                os.chmod(p, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
            os.utime(p, (1, 1), follow_symlinks=False)
    os.chmod(tree, 0o755)
    if store.is_dir():
        os.chmod(store, 0o1775)
    for d in (tree, store, tree / "nix"):
        if d.exists():
            os.utime(d, (1, 1))


normalize_times = normalize_tree  # the name the disk backend used first


def fix_registration_times(root: Path) -> None:
    """Give every path in the guest's Nix database the image's epoch (1).

    ``nix-store --load-db`` stamps each path with the time of loading, which
    would make --with-nix images differ from build to build.
    """
    db = root / "nix/var/nix/db/db.sqlite"
    con = sqlite3.connect(db)
    try:
        con.execute("UPDATE ValidPaths SET registrationTime = 1")
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    for leftover in ("db.sqlite-wal", "db.sqlite-shm"):
        (db.parent / leftover).unlink(missing_ok=True)


def force_rmtree(path: Path) -> None:
    """Remove a tree even where store paths made directories read-only."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    # Only directories need write permission for their entries to go.  Files
    # may be hardlinks into the host store, whose modes must never change.
    for dirpath, _dirnames, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


# -- building -----------------------------------------------------------------

def _nixpkgs_args(spec: MachineSpec) -> list[str]:
    if spec.nixpkgs is not None:
        if not (spec.nixpkgs / "nixos").is_dir():
            raise RootError(f"{spec.nixpkgs} is not a nixpkgs checkout (no nixos/ inside)",
                            where=f"machine {spec.name}.nixpkgs",
                            hint="pass the root of a nixpkgs tree")
        return [f"nixpkgs={spec.nixpkgs}"]
    try:
        nix.run_nix(["nix-instantiate", "--find-file", "nixpkgs"], what="finding nixpkgs")
    except NixError:
        raise RootError("nixpkgs is not available to build a NixOS configuration",
                        where=f"machine {spec.name}",
                        hint="pass --nixpkgs PATH or set NIX_PATH=nixpkgs=PATH "
                             "(or use --demo / --toplevel)") from None
    return []


def _module_file(spec: MachineSpec, network: NodeNetwork | None, workdir: Path) -> Path:
    """The whole guest module (slave + machine + network), checked to parse."""
    path = workdir / "nixslave-guest.nix"
    module = guest_module(spec, network_module=network.nixos_module if network else None)
    nix.instantiate_parse(module)
    path.write_text(module)
    return path


def _build_config(spec: MachineSpec, network: NodeNetwork | None) -> Path:
    assert spec.config is not None
    config = spec.config.resolve()
    if not config.is_file():
        raise RootError(f"{spec.config} does not exist", where=f"machine {spec.name}.config",
                        hint="pass the path of a NixOS configuration file")
    nix_path = _nixpkgs_args(spec)
    with rundir.entry("eval") as tmp:
        module = _module_file(spec, network, Path(tmp))
        return nix.build(file=nix.DATA_DIR / "eval-config.nix", nix_path=nix_path,
                         argstrs={"configuration": str(config), "guestModule": str(module)},
                         what="NixOS build")[0]


def flake_ref(ref: str) -> str:
    """A reference builtins.getFlake accepts: local paths as ``path:`` URLs.

    ``github:``, ``git+https:``, ``path:`` and the like pass unchanged; a bare
    path (``.``, ``./sys``, ``/srv/flake``) becomes an absolute ``path:`` URL,
    since getFlake has no working directory, with spaces, ``@`` and the like
    percent-encoded.
    """
    scheme = ref.split(":", 1)[0] if ":" in ref else ""
    if scheme and "/" not in scheme:
        return ref
    return "path:" + urllib.parse.quote(str(Path(ref).expanduser().resolve()), safe="/")


def _build_flake(spec: MachineSpec, network: NodeNetwork | None) -> Path:
    assert spec.flake is not None
    ref, _, attr = spec.flake.partition("#")
    with rundir.entry("eval") as tmp:
        module = _module_file(spec, network, Path(tmp))
        # nix-build rather than `nix build --print-out-paths`, which Nix 2.8
        # (Debian 12) lacks; getFlake needs the flakes feature, nothing else.
        return nix.build(file=nix.DATA_DIR / "eval-flake.nix",
                         extra_args=["--extra-experimental-features", "nix-command flakes"],
                         argstrs={"flakeRef": flake_ref(ref), "attr": attr,
                                  "guestModule": str(module)},
                         what="flake build")[0]


def build(spec: MachineSpec, *, network: NodeNetwork | None = None,
          progress: Progress | None = None) -> Root:
    """Build (or take) the machine's toplevel and read its closure.

    The system comes from the spec's one source: the demo system, a NixOS
    configuration file (with ``spec.nixpkgs`` or ``NIX_PATH``), a flake
    attribute, or a toplevel already in the host's store.  The nixslave
    guest module (profile-less settings, file systems by label, the boot
    marker, and ``network`` when given) is added to configurations and
    flakes.  Nix failures raise :class:`nixslave.NixError`, a bad
    source :class:`nixslave.RootError`.

    Example:

        >>> import nixslave
        >>> spec = nixslave.MachineSpec(name="web-1", config=Path("web-1.nix"),
        ...                             nixpkgs=Path("/src/nixpkgs"))
        >>> root = nixslave.build_root(spec, progress=print)
        building the config system for web-1
        reading the closure
        >>> root.toplevel.startswith("/nix/store/")
        True
    """
    say = progress or (lambda _m: None)
    say(f"building the {spec.source} system for {spec.name}")
    if spec.demo:
        net = network or NodeNetwork()
        toplevel = build_demo(spec.name, network_script=net.script, peers=net.peers,
                              halt=spec.halt)
    elif spec.toplevel:
        if not nix.is_valid_path(spec.toplevel):
            raise RootError(f"{spec.toplevel} is not a valid path in the host store",
                            where=f"machine {spec.name}.toplevel",
                            hint="build it first (nix-build ... ) or check the hash")
        toplevel = Path(spec.toplevel)
        if not (toplevel / "init").exists() or not (toplevel / "kernel").exists():
            raise RootError(f"{toplevel} is not a system toplevel (no init or kernel)",
                            where=f"machine {spec.name}.toplevel",
                            hint="pass config.system.build.toplevel of a NixOS system")
    elif spec.config:
        toplevel = _build_config(spec, network)
    else:
        toplevel = _build_flake(spec, network)
    say("reading the closure")
    infos = nix.path_info(nix.closure(toplevel))
    return Root(spec=spec, toplevel=str(toplevel), closure=infos)
