"""Switch a running fleet node to another system, or roll it back.

``nixslave switch NODE --demo|--config F|--flake R|--toplevel P``:

1. **Build** the new toplevel from the node's spec with the new source.
2. **Copy** the store paths the guest lacks.  A shared store: into the
   host share (hardlinks, as the share was made).  A container: into its
   machine directory (copies, never hardlinks: see the nspawn backend).  A
   VM disk: a tar streamed over the guest agent (guest-file-write), then
   unpacked by guest-exec, in a mount namespace where /nix/store is
   writable (NixOS mounts it read-only); a guest with Nix also registers
   the paths (``nix-store --load-db``).  A store disk is read-only:
   refused, ``nixslave up`` rebuilds it.
3. **Activate**: ``switch-to-configuration test`` (the host decides the
   next boot, never the guest).  NixOS keeps that script only with
   ``switchable: true`` (slave.nix turns ``system.switch`` off otherwise);
   it runs under ``systemd-run`` as nixos-rebuild does, so that restarting
   qemu-guest-agent cannot kill it.  The demo's script re-applies its
   network and prints ``NIXSLAVE-SWITCH-OK <toplevel>``.
4. **Confirm** through the control channel within the timeout: the agent
   answers, ``/run/current-system`` is the new toplevel, every planned
   address is up, and every peer address that answered before the switch
   answers again.  Otherwise **roll back**: the previous toplevel's
   ``switch-to-configuration test``, or, if the guest no longer answers, a
   restart that boots the previous system.
5. On success, the ``<node>-current`` GC root and the node's next boot
   (direct boot: kernel, initrd and command line of the new toplevel;
   containers: its init) follow the new system.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
import time
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from nixslave import boot, gcroots, nix
from nixslave import root as rootmod
from nixslave.backends import Artifact
from nixslave.errors import NixslaveError, RunError
from nixslave.netconf import Plan
from nixslave.progress import Progress
from nixslave.runtime import fleet as fl
from nixslave.runtime.agent import Control
from nixslave.runtime.control import fleet_state, open_control
from nixslave.runtime.fleetfile import load_fleet
from nixslave.runtime.health import reachable
from nixslave.topology import node_network

TARBALL = "/tmp/nixslave-switch.tar"
DBDUMP = "/tmp/nixslave-switch.db"


def is_demo(toplevel: str) -> bool:
    """The demo system says so in nixos-version; NixOS has systemd-run instead."""
    try:
        return Path(toplevel, "nixos-version").read_text().strip() == "nixslave-demo"
    except OSError:
        return False


def _check_sources(source: dict[str, Any]) -> None:
    given = [k for k, v in source.items() if v]
    if len(given) != 1:
        raise RunError("give exactly one of --demo, --config, --flake, --toplevel",
                       where="switch", hint="e.g. nixslave switch a --toplevel /nix/store/…")


def missing_paths(ctl: Control, paths: list[str]) -> list[str]:
    """The store paths the guest does not have (one exec, whatever the count)."""
    script = "for p in " + " ".join(shlex.quote(p) for p in paths) + \
             '; do [ -e "$p" ] || echo "$p"; done'
    r = ctl.run(["sh", "-c", script], timeout=60)
    if r.exitcode != 0:
        raise RunError(f"cannot list the guest's store: {r.stderr.decode().strip()}",
                       where="switch", hint="is /nix/store mounted in the guest?")
    return [ln for ln in r.stdout.decode().splitlines() if ln.startswith("/nix/store/")]


def tar_paths(paths: list[str]) -> bytes:
    """A tar of store paths, relative to /, links kept as links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for p in sorted(paths):
            tf.add(p, arcname=p.lstrip("/"), recursive=True)
    return buf.getvalue()


