"""Time nixslave's disk build against its floor and against virt-make-fs.

Why: nixslave's claim is that it builds a guest disk from a closure without
a VM at about the cost of the tools it drives (``mkfs.ext4 -d`` and ``qemu-img
convert``), an order of magnitude faster than the libguestfs way
(``virt-make-fs``, a VM under TCG here), and that the image and the shared
store cost little more than the closure itself.  This benchmark checks those
claims on a 0.5-1 GB closure: the demo system padded with one synthetic store
path of incompressible files (built by Nix from ``padgen.py``), and prints
where nixslave's time goes so that a missed goal can be explained.

    .venv/bin/python bench/build/run.py [--pad-mb 600] [--repeat 3] [--json]

Goals: nixslave / floor <= 1.2, virt-make-fs / nixslave >= 10, image
allocation / NAR size <= 1.05 (+ file-system metadata), shared-layout extra
bytes / NAR size <= 1 %.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nixslave import nix
from nixslave.backends import disk as disk_mod
from nixslave.backends.disk import DiskBackend, DiskOptions
from nixslave.demo import build_demo
from nixslave.root import Root, build, force_rmtree
from nixslave.runtime import accel
from nixslave.spec import MachineSpec

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
NAME = "bench"
GOAL_FLOOR = 1.2
GOAL_VMF = 10.0
GOAL_ALLOC = 1.05
GOAL_SHARE = 0.01


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc.stdout


# -- the closure ----------------------------------------------------------------

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


# -- helpers ----------------------------------------------------------------------

def qemu_info(image: Path) -> dict[str, Any]:
    return json.loads(run(["qemu-img", "info", "--output=json", str(image)]))


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKMGT]?)\s*", text)
    if not m:
        raise ValueError(text)
    unit = {"": 1, "k": 1 << 10, "K": 1 << 10, "M": MIB, "G": 1 << 30, "T": 1 << 40}
    return int(float(m.group(1)) * unit[m.group(2)])


def ext4_metadata(raw: Path) -> dict[str, int]:
    """Inode tables and journal of an ext4 image, from ``dumpe2fs -h``."""
    fields: dict[str, str] = {}
    for line in run(["dumpe2fs", "-h", str(raw)]).splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip()] = v.strip()
    inodes = int(fields["Inode count"])
    isize = int(fields["Inode size"])
    journal = parse_size(fields.get("Total journal size", fields.get("Journal size", "0")))
    return {"inodes": inodes, "inodesFree": int(fields["Free inodes"]),
            "inodeTables": inodes * isize, "journal": journal,
            "metadata": inodes * isize + journal}


def share_extra_bytes(share: Path) -> dict[str, int]:
    """Blocks the share directory owns: inodes not hardlinked to the store, and dirs."""
    seen: set[int] = set()
    extra = dirs = files = 0
    for dirpath, dirnames, filenames in os.walk(share):
        st = os.lstat(dirpath)
        dirs += st.st_blocks * 512
        for n in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_ino in seen or (os.path.isdir(os.path.join(dirpath, n))
                                     and not os.path.islink(os.path.join(dirpath, n))):
                continue
            seen.add(st.st_ino)
            if st.st_nlink == 1:
                files += 1
                extra += st.st_blocks * 512
    return {"dirBytes": dirs, "unlinkedBytes": extra, "unlinkedInodes": files,
            "total": dirs + extra}


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Steps:
    """Timestamps of progress messages plus timed nixslave internals."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.marks: list[tuple[float, str]] = []
        self.calls: dict[str, float] = {}
        self.share_free_delta: int | None = None

    def progress(self, msg: str) -> None:
        self.marks.append((time.perf_counter() - self.t0, msg))

    def phases(self, total: float) -> list[tuple[str, float]]:
        out = []
        for i, (t, msg) in enumerate(self.marks):
            end = self.marks[i + 1][0] if i + 1 < len(self.marks) else total
            out.append((msg, end - t))
        return out


