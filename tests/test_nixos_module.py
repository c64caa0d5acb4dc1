"""The guest module for real NixOS: it parses, it carries what each layout
needs to boot, and it yields to a user's own configuration by priority.

Real NixOS cannot be built here (no nixpkgs), so modules are evaluated by
Nix against a fake lib that defines mkOverride/mkIf exactly as nixpkgs does,
and merged by tests/nixmerge.py with the module system's priority rules.
Every expectation below is written by hand from the nixpkgs sources.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest
from clirun import nixslave
from nixmerge import DATA, Conflict, eval_modules, merge

from nixslave import nix, root
from nixslave.errors import NixError, SpecError
from nixslave.nixos import guest_module, machine_module
from nixslave.spec import MachineSpec

pytestmark = pytest.mark.nix

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO3b1vcV7U0uK1oX3Q6fKx9x0Ue8S0f0b2b0m3c4d5e6 u@h"
SLAVE_OPTIONS = {
    "nix.channel.enable": "false",
    "system.disableInstallerTools": "true",
    "system.switch.enable": "false",
    "users.mutableUsers": "false",
    "boot.loader.grub.enable": "false",
}
# Option paths whose value is one option (not a set of options), as nixpkgs
# declares them: attrsOf submodule / listOf.
OPTIONS = {("fileSystems",), ("swapDevices",), ("boot", "initrd", "luks", "devices"),
           ("networking", "hosts"), ("boot", "kernel", "sysctl")}
COMBOS = [(layout, boot, share) for layout, boot, share in
          itertools.product(("disk", "store-disk", "shared"), ("direct", "bios"),
                            ("9p", "virtiofs"))
          if not (layout == "shared" and boot != "direct")
          and not (layout != "shared" and share == "virtiofs")]
TOPOLOGY = Path(__file__).parent / "data" / "boot" / "routed.yml"


def _spec(**kw: object) -> MachineSpec:
    return MachineSpec.parse({"name": "web", "demo": True, **kw})


def _eval(text: str, tmp_path: Path, **kw: object) -> dict[str, object]:
    f = tmp_path / "guest.nix"
    f.write_text(text)
    return merge(eval_modules(f, **kw), OPTIONS)  # type: ignore[arg-type]


def test_slave_module_parses_and_sets_the_profile_less_options() -> None:
    text = (nix.DATA_DIR / "slave.nix").read_text()
    nix.instantiate_parse(text)
    found = dict(re.findall(r"^\s*([\w.]+) = lib\.mkDefault (\w+);", text, re.M))
    assert found == SLAVE_OPTIONS


@pytest.mark.parametrize(("layout", "boot", "share"), COMBOS)
@pytest.mark.parametrize("with_topology", [False, True])
def test_guest_module_parses_for_every_layout_and_boot(
        layout: str, boot: str, share: str, with_topology: bool) -> None:
    spec = _spec(layout=layout, boot=boot, share=share)
    net = None
    if with_topology:
        from nixslave.topology import load_plan, node_network
        net = node_network(load_plan(TOPOLOGY), "gw").nixos_module
    nix.instantiate_parse(guest_module(spec, network_module=net))


def test_store_disk_is_never_fscked(tmp_path: Path) -> None:
    """The read-only store disk makes e2fsck exit 8 and stop stage 1."""
    cfg = _eval(guest_module(_spec(layout="store-disk", store_fs="ext4")), tmp_path)
    fs = cfg["fileSystems"]
    assert fs["/nix/store"] == {  # type: ignore[index]
        "device": "/dev/disk/by-label/nixslave-store", "fsType": "ext4", "options": ["ro"],
        "neededForBoot": True, "noCheck": True}
    # scripted stage 1 ignores noCheck (stage-1-init.sh checkFS)
    assert cfg["boot.initrd.checkJournalingFS"] is False


@pytest.mark.parametrize(("fs", "device"), [
    ("erofs", "/dev/disk/by-label/nixslave-store"),
    ("squashfs", "/dev/disk/by-id/virtio-nixslave-store"),
])
def test_read_only_store_disk_module(fs: str, device: str, tmp_path: Path) -> None:
    """Bug: an erofs store disk declared as ext4 (or a squashfs one looked up
    by a label it cannot have) never mounts; its driver must be in stage 1.
    The default store disk is erofs."""
    spec = _spec(layout="store-disk", **({} if fs == "erofs" else {"store_fs": fs}))
    cfg = _eval(guest_module(spec), tmp_path)
    store = cfg["fileSystems"]["/nix/store"]  # type: ignore[index]
    assert (store["device"], store["fsType"], store["options"]) == (device, fs, ["ro"])
    assert store["neededForBoot"] is True and store["noCheck"] is True
    assert cfg["boot.initrd.kernelModules"] == [fs]
    # only ext4 needs the scripted stage 1's journaling check switched off
    assert "boot.initrd.checkJournalingFS" not in cfg


def test_9p_store_is_mounted_after_its_driver_loads(tmp_path: Path) -> None:
    cfg = _eval(guest_module(_spec(layout="shared", share="9p")), tmp_path)
    store = cfg["fileSystems"]["/nix/store"]  # type: ignore[index]
    assert store["fsType"] == "9p" and store["device"] == "nixstore"
    assert "x-systemd.requires=modprobe@9pnet_virtio.service" in store["options"]
    assert {"trans=virtio", "version=9p2000.L", "msize=262144", "ro"} <= set(store["options"])
    assert set(cfg["boot.initrd.kernelModules"]) == {"9p", "9pnet_virtio"}  # type: ignore[arg-type]
    assert "boot.initrd.checkJournalingFS" not in cfg


def test_virtiofs_store_loads_its_driver(tmp_path: Path) -> None:
    cfg = _eval(guest_module(_spec(layout="shared", share="virtiofs")), tmp_path)
    assert cfg["fileSystems"]["/nix/store"]["fsType"] == "virtiofs"  # type: ignore[index]
    assert cfg["boot.initrd.kernelModules"] == ["virtiofs"]


def test_disk_layout_keeps_the_store_on_the_root(tmp_path: Path) -> None:
    cfg = _eval(guest_module(_spec()), tmp_path)
    assert cfg["fileSystems"] == {
        "/": {"device": "/dev/disk/by-label/nixslave-root", "fsType": "ext4"}}
    assert "boot.initrd.kernelModules" not in cfg


def test_boot_marker_unit_prints_the_booted_system(tmp_path: Path) -> None:
    """run/up recognise a real guest by the same console line as the demo's."""
    cfg = _eval(guest_module(_spec()), tmp_path)
    assert cfg["systemd.services.nixslave-boot-ok.wantedBy"] == ["multi-user.target"]
    assert cfg["systemd.services.nixslave-boot-ok.after"] == ["multi-user.target"]
    assert cfg["systemd.services.nixslave-boot-ok.serviceConfig.Type"] == "oneshot"
    assert cfg["systemd.services.nixslave-boot-ok.serviceConfig.StandardOutput"] \
        == "journal+console"
    script = str(cfg["systemd.services.nixslave-boot-ok.script"])
    # the script, run by a shell, prints exactly what run.py waits for
    fake_root = tmp_path / "r"
    fake_root.mkdir()
    (fake_root / "booted").symlink_to("/nix/store/" + "a" * 32 + "-nixos-system-web")
    shell = script.replace("/nix/store/00000000000000000000000000000000-coreutils/bin/", "") \
        .replace("/run/booted-system", str(fake_root / "booted"))
    out = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, check=True)
    from nixslave.runtime.run import BOOT_MARKER
    assert re.fullmatch(rf"{BOOT_MARKER} (/nix/store/\S+)\n", out.stdout)
    assert out.stdout.split()[1] == "/nix/store/" + "a" * 32 + "-nixos-system-web"


