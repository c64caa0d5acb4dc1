"""Time a guest's boot, qemu start to boot marker, for every layout, boot mode and store fs.

Why: the store layout decides how the guest reads its closure (its own ext4
root, a read-only store disk in ext4, erofs or squashfs, or the host's store
over 9p or virtiofs), and the boot mode decides what runs before the kernel
(nothing, SeaBIOS + extlinux, OVMF + a UKI).  The claims checked here are
that a shared store boots nearly as fast as a disk (9p/disk and
virtiofs/disk <= 1.3x) and that a compressed store disk boots as fast as an
ext4 one (erofs/ext4 and squashfs/ext4 <= 1.1x), so picking a layout for
its size or its sharing costs no boot time.

    .venv/bin/python bench/boot/run.py [--quick] [--repeat 3] [--only WORD...] [--json]

Every image is the demo system (``MachineSpec(demo=True, halt=True)``, one
toplevel for all), built once with ``build_image`` (not timed).  Guests boot
one at a time, never two at once, so that their timings do not disturb each
other; the runs go round the whole matrix ``--repeat`` times (so a burst of
load on a shared host spreads over all of them) and each combination keeps
its best.  One boot is ``vm_config(artifact)`` (host side: drives, shares,
firmware; timed apart) and then qemu's start (for virtiofs, virtiofsd's
start too) until ``NIXSLAVE-BOOT-OK <toplevel>`` appears on the serial
console, polled every 20 ms.  Each console milestone is stamped with the
host's clock at the poll where its last byte appeared, which gives the
per-step breakdown of a boot (firmware, boot loader, kernel, udev, root
mount, store mount, stage 2).  On a host shared with other work identical
boots differ by 2x, so two figures less exposed to that are printed too:
qemu's CPU seconds (TCG is CPU-bound) and the "store part", root mounted ->
marker, the only part of a boot that depends on the layout.

Run as root (the zero-copy shared store bind-mounts the closure in qemu's
and virtiofsd's private mount namespace).  Every figure is made under the
accelerator ``nixslave.runtime.accel`` picks, printed with its reason.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixslave import nix
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskOptions
from nixslave.build import build_image
from nixslave.runtime import accel
from nixslave.runtime.run import BOOT_MARKER, VM, vm_config
from nixslave.spec import MachineSpec

NAME = "bench"
GOAL_SHARED = 1.3   # 9p/disk, virtiofs/disk
GOAL_STOREFS = 1.1  # erofs/ext4, squashfs/ext4 (store disk)
POLL = 0.02


@dataclass(frozen=True)
class Combo:
    key: str
    layout: str
    boot: str
    share: str = "9p"
    store_fs: str | None = None

    def spec(self) -> MachineSpec:
        data: dict[str, Any] = {"name": NAME, "demo": True, "halt": True,
                                "layout": self.layout, "boot": self.boot, "share": self.share}
        if self.store_fs:
            data["store_fs"] = self.store_fs
        return MachineSpec.parse(data)


def matrix(quick: bool) -> list[Combo]:
    boots = ["direct"] if quick else ["direct", "bios", "uefi"]
    shared_boots = ["direct"] if quick else ["direct", "uefi"]  # no extlinux with a share
    out = [Combo(f"disk/{b}", "disk", b) for b in boots]
    out += [Combo(f"store-disk {fs}/{b}", "store-disk", b, store_fs=fs)
            for b in boots for fs in ("ext4", "erofs", "squashfs")]
    out += [Combo(f"shared {share}/{b}", "shared", b, share=share)
            for b in shared_boots for share in ("9p", "virtiofs")]
    return out


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- one boot -------------------------------------------------------------------------

# Console milestones of one boot; each is when the last byte of the first
# match arrived.  Which appear depends on the boot mode; the kernel itself
# prints nothing (loglevel=4), the initrd (initramfs-tools) a line per phase.
MILESTONES: dict[str, str] = {
    "firmware": r"\S",                                    # first output (bios, uefi)
    "extlinux": r"SYSLINUX",
    "kernel (extlinux loaded it)": r"Loading \S*initrd\.*\s*ok",
    "kernel (OVMF started the UKI)": r"EFI stub: ",
    "initrd": r"Loading, please wait",                    # the kernel is done
    "udev settled": r"Begin: Loading essential drivers",
    "root mounted": r"Begin: Running /scripts/local-bottom",  # the store hook runs now
    "store mounted": r"Begin: Running /scripts/init-bottom",
    "stage 2 store line": r"NIXSLAVE-STORE ",
    "marker": re.escape(BOOT_MARKER),
}
# The breakdown: segment -> (from, to); "kernel" starts where the firmware
# or boot loader handed over (at qemu's start for a direct boot).
SEGMENTS: list[tuple[str, str, str]] = [
    ("to kernel", "start", "kernel"),
    ("kernel", "kernel", "initrd"),
    ("udev", "initrd", "udev settled"),
    ("root fs", "udev settled", "root mounted"),
    ("store mount", "root mounted", "store mounted"),
    ("stage 2", "store mounted", "marker"),
]


def milestones(text: str, arrivals: list[tuple[int, float]]) -> dict[str, float]:
    """When each milestone's text had fully arrived, from (end offset, time) chunks."""
    ends = [off for off, _ in arrivals]
    out: dict[str, float] = {"start": 0.0}
    for name, rx in MILESTONES.items():
        m = re.search(rx, text)
        if m is not None:
            out[name] = arrivals[bisect.bisect_left(ends, m.end())][1]
    for name in ("kernel (extlinux loaded it)", "kernel (OVMF started the UKI)"):
        if name in out:
            out["kernel"] = out[name]
    out.setdefault("kernel", 0.0)  # direct boot: qemu starts the kernel
    return out