@contextlib.contextmanager
def instrumented(steps: Steps) -> Iterator[None]:
    """Time the helpers nixslave's disk backend calls (monkeypatched, not modified)."""
    import nixslave.root as root_mod

    targets: list[tuple[Any, str, str]] = [
        (root_mod, "copy_paths", "prepare: cp -a --link"),
        (root_mod, "normalize_times", "prepare: normalize_times"),
        (disk_mod, "tree_usage", "size: tree_usage walk"),
        (disk_mod, "mkfs", "mkfs.ext4 -d"),
        (disk_mod, "normalize_inode_times", "debugfs timestamp pass"),
        (disk_mod.DiskBackend, "_emit", "qemu-img convert"),
        (disk_mod, "sha256_file", "sha256 of the image"),
        (disk_mod.DiskBackend, "_share_dir", "shared store copy"),
        (disk_mod, "force_rmtree", "cleanup: force_rmtree of the scratch dir"),
    ]
    saved = []
    for owner, attr, label in targets:
        orig = getattr(owner, attr)
        saved.append((owner, attr, orig))

        def wrap(orig: Callable[..., Any] = orig, label: str = label) -> Callable[..., Any]:
            @functools.wraps(orig)
            def timed(*a: Any, **kw: Any) -> Any:
                before = free_bytes(Path("/nix/store")) if label == "shared store copy" else 0
                t = time.perf_counter()
                try:
                    return orig(*a, **kw)
                finally:
                    steps.calls[label] = steps.calls.get(label, 0.0) + time.perf_counter() - t
                    if label == "shared store copy":
                        steps.share_free_delta = before - free_bytes(Path("/nix/store"))
            return timed

        setattr(owner, attr, wrap())
    try:
        yield
    finally:
        for owner, attr, orig in saved:
            setattr(owner, attr, orig)


# -- the three ways ------------------------------------------------------------------

def settle() -> None:
    """Flush earlier writes so that their writeback is not charged to the next run."""
    os.sync()


def time_nixslave(root: Root, out: Path) -> tuple[float, Steps]:
    out.unlink(missing_ok=True)
    settle()
    steps = Steps()
    with instrumented(steps):
        t = time.perf_counter()
        steps.t0 = t
        DiskBackend().materialize(root, out, DiskOptions(format="qcow2", gcroot=False),
                                  progress=steps.progress)
        dt = time.perf_counter() - t
    return dt, steps


def time_floor(tree: Path, size: int, work: Path) -> tuple[float, float]:
    """Seconds of (mkfs.ext4 -d, qemu-img convert) on a prepared tree."""
    raw, out = work / "floor.raw", work / "floor.qcow2"
    raw.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    settle()
    t = time.perf_counter()
    run(["mkfs.ext4", "-q", "-b", "4096", "-L", "nixslave-root", "-d", str(tree), str(raw),
         f"{size // 1024}k"])
    t1 = time.perf_counter()
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)])
    t2 = time.perf_counter()
    raw.unlink()
    out.unlink()
    return t1 - t, t2 - t1


def time_virt_make_fs(tree: Path, size: int, work: Path) -> float:
    out = work / "vmf.qcow2"
    env = {**os.environ, **accel.guestfs_env()}
    settle()
    t = time.perf_counter()
    run(["virt-make-fs", "--format=qcow2", "--type=ext4", f"--size={size // MIB}M",
         str(tree), str(out)], env=env)
    dt = time.perf_counter() - t
    out.unlink()
    return dt


