"""Time an offline delta upgrade against a fresh build, and the store verification of repair.

Why: an offline upgrade (``nixslave image upgrade``) copies into a stopped
image only the store paths it lacks and switches the system, so for a small
change it should cost a small fraction of building the image again (the goal
is <= 5 %); and ``nixslave image repair`` verifies the whole store by NAR hash
through one libguestfs ``tar_out`` stream hashed on the host, which is claimed
to beat hashing inside the (emulated) appliance.  This benchmark checks both
on a closure of about ``--size-mb`` MiB:

* version A: the demo system plus 100 filler store paths of seeded,
  incompressible pseudo-random bytes (each a directory of <= 1 MiB files),
  listed in a ``filler`` file of a NixOS-shaped toplevel so that they are in
  its closure;
* version B: the same with one filler path replaced (about 1 % of the closure).

In one run: image A is built (not timed) and copied; then (a) a fresh build
of image B (``build_image``, qcow2, direct boot, disk layout) and (b) the
upgrade of the copy of A to B (``upgrade(img, source={"toplevel": B})``) are
timed, with a bare appliance launch (add_drive_ro + launch + shutdown on the
same image) timed three times around them (median), because under TCG that
fixed cost dominates the upgrade; the upgrade's own progress timestamps give
its time after its appliance is up, which a loaded host disturbs less.  The
upgraded image's manifest must name B.  Then ``repair(img, dry_run=True)``
reports its verification throughput, and the same store is hashed inside
the appliance (one launch, root mounted read-only, ``tar -cf - . |
sha256sum`` and ``find -type f -exec sha256sum``; ``tar -cf - . | wc -c``
reads without hashing) and, for reference, on the host from the host's own
store (no appliance).

    .venv/bin/python bench/upgrade/run.py [--size-mb 1024] [--json]

Filler and toplevel store paths depend only on the size and the seed, so
reruns reuse them; GC roots under /nix/var/nix/gcroots/nixslave-bench/ keep
them.  Images live under /var/tmp/nixslave-bench-upgrade/run-<pid> and are
removed at the end.  Run as root.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKDIR = Path("/var/tmp/nixslave-bench-upgrade")
GCROOTS = Path("/nix/var/nix/gcroots/nixslave-bench")
# Before nixslave is imported: the roots and image records that build_image
# and upgrade make for machine "bench" go beside the benchmark's own, not
# among the host's nixslave roots.
os.environ.setdefault("NIXSLAVE_GCROOTS_DIR", str(GCROOTS))
os.environ.setdefault("NIXSLAVE_STATE_DIR", str(WORKDIR / "state"))

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from nixslave import nix  # noqa: E402
from nixslave.appliance import guestfs_handle  # noqa: E402
from nixslave.build import build_image  # noqa: E402
from nixslave.demo import build_demo  # noqa: E402
from nixslave.errors import ImageError  # noqa: E402
from nixslave.image.inspect import read_manifest  # noqa: E402
from nixslave.image.nar import hash_tar_stream  # noqa: E402
from nixslave.image.repair import repair  # noqa: E402
from nixslave.image.upgrade import upgrade  # noqa: E402
from nixslave.nixos import ROOT_LABEL  # noqa: E402
from nixslave.root import force_rmtree  # noqa: E402
from nixslave.runtime import accel  # noqa: E402
from nixslave.spec import MachineSpec  # noqa: E402

MIB = 1 << 20
NAME = "bench"
FILLERS = 100
FILE_BYTES = MIB          # largest file inside a filler path
SEED = "nixslave-bench-upgrade-1"
GOAL_RATIO = 0.05
APPLIANCE_METHODS = ("tar | sha256sum", "find -exec sha256sum", "tar | wc -c (no hash)")
HASHING_METHODS = APPLIANCE_METHODS[:2]

# Builder of one filler path (run by Nix with the host's python3).
FILLER_PY = (
    "import os, random\n"
    "out = os.environ['out']\n"
    "left = int(os.environ['fillerBytes'])\n"
    "step = int(os.environ['fileBytes'])\n"
    "rng = random.Random(os.environ['seed'])\n"
    "os.mkdir(out)\n"
    "i = 0\n"
    "while left > 0:\n"
    "    n = min(left, step)\n"
    "    with open(os.path.join(out, '%04d.bin' % i), 'wb') as f:\n"
    "        f.write(rng.randbytes(n))\n"
    "    left -= n\n"
    "    i += 1\n"
)
# Builder of a toplevel: every entry of the demo toplevel (as links), plus
# the list of filler paths, whose store paths put the fillers in the closure.
TOPLEVEL_SH = ("/bin/mkdir $out && for e in $demo/*; do /bin/ln -s $e $out/; done"
               " && for p in $fillers; do echo $p; done > $out/filler"
               " && echo $version > $out/bench-version")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def nix_str(s: str) -> str:
    """A Nix string literal (JSON escapes are Nix escapes for ASCII; ${ is escaped)."""
    assert s.isascii()
    return json.dumps(s).replace("${", "\\${")


# -- the closure ----------------------------------------------------------------

def toplevels(size_mb: int) -> tuple[Path, Path, int]:
    """Toplevels A and B of about ``size_mb`` MiB, and the bytes of one filler path."""
    demo = build_demo(NAME)
    demo_nar = sum(i.nar_size for i in nix.path_info(nix.closure(demo)))
    per = max(64 * 1024, (size_mb * MIB - demo_nar) // FILLERS)
    last = FILLERS - 1
    expr = f"""
let
  demo = builtins.storePath {nix_str(str(demo))};
  filler = tag: i: derivation {{
    name = "nixslave-bench-filler-{size_mb}M-${{toString i}}${{tag}}";
    system = builtins.currentSystem;
    builder = "/usr/bin/python3";
    args = [ "-c" {nix_str(FILLER_PY)} ];
    seed = "{SEED}-${{tag}}-${{toString i}}";
    fillerBytes = "{per}";
    fileBytes = "{FILE_BYTES}";
  }};
  base = builtins.genList (filler "a") {last};
  toplevel = version: fillers: derivation {{
    name = "nixos-system-{NAME}-upgrade-{size_mb}M-${{version}}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" {nix_str(TOPLEVEL_SH)} ];
    inherit demo fillers version;
  }};