def breakdown(ms: dict[str, float]) -> dict[str, float]:
    return {seg: ms[b] - ms[a] for seg, a, b in SEGMENTS if a in ms and b in ms}


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (all their threads) so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def boot_once(art: Artifact, rundir: Path, timeout: float) -> dict[str, Any]:
    """Boot ``art`` once; seconds to the marker and the console's timeline."""
    t = time.perf_counter()
    cfg = vm_config(art)  # host side: drives, shares (the closure to bind), firmware
    prep = time.perf_counter() - t
    if rundir.exists():
        shutil.rmtree(rundir)
    rundir.mkdir(parents=True)
    vm = VM(cfg, rundir)
    marker = f"{BOOT_MARKER} {art.toplevel}".encode()
    arrivals: list[tuple[int, float]] = []  # (bytes so far, when they were seen)
    data = b""
    try:
        t0 = time.perf_counter()
        vm.start()
        started = time.perf_counter() - t0
        while True:
            now = time.perf_counter() - t0
            try:
                data = vm.console_log.read_bytes()
            except FileNotFoundError:
                data = b""
            if len(data) > (arrivals[-1][0] if arrivals else 0):
                arrivals.append((len(data), now))
                if marker in data:
                    assert vm.proc is not None
                    cpu = cpu_seconds([vm.proc.pid, *(d.pid for d in vm._daemons)])
                    break
            if not vm.alive():
                raise SystemExit(f"{art.name}: qemu exited before the marker; "
                                 f"console in {vm.console_log}")
            if now > timeout:
                raise SystemExit(f"{art.name}: no boot marker in {timeout:.0f} s; "
                                 f"console in {vm.console_log}")
            time.sleep(POLL)
        # the demo powers off after its marker (halt); a guest that lingers is
        # stopped below
        with contextlib.suppress(subprocess.TimeoutExpired):
            vm.proc.wait(timeout=30)
    finally:
        vm.shutdown(timeout=5)
    # offsets in bytes; decode with latin-1 so that characters are bytes
    text = data.decode("latin-1")
    ms = milestones(text, arrivals)
    seconds = arrivals[-1][1]
    shutil.rmtree(rundir, ignore_errors=True)
    return {"seconds": seconds, "cpuSeconds": cpu, "hostPrep": prep, "qemuStarted": started,
            "milestones": ms, "breakdown": breakdown(ms),
            "console": text[:20000]}


# -- main ---------------------------------------------------------------------------