def test_user_hardware_configuration_evaluates_beside_ours(tmp_path: Path) -> None:
    """A user's hardware-configuration.nix and hostName do not clash with ours;
    the host's disks win over the configuration's, as in qemu-vm.nix."""
    guest = tmp_path / "guest.nix"
    guest.write_text(guest_module(_spec(layout="store-disk")))
    mods = (eval_modules(DATA / "hardware-configuration.nix")
            + eval_modules(guest))
    cfg = merge(mods, OPTIONS)  # raises Conflict on any clash
    assert cfg["networking.hostName"] == "workstation"          # user's, over our mkDefault
    assert set(cfg["fileSystems"]) == {"/", "/nix/store"}        # type: ignore[arg-type]
    assert cfg["fileSystems"]["/"]["device"] == "/dev/disk/by-label/nixslave-root"  # type: ignore[index]
    assert cfg["swapDevices"] == []
    assert cfg["boot.initrd.luks.devices"] == {}
    assert cfg["boot.loader.systemd-boot.enable"] is False
    assert cfg["boot.loader.grub.enable"] is False
    assert cfg["nix.gc.automatic"] is False                      # nix is off
    assert cfg["services.openssh.enable"] is True
    assert cfg["users.allowNoPasswordLogin"] is True             # no keys given
    assert set(cfg["boot.initrd.availableKernelModules"]) == {  # type: ignore[arg-type]
        "xhci_pci", "ahci", "nvme", "virtio_pci", "virtio_blk", "virtio_net", "ext4"}