in [
  (toplevel "a" (base ++ [ (filler "a" {last}) ]))
  (toplevel "b" (base ++ [ (filler "b" {last}) ]))
]
"""
    a, b = nix.build(expr=expr, what="benchmark toplevels")
    for tag, path in (("a", a), ("b", b)):
        nix.add_gcroot(f"toplevel-{size_mb}M-{tag}", path, gcroots=GCROOTS)
    return a, b, per


# -- helpers --------------------------------------------------------------------------

class Phases:
    """Timestamps of a nixslave progress callback."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: list[tuple[float, str]] = []

    def __call__(self, msg: str) -> None:
        self.marks.append((time.perf_counter(), msg))

    def split(self, end: float) -> list[dict[str, Any]]:
        """Seconds from each message to the next (the first from the start)."""
        out = []
        times = [self.t0] + [t for t, _ in self.marks] + [end]
        labels = ["(start)"] + [m for _, m in self.marks]
        for i, label in enumerate(labels):
            out.append({"step": label, "seconds": round(times[i + 1] - times[i], 2)})
        return out


def bare_launch(image: Path) -> float:
    """add_drive_ro + launch + shutdown, with nixslave's appliance settings."""
    os.sync()
    t = time.perf_counter()
    with guestfs_handle() as g:
        g.add_drive_opts(str(image), format="qcow2", readonly=True)
        g.launch()
        g.shutdown()
    return time.perf_counter() - t


def appliance_hashing(image: Path) -> dict[str, Any]:
    """Hash the image's store inside the appliance: one launch, root mounted read-only.

    Before each command the appliance's page cache is dropped, so each reads
    the store from the disk image as the repair's tar_out does.
    """
    cmds = {
        "tar | sha256sum": "cd /sysroot/nix/store && tar -cf - . | sha256sum",
        "find -exec sha256sum": "cd /sysroot/nix/store && "
                                "find . -type f -exec sha256sum {} + | wc -l",
        # no hashing: what reading the store and making the tar stream cost
        # (| wc -c, since GNU tar skips reading file contents into /dev/null)
        "tar | wc -c (no hash)": "cd /sysroot/nix/store && tar -cf - . | wc -c",
    }
    res: dict[str, Any] = {}
    os.sync()
    t = time.perf_counter()
    with guestfs_handle() as g:
        g.add_drive_opts(str(image), format="qcow2", readonly=True)
        g.launch()
        dev = g.findfs_label(ROOT_LABEL)
        g.mount_ro(dev, "/")
        res["launchSeconds"] = time.perf_counter() - t
        res["applianceCpus"] = int(str(g.debug("sh", ["nproc"])).strip() or 0)
        res["applianceMemMiB"] = g.get_memsize()
        for label, cmd in cmds.items():
            g.debug("sh", ["sync; echo 3 > /proc/sys/vm/drop_caches"])
            t1 = time.perf_counter()
            out = str(g.debug("sh", [cmd])).strip()
            res[label] = {"seconds": time.perf_counter() - t1, "output": out[-80:]}
        g.umount_all()
        g.shutdown()
    return res


