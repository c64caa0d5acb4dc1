"""Time `nixslave net plan --json` as whole processes on leaf-spine labs, and
`netlab create` on the same labs when netlab is installed.

Each lab has 4 spines, leaves with one rack LAN each and 8 hosts per rack,
sized to about 1,000, 9,000 (the goal lab: 1,000 leaves), 10,000 and
100,000 nodes. It is written as a YAML topology file, as a user would write
it, and every figure is a fresh process from start to exit: interpreter
start, imports, reading and validating the file, planning, and writing the
JSON plan to a file. Peak memory is the child's own maximum resident set
(``os.wait4``). Goals: 1,000 nodes under 1 s; the 9,000-node lab under 10 s
and 2 GiB.

When ``netlab`` is on PATH (``pip install networklab``; not a dependency of
nixslave) the same lab, converted to netlab's topology format (routers as
``frr``, hosts as ``linux``, pools large enough for the lab), goes through
``netlab create`` (provider clab) in a scratch directory, and the ratio
netlab / nixslave is printed. netlab refuses more than 1,000 interfaces on a
node, so it is skipped for labs of more than 1,000 leaves; after a timeout,
larger labs are skipped too. netlab create does more than plan: it writes
an Ansible inventory, host_vars and the containerlab file; the ratio is the
cost of getting a planned lab out of each tool, not of identical work.

    .venv/bin/python bench/netconf/run.py [--sizes 1000 9000 10000 100000]
        [--repeat 3] [--netlab-timeout 600] [--no-netlab] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SPINES = 4
HOSTS_PER_LEAF = 8
GOALS = {1000: (1.0, None), 9000: (10.0, 2 << 30)}  # nodes -> (seconds, bytes)
NETLAB_MAX_INTERFACES = 1000
"""netlab numbers a node's interfaces from 1 to 1000 and refuses more
(get_unique_ifindex in netsim/augment/links.py): a 4-spine lab of more than
1,000 leaves cannot be expressed, so netlab is not run on it."""


def leaf_spine(n: int, *, spines: int = SPINES, hosts: int = HOSTS_PER_LEAF) -> dict[str, Any]:
    """About ``n`` nodes: ``spines`` spines, every leaf linked to every spine
    and carrying one rack LAN with ``hosts`` hosts."""
    leaves = max(1, (n - spines) // (1 + hosts))
    nodes: dict[str, Any] = {f"spine{i}": {"kind": "router"} for i in range(spines)}
    segments: dict[str, Any] = {}
    links: list[Any] = []
    for j in range(leaves):
        nodes[f"leaf{j}"] = {"kind": "router"}
        segments[f"rack{j}"] = {}
        links += [[f"spine{i}", f"leaf{j}"] for i in range(spines)]
        links.append([f"leaf{j}", f"rack{j}"])
        for k in range(hosts):
            name = f"h{j}-{k}"
            nodes[name] = {"kind": "host"}
            links.append([name, f"rack{j}"])
    return {"name": f"leafspine{n}", "nodes": nodes, "segments": segments, "links": links}


def to_netlab(topo: dict[str, Any]) -> dict[str, Any]:
    """The same lab in netlab's topology format: routers are FRR, hosts
    Linux; a rack is one multi-access link listing the leaf and its hosts.
    netlab's default pools (a /24 of loopbacks, a /16 of /30s) are far too
    small for these labs, so pools as large as nixslave's are given."""
    nodes = {n: {"device": "frr" if spec["kind"] == "router" else "linux"}
             for n, spec in topo["nodes"].items()}
    racks: dict[str, list[str]] = {s: [] for s in topo["segments"]}
    links: list[Any] = []
    for a, b in topo["links"]:
        if b in racks:
            racks[b].append(a)
        else:
            links.append(f"{a}-{b}")
    links += [members for members in racks.values()]
    return {
        "provider": "clab",
        # netlab numbers nodes up to 150 and gives every node a loopback (a /64
        # each) and a management address (a /24 by default) unless told otherwise
        "defaults": {"const": {"MAX_NODE_ID": len(nodes) + 10}},
        "addressing": {
            "loopback": {"ipv4": "10.0.0.0/14", "ipv6": "2001:db8:4000::/34"},
            "p2p": {"ipv4": "10.64.0.0/10", "ipv6": "2001:db8:fe::/48", "prefix": 31},
            "lan": {"ipv4": "10.128.0.0/9", "ipv6": "2001:db8:100::/40"},
            "mgmt": {"ipv4": "172.16.0.0/12"},
        },
        "nodes": nodes,
        "links": links,
    }


@dataclass
class Run:
    seconds: float
    cpu: float  # user + system seconds of the child
    peak: int  # bytes (maximum resident set of the child)
    ok: bool
    note: str = ""


