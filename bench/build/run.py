"""Time nixslave's disk builds against the tools alone, and their size against the closure.

Why: nixslave's claim is that it builds a guest disk from a closure without
a VM at about the cost of the tools it drives (``mkfs.ext4 -d`` and
``qemu-img convert``; ``mkfs.erofs`` for a store disk), an order of
magnitude faster than the libguestfs way (``virt-make-fs``, a VM under TCG
here), and that every layout costs little more space than the closure
itself.  This benchmark checks those claims on a 0.5-1 GB closure: the demo
system padded with one synthetic store path of incompressible files (built
by Nix from ``padgen.py``), and prints where nixslave's time goes so that a
missed goal can be explained.

    .venv/bin/python bench/build/run.py [--pad-mb 600] [--repeat 3] [--json]

Every anchor runs on the same tree state as nixslave's run: the root tree
of ``Root.prepare(include_store=False)`` with each closure path bind-mounted
onto a stub in a private mount namespace (what nixslave's mkfs sees),
prepared once and not timed.  Each anchor runs back to back with the
nixslave build it is compared with, in turn first and second: on this
host a writer right after another pays for the first one's write-back
(the floor's convert took 0.4 s alone and 2-4 s after four builds).

Goals: nixslave / floor <= 1.2, virt-make-fs / nixslave >= 10, image
allocation / NAR size <= 1.05 (+ file-system metadata), shared-layout extra
bytes / NAR size <= 1 %.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure as m  # bench/build/measure.py

from nixslave import nix
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskBackend, DiskOptions
from nixslave.demo import build_demo
from nixslave.root import Root, build, force_rmtree
from nixslave.runtime import accel
from nixslave.spec import MachineSpec

HERE = Path(__file__).resolve().parent
MIB = m.MIB
NAME = "bench"
GOAL_FLOOR = 1.2
GOAL_VMF = 10.0
GOAL_ALLOC = 1.05
GOAL_SHARE = 0.01

# label -> (spec fields, shared-store method)
LAYOUTS: dict[str, tuple[dict[str, str], str | None]] = {
    "disk": ({"layout": "disk"}, None),
    "store-disk ext4": ({"layout": "store-disk", "store_fs": "ext4"}, None),
    "store-disk erofs": ({"layout": "store-disk", "store_fs": "erofs"}, None),
    "store-disk squashfs": ({"layout": "store-disk", "store_fs": "squashfs"}, None),
    "shared, hardlink tree": ({"layout": "shared"}, "tree"),
    "shared, zero-copy bind": ({"layout": "shared"}, "bind"),
}
FLOOR_NOTE = ("every anchor ran on the same tree state as nixslave's run: Root.prepare("
              "include_store=False) + the closure\n  bind-mounted onto stubs in a private "
              "mount namespace (what nixslave's mkfs sees), prepared once, not timed;\n  "
              "each anchor ran back to back with its nixslave build, in turn first and "
              "second; the floors\n  do not fsync their image (qemu-img convert fdatasyncs "
              "its output), nixslave also fsyncs its build")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def padded_toplevel(pad_mb: int) -> Path:
    """Demo toplevel + one padding path of ``pad_mb`` MiB, as a NixOS-shaped toplevel.

    The padding's store path depends only on padgen.py and the size, so Nix
    builds it once and every later run reuses it.
    """
    demo = build_demo(NAME)
    link = ("/bin/mkdir $out && for e in ${demo}/*; do /bin/ln -s $e $out/; done"
            " && /bin/ln -s ${padding} $out/padding")
    expr = f"""
let
  demo = builtins.storePath "{demo}";
  padding = derivation {{
    name = "nixslave-bench-padding-{pad_mb}M";
    system = builtins.currentSystem;
    builder = "/usr/bin/python3";
    args = [ {HERE / "padgen.py"} ];
    padBytes = "{pad_mb * MIB}";
    seed = "1";
  }};
