"""`nixslave run ARTIFACT... [--topology FILE]`."""

from __future__ import annotations

from pathlib import Path

import typer

from nixslave.backends import Artifact
from nixslave.cli._common import emit_json, err_console, progress_printer
from nixslave.runtime.launch import run_artifacts
from nixslave.topology import load_plan


def run(
    artifacts: list[Path] = typer.Argument(..., help="Images built by nixslave image build."),
    topology: Path = typer.Option(None, "--topology", help="Wire NICs by this topology "
                                  "(default: the one each image was built with)."),
    node: list[str] = typer.Option(None, "--node", help="Node of each artifact, in order."),
    timeout: float = typer.Option(300, "--timeout", help="Seconds to wait for each boot."),
    console: bool = typer.Option(False, "--console", help="Echo the serial consoles."),
    rundir: Path = typer.Option(None, "--rundir", help="Sockets and console logs (short path)."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Boot artifacts under qemu, wait for their boot marker, then shut them down."""
    arts = [Artifact.load(p) for p in artifacts]
    topo = topology
    if topo is None:
        recorded = {a.extra.get("topology") for a in arts} - {None}
        if len(recorded) == 1:
            topo = Path(str(recorded.pop()))
    plan = load_plan(topo) if topo is not None else None
    results = run_artifacts(arts, plan=plan, nodes=node or [], rundir=rundir,
                            timeout=timeout, echo=console,
                            progress=progress_printer(json_out))
    if json_out:
        emit_json({"ok": all(r.ok for r in results), "guests": [r.to_json() for r in results]})
    else:
        for r in results:
            err_console.print(f"[bold]{r.name}[/bold] booted {r.booted} in {r.boot_seconds}s",
                              highlight=False)
            for addr, ok in r.pings.items():
                mark = "[green]ok[/green]" if ok else "[red]fail[/red]"
                err_console.print(f"  ping {addr}: {mark}", highlight=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
