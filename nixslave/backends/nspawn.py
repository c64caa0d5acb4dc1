"""systemd-nspawn machine directories: the prepared root plus a ``.nspawn`` file.

The artifact is a build directory (see :mod:`nixslave.backends.publish`)::

    alpha -> .alpha.nixslave/b-<id>/alpha
    .alpha.nixslave/b-<id>/
        alpha/                  the machine's root: exactly the closure, copied
        alpha.nspawn            [Exec] runs <toplevel>/init, [Network] from the plan
        alpha.nixslave.json     the sidecar

nspawn derives the machine name from the directory and reads
``<name>.nspawn`` from the directory's parent, so the root directory and
the settings file share the artifact's name (which must therefore be a
valid machine name).  Settings found beside an image are *untrusted*:
nspawn ignores their privileged parts (network, binds) unless it runs with
``--settings=trusted`` or the file is copied to /etc/systemd/nspawn/;
:mod:`nixslave.runtime.container` runs with ``--settings=trusted``.

**The store is copied, never hardlinked.**  ``Root.prepare`` hardlinks
store paths from the host store, which is right for a disk image (mkfs
copies the bytes) but wrong for a directory a container runs on: a root
process in the container would write through the shared inode into the
host's /nix/store.  A ``BindReadOnly=`` of the container's own store in the
``.nspawn`` file would not help: nspawn ignores binds in an untrusted
settings file, so anyone running ``systemd-nspawn -D`` on the directory
would get a writable host store.  A copy (a reflink where the file system
can, which is just as safe: writes unshare the extents) is safe however the
directory is run.

The root gets what container runtimes expect and ``Root.prepare`` does not
make for disks, exactly as nixpkgs' lxc-container.nix tarball does: an empty
``/usr`` (nspawn refuses a tree without it), ``/sbin/init`` pointing to the
toplevel's init (``machinectl start`` passes ``--boot``, LXC runs
/sbin/init) and ``/etc/os-release`` pointing into the toplevel's etc.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nixslave import gcroots, interrupt, nix
from nixslave.backends import Artifact
from nixslave.backends.publish import BuildSet
from nixslave.errors import BuildError, SpecError
from nixslave.progress import Progress
from nixslave.root import Root, force_rmtree
from nixslave.spec import check_name

STORE = "container"          # the sidecar's ``store`` for every container artifact
KILL_SIGNAL = "SIGRTMIN+3"   # what systemd (NixOS's PID 1) takes as "power off"


@dataclass(frozen=True)
class NspawnOptions:
    """Options of the nspawn backend."""

    gcroot: bool = True      # keep the toplevel alive in the host store


_O = TypeVar("_O")


def options_of(options: object, cls: type[_O]) -> _O:
    """``options`` if it is ``cls``, else the defaults (keeping ``gcroot``).

    The build dispatcher may hand every backend the disk's options; a
    container backend takes what applies (whether to add a GC root) and
    leaves the rest.
    """
    if isinstance(options, cls):
        return options
    if options is None:
        return cls()
    return cls(gcroot=bool(getattr(options, "gcroot", True)))  # type: ignore[call-arg]


def _say(progress: Progress | None) -> Progress:
    return progress or (lambda _m: None)


def copy_closure(paths: list[str], store_dir: Path) -> str:
    """Copy store paths as independent files: reflink where possible, else bytes.

    Never hardlinks (see the module docstring).  Returns the method used.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    for name, cmd in (("reflink", ["cp", "-a", "--reflink=always"]), ("copy", ["cp", "-a"])):
        proc = subprocess.run([*cmd, *paths, str(store_dir)], capture_output=True, text=True)
        if proc.returncode == 0:
            os.utime(store_dir, (1, 1))
            return name
        for p in paths:
            target = store_dir / Path(p).name
            if target.exists() or target.is_symlink():
                force_rmtree(target)
    raise BuildError(f"cannot copy the closure: {' '.join(proc.stderr.split())[-300:]}",
                     where=str(store_dir), hint="check free space and permissions")


def add_runtime_files(tree: Path, toplevel: str) -> None:
    """What container runtimes need beyond ``Root.prepare`` (see the module docstring)."""
    made = []
    usr = tree / "usr"
    usr.mkdir(mode=0o755)
    sbin = tree / "sbin"
    sbin.mkdir(mode=0o755)
    (sbin / "init").symlink_to(f"{toplevel}/init")
    os_release = tree / "etc/os-release"
    if not os_release.is_symlink() and not os_release.exists():
        os_release.symlink_to(f"{toplevel}/etc/os-release")
        made.append(os_release)
    for d in (usr, sbin):
        os.chmod(d, 0o755)  # whatever the umask
    for p in (*made, sbin / "init", usr, sbin, tree / "etc", tree):
        os.utime(p, (1, 1), follow_symlinks=False)


def container_tree(root: Root, tree: Path, *, copy_store: bool,
                   progress: Progress | None = None) -> Path:
    """A container's root at ``tree``: prepared, with the runtime files.

    With ``copy_store`` the closure is copied into it (nspawn runs on it);
    without, ``nix/store`` stays empty and the caller reads the closure from
    the host store (tar and OCI writers only read).
    """
    say = _say(progress)
    tree = root.prepare(tree, include_store=False, progress=say)
    if copy_store:
        say(f"copying {len(root.paths)} store paths")
        method = copy_closure(root.paths, tree / "nix/store")
        say(f"store copied by {method}")
    add_runtime_files(tree, root.toplevel)
    return tree


