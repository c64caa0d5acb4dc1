"""Killed builds: the artifact is the old one or the new one, never a mix.

Each build is killed (SIGKILL, so nothing of nixslave runs on the way out)
the moment it reports a stage, for every layout, over an existing artifact of
another boot mode.  After each kill the public name must lead to one whole
build: an image whose bytes match the sha256 its own sidecar records, and
the store disk or share that build made.  The next build must sweep every
leftover.  Then a killed-at-publish artifact of each layout boots.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from clirun import nixslave, nixslave_popen

from nixslave import nix
from nixslave.backends import Artifact

pytestmark = [pytest.mark.nix, pytest.mark.guestfs]

# layout of the new build -> what it must publish beside the image
LAYOUTS = {"disk": set(), "store-disk": {"k-store.qcow2"}, "shared": {"store"}}
STAGES = ["reading the closure", "preparing the root tree", "making the root file system",
          "making the read-only store disk", "shared store:", "writing qcow2",
          "publishing the artifact", "wrote"]


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _build_args(out: Path, layout: str, boot: str) -> list[str]:
    return ["image", "build", "--demo", "--name", "k", "--layout", layout, "--boot", boot,
            "--checksum", "-o", str(out)]


def _whole(out: Path) -> Artifact:
    """The artifact at ``out`` is one complete build; returns it."""
    assert out.is_symlink(), "the public name must be a published build"
    a = Artifact.load(out)
    build = Path(os.path.realpath(out)).parent
    assert build.name == a.build and a.image.parent == build
    assert _sha(a.image) == a.sha256, "image and sidecar from different builds"
    if a.layout == "store-disk":
        assert a.store_image is not None and a.store_image.parent == build
        assert a.store_image.stat().st_size > 0
    if a.layout == "shared":
        assert a.share_dir is not None and a.share_dir.parent == build
        have = {p.name for p in a.share_dir.iterdir()}
        if a.extra.get("shareMethod") == "bind":  # zero copy: served from the host store
            assert have == set() and nix.closure(a.toplevel)
        else:
            assert have == {Path(p).name for p in nix.closure(a.toplevel)}
    return a


def _kill_at(out: Path, args: list[str], stage: str) -> int:
    """Start a build, SIGKILL it as soon as it reports ``stage``; the exit code."""
    proc = nixslave_popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:
        if stage in line:
            proc.send_signal(signal.SIGKILL)
            break
    return proc.wait(timeout=300)


@pytest.fixture(scope="module")
def old_bios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-booting artifact that every new build replaces."""
    d = tmp_path_factory.mktemp("kill-old")
    out = d / "k.qcow2"
    proc = nixslave(*_build_args(out, "disk", "bios"))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_kill_at_every_stage_leaves_old_or_new(old_bios: Path, tmp_path: Path,
                                               layout: str) -> None:
    out = tmp_path / "k.qcow2"
    base = tmp_path / ".k.qcow2.nixslave"
    # each layout starts from its own copy of the old bios artifact
    proc = nixslave(*_build_args(out, "disk", "bios"))
    assert proc.returncode == 0, proc.stderr
    old = _whole(out)
    seen = {"old": 0, "new": 0}
    for stage in STAGES:
        rc = _kill_at(out, _build_args(out, layout, "direct"), stage)
        if rc == 0:  # the stage does not exist in this layout: the build finished
            a = _whole(out)
        else:
            assert rc == -signal.SIGKILL
            a = _whole(out)
        seen["new" if a.build != old.build else "old"] += 1
        if a.build != old.build:
            assert a.layout == layout and a.boot == "direct"
            assert {p.name for p in a.image.parent.iterdir()} - {"lock"} == (
                {"k.qcow2", "k.qcow2.nixslave.json"} | LAYOUTS[layout])
            old = a  # later kills may land before publishing: this one must survive
    assert seen["old"] >= 3, seen  # kills before publishing kept the previous build
    # the next build sweeps every killed scratch and every replaced build
    proc = nixslave(*_build_args(out, layout, "direct"))
    assert proc.returncode == 0, proc.stderr
    final = _whole(out)
    left = sorted(p.name for p in base.iterdir())
    assert left == sorted(["lock", final.build]), left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k.qcow2.nixslave", "k.qcow2"]


def test_killed_extlinux_step_is_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libguestfs's temporary files go into a locked run-directory entry and
    the build's scratch; its socket directory (always /tmp for root) is swept
    once nothing listens on it.  After a build killed while extlinux is
    installed, the next build leaves nothing of it behind."""
    run = tmp_path / "run"
    monkeypatch.setenv("NIXSLAVE_RUN_DIR", str(run))
    before = set(Path("/tmp").glob("libguestfs*"))
    out = tmp_path / "b.qcow2"
    proc = nixslave_popen(*_build_args(out, "disk", "bios"), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "installing extlinux" in line:
            time.sleep(2)  # inside the appliance's launch
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    left = list(run.glob("guestfs-*")) + list(set(Path("/tmp").glob("libguestfs*")) - before)
    assert left, "the appliance's files went somewhere else"
    scratch = list((tmp_path / ".b.qcow2.nixslave").glob("s-*"))
    assert scratch
    for d in left:  # as old as the sweep wants a dead socket directory to be
        os.utime(d, (time.time() - 60, time.time() - 60))
    done = nixslave(*_build_args(out, "disk", "direct"))
    assert done.returncode == 0, done.stderr
    assert not any(p.exists() for p in scratch + left)


def test_sigterm_at_any_moment_says_interrupted(tmp_path: Path) -> None:
    """A SIGTERM handler's KeyboardInterrupt could be swallowed while a child
    was forked: the build then completed and exited 0.  Every SIGTERM must
    end in exit 143 with a whole artifact (old or new) at the target."""
    out = tmp_path / "t.qcow2"
    proc = nixslave(*_build_args(out, "disk", "direct"))
    assert proc.returncode == 0, proc.stderr
    rng = random.Random(7)
    for _ in range(7):
        p = nixslave_popen(*_build_args(out, "store-disk", "direct"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert p.stderr is not None
        first = p.stderr.readline()  # the handler is in place once the CLI reports
        time.sleep(rng.uniform(0.0, 2.7))
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=60)
            err = first + err
            if p.returncode == -signal.SIGTERM:
                # the signal came as the finished build was exiting, after
                # its handler was gone: only then may it end like this
                assert "• wrote " in err, err
            else:
                assert p.returncode == 128 + signal.SIGTERM, err
                assert "interrupted" in err
        else:
            p.communicate()
        _whole(out)
    assert not list((tmp_path / ".t.qcow2.nixslave").glob("s-*"))


@pytest.mark.boot
def test_artifacts_killed_at_publishing_boot(tmp_path: Path) -> None:
    """The artifact left by a kill at the publishing step boots.

    The store-disk layout is the one whose boot needs two files to agree
    (root disk and store disk); the other layouts' whole-artifact checks
    are above, and their boots are tests/test_boot_matrix.py's.
    """
    from nixslave.runtime.launch import run_artifacts

    out = tmp_path / "kst.qcow2"
    args = ["image", "build", "--demo", "--name", "kst", "--layout", "store-disk",
            "--checksum", "-o", str(out)]
    assert nixslave(*args[:-2], "--boot", "bios", "-o", str(out)).returncode == 0
    _kill_at(out, args, "publishing the artifact")
    art = _whole(out)
    [result] = run_artifacts([art], timeout=600)
    assert result.booted == art.toplevel, result
