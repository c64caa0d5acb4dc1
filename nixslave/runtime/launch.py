"""Boot one or more artifacts, wired by a topology plan, and report what they did.

This is what `nixslave run`, the demo and the tests use: every guest boots at
once, each is checked against the toplevel its artifact promises, the demo
system's ping results are collected, and every qemu and switch is stopped on
the way out.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nixslave import gcroots, nix
from nixslave.backends import Artifact, publish
from nixslave.errors import RunError
from nixslave.netconf import Plan
from nixslave.runtime.run import VMConfig, fleet, vm_config
from nixslave.topology import check_node, host_wiring, switch_argvs

PING_RE = re.compile(r"NIXSLAVE-PING (\S+) (ok|fail)")
PINGS_DONE = "NIXSLAVE-PINGS-DONE"


@dataclass
class GuestResult:
    name: str
    node: str
    toplevel: str
    booted: str
    boot_seconds: float
    pings: dict[str, bool] = field(default_factory=dict)
    console_log: str = ""

    @property
    def ok(self) -> bool:
        return self.booted == self.toplevel and all(self.pings.values())

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def node_of(artifact: Artifact, override: str | None = None) -> str:
    return override or str(artifact.extra.get("node") or artifact.name)


def run_artifacts(
    artifacts: Sequence[Artifact], *, plan: Plan | None = None, nodes: Sequence[str] = (),
    rundir: Path | None = None, timeout: float = 240.0, echo: bool = False,
    wait_pings: bool = True, progress: Callable[[str], None] | None = None,
) -> list[GuestResult]:
    """Boot every artifact at once and wait for its marker (and pings)."""
    say = progress or (lambda _m: None)
    names = [a.name for a in artifacts]
    if len(set(names)) != len(names):
        raise RunError("two artifacts share a machine name", where=", ".join(names),
                       hint="build each machine with its own --name")
    node_names = [node_of(a, nodes[i] if i < len(nodes) else None)
                  for i, a in enumerate(artifacts)]
    own_rundir = rundir is None
    rundir = Path(rundir or tempfile.mkdtemp(prefix="nxs-"))
    rundir.mkdir(parents=True, exist_ok=True)
    configs: list[VMConfig] = []
    helpers: list[tuple[list[str], Path]] = []
    if plan is not None:
        for n in node_names:
            check_node(plan, n)
        helpers = [(argv, ready) for argv, ready in switch_argvs(plan, rundir)]
    for a, n in zip(artifacts, node_names, strict=True):
        net = host_wiring(plan, n, rundir) if plan is not None else []
        configs.append(vm_config(a, net_args=net))
    results: list[GuestResult] = []
    with ExitStack() as held, fleet(configs, rundir, helper_argvs=helpers, echo=echo) as vms:
        for a in artifacts:
            # A rebuild of a running artifact must not sweep its store disk or share.
            if (a.image.parent / publish.LOCK).exists():
                held.callback(os.close, publish.hold(a.image.parent))
        t0 = time.monotonic()
        say(f"booting {', '.join(vms)}")
        for a, n in zip(artifacts, node_names, strict=True):
            vm = vms[a.name]
            booted = vm.wait_boot(timeout=max(1.0, timeout - (time.monotonic() - t0)))
            r = GuestResult(a.name, n, a.toplevel, booted, round(time.monotonic() - t0, 1),
                            console_log=str(vm.console_log))
            with suppress(OSError):
                nix.add_gcroot(f"{a.name}-booted", booted)
                gcroots.record_image(a.name, Path(a.extra.get("published_as", a.image)),
                                     booted)
            say(f"{a.name} booted {booted}")
            results.append(r)
        for a, r in zip(artifacts, results, strict=True):
            # Only the demo system reports pings; a NixOS guest boots and waits.
            if wait_pings and a.extra.get("demo") and a.extra.get("peers"):
                vm = vms[r.name]
                vm.wait_for(PINGS_DONE, timeout=max(1.0, timeout - (time.monotonic() - t0)))
                r.pings = {addr: res == "ok" for addr, res in PING_RE.findall(vm.output())}
    if own_rundir and all(r.ok for r in results):
        # Logs are kept only when something needs explaining.
        shutil.rmtree(rundir, ignore_errors=True)
        for r in results:
            r.console_log = ""
    return results
