"""Glue between a netconf Plan and the rest of nixslave.

netconf stays independent of nixslave; this module is the one place that
turns a node's plan into what its guest needs (network script, NixOS module,
peers to check) and what its host needs (qemu netdevs, switches).
"""

from __future__ import annotations

from pathlib import Path

from nixslave.errors import SpecError
from nixslave.netconf import Plan, load_topology, plan
from nixslave.netconf.renderers import render_nixos, render_sh
from nixslave.netconf.wiring import qemu_switches, qemu_wiring
from nixslave.root import NodeNetwork


def load_plan(path: Path) -> Plan:
    return plan(load_topology(path))


def check_node(p: Plan, node: str) -> None:
    if node not in p.nodes:
        known = ", ".join(sorted(p.nodes)[:8])
        raise SpecError(f"node {node!r} is not in topology {p.name!r}", where="--node",
                        hint=f"pick one of: {known}")


def node_network(p: Plan, node: str) -> NodeNetwork:
    """The guest's side of one node, from the same plan the host wires.

    Pass it to :func:`nixslave.build_root` for a root whose network matches
    what :func:`nixslave.run_artifacts` wires with the same plan
    (``build_image`` with a topology does this itself).  An unknown node
    raises :class:`nixslave.SpecError`.

    Example:

        >>> from nixslave import netconf
        >>> plan = netconf.plan(netconf.load_topology("lab.yml"))
        >>> net = nixslave.node_network(plan, "edge")
        >>> net.peers  # every address of every other node, which the demo guest pings
    """
    check_node(p, node)
    peers = tuple(a for addrs in p.peers(node).values() for a in addrs)
    return NodeNetwork(script=render_sh(p, node), nixos_module=render_nixos(p, node),
                       peers=peers)


def host_wiring(p: Plan, node: str, rundir: Path) -> list[str]:
    check_node(p, node)
    return qemu_wiring(p, node, rundir)


def switch_argvs(p: Plan, rundir: Path) -> list[tuple[list[str], Path]]:
    """vde_switch command lines and the control socket that says each is ready."""
    return [(s.argv, Path(s.sock) / "ctl") for s in qemu_switches(p, rundir)]
