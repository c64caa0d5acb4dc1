"""One call from a spec (and optionally a topology node) to a bootable artifact.

The node's plan is rendered into the guest (network script or NixOS module)
and recorded in the artifact, so the host wires exactly the NICs the guest
expects when it later runs the artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.backends.disk import DiskBackend, DiskOptions
from nixslave.spec import MachineSpec
from nixslave.topology import load_plan, node_network

BACKENDS = {"disk": DiskBackend}


def build_image(
    spec: MachineSpec, out: Path, options: DiskOptions | None = None, *,
    topology: Path | None = None, node: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Artifact:
    network = None
    extra: dict[str, object] = {}
    if topology is not None:
        plan = load_plan(topology)
        node = node or spec.name
        network = node_network(plan, node)
        extra = {"topology": str(Path(topology).resolve()), "node": node,
                 "peers": list(network.peers)}
    root = rootmod.build(spec, network=network, progress=progress)
    return BACKENDS["disk"]().materialize(root, out, options, progress=progress, extra=extra)
