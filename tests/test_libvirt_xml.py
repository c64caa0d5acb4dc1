"""libvirt <interface> wiring validates against libvirt's own domain schema."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nixslave.netconf import load_topology, plan
from nixslave.netconf.wiring import libvirt_interfaces

pytestmark = [pytest.mark.unit, pytest.mark.tools("virt-xml-validate", "xmllint")]

DATA = Path(__file__).parent / "data"
TOPOLOGIES = [DATA / "boot" / "routed.yml", DATA / "netconf" / "leaf-spine" / "input.yml",
              DATA / "netconf" / "dual-stack" / "input.yml"]


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.parent.name)
def test_every_node_validates(path: Path, tmp_path: Path) -> None:
    p = plan(load_topology(path))
    for node in sorted(p.nodes):
        xml = tmp_path / f"{node}.xml"
        xml.write_text(
            f"<domain type='qemu'><name>{node}</name><memory unit='MiB'>512</memory>"
            "<os><type arch='x86_64'>hvm</type></os>"
            f"<devices>{libvirt_interfaces(p, node)}</devices></domain>\n")
        out = subprocess.run(["virt-xml-validate", str(xml), "domain"], capture_output=True,
                             text=True)
        assert out.returncode == 0, f"{node}: {out.stderr}"