in derivation {{
  name = "nixos-system-{NAME}-padded-{pad_mb}M";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "{link}" ];
}}
"""
    return nix.build(expr=expr, what="padded toplevel")[0]


def time_nixslave(root: Root, out: Path, share: str | None
                  ) -> tuple[float, float, m.Steps, Artifact]:
    """One fresh build (no earlier build of ``out`` left to sweep), step by step."""
    m.fresh(out)
    m.settle()
    steps = m.Steps()
    opts = DiskOptions(format="qcow2", gcroot=False, share_method=share)  # type: ignore[arg-type]
    with m.instrumented(steps):
        c, t = m.cpu_now(), time.perf_counter()
        steps.t0 = t
        art = DiskBackend().materialize(root, out, opts, progress=steps.progress)
        dt = time.perf_counter() - t
        cpu = m.cpu_now() - c
    return dt, cpu, steps, art


def allocation(art: Artifact, nar: int) -> dict[str, Any]:
    """Host bytes of each file of an artifact, against the closure's NAR size."""
    a: dict[str, Any] = {"root": m.allocated(art.image)}
    if art.store_image is not None:
        a["store"] = m.allocated(art.store_image)
    if art.share_dir is not None:
        a["shareDetail"] = m.share_extra_bytes(art.share_dir)
        a["share"] = a["shareDetail"]["total"]
    a["total"] = a["root"] + a.get("store", 0) + a.get("share", 0)
    a["storeOverNar"] = (a["store"] if "store" in a else a.get("share", a["root"])) / nar
    a["totalOverNar"] = a["total"] / nar
    return a


def disk_metadata(image: Path, work: Path, root: Root) -> dict[str, Any]:
    """ext4 metadata of the disk layout's image, and the tree's own 4 KiB-block size."""
    raw = work / "check.raw"
    m.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)])
    meta = m.ext4_metadata(raw)
    raw.unlink()
    from nixslave.backends.ext4 import tree_usage

    usage = tree_usage(*(Path(p) for p in root.paths))
    return {**meta, "treeDataBytes": usage.data}


