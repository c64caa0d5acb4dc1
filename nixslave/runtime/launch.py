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
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nixslave import gcroots, nix
from nixslave.backends import Artifact, publish
from nixslave.errors import RunError
from nixslave.netconf import Plan
from nixslave.progress import Progress
from nixslave.runtime.run import VMConfig, fleet, vm_config
from nixslave.topology import check_node, host_wiring, switch_argvs

PING_RE = re.compile(r"NIXSLAVE-PING (\S+) (ok|fail)")
PINGS_DONE = "NIXSLAVE-PINGS-DONE"


@dataclass
class GuestResult:
    """What one guest did in :func:`run_artifacts`: what it booted and whom it reached.

    ``booted`` is the toplevel the guest itself printed in its boot marker,
    so ``ok`` means the guest runs exactly the system its artifact promises
    and, for the demo system, reached every address it pinged.  ``pings``
    maps each peer address to its result (empty for NixOS guests, which do
    not ping).  ``console_log`` is the serial console's file, kept only
    when some guest was not ok.

    Example:

        >>> for r in nixslave.run_artifacts(artifacts, plan=plan):
        ...     unreached = [addr for addr, ok in r.pings.items() if not ok]
        ...     print(r.name, r.booted, f"{r.boot_seconds}s", unreached or "all reached")
    """

    name: str
    node: str
    toplevel: str
    booted: str
    boot_seconds: float
    pings: dict[str, bool] = field(default_factory=dict)
    console_log: str = ""

    @property
    def ok(self) -> bool:
        """It booted exactly the promised toplevel and reached every address it pinged."""
        return self.booted == self.toplevel and all(self.pings.values())

    def to_json(self) -> dict[str, object]:
        """Every field and ``ok``, as plain JSON types (what ``nixslave run --json`` prints)."""
        return {**asdict(self), "ok": self.ok}


def node_of(artifact: Artifact, override: str | None = None) -> str:
    return override or str(artifact.extra.get("node") or artifact.name)


def run_artifacts(
    artifacts: Sequence[Artifact], *, plan: Plan | None = None, nodes: Sequence[str] = (),
    rundir: Path | None = None, timeout: float = 240.0, echo: bool = False,
    wait_pings: bool = True, gcroot: bool = True, progress: Progress | None = None,
) -> list[GuestResult]:
    """Boot every artifact at once, wait for its marker (and pings), stop them all.

    Every guest boots at the same time (qemu with KVM when a real boot
    proves it works, TCG otherwise), wired by ``plan`` when one is given:
    ``nodes`` names each artifact's node, by default the node it was built
    for.  Each guest must print the toplevel its artifact promises within
    ``timeout`` seconds (counted from the first start), else a
    :class:`nixslave.RunError` is raised; a guest that boots the
    wrong system is reported, not raised (``GuestResult.ok`` is false).

    The demo system pings every peer address of its node after booting;
    those results are collected unless ``wait_pings`` is false.  ``echo``
    copies the serial consoles to stderr, each line prefixed with its guest.
    ``gcroot`` keeps each booted system alive in the host's store (the
    ``<name>-booted`` GC root, which offline upgrades and repairs rely on)
    and records the image; pass false for throwaway guests, which then
    leave no host state behind (build them with ``DiskOptions(gcroot=False)``).

    ``rundir`` holds sockets and console logs; unix socket paths are short,
    so keep it short too.  Without one, a temporary directory is used and
    removed when every guest was ok.  Whatever happens, every qemu and
    switch is stopped before this returns or raises.

    Example:

        >>> import nixslave
        >>> from nixslave import netconf
        >>> plan = netconf.plan(netconf.load_topology("lab.yml"))
        >>> arts = [nixslave.Artifact.load(Path(f"{n}.qcow2")) for n in ("a", "b")]
        >>> results = nixslave.run_artifacts(arts, plan=plan, timeout=300)
        >>> all(r.ok for r in results)
        True
    """
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
            if gcroot:
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
