"""A typed wrapper of the Nix command line.

nixslave talks to Nix only through these functions so that every failure
becomes a :class:`~nixslave.errors.NixError` carrying the command and Nix's
own message.

The offline settings that the demo system needs on a machine without a
binary cache (no build users, no sandbox, no substituters) apply to the demo
build alone, through ``NIX_CONFIG`` and only when the user has not set it: a
user's NixOS or flake build runs with the user's own Nix settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nixslave.errors import NixError

STORE_DIR = Path("/nix/store")
# NIXSLAVE_GCROOTS_DIR moves nixslave's GC roots (a test suite, a second
# installation); Nix only honours roots under /nix/var/nix/gcroots.
GCROOTS_DIR = Path(os.environ.get("NIXSLAVE_GCROOTS_DIR") or "/nix/var/nix/gcroots/nixslave")
DATA_DIR = Path(__file__).parent

OFFLINE_CONFIG = "\n".join([
    "build-users-group =",
    "sandbox = false",
    "substituters =",
    "experimental-features = nix-command",
])


@dataclass(frozen=True)
class PathInfo:
    """One valid store path as Nix registers it."""

    path: str
    nar_hash: str
    nar_size: int
    references: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path, "narHash": self.nar_hash, "narSize": self.nar_size,
            "references": list(self.references),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PathInfo:
        refs = data.get("references") or []
        assert isinstance(refs, list)
        return cls(str(data["path"]), str(data["narHash"]), int(str(data["narSize"])),
                   tuple(sorted(str(r) for r in refs)))


def nix_env(extra: dict[str, str] | None = None, *, offline: bool = False) -> dict[str, str]:
    """The environment for Nix commands: the caller's, plus what nixslave needs.

    ``nix-command`` is always enabled as an *extra* feature, never replacing
    the user's list; ``offline`` adds :data:`OFFLINE_CONFIG` when the user has
    no ``NIX_CONFIG`` of their own.
    """
    env = dict(os.environ)
    if offline and not env.get("NIX_CONFIG"):
        env["NIX_CONFIG"] = OFFLINE_CONFIG
    elif "nix-command" not in env.get("NIX_CONFIG", ""):
        sep = "\n" if env.get("NIX_CONFIG") else ""
        env["NIX_CONFIG"] = env.get("NIX_CONFIG", "") + sep + \
            "extra-experimental-features = nix-command"
    if extra:
        env.update(extra)
    return env


def _nix_message(stderr: str) -> str:
    """The part of Nix's stderr that says what failed."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    return lines[-1] if lines else "no message"


def run_nix(cmd: Sequence[str], *, input: str | None = None, what: str = "",
            env: dict[str, str] | None = None, offline: bool = False) -> str:
    """Run one Nix command and return its stdout, or raise NixError."""
    if shutil.which(cmd[0]) is None:
        raise NixError(f"{cmd[0]} is not installed", cmd=list(cmd),
                       hint="install Debian's nix-bin (scripts/setup.sh does)")
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True,
                          env=env or nix_env(offline=offline))
    if proc.returncode != 0:
        msg = _nix_message(proc.stderr)
        raise NixError(f"{what or cmd[0]} failed: {msg}", cmd=list(cmd), stderr=proc.stderr,
                       where=" ".join(cmd[:2]),
                       hint="rerun with --debug to see the whole Nix output")
    return proc.stdout


def build(
    *, file: Path | None = None, expr: str | None = None, attr: str | None = None,
    args: dict[str, str] | None = None, argstrs: dict[str, str] | None = None,
    nix_path: Sequence[str] = (), what: str = "nix-build", offline: bool = False,
    extra_args: Sequence[str] = (),
) -> list[Path]:
    """Build a file, an expression or an attribute and return the out paths.

    Values reach Nix as ``--arg``/``--argstr``, never spliced into an
    expression, so paths with spaces or ``@`` and any flake reference work.
    """
    if (file is None) == (expr is None):
        raise ValueError("give exactly one of file or expr")
    cmd = ["nix-build", "--no-out-link", *extra_args]
    for entry in nix_path:
        cmd += ["-I", entry]
    if file is not None:
        cmd.append(str(file))
    else:
        cmd += ["-E", str(expr)]
    if attr:
        cmd += ["-A", attr]
    for k, v in sorted((args or {}).items()):
        cmd += ["--arg", k, v]
    for k, v in sorted((argstrs or {}).items()):
        cmd += ["--argstr", k, v]
    out = run_nix(cmd, what=what, offline=offline)
    return [Path(p) for p in out.split()]


