"""Synthetic topologies for tests and benchmarks.

Generated data goes through the same model as files do, so a benchmark
measures exactly what a user's topology costs.
"""

from __future__ import annotations

import random
from typing import Any


def leaf_spine(n: int, *, spines: int | None = None, hosts_per_leaf: int = 48) -> dict[str, Any]:
    """About ``n`` nodes: spines, leaves with one rack LAN each, and servers."""
    leaves = max(1, n // (hosts_per_leaf + 1))
    spines = spines or max(2, min(8, leaves // 10 or 2))
    nodes: dict[str, Any] = {f"spine{i}": {"kind": "router"} for i in range(spines)}
    segments: dict[str, Any] = {}
    links: list[Any] = []
    for j in range(leaves):
        nodes[f"leaf{j}"] = {"kind": "router"}
        segments[f"rack{j}"] = {}
        links += [[f"spine{i}", f"leaf{j}"] for i in range(spines)]
        links.append([f"leaf{j}", f"rack{j}"])
    k = 0
    while len(nodes) < n:
        nodes[f"srv{k}"] = {"kind": "vm"}
        links.append([f"srv{k}", f"rack{k % leaves}"])
        k += 1
    return {"name": f"leafspine{n}", "nodes": nodes, "segments": segments, "links": links}


def random_topology(n: int, *, seed: int = 1, router_ratio: float = 0.02) -> dict[str, Any]:
    """A connected random router core (a random tree plus extra edges), a
    LAN per router, and end systems on random LANs; some are multi-homed
    and some hang off a router on their own p2p link."""
    rnd = random.Random(seed)
    nr = max(2, int(n * router_ratio))
    nodes: dict[str, Any] = {f"r{i}": {"kind": "router"} for i in range(nr)}
    segments: dict[str, Any] = {f"lan{i}": {} for i in range(nr)}
    links: list[Any] = [[f"r{i}", f"lan{i}"] for i in range(nr)]
    for i in range(1, nr):
        links.append([f"r{rnd.randrange(i)}", f"r{i}"])
    for _ in range(nr // 4):
        a, b = rnd.sample(range(nr), 2)
        links.append([f"r{a}", f"r{b}"])
    kinds = ["vm", "container", "host"]
    for k in range(n - nr):
        name = f"h{k}"
        nodes[name] = {"kind": rnd.choice(kinds)}
        roll = rnd.random()
        if roll < 0.1:
            links.append([name, f"r{rnd.randrange(nr)}"])
        else:
            first = rnd.randrange(nr)
            links.append([name, f"lan{first}"])
            if roll > 0.9 and nr > 1:
                second = (first + 1 + rnd.randrange(nr - 1)) % nr
                links.append([name, f"lan{second}"])
    return {"name": f"random{n}", "nodes": nodes, "segments": segments, "links": links}
