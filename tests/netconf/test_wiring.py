"""Backend wiring: the data is checked, and qemu and vde_switch accept it."""

from __future__ import annotations

import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nixslave.netconf import WiringError, load_topology, plan
from nixslave.netconf.wiring import (
    libvirt_interfaces,
    netns_plan,
    nspawn_settings,
    qemu_switches,
    qemu_wiring,
    virtualbox_nics,
)

from .helpers import DATA

ROUTED = DATA / "routed-two-lans" / "input.yml"


@pytest.fixture
def p():  # type: ignore[no-untyped-def]
    return plan(load_topology(ROUTED))


@pytest.mark.unit
def test_qemu_dgram_pairs_mirror_each_other(p, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = qemu_wiring(p, "r1", tmp_path)
    b = qemu_wiring(p, "r2", tmp_path)
    na, nb = a[1], b[1]
    assert na.startswith("dgram,") and nb.startswith("dgram,")
    la = dict(kv.split("=", 1) for kv in na.split(",")[1:])
    lb = dict(kv.split("=", 1) for kv in nb.split(",")[1:])
    assert la["local.path"] == lb["remote.path"] and la["remote.path"] == lb["local.path"]
    assert a[3].startswith("virtio-net-pci,netdev=n0,mac=" + p.nodes["r1"].interfaces[0].mac)
    seg = a[5]
    sw = {s.segment: s for s in qemu_switches(p, tmp_path)}
    assert seg == f"vde,id=n1,sock={sw['lana'].sock}"
    assert sw["lana"].argv[:4] == ["vde_switch", "--hub", "--sock", sw["lana"].sock]


@pytest.mark.unit
def test_qemu_stream_and_loopback(p, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = qemu_wiring(p, "r1", tmp_path, "stream")[1]
    b = qemu_wiring(p, "r2", tmp_path, "stream")[1]
    assert "server=on" in a and "server=off" in b
    la = qemu_wiring(p, "r1", tmp_path, address="loopback")[1]
    lb = qemu_wiring(p, "r2", tmp_path, address="loopback")[1]
    assert "local.host=127.0.0.1,local.port=40000" in la
    assert "local.host=127.0.0.1,local.port=40001" in lb and "remote.port=40000" in lb


@pytest.mark.unit
def test_socket_path_limit(p) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WiringError) as info:
        qemu_wiring(p, "r1", Path("/tmp/" + "x" * 120))
    assert "107" in info.value.what and info.value.hint


@pytest.mark.unit
def test_virtualbox_nspawn_libvirt(p) -> None:  # type: ignore[no-untyped-def]
    nics = virtualbox_nics(p, "r1")
    assert [n.index for n in nics] == [1, 2]
    assert nics[1].intnet == "nxs-routed-lana"
    assert nics[0].vboxmanage_args()[5] == p.nodes["r1"].interfaces[0].mac.replace(":", "").upper()
    ns = nspawn_settings(p, "a1")
    assert "VirtualEthernetExtra=" in ns.ini() and ":eth0" in ns.ini()
    assert all(len(h) <= 15 for b in ns.bridges() for h in [b, *ns.bridges()[b]])
    # both nspawn peers of one segment share a bridge
    assert set(nspawn_settings(p, "a2").bridges()) == set(ns.bridges())
    root = ET.fromstring("<devices>" + libvirt_interfaces(p, "r1") + "</devices>")
    kinds = [i.get("type") for i in root.findall("interface")]
    assert kinds == ["udp", "bridge"]
    assert root.find("interface/mac").get("address") == p.nodes["r1"].interfaces[0].mac  # type: ignore[union-attr]


@pytest.mark.unit
def test_netns_plan_names_fit(p) -> None:  # type: ignore[no-untyped-def]
    ns = netns_plan(p, prefix="nxs-abcdef")
    for v in ns.veths:
        assert len(v.name_a) <= 15 and len(v.name_b) <= 15
    assert len(ns.bridges) == 2 and ns.switch_ns not in ns.namespaces.values()


@pytest.mark.boot
def test_qemu_and_vde_switch_accept_the_wiring(p, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Start the segment switches and a paused qemu with r1's wiring: qemu
    refuses bad -netdev options at start, so surviving a second is the check."""
    run = Path("/tmp") / f"nxs-{tmp_path.name[-6:]}"
    run.mkdir(exist_ok=True)
    switches = [subprocess.Popen(s.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for s in qemu_switches(p, run)]
    qemu = None
    try:
        for s in qemu_switches(p, run):
            for _ in range(50):
                if (Path(s.sock) / "ctl").exists():
                    break
                time.sleep(0.1)
            assert (Path(s.sock) / "ctl").exists()
        qemu = subprocess.Popen(
            ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-machine", "q35",
             "-accel", "tcg", "-m", "64", *qemu_wiring(p, "r1", run)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert qemu.poll() is None, qemu.communicate()[1]
    finally:
        for proc in [qemu, *switches]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(run, ignore_errors=True)