def instantiate_parse(source: str) -> str:
    """Parse Nix source without evaluating it; raises NixError on a syntax error."""
    return run_nix(["nix-instantiate", "--parse", "-E", source], what="nix-instantiate --parse")


def is_valid_path(path: Path | str) -> bool:
    """Whether ``path`` is a valid path in the host store."""
    p = str(path)
    if not p.startswith(f"{STORE_DIR}/"):
        return False
    try:
        run_nix(["nix-store", "--check-validity", p])
    except NixError:
        return False
    return True


def closure(path: Path | str) -> list[str]:
    """Every store path ``path`` needs, in a fixed (sorted) order."""
    out = run_nix(["nix-store", "--query", "--requisites", str(path)], what="closure query")
    return sorted(set(out.split()))


def path_info(paths: Iterable[Path | str], *, recursive: bool = False) -> list[PathInfo]:
    """narHash, narSize and references of each path (sorted by path)."""
    plist = [str(p) for p in paths]
    if not plist:
        return []
    cmd = ["nix", "path-info", "--json"] + (["--recursive"] if recursive else []) + plist
    data = json.loads(run_nix(cmd, what="nix path-info"))
    if isinstance(data, dict):  # newer Nix: a map from path to info
        data = [{"path": k, **v} for k, v in data.items()]
    return sorted((PathInfo.from_json(d) for d in data), key=lambda i: i.path)


def dump_db(paths: Iterable[Path | str]) -> str:
    """The registration of ``paths`` (``nix-store --dump-db``) for another store."""
    plist = sorted(str(p) for p in paths)
    return run_nix(["nix-store", "--dump-db", *plist], what="nix-store --dump-db")


def load_db(root: Path, registration: str) -> None:
    """Register paths in the Nix database of the store rooted at ``root``.

    The paths must already be in ``root/nix/store``; this only writes
    ``root/nix/var/nix/db``, exactly as nixos-install does.
    """
    run_nix(["nix-store", "--store", f"local?root={root}", "--load-db"],
            input=registration, what="nix-store --load-db")


def store_paths_of_root(root: Path) -> list[str]:
    """The valid paths registered in the database under ``root``."""
    out = run_nix(["nix", "--store", f"local?root={root}", "path-info", "--all"],
                  what="query of the guest database")
    return sorted(out.split())


# -- GC roots -----------------------------------------------------------------

def _root_link(name: str, gcroots: Path) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise NixError(f"invalid GC root name {name!r}", where="gcroots",
                       hint="use the machine name plus -current or -booted")
    return gcroots / name


def add_gcroot(name: str, path: Path | str, *, gcroots: Path = GCROOTS_DIR) -> Path:
    """Keep ``path`` alive in the host store under ``gcroots/name``."""
    link = _root_link(name, gcroots)
    gcroots.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(str(path))
    tmp.replace(link)
    return link


def list_gcroots(*, gcroots: Path = GCROOTS_DIR) -> dict[str, str]:
    """Name -> store path of every nixslave GC root."""
    if not gcroots.is_dir():
        return {}
    return {p.name: os.readlink(p) for p in sorted(gcroots.iterdir())
            if p.is_symlink() and not p.name.startswith(".")}


def remove_gcroot(name: str, *, gcroots: Path = GCROOTS_DIR) -> bool:
    """Drop one root; the paths stay until the next host GC."""
    link = _root_link(name, gcroots)
    if link.is_symlink():
        link.unlink()
        return True
    return False