def build_all(combos: list[Combo], work: Path) -> dict[str, Artifact]:
    arts = {}
    for c in combos:
        d = work / re.sub(r"[^a-z0-9]+", "-", c.key)
        d.mkdir()
        t = time.perf_counter()
        arts[c.key] = build_image(c.spec(), d / f"{NAME}.qcow2", DiskOptions(gcroot=False))
        log(f"built {c.key} ({time.perf_counter() - t:.1f} s)")
    tops = {a.toplevel for a in arts.values()}
    if len(tops) != 1:
        log(f"NOTE: {len(tops)} different toplevels across the matrix")
    return arts


def after_root(run: dict[str, Any]) -> float:
    """Seconds from the root file system's mount to the marker: the part of a boot
    that reads the store (its mount, then init), free of the kernel's and udev's
    time, which is the same for every layout and carries most of the noise."""
    ms = run["milestones"]
    return float(ms["marker"] - ms["root mounted"])


def ratio(res: dict[str, Any], a: str, b: str) -> dict[str, float] | None:
    if a in res and b in res:
        return {"ratio": res[a]["best"] / res[b]["best"],
                "cpuRatio": res[a]["cpuBest"] / res[b]["cpuBest"],
                "afterRootRatio": res[a]["afterRootBest"] / res[b]["afterRootBest"],
                # the whole boot if only the store part differed: the rest is
                # the same kernel and initrd, whose spread is the noise
                "estimate": 1 + (res[a]["afterRootBest"] - res[b]["afterRootBest"])
                / res[b]["best"]}
    return None


def ratios(res: dict[str, Any], combos: list[Combo]) -> list[dict[str, Any]]:
    out = []
    boots = sorted({c.boot for c in combos}, key=["direct", "bios", "uefi"].index)
    for b in boots:
        for share in ("9p", "virtiofs"):
            r = ratio(res, f"shared {share}/{b}", f"disk/{b}")
            if r is not None:
                out.append({"what": f"{share} / disk ({b})", **r, "goal": GOAL_SHARED})
        for fs in ("erofs", "squashfs"):
            r = ratio(res, f"store-disk {fs}/{b}", f"store-disk ext4/{b}")
            if r is not None:
                out.append({"what": f"{fs} / ext4 store disk ({b})", **r,
                            "goal": GOAL_STOREFS})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="boots of each combination (best kept)")
    ap.add_argument("--quick", action="store_true",
                    help="direct boots only: disk, the three store disks, 9p, virtiofs")
    ap.add_argument("--only", nargs="*", default=None, metavar="KEY",
                    help="only combinations whose key contains one of these words")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to the marker")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                    help="where the images are built (removed at the end)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    os.environ.setdefault("NIX_CONFIG", nix.OFFLINE_CONFIG)
    if os.geteuid() != 0:
        log("WARNING: not root: the shared layouts fall back to hardlink trees")
    started = time.perf_counter()
    acc = accel.detect()
    log(f"accelerator: {acc.name} ({acc.reason})")
    combos = matrix(args.quick)
    if args.only:
        combos = [c for c in combos if any(w in c.key for w in args.only)]
    work = Path(tempfile.mkdtemp(prefix="nixslave-bench-boot-", dir=args.workdir))
    runs = Path(tempfile.mkdtemp(prefix="nxb-"))  # short: unix socket paths
    res: dict[str, Any] = {}
    try:
        arts = build_all(combos, work)
        for c in combos:
            res[c.key] = {"layout": c.layout, "boot": c.boot, "share": c.share,
                          "storeFs": arts[c.key].extra.get("storeFs"),
                          "shareMethod": arts[c.key].extra.get("shareMethod"),
                          "all": [], "cpuAll": [], "load": [], "runs": []}
        for i in range(max(1, args.repeat)):
            for c in combos:
                load = os.getloadavg()[0]
                r = boot_once(arts[c.key], runs / "vm", args.timeout)
                v = res[c.key]
                v["all"].append(r["seconds"])
                v["cpuAll"].append(r["cpuSeconds"])
                v["load"].append(load)
                v["runs"].append(r)
                log(f"round {i + 1}: {c.key:<24} {r['seconds']:6.2f} s, qemu CPU "
                    f"{r['cpuSeconds']:6.2f} s (load {load:.1f})")
        for v in res.values():
            best = min(range(len(v["all"])), key=v["all"].__getitem__)
            v["best"] = v["all"][best]
            v["cpuBest"] = min(v["cpuAll"])
            v["bestRun"] = v["runs"][best]
            v["afterRootAll"] = [after_root(r) for r in v["runs"]]
            v["afterRootBest"] = min(v["afterRootAll"])
            v["breakdowns"] = [r["breakdown"] for r in v["runs"]]
            del v["runs"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)
    out = {"accelerator": {"name": acc.name, "kvm_usable": acc.kvm_usable,
                           "reason": acc.reason},
           "repeat": args.repeat, "quick": args.quick, "cpus": os.cpu_count(),
           "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d"),
           "combinations": res, "ratios": ratios(res, combos),
           "totalSeconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        report(out)
    return 0


