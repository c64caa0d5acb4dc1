"""`nixslave gc list|prune|remove`."""

from __future__ import annotations

import typer

from nixslave import gcroots
from nixslave.cli._common import emit_json, err_console
from nixslave.spec import valid_name

app = typer.Typer(no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Machine-readable output.")


@app.command("list")
def list_(names: list[str] = typer.Argument(None, help="Only these machines."),
          json_out: bool = JSON) -> None:
    """Machines whose closures the host keeps alive, and their images."""
    for n in names or ():
        valid_name(n, "gc list")
    ms = [m for m in gcroots.machines() if not names or m.name in names]
    if json_out:
        emit_json([m.to_json() for m in ms])
        return
    for m in ms:
        state = "orphaned" if m.orphaned else f"{len(m.images_present)} image(s)"
        err_console.print(f"[bold]{m.name}[/bold] ({state})", highlight=False)
        for kind, path in m.roots.items():
            print(f"  {kind:<8} {path}")


@app.command("prune")
def prune(dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would go."),
          json_out: bool = JSON) -> None:
    """Drop the roots of machines whose images are all gone."""
    gone = gcroots.prune(dry_run=dry_run)
    if json_out:
        emit_json({"pruned": gone, "dryRun": dry_run})
    else:
        for name in gone:
            print(f"{'would prune' if dry_run else 'pruned'} {name}")


@app.command("remove")
def remove(name: str = typer.Argument(..., help="Machine name.")) -> None:
    """Drop one machine's roots now (its paths go at the next host GC)."""
    for root in gcroots.remove_machine(valid_name(name, "gc remove")):
        print(f"removed {root}")


@app.command("sweep")
def sweep(dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would go."),
          json_out: bool = JSON) -> None:
    """Remove what killed nixslave processes left in the run directory."""
    from nixslave import rundir

    everything = rundir.entries()
    gone = rundir.sweep(dry_run=dry_run)
    if json_out:
        emit_json({"runDir": str(rundir.base()), "dryRun": dry_run,
                   "removed": [str(p) for p in gone],
                   "inUse": [str(p) for p, stale in everything if not stale]})
        return
    for p in gone:
        print(f"{'would remove' if dry_run else 'removed'} {p}")
