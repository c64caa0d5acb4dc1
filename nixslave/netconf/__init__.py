"""VM-agnostic network topologies: one description, planned once, wired onto
qemu, VirtualBox, systemd-nspawn, libvirt or network namespaces, and rendered
into the guest's own configuration so both sides agree on names, MACs and
addresses.

This package imports nothing from the rest of nixslave so other tools can
use it alone.  Its public names are those in ``__all__``; its modules are
internal.

Example:

    >>> from nixslave import netconf
    >>> topo = netconf.topology_from_data({
    ...     "name": "lab", "nodes": {"a": {}, "gw": {"kind": "router"}, "b": {}},
    ...     "segments": {"lan": {}}, "links": [["a", "gw"], ["gw", "lan"], ["b", "lan"]]})
    >>> p = netconf.plan(topo)
    >>> [(i.name, i.mac) for i in p.node("gw").interfaces]
    >>> p.peers("a")  # every address a must reach, by node
"""

from __future__ import annotations

from .errors import NetconfError, TopologyError, WiringError
from .load import load_topology, topology_from_data
from .model import Topology, json_schema
from .plan import HostEntry, InterfacePlan, NetworkPlan, NodePlan, Plan, Route, plan

__all__ = [
    "HostEntry",
    "InterfacePlan",
    "NetconfError",
    "NetworkPlan",
    "NodePlan",
    "Plan",
    "Route",
    "Topology",
    "TopologyError",
    "WiringError",
    "json_schema",
    "load_topology",
    "plan",
    "topology_from_data",
]
