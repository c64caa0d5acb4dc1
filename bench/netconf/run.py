"""Plan leaf-spine and random topologies of 1,000 and 10,000 nodes.

Prints the time of each plan and the ratio to linear scaling,
t(10k) / (10 * t(1k)); 1.0 is linear. The goal is 1,000 nodes under 1 s
and 10,000 under 10 s.

    .venv/bin/python bench/netconf/run.py [--sizes 1000 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any

from nixslave.netconf import plan, topology_from_data
from nixslave.netconf.generate import leaf_spine, random_topology

GOAL = {1000: 1.0, 10000: 10.0}


def measure(make: Callable[[int], dict[str, Any]], n: int, repeat: int) -> tuple[float, Any]:
    data = make(n)
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = plan(topology_from_data(data))
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    shapes: dict[str, Callable[[int], dict[str, Any]]] = {
        "leaf-spine": leaf_spine,
        "random": lambda n: random_topology(n, seed=1),
    }
    ok = True
    print(f"{'topology':<12}{'nodes':>8}{'routers':>9}{'routes':>10}{'seconds':>10}  goal")
    for shape, make in shapes.items():
        times: dict[int, float] = {}
        for n in args.sizes:
            t, p = measure(make, n, args.repeat)
            times[n] = t
            routers = sum(1 for x in p.nodes.values() if x.forwarding)
            routes = sum(len(x.routes) for x in p.nodes.values())
            goal = GOAL.get(n)
            verdict = "" if goal is None else ("ok" if t < goal else f"MISSED (<{goal:g}s)")
            ok &= goal is None or t < goal
            print(f"{shape:<12}{len(p.nodes):>8}{routers:>9}{routes:>10}{t:>10.3f}  {verdict}")
        sizes = sorted(times)
        for a, b in itertools.pairwise(sizes):
            ratio = times[b] / times[a] / (b / a)
            print(f"{shape:<12} t({b})/t({a})/{b // a} = {ratio:.2f} (1.0 is linear)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
