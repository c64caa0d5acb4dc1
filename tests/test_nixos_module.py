"""The generated guest modules parse as Nix and set the profile-less options."""

from __future__ import annotations

import re

import pytest

from nixslave import nix
from nixslave.errors import NixError
from nixslave.nixos import machine_module
from nixslave.spec import MachineSpec

pytestmark = pytest.mark.nix

SLAVE_OPTIONS = {
    "nix.channel.enable": "false",
    "system.disableInstallerTools": "true",
    "system.switch.enable": "false",
    "users.mutableUsers": "false",
    "boot.loader.grub.enable": "false",
}


def test_slave_module_parses_and_sets_the_profile_less_options() -> None:
    text = (nix.DATA_DIR / "slave.nix").read_text()
    nix.instantiate_parse(text)
    found = dict(re.findall(r"^\s*([\w.]+) = lib\.mkDefault (\w+);", text, re.M))
    assert found == SLAVE_OPTIONS


@pytest.mark.parametrize(("layout", "boot", "share", "store_fs"), [
    ("disk", "direct", "9p", None),
    ("disk", "bios", "9p", None),
    ("store-disk", "direct", "9p", '"ext4"'),
    ("shared", "direct", "9p", '"9p"'),
    ("shared", "direct", "virtiofs", '"virtiofs"'),
])
def test_machine_module_parses_and_matches_the_layout(
        layout: str, boot: str, share: str, store_fs: str | None) -> None:
    spec = MachineSpec.parse({"name": "web", "demo": True, "layout": layout, "boot": boot,
                              "share": share})
    text = machine_module(spec)
    nix.instantiate_parse(text)
    assert 'fileSystems."/" = { device = "/dev/disk/by-label/nixslave-root";' in text
    assert "nix.enable = false;" in text
    if store_fs is None:
        assert '"/nix/store"' not in text
    else:
        assert 'fileSystems."/nix/store"' in text and f"fsType = {store_fs};" in text
        assert "neededForBoot = true;" in text


def test_strings_are_escaped() -> None:
    key = "ssh-ed25519 AAAAC3Nza ${builtins.abort \"x\"}"
    spec = MachineSpec.parse({"name": "web", "demo": True, "ssh_keys": [key]})
    text = machine_module(spec)
    out = nix.run_nix(["nix-instantiate", "--eval", "--strict", "-E",
                       f"(({text}) {{ lib = {{}}; }}).users.users.root.openssh."
                       "authorizedKeys.keys"])
    assert "abort" in out  # kept as text, never evaluated


def test_parse_rejects_broken_nix() -> None:
    with pytest.raises(NixError, match="syntax error"):
        nix.instantiate_parse("{ a = ; }")


def test_machine_module_imports_the_node_network() -> None:
    """Guest and host agree: the guest module carries the same plan's MACs and names."""
    from pathlib import Path

    from nixslave.topology import load_plan, node_network

    plan = load_plan(Path(__file__).parent / "data" / "boot" / "routed.yml")
    net = node_network(plan, "gw")
    spec = MachineSpec.parse({"name": "gw", "demo": True, "layout": "store-disk"})
    text = machine_module(spec, network_module=net.nixos_module)
    nix.instantiate_parse(text)
    for iface in plan.nodes["gw"].interfaces:
        assert f'matchConfig.MACAddress = "{iface.mac}";' in text
        assert f'linkConfig.Name = "{iface.name}";' in text
    assert 'fileSystems."/nix/store"' in text
