"""A three-node routed lab, built, booted and checked from Python.

This is what another tool writes when it embeds nixslave rather than
calling its command line: the topology is plain data made here, planned
before anything is built; each node is materialized as a qcow2 disk (direct
boot, store in the root file system) in a temporary directory; the runner
boots all three at once, wired by the same plan; and the lab counts as
working only if every guest booted the system its artifact promises and
pinged every address of every other node, which the check reads from the
runner's results, not from console text.

    python examples/embed.py        # about a minute under TCG; exit 0 when the lab works

The machines are the demo system (a NixOS-shaped stand-in that boots
anywhere nixslave's tests run); with nixpkgs, give each MachineSpec a
``config`` or ``flake`` instead of ``demo=True``.  Nothing is left behind:
the images go with the temporary directory, and ``gcroot=False`` keeps the
host's GC roots and image records untouched.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import nixslave
from nixslave import netconf

# An edge machine on a point-to-point link to a router, and an inner machine
# on a LAN behind it.  Documentation address ranges only (RFC 5737 / 3849).
LAB: dict[str, object] = {
    "name": "embedded",
    "pools": {
        "p2p4": "192.0.2.0/24", "lan4": "198.51.100.0/24", "loopback4": "203.0.113.0/24",
        "p2p6": "2001:db8:10::/48", "lan6": "2001:db8:20::/48", "loopback6": "2001:db8:30::/64",
    },
    "nodes": {"edge": {"kind": "vm"}, "gw": {"kind": "router"}, "inner": {"kind": "vm"}},
    "segments": {"lan": {}},
    "links": [["edge", "gw"], ["gw", "lan"], ["inner", "lan"]],
}
BOOT_TIMEOUT = 900.0  # seconds for all three; TCG on a loaded machine is slow


def say(message: str) -> None:
    """Progress from nixslave, on stderr so stdout stays the lab's report."""
    print(f"  . {message}", file=sys.stderr, flush=True)


def build_lab(plan: netconf.Plan, topology_file: Path, work: Path) -> list[nixslave.Artifact]:
    """One qcow2 per node, each with its node's network rendered into the guest."""
    artifacts = []
    for node in sorted(plan.nodes):
        # halt=False: a guest that powered off after its own pings could take
        # the router away while the others still ping through it.
        spec = nixslave.MachineSpec(name=node, demo=True, boot="direct", layout="disk",
                                    halt=False)
        artifacts.append(nixslave.build_image(
            spec, work / f"{node}.qcow2", nixslave.DiskOptions(format="qcow2", gcroot=False),
            topology=topology_file, node=node, progress=say))
    return artifacts


def check(plan: netconf.Plan, results: list[nixslave.GuestResult]) -> list[str]:
    """What is wrong with the lab, as lines; empty when it works.

    ``GuestResult.ok`` alone is not enough: a guest that pinged nothing
    would be ok too.  So each guest's pings are compared with the plan's
    list of every other node's addresses.
    """
    problems = []
    for r in results:
        if r.booted != r.toplevel:
            problems.append(f"{r.name} booted {r.booted}, not {r.toplevel}")
        expected = {a for addrs in plan.peers(r.node).values() for a in addrs}
        if set(r.pings) != expected:
            problems.append(f"{r.name} pinged {sorted(r.pings)}, expected {sorted(expected)}")
        problems += [f"{r.name} cannot reach {a}" for a, ok in r.pings.items() if not ok]
    return problems


def main() -> int:
    try:
        topology = netconf.topology_from_data(LAB, source="embed.py")
        plan = netconf.plan(topology)  # refused here, before anything is built
        with tempfile.TemporaryDirectory(prefix="nixslave-embed-") as tmp:
            work = Path(tmp)
            # build_image reads the topology from a file and records its path,
            # as every later run or upgrade of the artifact re-reads it.
            topology_file = work / "lab.json"
            topology_file.write_text(json.dumps(LAB))
            artifacts = build_lab(plan, topology_file, work)
            # No rundir: the runner makes a short one (unix socket paths are
            # short) and keeps its console logs only if a guest failed.
            results = nixslave.run_artifacts(artifacts, plan=plan, timeout=BOOT_TIMEOUT,
                                             gcroot=False, progress=say)
    except (nixslave.NixslaveError, netconf.NetconfError) as exc:
        print(f"embed: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r.name} ({r.node}) booted {r.booted} in {r.boot_seconds}s")
        for addr, ok in sorted(r.pings.items()):
            print(f"  ping {addr} {'ok' if ok else 'FAIL'}")
    problems = check(plan, results)
    for line in problems:
        print(f"embed: {line}", file=sys.stderr)
    if problems:
        for r in results:
            if r.console_log:
                print(f"embed: {r.name}'s console: {r.console_log}", file=sys.stderr)
        return 1
    print(f"lab {plan.name}: {len(results)} guests booted their systems and reached every peer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
