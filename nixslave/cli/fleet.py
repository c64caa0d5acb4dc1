"""`nixslave up|status|console|logs|exec|switch|down` and `nixslave fleet schema|validate`.

A fleet is named by its file (``lab.yml``) or its name (``lab``); a node
by its name, looked up among the running fleets (``--fleet`` when two have
one of that name).
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from nixslave.cli._common import emit_json, err_console, progress_printer
from nixslave.errors import RunError
from nixslave.runtime import fleet as fl
from nixslave.runtime.fleetfile import json_schema, load_fleet
from nixslave.spec import valid_name

app = typer.Typer(no_args_is_help=True, help="Fleet files: schema and validation.")
DETACH = b"\x1d"  # Ctrl-]
FILE_SUFFIXES = (".yml", ".yaml", ".json", ".toml")


def _is_file(arg: str) -> bool:
    return arg.endswith(FILE_SUFFIXES) or os.sep in arg or Path(arg).is_file()


def fleet_name(arg: str | None) -> str:
    """A fleet file or name; none: the one running fleet."""
    if arg is None:
        names = fl.running_fleets()
        if len(names) == 1:
            return names[0]
        raise RunError("no fleet is running" if not names else
                       f"{len(names)} fleets are running: {', '.join(names)}",
                       where="fleet", hint="name one (its file or its name)")
    if _is_file(arg):
        return load_fleet(Path(arg)).name
    return valid_name(arg, "fleet")


def node_fleet(node: str, fleet: str | None) -> tuple[str, dict[str, Any]]:
    """The fleet that runs ``node`` and its state."""
    valid_name(node, "node")
    names = [fleet_name(fleet)] if fleet else fl.running_fleets()
    found = []
    for name in names:
        try:
            state = _engine_state(name)
        except RunError:
            continue
        if node in state.get("nodes", {}):
            found.append((name, state))
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunError(f"no running fleet has a node {node!r}", where="node",
                       hint="see nixslave status")
    raise RunError(f"fleets {', '.join(n for n, _ in found)} all have a node {node!r}",
                   where="node", hint="pick one with --fleet")


def _engine_state(name: str) -> dict[str, Any]:
    from nixslave.runtime.control import fleet_state
    return fleet_state(name)


def _uptime(node: dict[str, Any]) -> float | None:
    return round(time.time() - node["started"], 1) if node.get("started") and \
        node.get("state") in ("booting", "running") else None


def up(
    fleet_file: Path = typer.Argument(..., help="The fleet file (a topology with machines)."),
    engine: str = typer.Option("qemu", "--engine", help="qemu (a supervisor of ours) or "
                               "libvirt."),
    connect: str = typer.Option(None, "--connect", help="libvirt URI (default qemu:///system)."),
    timeout: float = typer.Option(600, "--timeout", help="Seconds to wait for boot markers."),
    ping: bool = typer.Option(False, "--ping", help="Then check that every node reaches "
                              "every planned address of every other node."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Build what is missing or stale and start (or rewire) the fleet's nodes."""
    fleet = load_fleet(fleet_file)
    say = progress_printer(json_out)
    if engine == "libvirt":
        from nixslave.runtime import libvirt as lv
        result = lv.up(fleet, uri=connect, timeout=timeout, progress=say)
    elif engine == "qemu":
        if connect:
            raise RunError("--connect applies to --engine libvirt", where="--connect",
                           hint="drop it, or add --engine libvirt")
        result = fl.up(fleet, timeout=timeout, progress=say)
    else:
        raise RunError(f"unknown engine {engine!r}", where="--engine", hint="qemu or libvirt")
    if ping:
        from nixslave.runtime.health import ping_matrix
        errors: dict[str, str] = {}
        result["pings"] = ping_matrix(fleet, _engine_state(fleet.name), progress=say,
                                      errors=errors)
        result["ping_errors"] = errors
    if json_out:
        emit_json(result)
    else:
        _print_state(result["state"])
        rep = result["report"]
        err_console.print("; ".join(f"{k}: {', '.join(rep[k])}" for k in
                                    ("started", "restarted", "stopped") if rep[k])
                          or "no change", highlight=False)
    if ping and not all(ok for peers in result["pings"].values() for ok in peers.values()):
        raise typer.Exit(1)


