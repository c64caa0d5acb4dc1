"""Hostile and mistaken input to image build, run, inspect, root and gc.

Every case must end with exit code 2, one error line on stderr (progress
lines, which start with a bullet, aside), no traceback, and nothing written
at the target.  The expected words are written by hand from what a user
needs to read, not copied from the code.  The ``net`` commands have their
own table in tests/netconf/test_hostile.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import nixslave

pytestmark = pytest.mark.nix

TOPOLOGY = Path(__file__).parent / "data" / "boot" / "routed.yml"
FAKE_TOP = "/nix/store/" + "a" * 32 + "-nixos-system-x"
Case = Callable[[Path], list[str]]


def _build(*args: str) -> Case:
    return lambda d: ["image", "build", *args, "-o", str(d / "out.qcow2")]


def _sidecar(content: object, *, raw: str | None = None) -> Case:
    """`run` on an image whose sidecar holds ``content`` (or the text ``raw``)."""
    def make(d: Path) -> list[str]:
        img = d / "x.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "16M"], check=True)
        text = raw if raw is not None else json.dumps(content)
        (d / "x.qcow2.nixslave.json").write_bytes(text.encode("utf-8", "surrogateescape"))
        return ["run", str(img), "--rundir", str(d / "run")]
    return make


GOOD_SIDECAR = {"name": "x", "kind": "disk", "format": "qcow2", "image": "x.qcow2",
                "toplevel": FAKE_TOP, "layout": "disk", "store": "disk", "boot": "direct"}


def _bad(**fields: object) -> dict[str, object]:
    return {**GOOD_SIDECAR, **fields}


CASES: dict[str, tuple[Case, str]] = {
    # -- image build: names, sizes, options
    "name-empty": (_build("--demo", "--name", ""), "not a machine name"),
    "name-upper": (_build("--demo", "--name", "Web"), "not a machine name"),
    "name-trailing-dash": (_build("--demo", "--name", "web-"), "not a machine name"),
    "name-traversal": (_build("--demo", "--name", "../x"), "not a machine name"),
    "name-too-long": (_build("--demo", "--name", "a" * 49), "not a machine name"),
    "cluster-size-word": (_build("--demo", "--cluster-size", "abc"), "not a size"),
    "cluster-size-odd": (_build("--demo", "--cluster-size", "3000"), "power of two"),
    "size-word": (_build("--demo", "--size", "lots"), "not a size"),
    "size-tiny": (_build("--demo", "--size", "1M"), "minimum"),
    "memory-tiny": (_build("--demo", "--memory", "10"), "MiB"),
    "cpus-zero": (_build("--demo", "--cpus", "0"), "CPUs"),
    "compress-raw": (_build("--demo", "--format", "raw", "--compress", "zstd"), "qcow2"),
    "preallocation-full": (_build("--demo", "--preallocation", "full"), "preallocation"),
    "format-vhd": (_build("--demo", "--format", "vhd"), "format"),
    "shared-bios": (_build("--demo", "--layout", "shared", "--boot", "bios"), "direct boot"),
    "unknown-option": (_build("--demo", "--bogus"), "no such option"),
    # -- image build: sources
    "no-source": (_build(), "exactly one"),
    "two-sources": (_build("--demo", "--toplevel", FAKE_TOP), "exactly one"),
    "toplevel-not-store": (_build("--toplevel", "/tmp/x"), "not a store path"),
    "toplevel-invalid": (_build("--toplevel", FAKE_TOP), "not a valid path"),
    "config-missing": (lambda d: ["image", "build", "--config", str(d / "none.nix"), "--nixpkgs",
                                  str(_dir(d, "np")), "-o", str(d / "out.qcow2")],
                       "does not exist"),
    "nixpkgs-not-a-checkout": (lambda d: ["image", "build", "--config", str(TOPOLOGY),
                                          "--nixpkgs", str(_dir(d, "np")), "-o",
                                          str(d / "out.qcow2")], "not a nixpkgs checkout"),
    "out-inside-nixpkgs": (lambda d: ["image", "build", "--config", str(TOPOLOGY), "--nixpkgs",
                                      str(d), "-o", str(d / "out.qcow2")], "input"),
    "nixpkgs-without-config": (_build("--demo", "--nixpkgs", "/tmp"), "config"),
    "flake-no-attr": (_build("--flake", "./sys"), "flake reference"),
    # -- image build: outputs
    "out-trailing-slash": (lambda d: ["image", "build", "--demo", "-o", f"{d}/sub/"],
                           "directory"),
    "out-is-dir": (lambda d: ["image", "build", "--demo", "-o", str(d)], "directory"),
    "out-in-missing-dir": (lambda d: ["image", "build", "--demo", "-o",
                                      str(d / "no" / "x.qcow2")], "does not exist"),
    "out-in-proc": (lambda d: ["image", "build", "--demo", "-o", "/proc/nixslave-x.qcow2"],
                    "cannot write"),
    "out-is-topology": (lambda d: ["image", "build", "--demo", "--topology",
                                   str(_copy_topology(d)), "--node", "gw", "-o",
                                   str(d / "t.yml")], "input"),
    "overlay-is-out": (lambda d: ["image", "build", "--demo", "-o", str(d / "a.qcow2"),
                                  "--overlay", str(d / "a.qcow2")], "overlay"),
    "node-without-topology": (_build("--demo", "--node", "gw"), "--topology"),
    "topology-missing": (lambda d: ["image", "build", "--demo", "--topology",
                                    str(d / "none.yml"), "-o", str(d / "out.qcow2")],
                         "none.yml"),
    "node-unknown": (_build("--demo", "--topology", str(TOPOLOGY), "--node", "nope"), "nope"),
    # -- run: sidecars are input too
    "run-no-image": (lambda d: ["run", str(d / "none.qcow2")], "nixslave.json"),
    "sidecar-empty-object": (_sidecar({}), "sidecar"),
    "sidecar-list": (_sidecar([1, 2]), "not an object"),
    "sidecar-not-json": (_sidecar(None, raw="{nope"), "JSON"),
    "sidecar-binary": (_sidecar(None, raw="\udcff"), "JSON"),
    "sidecar-name-traversal": (_sidecar(_bad(name="../../etc")), "name"),
    "sidecar-image-absolute": (_sidecar(_bad(image="/etc/passwd")), "image"),
    "sidecar-store-climbs": (_sidecar(_bad(layout="store-disk", store="store-disk",
                                           store_image="../x.qcow2")), "store_image"),
    "sidecar-toplevel": (_sidecar(_bad(toplevel="/etc")), "toplevel"),
    "sidecar-memory-string": (_sidecar(_bad(memory="lots")), "memory"),
    "sidecar-unknown-field": (_sidecar(_bad(rundir="/etc")), "rundir"),
    "sidecar-cmdline-escape": (_sidecar(_bad(cmdline="a\nb")), "control"),
    # -- inspect
    "inspect-missing": (lambda d: ["image", "inspect", str(d / "none.qcow2")], "none.qcow2"),
    "inspect-directory": (lambda d: ["image", "inspect", str(d)], "not"),
    # -- root
    "root-name-empty": (lambda d: ["root", "build", "--demo", "--name", ""], "machine name"),
    "root-prepare-nonempty": (lambda d: ["root", "prepare", "--demo", str(_nonempty(d))],
                              "not an empty directory"),
    "root-module-layout": (lambda d: ["root", "module", "--layout", "floppy"], "layout"),
    "root-module-key": (lambda d: ["root", "module", "--ssh-key", "not a key"], "key"),
    # -- gc
    "gc-remove-traversal": (lambda d: ["gc", "remove", "../x"], "not a machine name"),
    "gc-remove-empty": (lambda d: ["gc", "remove", ""], "not a machine name"),
    "gc-list-bad": (lambda d: ["gc", "list", "Bad Name"], "not a machine name"),
    "gc-unknown-verb": (lambda d: ["gc", "explode"], "no such command"),
}


def _dir(d: Path, name: str) -> Path:
    (d / name).mkdir(exist_ok=True)
    return d / name


def _copy_topology(d: Path) -> Path:
    t = d / "t.yml"
    t.write_bytes(TOPOLOGY.read_bytes())
    return t


def _nonempty(d: Path) -> Path:
    t = d / "tree"
    t.mkdir()
    (t / "keep").write_text("mine")
    return t


def _files(d: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(d.rglob("*")):
        out[str(p.relative_to(d))] = p.read_bytes() if p.is_file() and not p.is_symlink() \
            else None
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    make, words = CASES[case]
    args = make(tmp_path)
    before = _files(tmp_path)
    proc = nixslave(*args, timeout=300)
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("•")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert words.lower() in errors[0].lower(), errors[0]
    # nothing written: no target, no sidecar, no hidden build directory, inputs intact
    assert _files(tmp_path) == before
    assert not Path("/proc/nixslave-x.qcow2").exists()


def test_inspect_batch_fails_only_the_bad_entry(tmp_path: Path, demo_root: object) -> None:
    """One unreadable image in a batch: the others are still reported."""
    from nixslave.backends.disk import DiskBackend, DiskOptions

    good = tmp_path / "good.qcow2"
    DiskBackend().materialize(demo_root, good, DiskOptions(gcroot=False))  # type: ignore[arg-type]
    proc = nixslave("image", "inspect", "--json", str(good), str(tmp_path / "none.qcow2"))
    assert proc.returncode == 2, proc.stderr
    reports = json.loads(proc.stdout)
    assert reports[0]["is_nixslave"] is True
    assert "none.qcow2" in reports[1]["error"]
    assert os.path.exists(good)
