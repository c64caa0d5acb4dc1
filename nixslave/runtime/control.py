"""The control channel of one fleet node, whatever engine runs it.

* a qemu VM of the qemu engine: the guest agent on ``<node dir>/qga.sock``;
* a libvirt domain: the same protocol through libvirt's own agent channel;
* a container: ``nsenter`` into its PID 1's namespaces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nixslave.errors import RunError
from nixslave.runtime.agent import QGA, Control, NsenterControl


def fleet_state(fleet: str) -> dict[str, Any]:
    """The fleet's state from whichever engine runs it."""
    from nixslave.runtime import fleet as fl
    from nixslave.runtime import libvirt as lv

    return lv.status(fleet) if lv.is_libvirt_fleet(fleet) else fl.status(fleet)


@contextlib.contextmanager
def open_control(fleet: str, node: str, state: dict[str, Any], *,
                 timeout: float = 30.0) -> Iterator[Control]:
    """Connect to ``node``'s control channel (closed on the way out)."""
    info = state["nodes"].get(node)
    where = f"node {node}"
    if info is None:
        raise RunError(f"no node {node!r} in fleet {fleet}", where=where,
                       hint="see nixslave status")
    if info.get("state") not in ("running", "booting"):
        raise RunError(f"the node is {info.get('state')}", where=where,
                       hint="start it with nixslave up")
    if info["kind"] == "container":
        if not info.get("init_pid"):
            raise RunError("the container's init was not found", where=where,
                           hint="nixslave logs " + node)
        yield NsenterControl(int(info["init_pid"]), where=where)
        return
    if state.get("engine") == "libvirt":
        from nixslave.runtime.libvirt import libvirt_agent

        q = libvirt_agent(state, node, where=where)
    else:
        if not info.get("agent"):
            raise RunError("this VM has no guest agent", where=where,
                           hint="set agent: true for it in the fleet file and run up")
        q = QGA.connect(Path(info["dir"]) / "qga.sock", where=where, timeout=timeout)
    try:
        yield q
    finally:
        q.close()