def timed(argv: list[str], *, cwd: Path | None = None, stdout: Path | None = None,
          timeout: float | None = None) -> Run:
    """Run ``argv`` to the end; wall time, CPU time and the peak RSS of this
    child alone (os.wait4's rusage, not RUSAGE_CHILDREN's running maximum)."""
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.PIPE)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                _, status, ru = os.wait4(proc.pid, 0)
                proc.returncode = -9
                return Run(time.perf_counter() - t0, ru.ru_utime + ru.ru_stime,
                           ru.ru_maxrss * 1024, False, f"timed out after {timeout:.0f} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        code = os.waitstatus_to_exitcode(status)
        note = "" if code == 0 else f"exit {code}: {err.strip().splitlines()[-1:]}"
        return Run(seconds, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, code == 0, note)
    finally:
        if stdout:
            out.close()  # type: ignore[union-attr]


def nixslave_argv() -> list[str]:
    """The installed entry point when there is one (what a user runs)."""
    exe = Path(sys.executable).with_name("nixslave")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from nixslave.cli import main; sys.exit(main())"]


def best(runs: list[Run]) -> Run:
    good = [r for r in runs if r.ok] or runs
    return min(good, key=lambda r: r.seconds)


def mib(b: int) -> str:
    return f"{b / (1 << 20):.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 9000, 10000, 100000])
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per size for nixslave, best kept (one once a run takes > 20 s)")
    ap.add_argument("--netlab-timeout", type=float, default=600,
                    help="seconds; larger labs are skipped once netlab times out")
    ap.add_argument("--no-netlab", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args(argv)
    netlab = None if args.no_netlab else shutil.which("netlab")
    ok = True
    netlab_gave_up = 0
    rows: list[dict[str, Any]] = []
    print(f"{'lab':>8} {'nodes':>7} {'routes':>8} {'nixslave s':>11} {'cpu s':>7} {'MiB':>6}"
          f" {'netlab s':>10} {'MiB':>6} {'netlab/nixslave':>16}  goal")
    with tempfile.TemporaryDirectory(prefix="nxs-bench-") as tmp:
        work = Path(tmp)
        for n in args.sizes:
            topo = leaf_spine(n)
            src = work / f"lab{n}.yml"
            src.write_text(yaml.dump(topo, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                                     sort_keys=False))
            out = work / f"plan{n}.json"
            runs: list[Run] = []
            for _ in range(args.repeat):
                runs.append(timed([*nixslave_argv(), "net", "plan", str(src), "--json"],
                                  stdout=out))
                if not runs[-1].ok or runs[-1].seconds > 20:
                    break
            ns = best(runs)
            routes = 0
            if ns.ok:
                plan = json.loads(out.read_text())
                routes = sum(len(v["routes"]) for v in plan["nodes"].values())
                del plan
            out.unlink(missing_ok=True)
            nl: Run | None = None
            spine_ports = sum(1 for a, _ in topo["links"] if a == "spine0")
            if netlab and spine_ports > NETLAB_MAX_INTERFACES:
                nl = Run(0.0, 0.0, 0, False, f"skipped: a spine has {spine_ports} interfaces, "
                         f"netlab allows {NETLAB_MAX_INTERFACES}")
            elif netlab and netlab_gave_up:
                nl = Run(0.0, 0.0, 0, False, f"skipped: timed out on the {netlab_gave_up} lab")
            elif netlab:
                d = work / f"netlab{n}"
                d.mkdir()
                (d / "topology.yml").write_text(yaml.dump(
                    to_netlab(topo), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                    sort_keys=False))
                nl = timed([netlab, "create", "topology.yml"], cwd=d,
                           timeout=args.netlab_timeout)
                shutil.rmtree(d, ignore_errors=True)
                if not nl.ok and nl.note.startswith("timed out"):
                    netlab_gave_up = n  # a larger lab would only time out later
            goal = GOALS.get(n)
            verdict = ""
            if goal is not None:
                secs, peak = goal
                met = ns.ok and ns.seconds < secs and (peak is None or ns.peak < peak)
                ok &= met
                want = f"<{secs:g} s" + (f", <{peak >> 30} GiB" if peak else "")
                verdict = ("ok " if met else "MISSED ") + want
            if not ns.ok:
                verdict += f" nixslave failed: {ns.note}"
            nl_s = nl_m = ratio = "-"
            if nl is not None and nl.seconds:
                nl_s = f"{nl.seconds:.2f}" if nl.ok else f">{nl.seconds:.0f}"
                nl_m = mib(nl.peak)
                ratio = (f"{nl.seconds / ns.seconds:.1f}" if nl.ok
                         else f">{nl.seconds / ns.seconds:.1f}")
            if nl is not None and not nl.ok:
                verdict += f" (netlab: {nl.note})"
            print(f"{n:>8} {len(topo['nodes']):>7} {routes:>8} {ns.seconds:>11.2f} {ns.cpu:>7.2f}"
                  f" {mib(ns.peak):>6} {nl_s:>10} {nl_m:>6} {ratio:>16}  {verdict}", flush=True)
            rows.append({"lab": n, "nodes": len(topo["nodes"]), "routes": routes,
                         "nixslave": [r.__dict__ for r in runs],
                         "netlab": None if nl is None else nl.__dict__})
    if not netlab and not args.no_netlab:
        print("netlab not found (pip install networklab to compare)")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
