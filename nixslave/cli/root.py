"""`nixslave root build|prepare`."""

from __future__ import annotations

from pathlib import Path

import typer

from nixslave import root as rootmod
from nixslave.cli._common import emit_json, progress_printer, spec_data
from nixslave.spec import MachineSpec

app = typer.Typer(no_args_is_help=True)

NAME = typer.Option("demo", "--name", "-n", help="Machine name ([a-z][a-z0-9-]{0,47}).")
DEMO = typer.Option(False, "--demo", help="Use the built-in demo system.")
CONFIG = typer.Option(None, "--config", help="A NixOS configuration file.")
NIXPKGS = typer.Option(None, "--nixpkgs", help="nixpkgs checkout for --config.")
TOPLEVEL = typer.Option(None, "--toplevel", help="An already built system toplevel.")
FLAKE = typer.Option(None, "--flake", help="A flake reference, path#name.")
WITH_NIX = typer.Option(False, "--with-nix", help="Give the guest a Nix database.")
JSON = typer.Option(False, "--json", help="Machine-readable output.")


def _build(name: str, demo: bool, config: Path | None, nixpkgs: Path | None,
           toplevel: str | None, flake: str | None, with_nix: bool,
           quiet: bool) -> rootmod.Root:
    spec = MachineSpec.parse(spec_data(name=name, demo=demo, config=config, nixpkgs=nixpkgs,
                                       toplevel=toplevel, flake=flake, with_nix=with_nix))
    return rootmod.build(spec, progress=progress_printer(quiet))


@app.command("build")
def build(name: str = NAME, demo: bool = DEMO, config: Path = CONFIG, nixpkgs: Path = NIXPKGS,
          toplevel: str = TOPLEVEL, flake: str = FLAKE, with_nix: bool = WITH_NIX,
          json_out: bool = JSON) -> None:
    """Build a profile-less system and print its toplevel and closure size."""
    r = _build(name, demo, config, nixpkgs, toplevel, flake, with_nix, json_out)
    if json_out:
        emit_json(r.to_json())
    else:
        print(r.toplevel)
        typer.echo(f"{len(r.closure)} paths, {r.nar_size / 2**20:.1f} MiB", err=True)


@app.command("prepare")
def prepare(outdir: Path = typer.Argument(..., help="New directory for the root tree."),
            name: str = NAME, demo: bool = DEMO, config: Path = CONFIG,
            nixpkgs: Path = NIXPKGS, toplevel: str = TOPLEVEL, flake: str = FLAKE,
            with_nix: bool = WITH_NIX, json_out: bool = JSON) -> None:
    """Populate OUTDIR with the closure, /etc/NIXOS, the system link and the manifest."""
    rootmod.check_new_dir(outdir)
    r = _build(name, demo, config, nixpkgs, toplevel, flake, with_nix, json_out)
    tree = r.prepare(outdir, progress=progress_printer(json_out))
    if json_out:
        emit_json({"tree": str(tree), "toplevel": r.toplevel, "closurePaths": len(r.closure),
                   "narSize": r.nar_size})
    else:
        print(tree)


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a machine spec."""
    from nixslave.spec import json_schema

    emit_json(json_schema())