def test_the_merge_model_detects_a_clash(tmp_path: Path) -> None:
    """The priority model is not vacuous: equal priorities that disagree fail."""
    a = tmp_path / "a.nix"
    a.write_text('{ ... }: { networking.hostName = "a"; }')
    b = tmp_path / "b.nix"
    b.write_text('{ ... }: { networking.hostName = "b"; }')
    with pytest.raises(Conflict):
        merge(eval_modules(a) + eval_modules(b), OPTIONS)


def test_nix_stays_on_when_the_user_turns_it_on(tmp_path: Path) -> None:
    cfg = _eval(guest_module(_spec()), tmp_path, nix_enable=True)
    assert cfg["nix.enable"] is False  # our mkDefault; the fake config says the user won
    assert "nix.gc.automatic" not in cfg  # not forced off when the final nix.enable is true


def test_ssh_keys_replace_the_no_login_escape(tmp_path: Path) -> None:
    cfg = _eval(guest_module(_spec(ssh_keys=[KEY])), tmp_path)
    assert cfg["users.users.root.openssh.authorizedKeys.keys"] == [KEY]
    assert "users.allowNoPasswordLogin" not in cfg


def test_strings_are_escaped() -> None:
    key = "ssh-ed25519 AAAAC3Nza ${builtins.abort \"x\"}"
    spec = MachineSpec.parse({"name": "web", "demo": True, "ssh_keys": [key]})
    text = machine_module(spec)
    out = nix.run_nix(["nix-instantiate", "--eval", "--strict", "-E",
                       f"(({text}) {{ lib = import {DATA / 'fakelib.nix'} {{}}; "
                       "config = {}; pkgs = {}; }).users.users.root.openssh."
                       "authorizedKeys.keys"])
    assert "abort" in out  # kept as text, never evaluated


def test_parse_rejects_broken_nix() -> None:
    with pytest.raises(NixError, match="syntax error"):
        nix.instantiate_parse("{ a = ; }")


def test_machine_module_imports_the_node_network() -> None:
    """Guest and host agree: the guest module carries the same plan's MACs and names."""
    from nixslave.topology import load_plan, node_network

    plan = load_plan(TOPOLOGY)
    net = node_network(plan, "gw")
    text = guest_module(_spec(name="gw", layout="store-disk"), network_module=net.nixos_module)
    nix.instantiate_parse(text)
    for iface in plan.nodes["gw"].interfaces:
        assert f'"{iface.mac}"' in text
        assert f'"{iface.name}"' in text


@pytest.mark.parametrize("name", ["web-", "-web", "Web", "", "a" * 49])
def test_machine_names_are_valid_hostnames(name: str) -> None:
    """NixOS's hostName type rejects a trailing '-'; so must the spec."""
    with pytest.raises(SpecError):
        _spec(name=name)