def best(d: dict[str, Any], key: str, value: float, cpu: float, **extra: Any) -> None:
    """Keep every time and, for the fastest, its details; the least CPU on its own."""
    d.setdefault(key, {"all": [], "cpuAll": []})
    e = d[key]
    e["all"].append(value)
    e["cpuAll"].append(cpu)
    e["cpu"] = min(e["cpuAll"])
    for part in ("mkfs", "convert"):  # a floor's parts: the best of each, apart
        if part in extra:
            e.setdefault(f"{part}All", []).append(extra[part])
    if value <= min(e["all"]):
        e.update(seconds=value, **extra)
    if "mkfsAll" in e:
        e["partsBest"] = min(e["mkfsAll"]) + min(e["convertAll"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad-mb", type=int, default=600, help="padding size in MiB")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of every build (best is kept)")
    ap.add_argument("--budget", type=float, default=900.0,
                    help="start no new round once this many seconds have passed")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                    help="scratch parent; must share a file system with /nix/store")
    ap.add_argument("--skip-vmf", action="store_true", help="do not run virt-make-fs")
    ap.add_argument("--layouts", nargs="*", default=None, metavar="WORD",
                    help="only the layouts whose label contains one of these words "
                         "(the disk layout always runs: the floors need its size)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    os.environ.setdefault("NIX_CONFIG", nix.OFFLINE_CONFIG)
    started = time.perf_counter()
    if os.geteuid() != 0:
        raise SystemExit("run as root: nixslave and the anchors bind-mount the closure")

    log(f"building the closure (demo + {args.pad_mb} MiB padding)")
    t = time.perf_counter()
    top = padded_toplevel(args.pad_mb)
    layouts = {k: v for k, v in LAYOUTS.items()
               if k == "disk" or args.layouts is None or any(w in k for w in args.layouts)}
    roots = {k: build(MachineSpec.parse({"name": NAME, "toplevel": str(top), **spec}))
             for k, (spec, _) in layouts.items()}
    root = roots["disk"]
    closure_s = time.perf_counter() - t
    nar = root.nar_size
    log(f"{top}: {len(root.paths)} paths, NAR {nar / MIB:.1f} MiB ({closure_s:.1f} s)")

    same_fs = os.stat(args.workdir).st_dev == os.stat(nix.STORE_DIR).st_dev
    if not same_fs:
        log(f"WARNING: {args.workdir} is not on the file system of /nix/store: "
            "the hardlink tree falls back to copies")
    work = Path(tempfile.mkdtemp(prefix="nixslave-bench-", dir=args.workdir))
    res: dict[str, Any] = {"toplevel": str(top), "closurePaths": len(root.paths),
                           "narSize": nar, "padMiB": args.pad_mb, "sameFilesystem": same_fs,
                           "workdir": str(args.workdir), "date": time.strftime("%Y-%m-%d"),
                           "cpus": os.cpu_count(), "floorNote": FLOOR_NOTE}
    acc = accel.detect()
    res["accelerator"] = {"name": acc.name, "reason": acc.reason}
    ns: dict[str, Any] = {}
    anchors: dict[str, Any] = {}
    try:
        rtree = m.BoundTree(root, work / "anchor-root")
        stree = m.BoundTree(root, work / "anchor-store", store_only=True)
        # An untimed build first: it gives the floors their size and warms the cache.
        warm = work / "warm"
        warm.mkdir()
        _, _, _, art = time_nixslave(root, warm / f"{NAME}.qcow2", None)
        size = art.virtual_size
        res["diskMetadata"] = disk_metadata(art.image, work, root)
        m.fresh(warm / f"{NAME}.qcow2")

        def nixslave(label: str, i: int) -> None:
            d = work / label.replace(" ", "-").replace(",", "")
            d.mkdir(exist_ok=True)
            dt, cpu, steps, art = time_nixslave(roots[label], d / f"{NAME}.qcow2",
                                                layouts[label][1])
            best(ns, label, dt, cpu, phases=steps.phases(dt), calls=steps.calls,
                 counts=steps.counts, allocation=allocation(art, nar),
                 virtualSize=art.virtual_size)
            m.fresh(d / f"{NAME}.qcow2")  # no earlier image left to slow the next writer
            log(f"round {i + 1}: nixslave {label:<24} {dt:6.2f} s, CPU {cpu:6.2f} s")

        def floors(i: int) -> None:
            a, b, cpu, img = m.floor_same_flags(rtree, size, work)
            best(anchors, "floor", a + b, cpu, mkfs=a, convert=b, allocation=m.allocated(img))
            img.unlink()
            a, b, cpu, img = m.floor_defaults(rtree, size, work)
            best(anchors, "floorDefaults", a + b, cpu, mkfs=a, convert=b,
                 allocation=m.allocated(img))
            img.unlink()
            f = anchors["floor"]
            log(f"round {i + 1}: floor {f['all'][-1]:.2f} s (mkfs {f['mkfsAll'][-1]:.2f} + "
                f"convert {f['convertAll'][-1]:.2f}), with mke2fs defaults "
                f"{anchors['floorDefaults']['all'][-1]:.2f} s")

        def erofs(i: int) -> None:
            e, cpu, img = m.erofs_alone(stree, work)
            best(anchors, "erofs", e, cpu, allocation=m.allocated(img))
            img.unlink()
            log(f"round {i + 1}: mkfs.erofs alone {e:.2f} s")

        rounds = 0
        for i in range(max(1, args.repeat)):
            if i and time.perf_counter() - started > args.budget:
                log(f"budget of {args.budget:.0f} s used: stopping after {i} round(s)")
                break
            rounds += 1
            # Each comparison runs back to back, in turn first and second: the
            # disk's write-back state after one writer slows the next one.
            pairs: list[tuple[Callable[[], None], Callable[[], None]]] = [
                (partial(nixslave, "disk", i), partial(floors, i))]
            if "store-disk erofs" in layouts:
                pairs.append((partial(nixslave, "store-disk erofs", i), partial(erofs, i)))
            else:
                pairs.append((partial(erofs, i), lambda: None))
            for first, second in pairs:
                (first, second)[i % 2]()
                (first, second)[1 - i % 2]()
            for label in layouts:
                if label not in ("disk", "store-disk erofs"):
                    nixslave(label, i)
        res["rounds"] = rounds
        if not args.skip_vmf:
            log("virt-make-fs (once; minutes under TCG)")
            v, cpu, img = m.virt_make_fs(rtree, size, work, accel.guestfs_env())
            best(anchors, "virtMakeFs", v, cpu, allocation=m.allocated(img))
            img.unlink()
            log(f"virt-make-fs {v:.1f} s")
    finally:
        force_rmtree(work)
    res["nixslave"] = ns
    res["anchors"] = anchors
    res["virtualSize"] = size
    disk = ns["disk"]["seconds"]
    fsync = ns["disk"]["calls"].get("fsync of the build's files", 0.0)
    res["nixslaveOverFloor"] = disk / anchors["floor"]["seconds"]
    res["nixslaveOverFloorParts"] = disk / anchors["floor"]["partsBest"]
    # the same round's pair: run back to back, so the nearest in conditions
    res["perRoundOverFloor"] = [n / f for n, f in zip(ns["disk"]["all"], anchors["floor"]["all"],
                                                      strict=True)]
    res["nixslaveOverFloorCpu"] = ns["disk"]["cpu"] / anchors["floor"]["cpu"]
    res["nixslaveWithoutFsyncOverFloor"] = (disk - fsync) / anchors["floor"]["seconds"]
    floor = anchors["floor"]["seconds"]
    res["floorDefaultsOverFloor"] = anchors["floorDefaults"]["seconds"] / floor
    if "store-disk erofs" in ns:
        er = ns["store-disk erofs"]
        res["erofsOverAnchor"] = er["seconds"] / anchors["erofs"]["seconds"]
        res["erofsOverAnchorCpu"] = er["cpu"] / anchors["erofs"]["cpu"]
    if "virtMakeFs" in anchors:
        res["virtMakeFsOverNixslave"] = anchors["virtMakeFs"]["seconds"] / disk
    res["totalSeconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        report(res)
    return 0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(r: dict[str, Any]) -> None:
    nar = r["narSize"]
    ns, an = r["nixslave"], r["anchors"]
    print(f"closure: {r['closurePaths']} store paths, NAR {nar / MIB:.1f} MiB "
          f"(demo system + {r['padMiB']} MiB padding); disk image {r['virtualSize'] / MIB:.0f} MiB"
          f" virtual")
    print(f"runs: best of {r['rounds']} rounds (every build once per round), virt-make-fs once; "
          f"{r['cpus']} CPUs")
    print(f"  {r['floorNote']}")
    a = r["accelerator"]
    print(f"accelerator (libguestfs, for virt-make-fs): {a['name']} ({a['reason']})")
    print()
    print(f"{'build':<40}{'seconds':>8}{'CPU s':>7}  {'root MiB':>9}{'store MiB':>10}{'/ NAR':>7}"
          "   all (wall)")
    for label, e in ((k, ns[k]) for k in LAYOUTS if k in ns):
        a = e["allocation"]
        store = a.get("store", a.get("share"))
        st = f"{store / MIB:>10.1f}" if store is not None else f"{'-':>10}"
        print(f"{'nixslave ' + label:<40}{e['seconds']:>8.2f}{e['cpu']:>7.2f}  "
              f"{a['root'] / MIB:>9.1f}{st}"
              f"{a['storeOverNar']:>7.3f}   {', '.join(f'{t:.2f}' for t in e['all'])}")
    rows = [("floor", "anchor: mkfs.ext4 -d + convert (nixslave's flags)", "root"),
            ("floorDefaults", "anchor: same, mke2fs default flags", "root"),
            ("erofs", "anchor: mkfs.erofs -zlz4 alone", "store"),
            ("virtMakeFs", f"anchor: virt-make-fs ({r['accelerator']['name'].upper()})", "root")]
    for key, label, col in rows:
        if key not in an:
            continue
        e = an[key]
        alloc = e["allocation"] / MIB
        cells = f"{alloc:>9.1f}{'-':>10}" if col == "root" else f"{'-':>9}{alloc:>10.1f}"
        print(f"{label:<40}{e['seconds']:>8.2f}{e['cpu']:>7.2f}  {cells}"
              f"{e['allocation'] / nar:>7.3f}   "
              f"{', '.join(f'{t:.2f}' for t in e['all'])}")
    print("(root/store MiB: host allocation, qcow2 actual-size or file blocks; for the shared "
          "layouts 'store'\n is what the share directory adds on the host's file system; "
          "/ NAR: the store part over the NAR size,\n the whole image for the disk layout and "
          "the ext4 anchors)")
    print()
    rf = r["nixslaveOverFloor"]
    print(f"{'nixslave disk / floor':<44}{rf:>7.2f}   goal <= {GOAL_FLOOR}  "
          f"{verdict(rf <= GOAL_FLOOR)}")
    pr = r["perRoundOverFloor"]
    print(f"{'  per round (back to back), median':<44}{sorted(pr)[len(pr) // 2]:>7.2f}   "
          f"all: {', '.join(f'{x:.2f}' for x in pr)}")
    print(f"{'  against best mkfs + best convert':<44}{r['nixslaveOverFloorParts']:>7.2f}   "
          f"(floor {an['floor']['partsBest']:.2f} s: the lowest of each part over the rounds)")
    print(f"{'  the same in CPU seconds':<44}{r['nixslaveOverFloorCpu']:>7.2f}")
    print(f"{'  the same without nixslave fsync':<44}{r['nixslaveWithoutFsyncOverFloor']:>7.2f}")
    print(f"{'floor with mke2fs defaults / floor':<44}{r['floorDefaultsOverFloor']:>7.2f}")
    if "erofsOverAnchor" in r:
        print(f"{'nixslave store-disk erofs / mkfs.erofs':<44}{r['erofsOverAnchor']:>7.2f}   "
              f"CPU {r['erofsOverAnchorCpu']:.2f} (the build also makes the root file system"
              " and converts both)")
    if "virtMakeFsOverNixslave" in r:
        rv = r["virtMakeFsOverNixslave"]
        print(f"{'virt-make-fs / nixslave disk':<44}{rv:>7.2f}   goal >= {GOAL_VMF:g}   "
              f"{verdict(rv >= GOAL_VMF)}")
    a, md = ns["disk"]["allocation"], r["diskMetadata"]
    without = (a["root"] - md["metadata"]) / nar
    print()
    print(f"disk layout: allocation {a['root'] / MIB:.1f} MiB / NAR {nar / MIB:.1f} MiB = "
          f"{a['totalOverNar']:.3f}; metadata estimate {md['metadata'] / MIB:.1f} MiB (inode "
          f"tables {md['inodeTables'] / MIB:.1f} MiB, {md['inodes'] - md['inodesFree']} of "
          f"{md['inodes']} used; journal {md['journal'] / MIB:.1f} MiB)")
    print(f"  without that metadata {without:.3f}   goal <= {GOAL_ALLOC}  "
          f"{verdict(without <= GOAL_ALLOC)}; the closure in 4 KiB blocks alone is "
          f"{md['treeDataBytes'] / nar:.3f} x NAR")
    for label in ("shared, hardlink tree", "shared, zero-copy bind"):
        if label not in ns:
            continue
        sd = ns[label]["allocation"]["shareDetail"]
        ratio = sd["total"] / nar
        print(f"{label}: share adds {sd['dirBytes'] / MIB:.2f} MiB of directories + "
              f"{sd['unlinkedBytes'] / MIB:.2f} MiB of non-hardlinked inodes = "
              f"{ratio * 100:.2f} % of NAR   goal <= {GOAL_SHARE * 100:g} %  "
              f"{verdict(ratio <= GOAL_SHARE)}")
    print()
    for label, e in ((k, ns[k]) for k in LAYOUTS if k in ns):
        print(f"where nixslave {label}'s best {e['seconds']:.2f} s went (progress messages):")
        for msg, sec in e["phases"]:
            print(f"  {sec:>7.2f} s  {msg}")
        print("  timed internals:")
        for k, v in sorted(e["calls"].items(), key=lambda kv: -kv[1]):
            n = e["counts"][k]
            print(f"  {v:>7.2f} s  {k}" + (f" ({n} calls)" if n > 1 else ""))
        if label == "disk":
            f = an["floor"]
            print(f"  (floor's best round: mkfs.ext4 -d {f['mkfs']:.2f} s + qemu-img convert "
                  f"{f['convert']:.2f} s; its parts over all rounds: mkfs "
                  f"{', '.join(f'{x:.2f}' for x in f['mkfsAll'])}; convert "
                  f"{', '.join(f'{x:.2f}' for x in f['convertAll'])})")
    print()
    print(f"benchmark wall time {r['totalSeconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