def fsck_output(image: Path) -> str:
    """``e2fsck -f -n`` of the image's root, run in the appliance (diagnostics)."""
    with guestfs_handle() as g:
        g.add_drive_opts(str(image), format="qcow2", readonly=True)
        g.launch()
        dev = g.findfs_label(ROOT_LABEL)
        return str(g.debug("sh", [f"e2fsck -f -n {dev} 2>&1; echo rc=$?"]))


def host_hashing(paths: list[str]) -> dict[str, Any]:
    """For reference: NAR hashing of the host's copy of the closure, no appliance.

    The same code the repair runs (hash_tar_stream) on ``tar -C /nix/store``
    of the closure, so the difference to the repair is the appliance's side
    (reading the image under TCG, tar, the virtio-serial channel).
    """
    names = sorted(Path(p).name for p in paths)
    proc = subprocess.Popen(["tar", "-C", "/nix/store", "--numeric-owner", "--owner=0",
                             "--group=0", "-cf", "-", *names], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    t = time.perf_counter()
    nar = n = 0
    for tp in hash_tar_stream(proc.stdout, keep_bytes=256 * MIB):
        nar += tp.nar_size
        n += 1
    dt = time.perf_counter() - t
    proc.wait()
    return {"paths": n, "narBytes": nar, "seconds": dt, "mbPerS": nar / MIB / dt}


def copy_image(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)],
                   check=True)