def test_cli_prints_a_module_that_parses() -> None:
    proc = nixslave("root", "module", "--name", "gw", "--layout", "shared", "--share",
                    "virtiofs", "--topology", str(TOPOLOGY), "--node", "gw")
    assert proc.returncode == 0, proc.stderr
    nix.instantiate_parse(proc.stdout)
    assert 'fsType = "virtiofs";' in proc.stdout
    assert "system.disableInstallerTools = lib.mkDefault true;" in proc.stdout
    js = nixslave("root", "module", "--json", "--layout", "store-disk")
    assert json.loads(js.stdout)["layout"] == "store-disk"


def test_cli_module_rejects_bad_input() -> None:
    proc = nixslave("root", "module", "--layout", "floppy")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


# -- builds: values reach Nix as arguments, never spliced into source ---------

FAKE_NIXOS = """\
# A stand-in for <nixpkgs/nixos>: it imports every module of the
# configuration with the fake lib and records the host name it ends up with.
{ configuration }:
let
  lib = import %(lib)s {};
  args = { inherit lib; config = { nix.enable = false; }; pkgs = { coreutils = "/c"; };
           modulesPath = "/m"; };
  load = m: let f = if builtins.isPath m then import m else m;
                r = if builtins.isFunction f then f args else f;
            in [ r ] ++ builtins.concatLists (map load (r.imports or [ ]));
  mods = builtins.concatLists (map load configuration.imports);
  names = map (r: let v = r.networking.hostName or null; in
                  if builtins.isAttrs v then v.content else v) mods;
in {
  config.system.build.toplevel = derivation {
    name = "fake-toplevel"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${toString (builtins.filter (n: n != null) names)} > $out" ];
  };
}
"""


def test_config_paths_with_spaces_and_at_signs_build(tmp_path: Path) -> None:
    """A configuration and nixpkgs under 'my configs@host' build (no splicing)."""
    base = tmp_path / "my configs@host"
    (base / "nixpkgs/nixos").mkdir(parents=True)
    (base / "nixpkgs/nixos/default.nix").write_text(
        FAKE_NIXOS % {"lib": DATA / "fakelib.nix"})
    cfg = base / "configuration.nix"
    cfg.write_text('{ ... }: { networking.hostName = "fromuser"; }')
    spec = MachineSpec.parse({"name": "web", "config": str(cfg),
                              "nixpkgs": str(base / "nixpkgs")})
    r = root.build(spec)
    assert Path(r.toplevel).read_text().split() == ["fromuser", "web"]


def test_flake_builds_through_nix_build(tmp_path: Path) -> None:
    """Debian's Nix 2.8 has no --print-out-paths: flakes go through nix-build."""
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("""{
  outputs = { self }: {
    nixosConfigurations.web.extendModules = { modules }: {
      config.system.build.toplevel = derivation {
        name = "fake-flake-toplevel"; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "echo ${toString (map (m: builtins.baseNameOf m) modules)} > $out" ];
      };
    };
  };
}
""")
    r = root.build(MachineSpec.parse({"name": "web", "flake": f"{flake}#web"}))
    assert Path(r.toplevel).read_text().strip() == "nixslave-guest.nix"


def test_flake_refs() -> None:
    assert root.flake_ref("github:me/sys") == "github:me/sys"
    assert root.flake_ref("git+https://example.org/x.git") == "git+https://example.org/x.git"
    assert root.flake_ref("/srv/my flake@x") == "path:/srv/my%20flake%40x"


def test_offline_settings_apply_to_the_demo_build_alone(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.delenv("NIX_CONFIG", raising=False)
    user = nix.nix_env()
    assert "substituters" not in user["NIX_CONFIG"]
    assert "sandbox" not in user["NIX_CONFIG"]
    assert "nix-command" in user["NIX_CONFIG"]
    assert nix.nix_env(offline=True)["NIX_CONFIG"] == nix.OFFLINE_CONFIG
    monkeypatch.setenv("NIX_CONFIG", "substituters = https://cache.example.org")
    assert nix.nix_env(offline=True)["NIX_CONFIG"].startswith(
        "substituters = https://cache.example.org")
