"""A killed upgrade leaves an image that boots the old system or the new one.

Each upgrade runs as the CLI in its own session and is SIGKILLed, with its
whole process group, the moment it reports a stage: mid-copy, while the
union store disk is built, at the boot entry's switch, before the host's
side.  libguestfs's recovery process then kills the
appliance, so writes stop as at a power cut.  Every result must load as a
whole artifact and boot to the old or the new toplevel; a rerun finishes
the upgrade and sweeps the killed run's leftovers.  The store-disk bios
image is the hardest case: its boot entry is on the root disk, its store on
another file, and both must agree at every instant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from clirun import nixslave, nixslave_popen

from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskOptions
from nixslave.build import build_image
from nixslave.image.session import TMP
from nixslave.runtime.launch import run_artifacts
from nixslave.spec import MachineSpec

pytestmark = [pytest.mark.nix, pytest.mark.guestfs, pytest.mark.boot]

# (base image, stage at which the upgrade is killed)
KILLS = [
    ("disk", "copying"),
    ("sdisk", "building a store disk"),
    ("sdisk", "switching the boot entry"),
    ("sdisk", "switching the host's side"),
]
RESUMED = 2  # index in KILLS of the run that is finished afterwards


def _spec(kind: str, **kw: object) -> MachineSpec:
    layout, boot = ("store-disk", "bios") if kind == "sdisk" else ("disk", "direct")
    return MachineSpec.parse({"name": f"uc-{kind}", "demo": True, "layout": layout,
                              "boot": boot, **kw})


def _unlocked(image: Path, timeout: float = 60) -> None:
    """Wait until the killed run's appliance (its own process group) is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(["qemu-img", "info", str(image)], capture_output=True)
        if proc.returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{image} is still locked by the killed run's appliance")


def _kill_at(img: Path, toplevel: str, stage: str) -> subprocess.Popen[str]:
    return nixslave_popen("image", "upgrade", str(img), "--toplevel", toplevel,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True)


def _watch(proc: subprocess.Popen[str], stage: str) -> int:
    assert proc.stderr is not None
    for line in proc.stderr:
        if stage in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    return proc.wait(timeout=600)


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("crash")
    bases, new = {}, {}
    for kind in ("disk", "sdisk"):
        d = work / f"base-{kind}"
        d.mkdir()
        bases[kind] = build_image(_spec(kind), d / f"{kind}.qcow2", DiskOptions())
        new[kind] = rootmod.build(_spec(kind, halt=False)).toplevel
    runs = []
    for i, (kind, stage) in enumerate(KILLS):
        d = work / f"kill-{i}"
        subprocess.run(["cp", "-a", str(work / f"base-{kind}"), str(d)], check=True)
        runs.append((kind, stage, d / f"{kind}.qcow2"))
    codes = []
    for i in range(0, len(runs), 2):
        pair = [(stage, _kill_at(img, new[kind], stage)) for kind, stage, img in runs[i:i + 2]]
        codes += [_watch(p, stage) for stage, p in pair]
    for _kind, _stage, img in runs:
        _unlocked(Path(os.path.realpath(img)))
    return {"bases": bases, "new": new, "runs": runs, "codes": codes}


def test_every_kill_leaves_a_whole_artifact(killed: dict) -> None:
    killed_runs = sum(rc == -signal.SIGKILL for rc in killed["codes"])
    assert killed_runs >= 2, killed["codes"]
    for kind, stage, img in killed["runs"]:
        a = Artifact.load(img)
        assert a.toplevel in (killed["bases"][kind].toplevel, killed["new"][kind]), stage
        if a.store_image is not None:
            assert a.store_image.exists(), f"{stage}: the sidecar names a missing store disk"


def test_a_rerun_finishes_and_sweeps(killed: dict) -> None:
    kind, _stage, img = killed["runs"][RESUMED]
    proc = nixslave("image", "upgrade", str(img), "--toplevel", killed["new"][kind],
                    timeout=600)
    assert proc.returncode == 0, proc.stderr
    a = Artifact.load(img)
    assert a.toplevel == killed["new"][kind]
    assert not [p for p in a.image.parent.iterdir() if p.name.startswith(TMP)]


def test_every_killed_image_boots_old_or_new(killed: dict) -> None:
    artifacts = [Artifact.load(img) for _k, _s, img in killed["runs"]]
    for i, a in enumerate(artifacts):
        a.name = f"uc{i}"  # one console and run directory each
    results = run_artifacts(artifacts, timeout=480)
    for i, (res, (kind, stage, _img)) in enumerate(zip(results, killed["runs"], strict=True)):
        allowed = {killed["bases"][kind].toplevel, killed["new"][kind]}
        assert res.booted in allowed, f"killed at {stage!r}: booted {res.booted!r}"
        if i == RESUMED:  # finished by test_a_rerun_finishes_and_sweeps (same module)
            assert res.booted == killed["new"][kind]
