"""`nixslave net`: plan, render and draw network topologies.

Errors are netconf errors and reach the main CLI's handler unchanged, which
prints them as one line and exits 2. Output paths are checked before any
work, and outputs are written to a temporary file beside the target and then
renamed, so a failure never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import typer
import yaml

from nixslave.cli._common import emit_json
from nixslave.netconf import (
    NetconfError,
    Plan,
    TopologyError,
    json_schema,
    load_topology,
)
from nixslave.netconf import plan as make_plan
from nixslave.netconf.importers import import_lab
from nixslave.netconf.renderers import (
    install_dir,
    render_hosts,
    render_networkd,
    render_nixos,
    render_sh,
)
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


def _output_error(out: Path, what: str, hint: str) -> NetconfError:
    return NetconfError(what, where=f"--output {out}", hint=hint)


def check_target(out: Path, *, directory: bool = False) -> None:
    """Refuse an output path that cannot be written, before planning: a
    missing parent directory, a directory where a file goes, or a file where
    a directory goes."""
    parent = out.parent
    if directory:
        if out.exists() and not out.is_dir():
            raise _output_error(out, "exists and is not a directory",
                                "name a directory for the networkd files")
        if out.is_dir():
            return
    elif out.is_dir():
        raise _output_error(out, "is a directory", f"name a file, e.g. {out / 'out.txt'}")
    if not parent.exists():
        raise _output_error(out, f"the directory {parent} does not exist", "create it first")
    if not parent.is_dir():
        raise _output_error(out, f"{parent} is not a directory", "fix the output path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(out: Path, produce: Callable[[Path], object]) -> None:
    """Let ``produce`` write a temporary file beside ``out``, then rename it
    over ``out``; the temporary file is removed on any failure. A symlink is
    followed (the rename would replace the link itself), and an existing
    file keeps its permissions. A device or FIFO (``-o /dev/stdout``) is
    written into directly: renaming over it would replace the device."""
    if out.exists() and not out.is_file() and not out.is_dir():
        try:
            produce(out)
        except OSError as exc:
            raise _output_error(out, f"cannot write to it: {exc.strerror or exc}",
                                "check the path") from None
        return
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    try:
        mode = out.stat().st_mode & 0o7777 if out.exists() else 0o666 & ~_umask()
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as exc:
        raise _output_error(out, f"cannot write there: {exc.strerror or exc}",
                            "check the directory's permissions") from None
    os.close(fd)
    tmp = Path(name)
    try:
        produce(tmp)
        os.chmod(tmp, mode)  # not mkstemp's 0600
        os.replace(tmp, out)
    except OSError as exc:
        raise _output_error(out, f"cannot write the file: {exc.strerror or exc}",
                            "check the path and the free space") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=False)
    else:
        write_atomically(out, lambda tmp: tmp.write_text(text))


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
        # node by node: a 100,000-node plan never exists as one JSON string
        p.write_json(sys.stdout)
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
        if np.router_id is not None:  # routing: ospf or bgp
            asn = f" as {np.asn}" if np.asn is not None else ""
            typer.echo(f"  {p.routing} router-id {np.router_id}{asn} (routes learned at run time)")
        for r in np.routes:
            typer.echo(f"  route {r.destination} via {r.via} dev {r.dev}")


@app.command()
def render(
    file: Path = FILE,
    node: str = typer.Option(..., "--node", "-n", help="Node to render."),
    fmt: RenderFormat = typer.Option(RenderFormat.nixos, "--format", "-f"),
    out: Path | None = typer.Option(None, "-o", "--output",
                                    help="File (for networkd: a directory laid out as the guest's "
                                         "root)."),
) -> None:
    """Render one node's network configuration."""
    if out is not None:
        check_target(out, directory=fmt is RenderFormat.networkd)
    p = plan(file)
    p.node(node)  # an unknown node is an input error, whatever the renderer does
    if fmt is RenderFormat.networkd:
        files = render_networkd(p, node)
        if out is not None:
            try:
                out.mkdir(exist_ok=True)
            except OSError as exc:
                raise _output_error(out, f"cannot create the directory: "
                                    f"{exc.strerror or exc}", "check the path") from None
            # DIR is laid out as the guest's root: units under etc/systemd/network,
            # the forwarding sysctls under etc/sysctl.d, where each takes effect.
            for name, text in files.items():
                target = out / install_dir(name).lstrip("/") / name
                target.parent.mkdir(parents=True, exist_ok=True)
                _write(text, target)
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
    picture = fmt in (GraphFormat.svg, GraphFormat.png)
    if picture and out is None:
        raise TopologyError("a picture needs an output file", where="--output",
                            hint=f"add -o topology.{fmt.value}")
    if out is not None:
        check_target(out)
    # imported here: networkx takes a quarter of a second, which `plan` need not pay
    from nixslave.netconf.export import render_picture, to_dot, to_mermaid, to_node_link_json

    p = plan(file)
    if picture:
        assert out is not None
        write_atomically(out, lambda tmp: render_picture(p, tmp, fmt.value))
        return
    text = {"dot": to_dot, "mermaid": to_mermaid, "json": to_node_link_json}[fmt.value](p)
    _write(text, out)


@app.command("import")
def import_cmd(
    kind: ImportFormat = typer.Argument(..., help="clab or netlab"),
    file: Path = typer.Argument(..., help="The lab file to import."),
    out: Path | None = typer.Option(None, "-o", "--output", help="Topology file to write."),
    strict: bool = typer.Option(False, "--strict",
                                help="Refuse the lab if the import drops or changes anything."),
) -> None:
    """Import a containerlab or netlab topology (the result is validated).

    What the import drops or changes is printed as one warning line per
    kind, naming the lab's keys; --strict makes the first one an error.
    Errors name the lab file and key, also when found by planning."""
    if out is not None:
        check_target(out)
    imported = import_lab(kind.value, file)
    imported.check()
    if strict and imported.warnings:
        first = imported.warnings[0]
        more = len(imported.warnings) - 1
        raise TopologyError(
            f"{first.what}: {', '.join(first.keys[:3])}"
            + (f" and {len(first.keys) - 3} more" if len(first.keys) > 3 else ""),
            where=f"{file} (--strict)",
            hint="the import would drop or change this"
            + (f"; {more} more kind{'s' if more > 1 else ''} of warning" if more else "")
            + "; run without --strict to see them all")
    for w in imported.warnings:  # only once the import is known to be good
        typer.echo(f"nixslave netconf: warning: {w.line()}", err=True)
    data = imported.data
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
    p.node(node)
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
