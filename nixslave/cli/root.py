"""`nixslave root build|prepare`."""

from __future__ import annotations

from pathlib import Path

import typer

from nixslave import root as rootmod
from nixslave.cli._common import emit_json, progress_printer, spec_data
from nixslave.spec import MachineSpec

app = typer.Typer(no_args_is_help=True)

NAME = typer.Option("demo", "--name", "-n", help="Machine name (a-z, 0-9, -; at most 48).")
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


@app.command("module")
def module(
    name: str = typer.Option(None, "--name", "-n", help="Machine name (default: the node, "
                             "else demo)."),
    layout: str = typer.Option("disk", "--layout", help="disk, store-disk or shared."),
    boot: str = typer.Option("direct", "--boot", help="direct, bios or uefi."),
    share: str = typer.Option("9p", "--share", help="Shared store transport: 9p or virtiofs."),
    store_fs: str = typer.Option(None, "--store-fs", help="Store disk file system: erofs "
                                 "(default), squashfs or ext4."),
    with_nix: bool = WITH_NIX,
    ssh_key: list[str] = typer.Option(None, "--ssh-key", help="Root's authorized key "
                                      "(repeatable)."),
    topology: Path = typer.Option(None, "--topology", help="Topology file (YAML/JSON/TOML)."),
    node: str = typer.Option(None, "--node", help="This machine's node in the topology."),
    json_out: bool = JSON,
) -> None:
    """Print the complete guest module (slave, machine, network) for your own flake.

    Import the printed file beside your configuration; it yields to it the way
    nixpkgs' qemu-vm.nix does (see docs/real-nixos.md).
    """
    from nixslave.nix import instantiate_parse
    from nixslave.nixos import guest_module

    if node is not None and topology is None:
        raise typer.BadParameter("--node needs --topology")
    # The module does not depend on where the system comes from; any one
    # source satisfies the spec's validation.
    spec = MachineSpec.parse(spec_data(
        name=name if name is not None else (node or "demo"), demo=True, config=None,
        nixpkgs=None, toplevel=None, flake=None, layout=layout, boot=boot, share=share,
        store_fs=store_fs, with_nix=with_nix, ssh_keys=tuple(ssh_key or ())))
    network = None
    if topology is not None:
        from nixslave.topology import load_plan, node_network

        network = node_network(load_plan(topology), node or spec.name).nixos_module
    text = guest_module(spec, network_module=network)
    instantiate_parse(text)
    if json_out:
        emit_json({"name": spec.name, "layout": spec.layout, "boot": spec.boot,
                   "module": text})
    else:
        typer.echo(text, nl=False)
