"""Reachability checked from inside the guests, through their control channels.

The demo guests of a fleet are built without a ping list (so a new node
does not change every other node's system); the host asks each guest to
ping instead, which works the same for NixOS (qemu-ga) and containers.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from nixslave.errors import NixslaveError
from nixslave.netconf import plan as make_plan
from nixslave.progress import Progress
from nixslave.runtime.agent import Control
from nixslave.runtime.fleetfile import Fleet


def reachable(ctl: Control, addresses: list[str], timeout: float = 90.0) -> set[str]:
    """The addresses that answer a ping from inside the guest (all in parallel).

    Up to three tries each, so a neighbour table still being filled does
    not count as a loss.
    """
    if not addresses:
        return set()
    lines = []
    for a in addresses:
        q = shlex.quote(a)
        one = (f"ping -6 -c 1 -W 1 {q} || ping6 -c 1 -W 1 {q}" if ":" in a
               else f"ping -c 1 -W 1 {q}")
        lines.append(f"( for i in 1 2 3; do {one} && exit 0; done; exit 1 ) >/dev/null 2>&1 "
                     f"&& echo {q} &")
    r = ctl.run(["sh", "-c", "\n".join([*lines, "wait"])], timeout=timeout)
    return set(r.stdout.decode().split()) & set(addresses)


def ping_matrix(fleet: Fleet, state: dict[str, Any], *, rounds: int = 3,
                progress: Progress | None = None,
                errors: dict[str, str] | None = None) -> dict[str, dict[str, bool]]:
    """For each running node: every planned address of every other running node.

    Addresses that do not answer get ``rounds`` tries in all (a guest that
    has just booted may still be filling its neighbour tables, a loaded host
    may answer an agent late); the last error of a node is reported.
    """
    from nixslave.runtime.control import open_control

    say = progress or (lambda _m: None)
    plan = make_plan(fleet.topology)
    running = [n for n, i in state["nodes"].items() if i.get("state") == "running"]
    out: dict[str, dict[str, bool]] = {}
    for node in running:
        peers = [a for n in running if n != node for a in plan.peers(node).get(n, [])]
        got: set[str] = set()
        for attempt in range(rounds):
            missing = [a for a in peers if a not in got]
            if not missing:
                break
            if attempt:
                time.sleep(2)
            try:
                with open_control(fleet.name, node, state) as ctl:
                    got |= reachable(ctl, missing)
            except NixslaveError as exc:
                say(f"{node}: {exc.what}")
                if errors is not None:
                    errors[node] = str(exc)
        out[node] = {a: a in got for a in peers}
        bad = [a for a, ok in out[node].items() if not ok]
        say(f"{node}: {len(peers) - len(bad)}/{len(peers)} peer addresses answer"
            + (f" (not: {', '.join(bad)})" if bad else ""))
    return out
