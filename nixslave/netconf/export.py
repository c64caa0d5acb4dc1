"""Pictures and graph formats, for people who would rather look than read."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .errors import NetconfError
from .graph import node_link_data
from .plan import Plan

SHAPES = {"router": "box", "host": "ellipse", "vm": "ellipse", "container": "component"}


def _q(s: str) -> str:
    # names are validated host names; "\n" in labels is dot's line break
    return '"' + s.replace('"', '\\"') + '"'


def to_dot(plan: Plan) -> str:
    g = plan.graph
    lines = [f"graph {_q(plan.name)} {{", "  node [fontname=Helvetica];",
             "  edge [fontname=Helvetica, fontsize=9];"]
    for n, d in g.nodes(data=True):
        if d["type"] == "segment":
            pfx = "\\n".join(str(p) for p in plan.networks[n].prefixes)
            lines.append(f"  {_q(n)} [shape=hexagon, style=filled, fillcolor=lightblue, "
                         f"label={_q(n + chr(92) + 'n' + pfx)}];")
        else:
            lines.append(f"  {_q(n)} [shape={SHAPES.get(d['kind'], 'ellipse')}, "
                         f"label={_q(n + chr(92) + 'n' + d['kind'])}];")
    for a, b, _k, d in sorted(g.edges(keys=True, data=True), key=lambda e: str(e[2])):
        if "ifnames" in d:
            pfx = " ".join(str(p) for p in plan.networks[d["net"]].prefixes[:1])
            lines.append(f"  {_q(a)} -- {_q(b)} [label={_q(pfx)}, "
                         f"taillabel={_q(d['ifnames'][a])}, headlabel={_q(d['ifnames'][b])}];")
        else:
            lines.append(f"  {_q(a)} -- {_q(b)} [taillabel={_q(d['ifname'])}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(plan: Plan) -> str:
    g = plan.graph
    ids = {n: f"n{k}" for k, n in enumerate(g.nodes)}
    lines = ["graph LR"]
    for n, d in g.nodes(data=True):
        if d["type"] == "segment":
            lines.append(f"  {ids[n]}{{{{\"{n}\"}}}}")
        elif d["kind"] == "router":
            lines.append(f"  {ids[n]}[\"{n}\"]")
        else:
            lines.append(f"  {ids[n]}(\"{n}\")")
    for a, b, d in g.edges(data=True):
        label = d["ifnames"][a] + " - " + d["ifnames"][b] if "ifnames" in d else d["ifname"]
        lines.append(f"  {ids[a]} ---|{label}| {ids[b]}")
    return "\n".join(lines) + "\n"


def to_node_link_json(plan: Plan) -> str:
    return json.dumps(node_link_data(plan.graph), indent=2, sort_keys=True, default=str) + "\n"


def render_picture(plan: Plan, out: Path, fmt: str) -> None:
    """SVG or PNG through Graphviz ``dot``; matplotlib when dot is missing."""
    dot = shutil.which("dot")
    if dot:
        # the picture comes back on dot's stdout and is written here, so that
        # `out` may be a temporary file, a FIFO or /dev/stdout alike
        r = subprocess.run([dot, f"-T{fmt}"], input=to_dot(plan).encode(),
                           capture_output=True)
        if r.returncode != 0:
            raise NetconfError(f"dot failed: {r.stderr.decode(errors='replace').strip()}",
                               where=str(out), hint="check that Graphviz works")
        with out.open("wb") as f:
            f.write(r.stdout)
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import networkx as nx
    except ImportError:
        raise NetconfError("neither Graphviz 'dot' nor matplotlib is available",
                           where=str(out), hint="install graphviz") from None
    g = plan.graph
    fig = plt.figure(figsize=(10, 8))
    pos = nx.spring_layout(g, seed=1)
    colors = ["lightblue" if d["type"] == "segment" else "orange" if d["kind"] == "router"
              else "lightgreen" for _, d in g.nodes(data=True)]
    nx.draw(g, pos, with_labels=True, node_color=colors, font_size=8)
    fig.savefig(out, format=fmt)
    plt.close(fig)
