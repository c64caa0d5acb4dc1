"""Time fleets: up to all pings OK for 1, 4 and 8 demo VMs, memory per VM, switch vs reboot.

Why: the fleet runtime claims that a fleet comes up as fast as its slowest
boot (every guest boots at once, the supervisor adds nothing measurable),
that a guest costs about the memory it is given, and that an online switch
is far cheaper than rebuilding the image and rebooting.  This measures:

* ``up`` to markers, and up to every node reaching every planned address of
  every other node (``--ping``), for N demo VMs on one LAN (a vde hub);
* the host memory of each qemu (RSS) against the guest's ``-m``;
* ``switch`` of one node to a changed demo system against what ``up`` does
  when the fleet file names that system instead: rebuild its image and
  reboot it.

    .venv/bin/python bench/fleet/run.py [--sizes 1,4,8] [--json]

Everything (run directory, artifacts, GC roots) goes to private temporary
directories, removed at the end.  Under TCG boots dominate and are noisy:
compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TMP = Path(tempfile.mkdtemp(prefix="nxb-", dir="/tmp"))
_GCROOTS = Path("/nix/var/nix/gcroots")
ROOTS = (Path(tempfile.mkdtemp(prefix="nixslave-bench-", dir=_GCROOTS))
         if os.access(_GCROOTS, os.W_OK) else TMP / "gcroots")
os.environ["NIXSLAVE_RUN_DIR"] = str(TMP / "run")
os.environ["NIXSLAVE_STATE_DIR"] = str(TMP / "state")
os.environ["NIXSLAVE_GCROOTS_DIR"] = str(ROOTS)

from nixslave import nix  # noqa: E402
from nixslave.demo import build_demo  # noqa: E402
from nixslave.netconf import plan  # noqa: E402
from nixslave.netconf.renderers import render_sh  # noqa: E402
from nixslave.root import force_rmtree  # noqa: E402
from nixslave.runtime import fleet as fl  # noqa: E402
from nixslave.runtime.fleetfile import load_fleet  # noqa: E402
from nixslave.runtime.health import ping_matrix  # noqa: E402
from nixslave.runtime.switch import switch  # noqa: E402

os.environ.setdefault("NIX_CONFIG", nix.OFFLINE_CONFIG)
MEMORY = 512


def fleet_file(n: int, extra: dict[str, Any] | None = None) -> Path:
    name = f"bench{n}"
    data: dict[str, Any] = {
        "name": name,
        "pools": {"lan4": "198.51.100.0/24", "lan6": "2001:db8:20::/48"},
        "nodes": {f"v{i}": {"kind": "vm"} for i in range(1, n + 1)},
        "segments": {"lan": {}},
        "links": [[f"v{i}", "lan"] for i in range(1, n + 1)],
        "defaults": {"memory": MEMORY},
        "machines": extra or {},
    }
    path = TMP / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def say(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def bench_size(n: int) -> dict[str, Any]:
    path = fleet_file(n)
    fleet = load_fleet(path)
    fl.build(fleet, fl.make_plan_of(fleet))  # images are not what is timed here
    t0 = time.monotonic()
    res = fl.up(fleet, timeout=1800, progress=say)
    t_up = time.monotonic() - t0
    pings = ping_matrix(fleet, res["state"], progress=say)
    t_ping = time.monotonic() - t0
    ok = all(v for peers in pings.values() for v in peers.values())
    state = fl.status(fleet.name)
    rss = [rss_mib(i["pid"]) for i in state["nodes"].values() if i.get("pid")]
    out = {"vms": n, "up_s": round(t_up, 1), "up_to_pings_s": round(t_ping, 1),
           "pings_ok": ok, "pings": sum(len(p) for p in pings.values()),
           "rss_mib_mean": round(sum(rss) / len(rss), 1), "guest_mib": MEMORY,
           "boot_s": sorted(i["boot_seconds"] for i in state["nodes"].values())}
    if n == 1:
        out.update(bench_switch(fleet.name, path))
    fl.down(fleet.name)
    return out


def bench_switch(name: str, path: Path) -> dict[str, Any]:
    """One online switch against rebuild + reboot of the same change."""
    fleet = load_fleet(path)
    p = plan(fleet.topology)
    changed = str(build_demo("v1", network_script=render_sh(p, "v1"), peers=("198.51.100.1",),
                             halt=False))
    t0 = time.monotonic()
    res = switch(name, "v1", {"toplevel": changed}, timeout=120, progress=say)
    t_switch = time.monotonic() - t0
    assert res["ok"], res
    back = str(build_demo("v1", network_script=render_sh(p, "v1"), peers=("198.51.100.2",),
                          halt=False))
    t0 = time.monotonic()
    fl.up(load_fleet(fleet_file(1, {"v1": {"toplevel": back}})), timeout=1800, progress=say)
    t_reboot = time.monotonic() - t0
    return {"switch_s": round(t_switch, 1), "rebuild_reboot_s": round(t_reboot, 1),
            "reboot_over_switch": round(t_reboot / t_switch, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            print(f"fleet of {n} demo VM(s)", file=sys.stderr, flush=True)
            results.append(bench_size(n))
    finally:
        for d in (TMP / "run").glob("fleet-*"):
            fl.down(d.name.removeprefix("fleet-"))
        force_rmtree(TMP)
        shutil.rmtree(ROOTS, ignore_errors=True)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    base = results[0]
    print(f"{'VMs':>4} {'up s':>7} {'pings s':>8} {'ok':>3} {'RSS MiB':>8} {'vs 1 VM':>8}")
    for r in results:
        print(f"{r['vms']:>4} {r['up_s']:>7} {r['up_to_pings_s']:>8} "
              f"{'yes' if r['pings_ok'] else 'NO':>3} {r['rss_mib_mean']:>8} "
              f"{r['up_to_pings_s'] / base['up_to_pings_s']:>7.1f}x")
    for r in results:
        if "switch_s" in r:
            print(f"switch {r['switch_s']} s, rebuild + reboot {r['rebuild_reboot_s']} s: "
                  f"reboot/switch = {r['reboot_over_switch']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