def report(r: dict[str, Any]) -> None:
    a = r["accelerator"]
    print(f"accelerator: {a['name']} ({a['reason']})")
    print(f"demo system, one guest at a time, best of {r['repeat']}; {r['cpus']} CPUs, "
          f"load average at the end {r['loadavg'][0]:.1f}")
    print()
    print(f"qemu start -> '{BOOT_MARKER}': wall seconds, and qemu's CPU seconds (+ virtiofsd's;"
          " less disturbed\nby other load, since TCG is CPU-bound)")
    print(f"{'combination':<26}{'best s':>8}{'CPU s':>8}   all wall / all CPU")
    for key, v in r["combinations"].items():
        extra = f"  [{v['shareMethod']}]" if v.get("shareMethod") else ""
        print(f"{key:<26}{v['best']:>8.2f}{v['cpuBest']:>8.2f}   "
              f"{', '.join(f'{t:.1f}' for t in v['all'])} / "
              f"{', '.join(f'{t:.1f}' for t in v['cpuAll'])}{extra}")
    print()
    print(f"{'ratio (best of each)':<38}{'wall':>6}{'CPU':>7}{'store part':>12}{'est.':>7}")
    for q in r["ratios"]:
        ok = "PASS" if q["ratio"] <= q["goal"] else "MISS"
        oke = "PASS" if q["estimate"] <= q["goal"] else "MISS"
        print(f"{q['what']:<38}{q['ratio']:>6.2f}{q['cpuRatio']:>7.2f}"
              f"{q['afterRootRatio']:>12.2f}{q['estimate']:>7.2f}   goal <= {q['goal']}: "
              f"wall {ok}, est. {oke}")
    print("('store part': root file system mounted -> marker, i.e. the store's mount and "
          "stage 2, best of\n each; the kernel and udev before it are the same for every "
          "layout and carry the noise.\n 'est.': the reference's best boot plus the "
          "difference of the store parts, over the reference)")
    print()
    print("where the best boot of each went (seconds between console milestones, host clock;")
    print(" 'to kernel' = firmware + boot loader, 'kernel' ends at the initrd's first line,")
    print(" 'store mount' = nixslave's stage-1 hook, 'stage 2' = init until the marker)")
    segs = [s for s, _, _ in SEGMENTS]
    print(f"{'combination':<26}{'host':>6}{'qemu':>6}" + "".join(f"{s:>12}" for s in segs)
          + f"{'store part':>12}")
    for key, v in r["combinations"].items():
        b = v["bestRun"]
        cells = "".join(f"{b['breakdown'][s]:>12.2f}" if s in b["breakdown"] else f"{'-':>12}"
                        for s in segs)
        print(f"{key:<26}{b['hostPrep']:>6.2f}{b['qemuStarted']:>6.2f}{cells}"
              f"{v['afterRootBest']:>12.2f}")
    print("('host' = vm_config, before qemu's start and not in the totals; 'qemu' = until")
    print(" qemu's process was started, virtiofsd included; 'store part': best of all runs)")
    print()
    print(f"benchmark wall time {r['totalSeconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