# -- main -------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad-mb", type=int, default=600, help="padding size in MiB")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of nixslave and the floor (best is kept)")
    ap.add_argument("--budget", type=float, default=600.0,
                    help="stop repeating once this many seconds have passed")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                    help="scratch parent; must share a file system with /nix/store")
    ap.add_argument("--skip-vmf", action="store_true", help="do not run virt-make-fs")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    os.environ.setdefault("NIX_CONFIG", nix.OFFLINE_CONFIG)
    started = time.perf_counter()

    log(f"building the closure (demo + {args.pad_mb} MiB padding)")
    t = time.perf_counter()
    top = padded_toplevel(args.pad_mb)
    root = build(MachineSpec.parse({"name": NAME, "toplevel": str(top)}))
    closure_s = time.perf_counter() - t
    nar = root.nar_size
    log(f"{top}: {len(root.paths)} paths, NAR {nar / MIB:.1f} MiB ({closure_s:.1f} s)")

    same_fs = os.stat(args.workdir).st_dev == os.stat(nix.STORE_DIR).st_dev
    if not same_fs:
        log(f"WARNING: {args.workdir} is not on the file system of /nix/store: "
            "hardlinks fall back to copies and the figures do not mean much")
    work = Path(tempfile.mkdtemp(prefix="nixslave-bench-", dir=args.workdir))
    res: dict[str, Any] = {"toplevel": str(top), "closurePaths": len(root.paths),
                           "narSize": nar, "padMiB": args.pad_mb, "sameFilesystem": same_fs,
                           "workdir": str(args.workdir)}
    try:
        tree = root.prepare(work / "tree")
        out = work / f"{NAME}.qcow2"
        ns_times: list[float] = []
        fl_times: list[float] = []
        fl_split: tuple[float, float] = (0.0, 0.0)
        best_steps: Steps | None = None
        size = 0
        for i in range(max(1, args.repeat)):
            if i and time.perf_counter() - started > args.budget:
                log(f"budget of {args.budget:.0f} s used: stopping after {i} run(s)")
                break
            dt, steps = time_nixslave(root, out)
            if not ns_times or dt < min(ns_times):
                best_steps = steps
            ns_times.append(dt)
            size = int(qemu_info(out)["virtual-size"])
            log(f"run {i + 1}: nixslave {dt:.2f} s")
            split = time_floor(tree, size, work)
            if not fl_times or sum(split) < min(fl_times):
                fl_split = split
            fl_times.append(sum(split))
            log(f"run {i + 1}: floor    {fl_times[-1]:.2f} s")
        assert best_steps is not None
        ns, fl = min(ns_times), min(fl_times)
        res.update({"runs": len(ns_times), "nixslaveSeconds": ns, "floorSeconds": fl,
                    "nixslaveAll": ns_times, "floorAll": fl_times, "virtualSize": size,
                    "nixslaveOverFloor": ns / fl})
        res["nixslavePhases"] = [{"step": m, "seconds": s}
                                 for m, s in best_steps.phases(ns)]
        res["nixslaveCalls"] = best_steps.calls
        res["floorSplit"] = {"mkfs": fl_split[0], "convert": fl_split[1]}

        # Allocation of nixslave's image against the closure.
        info = qemu_info(out)
        actual = int(info["actual-size"])
        raw = work / "check.raw"
        run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out), str(raw)])
        meta = ext4_metadata(raw)
        raw.unlink()
        from nixslave.backends.ext4 import tree_usage

        usage = tree_usage(tree)
        res["allocation"] = {
            "actualSize": actual, "ratio": actual / nar, **meta,
            "ratioWithoutMetadata": (actual - meta["metadata"]) / nar,
            "treeDataBytes": usage.data, "treeDataOverNar": usage.data / nar,
        }

        if not args.skip_vmf:
            log("virt-make-fs (once; minutes under TCG)")
            res["virtMakeFsSeconds"] = time_virt_make_fs(tree, size, work)
            res["virtMakeFsOverNixslave"] = res["virtMakeFsSeconds"] / ns
            log(f"virt-make-fs {res['virtMakeFsSeconds']:.1f} s")
        force_rmtree(tree)
        out.unlink()

        # The shared layout: how much the share directory adds on this file system.
        log("shared layout")
        sdir = work / "shared"
        sdir.mkdir()
        sroot = build(MachineSpec.parse({"name": NAME, "toplevel": str(top),
                                         "layout": "shared"}))
        sdt, ssteps = time_nixslave(sroot, sdir / f"{NAME}.qcow2")
        share = disk_mod.share_dir_path(sdir / f"{NAME}.qcow2", NAME)
        extra = share_extra_bytes(share)
        res["shared"] = {"seconds": sdt, "sameFilesystem": same_fs, **extra,
                         "ratio": extra["total"] / nar,
                         "statvfsDelta": ssteps.share_free_delta,
                         "copySeconds": ssteps.calls.get("shared store copy")}
    finally:
        force_rmtree(work)
    res["totalSeconds"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        report(res)
    return 0


def report(r: dict[str, Any]) -> None:
    print(f"closure: {r['closurePaths']} store paths, NAR {r['narSize'] / MIB:.1f} MiB "
          f"(demo system + {r['padMiB']} MiB padding); image {r['virtualSize'] / MIB:.0f} MiB")
    print(f"runs: nixslave and floor best of {r['runs']}, virt-make-fs once")
    print()
    print(f"{'method':<34}{'seconds':>9}")
    print(f"{'nixslave (DiskBackend.materialize)':<34}{r['nixslaveSeconds']:>9.2f}   "
          f"all: {', '.join(f'{t:.2f}' for t in r['nixslaveAll'])}")
    print(f"{'floor (mkfs.ext4 -d + convert)':<34}{r['floorSeconds']:>9.2f}   "
          f"all: {', '.join(f'{t:.2f}' for t in r['floorAll'])}")
    if "virtMakeFsSeconds" in r:
        print(f"{'virt-make-fs (TCG)':<34}{r['virtMakeFsSeconds']:>9.2f}")
    print()
    rf = r["nixslaveOverFloor"]
    print(f"{'nixslave / floor':<34}{rf:>9.2f}   goal <= {GOAL_FLOOR}  {verdict(rf <= GOAL_FLOOR)}")
    if "virtMakeFsOverNixslave" in r:
        rv = r["virtMakeFsOverNixslave"]
        print(f"{'virt-make-fs / nixslave':<34}{rv:>9.2f}   goal >= {GOAL_VMF:g}   "
              f"{verdict(rv >= GOAL_VMF)}")
    a = r["allocation"]
    print()
    print("image allocation (qcow2 actual-size) / NAR size")
    print(f"  actual-size {a['actualSize'] / MIB:.1f} MiB / NAR {r['narSize'] / MIB:.1f} MiB"
          f" = {a['ratio']:.3f}")
    print(f"  metadata estimate {a['metadata'] / MIB:.1f} MiB = inode tables "
          f"{a['inodeTables'] / MIB:.1f} MiB ({a['inodes']} x 256 B, "
          f"{a['inodes'] - a['inodesFree']} used) + journal {a['journal'] / MIB:.1f} MiB")
    print(f"  without that metadata: {a['ratioWithoutMetadata']:.3f}   goal <= {GOAL_ALLOC}  "
          f"{verdict(a['ratioWithoutMetadata'] <= GOAL_ALLOC)}")
    print(f"  (an upper bound: zeroed inode-table and journal blocks take no qcow2 clusters;"
          f" the tree's\n  data and directories in 4 KiB blocks alone are "
          f"{a['treeDataBytes'] / MIB:.1f} MiB = {a['treeDataOverNar']:.3f} x NAR)")
    s = r["shared"]
    print()
    same = "same file system as /nix/store" if s["sameFilesystem"] else \
        "NOT the file system of /nix/store"
    print(f"shared layout ({same}), share directory only:")
    print(f"  directories {s['dirBytes'] / MIB:.2f} MiB + non-hardlinked inodes "
          f"{s['unlinkedBytes'] / MIB:.2f} MiB ({s['unlinkedInodes']}) = "
          f"{s['total'] / MIB:.2f} MiB = {s['ratio'] * 100:.2f} % of NAR   goal <= "
          f"{GOAL_SHARE * 100:g} %  {verdict(s['ratio'] <= GOAL_SHARE)}")
    if s["statvfsDelta"] is not None:
        print(f"  statvfs free-space drop across the copy: {s['statvfsDelta'] / MIB:.2f} MiB "
              f"(noisy: other writers share the file system); copy took "
              f"{s['copySeconds']:.2f} s, whole shared build {s['seconds']:.2f} s")
    print()
    print(f"where nixslave's {r['nixslaveSeconds']:.2f} s go (progress messages):")
    for p in r["nixslavePhases"]:
        print(f"  {p['seconds']:>7.2f} s  {p['step']}")
    print("timed internals:")
    for k, v in r["nixslaveCalls"].items():
        print(f"  {v:>7.2f} s  {k}")
    fs = r["floorSplit"]
    print(f"  {r['floorSeconds']:>7.2f} s  (floor, for comparison: mkfs.ext4 -d "
          f"{fs['mkfs']:.2f} s + qemu-img convert {fs['convert']:.2f} s)")
    print()
    print(f"benchmark wall time {r['totalSeconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
