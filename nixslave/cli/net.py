"""`nixslave net`: plan, render and draw network topologies.

Errors are netconf errors and reach the main CLI's handler unchanged, which
prints them as one line and exits 2.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
import yaml

from nixslave.cli._common import emit_json
from nixslave.netconf import NetconfError, Plan, TopologyError, json_schema, load_topology
from nixslave.netconf import plan as make_plan
from nixslave.netconf.export import render_picture, to_dot, to_mermaid, to_node_link_json
from nixslave.netconf.importers import import_file
from nixslave.netconf.renderers import render_hosts, render_networkd, render_nixos, render_sh
from nixslave.netconf.wiring import (
    libvirt_interfaces,
    nspawn_settings,
    qemu_switches,
    qemu_wiring,
    virtualbox_nics,
)

app = typer.Typer(no_args_is_help=True)

FILE = typer.Argument(..., help="Topology file (.yml, .json or .toml).")


class RenderFormat(StrEnum):
    nixos = "nixos"
    networkd = "networkd"
    sh = "sh"
    hosts = "hosts"


class GraphFormat(StrEnum):
    dot = "dot"
    mermaid = "mermaid"
    json = "json"
    svg = "svg"
    png = "png"


class ImportFormat(StrEnum):
    clab = "clab"
    netlab = "netlab"


class Backend(StrEnum):
    qemu = "qemu"
    virtualbox = "virtualbox"
    nspawn = "nspawn"
    libvirt = "libvirt"


def plan(file: Path) -> Plan:
    """Load and plan; errors name the file as well as the element."""
    try:
        return make_plan(load_topology(file))
    except NetconfError as exc:
        if not exc.where.startswith(str(file)):
            exc.where = f"{file}: {exc.where}" if exc.where else str(file)
        raise


def _write(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


@app.command()
def validate(file: Path = FILE) -> None:
    """Check a topology: names, references, prefixes, pools and routes."""
    p = plan(file)
    links = sum(1 for n in p.networks.values() if n.kind == "p2p")
    segs = sum(1 for n in p.networks.values() if n.kind == "lan")
    typer.echo(f"{file}: ok ({len(p.nodes)} nodes, {links} links, {segs} segments)")


@app.command("plan")
def plan_cmd(file: Path = FILE,
             as_json: bool = typer.Option(False, "--json", help="Machine-readable plan.")) -> None:
    """Show every node's interfaces, MACs, addresses and routes."""
    p = plan(file)
    if as_json:
        emit_json(p.to_dict())
        return
    for name, np in p.nodes.items():
        gw = f" (gateway {np.gateway})" if np.gateway else ""
        typer.echo(f"{name} [{np.kind}]{gw}")
        for a in np.loopbacks:
            typer.echo(f"  lo {a}")
        for i in np.interfaces:
            where = f"segment {i.segment}" if i.segment else f"link to {i.peer}"
            addrs = " ".join(str(a) for a in i.addresses)
            typer.echo(f"  {i.name:<6} {i.mac} mtu {i.mtu} {addrs} ({where})")
        for r in np.routes:
            typer.echo(f"  route {r.destination} via {r.via} dev {r.dev}")


@app.command()
def render(
    file: Path = FILE,
    node: str = typer.Option(..., "--node", "-n", help="Node to render."),
    fmt: RenderFormat = typer.Option(RenderFormat.nixos, "--format", "-f"),
    out: Path | None = typer.Option(None, "-o", "--output",
                                    help="File (or directory for networkd)."),
) -> None:
    """Render one node's network configuration."""
    p = plan(file)
    if fmt is RenderFormat.networkd:
        files = render_networkd(p, node)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (out / name).write_text(text)
            return
        for name, text in files.items():
            typer.echo(f"# ---- {name}")
            typer.echo(text)
        return
    renderer = {"nixos": render_nixos, "sh": render_sh, "hosts": render_hosts}[fmt.value]
    _write(renderer(p, node), out)


@app.command()
def graph(
    file: Path = FILE,
    fmt: GraphFormat = typer.Option(GraphFormat.dot, "--format", "-f"),
    out: Path | None = typer.Option(None, "-o", "--output", help="Output file."),
) -> None:
    """Draw the topology (dot, mermaid, node-link json, svg or png)."""
    p = plan(file)
    if fmt in (GraphFormat.svg, GraphFormat.png):
        if out is None:
            raise TopologyError("a picture needs an output file", where="--output",
                                hint=f"add -o topology.{fmt.value}")
        render_picture(p, out, fmt.value)
        return
    text = {"dot": to_dot, "mermaid": to_mermaid, "json": to_node_link_json}[fmt.value](p)
    _write(text, out)


@app.command("import")
def import_cmd(
    kind: ImportFormat = typer.Argument(..., help="clab or netlab"),
    file: Path = typer.Argument(..., help="The lab file to import."),
    out: Path | None = typer.Option(None, "-o", "--output", help="Topology file to write."),
) -> None:
    """Import a containerlab or netlab topology (the result is validated)."""
    data = import_file(kind.value, file)
    from nixslave.netconf.load import topology_from_data

    make_plan(topology_from_data(data, source=f"{file} (imported)"))
    text = yaml.safe_dump(data, sort_keys=False)
    if out is not None and out.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    _write(text, out)


@app.command()
def wiring(
    file: Path = FILE,
    node: str = typer.Option(..., "--node", "-n"),
    backend: Backend = typer.Option(Backend.qemu, "--backend", "-b"),
    rundir: Path = typer.Option(Path("/tmp/nxs"), "--rundir",
                                help="Short directory for qemu's sockets."),
) -> None:
    """Show how a backend wires one node's NICs."""
    p = plan(file)
    if backend is Backend.qemu:
        emit_json({"args": qemu_wiring(p, node, rundir),
                   "switches": [s.argv for s in qemu_switches(p, rundir)]})
    elif backend is Backend.virtualbox:
        emit_json([n.vboxmanage_args() for n in virtualbox_nics(p, node)])
    elif backend is Backend.nspawn:
        typer.echo(nspawn_settings(p, node).ini(), nl=False)
    else:
        typer.echo(libvirt_interfaces(p, node), nl=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of topology files."""
    emit_json(json_schema())