def check_output(out: Path, *, machine_name: bool = False) -> Path:
    """Refuse outputs that cannot be a published container artifact."""
    out = Path(out).absolute()
    if out.is_dir() and not out.is_symlink():
        raise BuildError("the output is an existing directory, not a published artifact",
                         where=str(out), hint="remove it or pick a new name")
    if not out.parent.is_dir():
        raise BuildError("the output directory does not exist", where=str(out.parent),
                         hint="create it first")
    if machine_name:
        try:
            check_name(out.name)
        except (SpecError, ValueError):
            raise BuildError(
                f"{out.name!r} is not a machine name: nspawn names the machine after its "
                "directory and finds <name>.nspawn beside it", where=str(out),
                hint="name the output after the machine, e.g. -o ./alpha") from None
    return out


def publish_container(root: Root, out: Path, *, gcroot: bool, progress: Progress | None,
                      make: Callable[[BuildSet, Progress], Artifact]) -> Artifact:
    """Run ``make`` in a fresh build set and publish it with one rename.

    ``make`` writes every file of the artifact into ``bs.dir`` and returns
    the Artifact; the sidecar is saved here, last, so a build killed at any
    point leaves no sidecar that could pair with another build's files.
    """
    say = _say(progress)
    try:
        bs = BuildSet(out)
        bs.__enter__()
    except OSError as exc:
        raise BuildError(f"cannot write beside the output: {exc.strerror}", where=str(out),
                         hint="pick a writable directory") from None
    try:
        artifact = make(bs, say)
        interrupt.check()
        artifact.save()
        say("publishing the artifact")
        final = bs.publish()
    finally:
        bs.__exit__(None, None, None)
    artifact = Artifact.load(final / out.name)
    if gcroot:
        nix.add_gcroot(f"{root.spec.name}-current", root.toplevel)
        gcroots.record_image(root.spec.name, out, root.toplevel)
    say(f"wrote {out}")
    return artifact


def base_extra(root: Root, extra: dict[str, object] | None) -> dict[str, Any]:
    return {"closurePaths": len(root.paths), "narSize": root.nar_size,
            "demo": root.spec.demo, "init": f"{root.toplevel}/init", **(extra or {})}


def settings_file(name: str, toplevel: str, network: str = "") -> str:
    """The ``.nspawn`` file: run the toplevel's init as PID 1, nothing from the host.

    ``Boot=no`` with ``Parameters=<toplevel>/init``: the init is the program
    nspawn runs (nixos-containers.nix starts the same script; the demo's
    init is written to work as PID 1 too).  ``KillSignal=SIGRTMIN+3`` is
    what nixos-containers.nix passes (systemd's orderly power-off).  No
    resolv.conf, time zone or journal link from the host: nspawn would write
    them into the tree, and a slave's /etc is its configuration's.  Without
    a plan the container gets a private network with only loopback.
    """
    lines = [
        f"# Settings of nix-slave container {name}; generated by nixslave.",
        "# Untrusted beside the image: run with --settings=trusted (the nixslave runner",
        "# does) or copy it to /etc/systemd/nspawn/ for the [Network] section to apply.",
        "[Exec]",
        "Boot=no",
        f"Parameters={toplevel}/init",
        f"KillSignal={KILL_SIGNAL}",
        "ResolvConf=off",
        "Timezone=off",
        "LinkJournal=no",
        "",
    ]
    return "\n".join(lines) + "\n" + (network or "[Network]\nPrivate=yes\n")


def plan_network(extra: dict[str, object] | None) -> tuple[str, dict[str, list[str]]]:
    """The [Network] section and host bridges of the node in ``extra``, if any."""
    if not extra or not extra.get("topology") or not extra.get("node"):
        return "", {}
    from nixslave.netconf.wiring import nspawn_settings
    from nixslave.topology import check_node, load_plan

    plan = load_plan(Path(str(extra["topology"])))
    node = str(extra["node"])
    check_node(plan, node)
    s = nspawn_settings(plan, node)
    return s.ini(), s.bridges()


class NspawnBackend:
    """A machine directory and its ``.nspawn`` file for systemd-nspawn/machinectl."""

    name = "nspawn"

    def materialize(self, root: Root, out: Path, options: object = None, *,
                    progress: Progress | None = None,
                    extra: dict[str, object] | None = None) -> Artifact:
        """Build the machine directory for ``root`` at ``out`` (a directory name).

        ``extra`` may carry ``topology`` and ``node`` (build.build_image adds
        them): the [Network] section then wires every planned interface, and
        the host bridges to join are recorded in the sidecar.
        """
        opts = options_of(options, NspawnOptions)
        out = check_output(out, machine_name=True)
        network, bridges = plan_network(extra)

        def make(bs: BuildSet, say: Progress) -> Artifact:
            spec = root.spec
            say(f"preparing the container root ({len(root.paths)} store paths, "
                f"{root.nar_size / (1 << 20):.1f} MiB)")
            container_tree(root, bs.image, copy_store=True, progress=say)
            settings = bs.dir / f"{out.name}.nspawn"
            settings.write_text(settings_file(out.name, root.toplevel, network))
            os.chmod(settings, 0o644)
            return Artifact(
                name=spec.name, kind="nspawn", format="nspawn", image=bs.image,
                toplevel=root.toplevel, layout="disk", store=STORE, boot="direct",
                memory=spec.memory, cpus=spec.cpus, build=bs.id,
                extra={**base_extra(root, extra), "settings": settings.name,
                       "nspawnBridges": bridges})

        return publish_container(root, out, gcroot=opts.gcroot, progress=progress, make=make)