# -- main -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="closure size in MiB")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--keep", action="store_true", help="keep the images (debugging)")
    args = ap.parse_args(argv)
    os.environ.setdefault("NIX_CONFIG", nix.OFFLINE_CONFIG)
    started = time.perf_counter()
    kvm = accel.detect().kvm_usable
    res: dict[str, Any] = {"sizeMiB": args.size_mb, "accel": "kvm" if kvm else "tcg",
                           "workdir": str(WORKDIR)}

    log(f"toplevels A and B (demo + {FILLERS} filler paths, about {args.size_mb} MiB)")
    t = time.perf_counter()
    top_a, top_b, per = toplevels(args.size_mb)
    res["closureBuildSeconds"] = time.perf_counter() - t
    closure_a = nix.path_info(nix.closure(top_a))
    closure_b = nix.path_info(nix.closure(top_b))
    nar_b = sum(i.nar_size for i in closure_b)
    in_a = {i.path for i in closure_a}
    delta = [i for i in closure_b if i.path not in in_a]
    res.update({"toplevelA": str(top_a), "toplevelB": str(top_b),
                "closurePaths": len(closure_b), "narBytes": nar_b, "fillerBytes": per,
                "deltaPaths": len(delta), "deltaNarBytes": sum(i.nar_size for i in delta)})
    log(f"B: {len(closure_b)} paths, NAR {nar_b / MIB:.1f} MiB; delta {len(delta)} paths, "
        f"{res['deltaNarBytes'] / MIB:.1f} MiB ({res['closureBuildSeconds']:.1f} s)")

    WORKDIR.mkdir(parents=True, exist_ok=True)
    run_dir = WORKDIR / f"run-{os.getpid()}"
    run_dir.mkdir()
    try:
        log("image A (not timed)")
        t = time.perf_counter()
        art_a = build_image(MachineSpec.parse({"name": NAME, "toplevel": str(top_a)}),
                            run_dir / "a.qcow2")
        res["buildASeconds"] = time.perf_counter() - t
        img = run_dir / "upgraded.qcow2"
        copy_image(Path(os.path.realpath(art_a.image)), img)
        res["imageABytes"] = img.stat().st_size

        log("bare appliance launch (1)")
        launches = [bare_launch(img)]

        log("fresh build of image B")
        os.sync()
        phases_b = Phases()
        t = time.perf_counter()
        build_image(MachineSpec.parse({"name": NAME, "toplevel": str(top_b)}),
                    run_dir / "b.qcow2", progress=phases_b)
        end = time.perf_counter()
        res["freshSeconds"] = end - t
        res["freshPhases"] = phases_b.split(end)
        log(f"fresh build {res['freshSeconds']:.2f} s")

        log("bare appliance launch (2)")
        launches.append(bare_launch(img))

        log("upgrade of the copy of A to B")
        os.sync()
        phases_u = Phases()
        t = time.perf_counter()
        rep = upgrade(img, source={"toplevel": str(top_b)}, progress=phases_u)
        end = time.perf_counter()
        res["upgradeSeconds"] = end - t
        res["upgradePhases"] = phases_u.split(end)
        res["upgradeReport"] = {k: rep.to_json()[k] for k in
                                ("changed", "paths_added", "bytes_added", "registered",
                                 "seconds")}
        log(f"upgrade {res['upgradeSeconds']:.2f} s")

        log("bare appliance launch (3)")
        launches.append(bare_launch(img))
        launch = statistics.median(launches)
        res["bareLaunchSeconds"] = launches
        res["bareLaunchMedian"] = launch
        res["upgradeOverFresh"] = res["upgradeSeconds"] / res["freshSeconds"]
        res["upgradeLessLaunch"] = res["upgradeSeconds"] - launch
        res["upgradeLessLaunchOverFresh"] = res["upgradeLessLaunch"] / res["freshSeconds"]
        # The same from the upgrade's own timestamps: until its first progress
        # message it checks the image, launches the appliance and reads the
        # manifest; after it, the work proper and the appliance's shutdown.
        own = res["upgradePhases"][0]["seconds"]
        res["upgradeOwnLaunch"] = own
        res["upgradeAfterLaunch"] = res["upgradeSeconds"] - own
        res["upgradeAfterLaunchOverFresh"] = res["upgradeAfterLaunch"] / res["freshSeconds"]

        manifest = read_manifest(img)
        res["manifestToplevel"] = manifest.get("toplevel")
        res["manifestNamesB"] = manifest.get("toplevel") == str(top_b)
        if not res["manifestNamesB"]:
            log(f"ERROR: the upgraded manifest names {manifest.get('toplevel')}, not {top_b}")

        log("repair --dry-run of the upgraded image")
        os.sync()
        t = time.perf_counter()
        try:
            r = repair(img, dry_run=True)
        except ImageError as exc:
            # what e2fsck -n says on its own, beside the repair's error
            log(f"repair failed: {exc}; e2fsck -fn of the image:\n{fsck_output(img)}")
            raise
        res["repair"] = {"seconds": time.perf_counter() - t, "clean": r.clean,
                         "findings": [f"{f.check}: {f.problem}" for f in r.findings],
                         "verifiedPaths": r.verified_paths, "verifiedBytes": r.verified_bytes,
                         "verifySeconds": r.verify_seconds, "mbPerS": r.verify_mb_per_s}
        log(f"repair verified {r.verified_bytes / MIB:.1f} MiB in {r.verify_seconds:.1f} s")

        log("hashing inside the appliance")
        app = appliance_hashing(img)
        ref = r.verified_bytes or nar_b
        for label in APPLIANCE_METHODS:
            app[label]["mbPerS"] = ref / MIB / app[label]["seconds"]
        res["appliance"] = app

        log("host-side NAR hashing of the host's store (reference)")
        res["host"] = host_hashing([i.path for i in closure_b])
    finally:
        if not args.keep:
            force_rmtree(run_dir)
            # the images are gone: so is what build_image and upgrade recorded for them
            nix.remove_gcroot(f"{NAME}-current")
            shutil.rmtree(WORKDIR / "state", ignore_errors=True)
    res["totalSeconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        report(res)
    return 0 if res.get("manifestNamesB") else 1


def report(r: dict[str, Any]) -> None:
    acc = "TCG (no usable KVM)" if r["accel"] == "tcg" else "KVM"
    print(f"closure B: {r['closurePaths']} store paths, NAR {r['narBytes'] / MIB:.1f} MiB "
          f"(demo system + {FILLERS} filler paths of {r['fillerBytes'] / MIB:.1f} MiB)")
    print(f"delta A -> B: {r['deltaPaths']} paths, {r['deltaNarBytes'] / MIB:.1f} MiB "
          f"({100 * r['deltaNarBytes'] / r['narBytes']:.1f} % of the closure; "
          f"the new toplevel and one filler path)")
    print(f"appliance: {acc}; every libguestfs figure below is under {r['accel'].upper()}")
    print()
    fresh, up = r["freshSeconds"], r["upgradeSeconds"]
    launch = r["bareLaunchMedian"]
    less = r["upgradeLessLaunch"]
    w = 52
    print(f"{'step':<{w}}{'seconds':>9}")
    print(f"{'(a) fresh build of image B (build_image)':<{w}}{fresh:>9.2f}")
    print(f"{'(b) upgrade of image A to B (upgrade)':<{w}}{up:>9.2f}")
    print(f"{'    bare appliance launch (ro add, launch, shutdown)':<{w}}{launch:>9.2f}   "
          f"median of: {', '.join(f'{x:.2f}' for x in r['bareLaunchSeconds'])}")
    print(f"{'    upgrade minus the bare launch':<{w}}{less:>9.2f}")
    print(f"{'    upgrade until its first progress message':<{w}}"
          f"{r['upgradeOwnLaunch']:>9.2f}   (image checks, its launch, manifest read)")
    print(f"{'    upgrade after that':<{w}}{r['upgradeAfterLaunch']:>9.2f}   "
          f"(the work proper + appliance shutdown)")
    spread = max(r["bareLaunchSeconds"]) / min(r["bareLaunchSeconds"])
    if spread > 1.25 or less < 0:
        print(f"    NOTE: bare launches vary {spread:.2f}x (a loaded host): the subtraction "
              f"is noise; the line above it is measured inside the same call")
    print()
    ok = r["upgradeOverFresh"] <= GOAL_RATIO
    print(f"{'upgrade / fresh build (whole call)':<{w}}{r['upgradeOverFresh']:>9.3f}   "
          f"goal <= {GOAL_RATIO}  {'PASS' if ok else 'MISS'}")
    print(f"{'(upgrade - bare launch) / fresh build':<{w}}"
          f"{r['upgradeLessLaunchOverFresh']:>9.3f}   (launch cost removed; not the goal's "
          f"figure)")
    print(f"{'upgrade after its launch / fresh build':<{w}}"
          f"{r['upgradeAfterLaunchOverFresh']:>9.3f}   (same, from the upgrade's own "
          f"timestamps)")
    print(f"upgraded image's manifest names B: {'yes' if r['manifestNamesB'] else 'NO'} "
          f"({r['manifestToplevel']})")
    u = r["upgradeReport"]
    print(f"upgrade report: {u['paths_added']} paths copied, "
          f"{u['bytes_added'] / MIB:.1f} MiB NAR, {u['registered']} registered")
    print()
    print(f"where the fresh build's {fresh:.2f} s go:")
    for p in r["freshPhases"]:
        print(f"  {p['seconds']:>7.2f} s  {p['step']}")
    print(f"where the upgrade's {up:.2f} s go ('(start)': image checks, appliance launch, "
          f"manifest read; the last step ends with the appliance's shutdown):")
    for p in r["upgradePhases"]:
        print(f"  {p['seconds']:>7.2f} s  {p['step']}")
    print()
    rp = r["repair"]
    app = r["appliance"]
    host = r["host"]
    print(f"store verification ({rp['verifiedPaths']} paths, "
          f"{rp['verifiedBytes'] / MIB:.1f} MiB NAR; MB/s = MiB of NAR per second):")
    print(f"{'method':<{w}}{'seconds':>9}{'MiB/s':>9}")
    print(f"{'repair --dry-run: tar_out stream, NAR hash on host':<{w}}"
          f"{rp['verifySeconds']:>9.2f}{rp['mbPerS']:>9.1f}")
    for label in APPLIANCE_METHODS:
        a = app[label]
        print(f"{'in the appliance: ' + label:<{w}}{a['seconds']:>9.2f}{a['mbPerS']:>9.1f}")
    print(f"{'host store, no appliance: tar | NAR hash (reference)':<{w}}"
          f"{host['seconds']:>9.2f}{host['mbPerS']:>9.1f}")
    best_app = max(app[m]["mbPerS"] for m in HASHING_METHODS)
    faster = "the host-side NAR hashing of the tar_out stream" if rp["mbPerS"] > best_app \
        else "hashing inside the appliance"
    ratio = rp["mbPerS"] / best_app if best_app else 0.0
    print(f"faster: {faster} (tar_out+host / best in-appliance = {ratio:.2f}x)")
    print(f"  (appliance: {app['applianceCpus']} vCPU, {app['applianceMemMiB']} MiB, launch "
          f"{app['launchSeconds']:.1f} s; its page cache dropped before each command; "
          f"in-appliance hashing gives no per-path NAR hash)")
    print(f"  repair --dry-run whole call {rp['seconds']:.1f} s, "
          f"{'clean' if rp['clean'] else 'findings: ' + '; '.join(rp['findings'])}")
    print()
    print(f"not timed: closure build {r['closureBuildSeconds']:.1f} s, image A build "
          f"{r['buildASeconds']:.1f} s; benchmark wall time {r['totalSeconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