def copy_into_vm(ctl: Control, root: rootmod.Root, with_nix: bool, say: Progress) -> int:
    missing = missing_paths(ctl, root.paths)
    if not missing:
        return 0
    data = tar_paths(missing)
    say(f"copying {len(missing)} store paths ({len(data) >> 10} KiB) into the guest")
    ctl.write_file(TARBALL, data)
    unpack = ("mount -o remount,rw,bind /nix/store 2>/dev/null; "
              f"tar -x -C / -f {TARBALL}")
    script = f"unshare -m sh -c {shlex.quote(unpack)}; rc=$?; rm -f {TARBALL}; exit $rc"
    r = ctl.run(["sh", "-c", script], timeout=600)
    if r.exitcode != 0:
        raise RunError(f"unpacking in the guest failed: {r.stderr.decode().strip()[-300:]}",
                       where="switch", hint="is the guest's disk full?")
    if with_nix:
        ctl.write_file(DBDUMP, nix.dump_db(missing).encode())
        r = ctl.run(["sh", "-c", f"nix-store --load-db < {DBDUMP}; rc=$?; rm -f {DBDUMP}; "
                     "exit $rc"], timeout=120)
        if r.exitcode != 0:
            raise RunError("registering the new paths failed", where="switch",
                           hint=r.stderr.decode().strip()[-200:])
    return len(missing)


def copy_on_host(store: Path, root: rootmod.Root, *, container: bool, say: Progress) -> int:
    missing = [p for p in root.paths if not (store / Path(p).name).exists()
               and not (store / Path(p).name).is_symlink()]
    if missing:
        say(f"adding {len(missing)} store paths to {store}")
        if container:
            from nixslave.backends.nspawn import copy_closure
            copy_closure(missing, store)
        else:
            rootmod.copy_paths(missing, store)
    return len(missing)