def _print_state(state: dict[str, Any]) -> None:
    t = Table(title=f"fleet {state.get('fleet')} ({state.get('engine', 'qemu')})")
    for col in ("node", "kind", "state", "pid", "uptime", "booted", "addresses"):
        t.add_column(col)
    for n, info in sorted(state.get("nodes", {}).items()):
        up_s = _uptime(info)
        booted = info.get("current") or info.get("booted") or ""
        t.add_row(n, info.get("kind", ""), info.get("state", ""), str(info.get("pid") or ""),
                  f"{up_s:.0f}s" if up_s is not None else "", Path(booted).name,
                  " ".join(info.get("addresses", [])))
    err_console.print(t)


def status(
    fleet: str = typer.Argument(None, help="Fleet file or name (default: the running one)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Each node's state, pid, uptime, booted toplevel and planned addresses."""
    names = [fleet_name(fleet)] if fleet else fl.running_fleets()
    states = []
    for name in names:
        state = _engine_state(name)
        for info in state.get("nodes", {}).values():
            info["uptime"] = _uptime(info)
        states.append(state)
    if json_out:
        emit_json(states[0] if fleet else {"fleets": states})
        return
    if not states:
        err_console.print("no fleet is running")
    for state in states:
        _print_state(state)


def console(
    node: str = typer.Argument(..., help="The node."),
    fleet: str = typer.Option(None, "--fleet", help="Fleet file or name."),
) -> None:
    """Attach to a node's serial console; Ctrl-] detaches."""
    name, state = node_fleet(node, fleet)
    info = state["nodes"][node]
    if state.get("engine") == "libvirt":
        from nixslave.runtime import libvirt as lv
        raise typer.Exit(lv.console(name, node))
    if info["kind"] == "container":
        err_console.print(f"{node} is a container: its console is read-only; following it "
                          "(Ctrl-C stops)", highlight=False)
        _follow(Path(info["dir"]) / "console.log", name, node, from_start=False)
        return
    err_console.print(f"connected to {node}'s console; Ctrl-] detaches", highlight=False)
    attach(Path(info["dir"]) / "console.sock")


def attach(path: Path) -> None:
    """Relay stdin/stdout to a console socket until the detach key."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError as exc:
            raise RunError(f"cannot attach: {exc.strerror or exc}", where=str(path),
                           hint="is the node running?") from None
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if os.isatty(fd) else None
        if saved is not None:
            tty.setraw(fd)
        try:
            while True:
                ready = select.select([fd, s], [], [])[0]
                if s in ready:
                    data = s.recv(65536)
                    if not data:
                        break
                    os.write(sys.stdout.fileno(), data)
                if fd in ready:
                    data = os.read(fd, 1024)
                    if not data or DETACH in data:
                        s.sendall(data.split(DETACH)[0])
                        break
                    s.sendall(data)
        finally:
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    sys.stderr.write("\r\ndetached\r\n")


def _follow(log: Path, name: str, node: str, *, from_start: bool = True) -> None:
    pos = 0 if from_start else (log.stat().st_size if log.exists() else 0)
    checked = time.monotonic()
    try:
        while True:
            try:
                with open(log, "rb") as f:
                    f.seek(pos)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            if data:
                pos += len(data)
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            elif time.monotonic() - checked > 2:
                checked = time.monotonic()
                if not fl.supervisor_alive(name):
                    return
            time.sleep(0.2)
    except KeyboardInterrupt:
        return


def logs(
    node: str = typer.Argument(..., help="The node."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new output."),
    fleet: str = typer.Option(None, "--fleet", help="Fleet file or name."),
) -> None:
    """Print a node's console log (this boot)."""
    name, state = node_fleet(node, fleet)
    info = state["nodes"][node]
    log = Path(info.get("console_log") or Path(info["dir"]) / "console.log")
    if follow:
        _follow(log, name, node)
        return
    try:
        sys.stdout.buffer.write(log.read_bytes())
    except FileNotFoundError:
        raise RunError("no console log yet", where=str(log), hint="is the node running?"
                       ) from None


def exec_(
    node: str = typer.Argument(..., help="The node."),
    command: list[str] = typer.Argument(..., help="The command, after --."),
    fleet: str = typer.Option(None, "--fleet", help="Fleet file or name."),
    timeout: float = typer.Option(60, "--timeout", help="Seconds the command may run."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Run a command in a node through its control channel; exits with its code."""
    from nixslave.runtime.control import open_control

    name, state = node_fleet(node, fleet)
    with open_control(name, node, state) as ctl:
        r = ctl.run(command, timeout=timeout)
    if json_out:
        emit_json({"node": node, **r.to_json()})
    else:
        sys.stdout.buffer.write(r.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(r.stderr)
        sys.stderr.flush()
    if r.exitcode:
        raise typer.Exit(r.exitcode)


def switch(
    node: str = typer.Argument(..., help="The node."),
    demo: bool = typer.Option(False, "--demo", help="The demo system (rebuilt)."),
    config: Path = typer.Option(None, "--config", help="A NixOS configuration file."),
    flake: str = typer.Option(None, "--flake", help="A flake reference, path#name."),
    toplevel: str = typer.Option(None, "--toplevel", help="An already built toplevel."),
    fleet: str = typer.Option(None, "--fleet", help="Fleet file or name."),
    timeout: float = typer.Option(60, "--timeout", help="Seconds to confirm the new system "
                                  "before rolling back."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Switch a running node online; roll back if the new system does not confirm."""
    from nixslave.runtime.switch import switch as do_switch

    name, _state = node_fleet(node, fleet)
    source = {"demo": demo, "config": config.resolve() if config else None, "flake": flake,
              "toplevel": toplevel}
    result = do_switch(name, node, source, timeout=timeout,
                       progress=progress_printer(json_out))
    if json_out:
        emit_json(result)
    elif result["ok"]:
        err_console.print(f"{node} runs {result['toplevel']}" +
                          ("" if result["changed"] else " (unchanged)"), highlight=False)
    else:
        err_console.print(f"{node}: switch to {result['attempted']} failed: {result['reason']}"
                          f"; rolled back to {result['toplevel']} ({result['rolled_back']})",
                          highlight=False)
    if not result["ok"]:
        raise typer.Exit(1)


def down(
    fleet: str = typer.Argument(None, help="Fleet file or name (default: the running one)."),
    nodes: list[str] = typer.Argument(None, help="Only these nodes."),
    timeout: float = typer.Option(20, "--timeout", help="Seconds a guest gets to power off "
                                  "before it is killed."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Power off a fleet (or some of its nodes); nothing of it is left running."""
    name = fleet_name(fleet)
    for n in nodes or []:
        valid_name(n, "node")
    from nixslave.runtime import libvirt as lv
    say = progress_printer(json_out)
    if lv.is_libvirt_fleet(name):
        result = lv.down(name, nodes or None, timeout=timeout, progress=say)
    else:
        result = fl.down(name, nodes or None, timeout=timeout, progress=say)
    if json_out:
        emit_json(result)


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of fleet files."""
    json.dump(json_schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


@app.command("validate")
def validate(
    fleet_file: Path = typer.Argument(..., help="The fleet file."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check a fleet file: topology, machines, every node's spec."""
    fleet = load_fleet(fleet_file)
    specs = {n: fleet.spec(n).to_json() | {"backend": fleet.backend(n)} for n in fleet.nodes()}
    if json_out:
        emit_json({"fleet": fleet.name, "machines": specs})
    else:
        for n, s in specs.items():
            err_console.print(f"{n}: {s['backend']}, {s['layout']}, {s['boot']}, "
                              f"{s['memory']} MiB", highlight=False)