def _share_servers(info: dict[str, Any]) -> list[int]:
    """The processes that serve a VM's share: qemu (9p) and its virtiofsd, if any."""
    if info.get("domain"):
        raise RunError("a libvirt domain's zero-copy share cannot grow online",
                       where="switch", hint="change the fleet file and run nixslave up")
    pids = [int(info["pid"])] if info.get("pid") else []
    sock = f"--socket-path={info['dir']}/virtiofs"
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with suppress(OSError):
                if sock in d.joinpath("cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
    return pids


def add_to_views(pids: list[int], share: Path, root: rootmod.Root, say: Progress) -> int:
    """Bind the new paths into the share as its servers see it.

    A zero-copy share is a tmpfs of stubs with each closure path bound onto
    one, in the serving process's own mount namespace
    (:func:`nixslave.backends.storebind.closure_view`): nothing added on the
    host shows there.  So the new paths are bound in that namespace the same
    way, read-only, and the tmpfs is made read-only again.
    """
    copied = 0
    for pid in pids:
        view = Path(f"/proc/{pid}/root") / str(share).lstrip("/")
        missing = [p for p in root.paths if not os.path.lexists(view / Path(p).name)]
        if not missing:
            continue
        lines = ["set -e", f"t={shlex.quote(str(share))}",
                 'mount -o remount,rw,nosuid,nodev "$t"']
        for p in missing:
            dst = f'"$t"/{shlex.quote(Path(p).name)}'
            if os.path.islink(p):
                lines.append(f"ln -s {shlex.quote(os.readlink(p))} {dst}")
                continue
            lines.append(f"mkdir {dst}" if os.path.isdir(p) else f": > {dst}")
            lines += [f"mount --rbind {shlex.quote(p)} {dst}",
                      f"mount -o remount,bind,ro {dst}"]
        lines.append('mount -o remount,ro,nosuid,nodev "$t"')
        say(f"binding {len(missing)} store paths into the share served by pid {pid}")
        proc = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c",
                               "\n".join(lines)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunError(f"cannot extend the shared store: {proc.stderr.strip()[-300:]}",
                           where="switch", hint="see the node's qemu.stderr")
        copied = max(copied, len(missing))
    return copied


def activate(ctl: Control, toplevel: str, *, demo: bool, timeout: float
             ) -> tuple[bool | None, str]:
    """``switch-to-configuration test``: (exit 0?, what it said).

    None when the answer was lost: restarting qemu-guest-agent (a changed
    unit) cuts its own guest-exec; whether the switch worked is then for
    the health check to say.
    """
    stc = f"{toplevel}/bin/switch-to-configuration"
    if demo:
        argv = [stc, "test"]
    else:
        # nixos-rebuild runs it the same way: a unit of its own survives the
        # restart of whatever service started it (here qemu-guest-agent).
        argv = ["systemd-run", "--collect", "--no-ask-password", "--pipe", "--quiet",
                "--service-type=exec", f"--unit=nixslave-switch-{int(time.time())}", stc,
                "test"]
    try:
        r = ctl.run(argv, timeout=timeout)
    except NixslaveError as exc:
        return None, exc.what
    said = (r.stdout + r.stderr).decode(errors="replace").strip()
    return r.exitcode == 0, said[-400:]


def healthy(ctl: Control, toplevel: str, own: list[str], peers: set[str]) -> str | None:
    """None when the guest runs ``toplevel`` with its addresses up and peers answering."""
    try:
        ctl.ping(timeout=5)
        r = ctl.run(["sh", "-c", "readlink -f /run/current-system; ip -o addr show"],
                    timeout=30)
    except NixslaveError as exc:
        return f"the control channel failed: {exc.what}"
    out = r.stdout.decode(errors="replace").splitlines()
    if not out or out[0].strip() != toplevel:
        return f"/run/current-system is {out[0].strip() if out else 'unknown'}"
    shown = " ".join(out[1:])
    down = [a for a in own if f" {a}/" not in shown]
    if down:
        return f"planned address {down[0]} is not up"
    try:
        lost = peers - reachable(ctl, sorted(peers))
    except NixslaveError as exc:
        return f"the control channel failed: {exc.what}"
    if lost:
        return f"peer {sorted(lost)[0]} no longer answers"
    return None


def confirm(ctl: Control, toplevel: str, own: list[str], peers: set[str],
            deadline: float) -> str | None:
    """Poll health until ``deadline``; None when confirmed, else the last reason."""
    reason: str | None = "not checked"
    while time.monotonic() < deadline:
        reason = healthy(ctl, toplevel, own, peers)
        if reason is None:
            return None
        time.sleep(1)
    return reason


def _peer_addresses(plan: Plan, state: dict[str, Any], node: str) -> list[str]:
    return [a for n, info in state["nodes"].items() if n != node
            and info.get("state") == "running" for a in plan.peers(node).get(n, [])]


def switch(name: str, node: str, source: dict[str, Any], *, timeout: float = 60.0,
           progress: Progress | None = None) -> dict[str, Any]:
    """Switch ``node`` of fleet ``name`` online; roll back if it does not confirm."""
    say = progress or (lambda _m: None)
    _check_sources(source)
    with fl.ops_lock(name):
        state = fleet_state(name)
        info = state["nodes"].get(node)
        if info is None:
            raise RunError(f"no node {node!r} in fleet {name}", where="switch",
                           hint="see nixslave status")
        if info.get("state") != "running":
            raise RunError(f"the node is {info.get('state')}, not running", where=f"node {node}",
                           hint="nixslave up FLEET.yml first")
        if not state.get("source"):
            raise RunError("the fleet has no file to rebuild from", where=f"fleet {name}",
                           hint="run nixslave up FLEET.yml again")
        fleet = load_fleet(Path(state["source"]))
        plan = fl.make_plan_of(fleet)
        spec = fleet.spec(node, **source)
        art = Artifact.load(Path(info.get("artifact") or fl.artifact_path(
            name, node, fleet.backend(node))))
        container = info["kind"] == "container"
        if not container and spec.boot != "direct":
            raise RunError(f"a {spec.boot} guest's next boot is written into its disk, which "
                           "switch does not do yet", where=f"node {node}",
                           hint="use boot: direct, or change the fleet file and run up")
        if art.layout == "store-disk":
            raise RunError("the store disk is read-only: nothing can be added online",
                           where=f"node {node}",
                           hint="change the fleet file and run nixslave up (it rebuilds)")
        root = rootmod.build(spec, network=replace(node_network(plan, node), peers=()))
        new, old = root.toplevel, info.get("current") or info.get("booted")
        if new == old:
            return {"fleet": name, "node": node, "ok": True, "changed": False,
                    "toplevel": new}
        demo = is_demo(new)
        if not demo and not Path(new, "bin/switch-to-configuration").exists():
            raise RunError("the new system has no switch-to-configuration",
                           where=f"node {node}",
                           hint="set switchable: true for this machine (system.switch.enable)")
        with open_control(name, node, state) as ctl:
            own = list(info.get("addresses", []))
            peers = _peer_addresses(plan, state, node)
            before = reachable(ctl, peers) if peers else set()
            t0 = time.monotonic()
            if art.share_dir is not None and art.extra.get("shareMethod") == "bind":
                copied = add_to_views(_share_servers(info), art.share_dir, root, say)
            elif art.share_dir is not None:
                copied = copy_on_host(art.share_dir, root, container=False, say=say)
            elif container:
                tree = Path(art.image).resolve() / "nix/store"
                copied = copy_on_host(tree, root, container=True, say=say)
            else:
                copied = copy_into_vm(ctl, root, spec.with_nix, say)
            copy_seconds = round(time.monotonic() - t0, 1)
            say(f"activating {new}")
            deadline = time.monotonic() + timeout
            done, said = activate(ctl, new, demo=demo, timeout=timeout)
            reason = confirm(ctl, new, own, before, deadline) if done is not False else \
                f"switch-to-configuration failed: {said or 'no output'}"
            if reason is None:
                _commit(name, node, info, art, spec, new)
                _set_current(name, node, info, new)
                return {"fleet": name, "node": node, "ok": True, "changed": True,
                        "toplevel": new, "previous": old, "copied": copied,
                        "copy_seconds": copy_seconds,
                        "switch_seconds": round(time.monotonic() - t0 - copy_seconds, 1)}
            say(f"not confirmed ({reason}); rolling back to {old}")
            how = _rollback(name, node, ctl, old, own, before, timeout)
            return {"fleet": name, "node": node, "ok": False, "changed": False,
                    "toplevel": old, "attempted": new, "reason": reason, "rolled_back": how,
                    "seconds": round(time.monotonic() - t0, 1)}


def _rollback(name: str, node: str, ctl: Control, old: str | None, own: list[str],
              peers: set[str], timeout: float) -> str:
    """Back to ``old``: its own activation, or a restart when the guest is gone."""
    if old is not None:
        done, _said = activate(ctl, old, demo=is_demo(old), timeout=timeout)
        if done is not False and confirm(ctl, old, own, peers,
                                         time.monotonic() + timeout) is None:
            _set_current(name, node, {}, old)
            return "switched back"
    from nixslave.runtime import libvirt as lv

    if lv.is_libvirt_fleet(name) and node in lv.read_lv(name)["nodes"]:
        lv.restart(name, node)
        deadline = time.monotonic() + 600
        while not lv.status(name)["nodes"][node].get("booted"):
            if time.monotonic() > deadline:
                raise RunError("the restarted guest did not boot", where=f"node {node}",
                               hint=f"nixslave logs {node}")
            time.sleep(1)
        return "restarted"
    fl.request(name, {"op": "restart", "nodes": [node]}, timeout=300)
    fl.wait_markers(name, [node], 600)
    return "restarted"


def _set_current(name: str, node: str, info: dict[str, Any], top: str) -> None:
    """Tell whoever keeps the state which system the node runs now."""
    from nixslave.runtime import libvirt as lv

    if lv.is_libvirt_fleet(name) and node in lv.read_lv(name)["nodes"]:
        lv.set_current(name, node, top)
        return
    with suppress(RunError):
        fl.request(name, {"op": "set-current", "node": node, "toplevel": top})


def _commit(name: str, node: str, info: dict[str, Any], art: Artifact, spec: Any,
            new: str) -> None:
    """GC root and next boot follow the confirmed system."""
    nix.add_gcroot(f"{node}-current", new)
    with suppress(OSError, ValueError):
        gcroots.record_image(node, Path(info.get("artifact") or art.image), new)
    nb: dict[str, Any] = {"build": art.build, "toplevel": new}
    if info["kind"] == "vm":
        nb["append"] = boot.cmdline(new, spec)
    fl.write_json(fl.next_boot_path(name, node), nb, 0o644)
    if info["kind"] == "vm" and info.get("domain"):
        from nixslave.runtime import libvirt as lv
        lv.set_next_boot(name, node, nb)
