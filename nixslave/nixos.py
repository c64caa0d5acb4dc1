"""The guest side of a machine: the NixOS module generated from its spec.

The host wiring (drive labels, share tags, kernel command line) and this
module are derived from the same constants, so a guest can never look for a
disk label or 9p tag the host did not give it.
"""

from __future__ import annotations

import json

from nixslave.spec import MachineSpec

ROOT_LABEL = "nixslave-root"
STORE_LABEL = "nixslave-store"
STORE_TAG = "nixstore"
NINEP_MSIZE = 262144
NINEP_OPTIONS = ("trans=virtio", "version=9p2000.L", f"msize={NINEP_MSIZE}", "cache=loose", "ro")


def store_kind(spec: MachineSpec) -> str:
    """How stage 1 finds /nix/store: disk, store-disk, 9p or virtiofs."""
    if spec.layout == "shared":
        return spec.share
    return spec.layout


def _s(value: str) -> str:
    """A Nix string literal (JSON's escapes plus ``${``)."""
    return json.dumps(value).replace("${", "\\${")


def _list(values: list[str] | tuple[str, ...]) -> str:
    return "[ " + " ".join(_s(v) for v in values) + " ]"


def file_systems(spec: MachineSpec) -> dict[str, dict[str, object]]:
    """The guest's fileSystems, all by label or tag, none by UUID."""
    fs: dict[str, dict[str, object]] = {
        "/": {"device": f"/dev/disk/by-label/{ROOT_LABEL}", "fsType": "ext4"},
    }
    kind = store_kind(spec)
    if kind == "store-disk":
        fs["/nix/store"] = {"device": f"/dev/disk/by-label/{STORE_LABEL}", "fsType": "ext4",
                            "options": ["ro"], "neededForBoot": True}
    elif kind == "9p":
        fs["/nix/store"] = {"device": STORE_TAG, "fsType": "9p",
                            "options": list(NINEP_OPTIONS), "neededForBoot": True}
    elif kind == "virtiofs":
        fs["/nix/store"] = {"device": STORE_TAG, "fsType": "virtiofs",
                            "options": ["ro"], "neededForBoot": True}
    return fs


def initrd_modules(spec: MachineSpec) -> list[str]:
    mods = ["virtio_pci", "virtio_blk", "virtio_net", "ext4"]
    kind = store_kind(spec)
    if kind == "9p":
        mods += ["9p", "9pnet_virtio"]
    elif kind == "virtiofs":
        mods += ["virtiofs"]
    return mods


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _s(v)
    if isinstance(v, list):
        return _list([str(x) for x in v])
    raise TypeError(v)


def machine_module(spec: MachineSpec, *, network_module: str | None = None) -> str:
    """The NixOS module that makes the guest agree with the host's wiring.

    ``network_module`` is the netconf rendering for this node, imported as is.
    """
    lines = ["{ lib, ... }:", "{"]
    if network_module:
        lines.append(f"  imports = [ ({network_module.strip()}) ];")
    lines.append(f"  networking.hostName = {_s(spec.name)};")
    for mount, attrs in file_systems(spec).items():
        body = " ".join(f"{k} = {_value(v)};" for k, v in attrs.items())
        lines.append(f"  fileSystems.{_s(mount)} = {{ {body} }};")
    lines.append(f"  boot.initrd.availableKernelModules = {_list(initrd_modules(spec))};")
    lines.append('  boot.kernelParams = [ "console=ttyS0,115200" ];')
    if spec.boot == "bios":
        # The host writes the single extlinux entry; nothing in the guest
        # installs or updates a boot loader.
        lines.append("  boot.loader.grub.enable = false;")
        lines.append("  boot.loader.generic-extlinux-compatible.enable = false;")
    else:
        lines.append("  boot.loader.grub.enable = false;")
    lines.append(f"  nix.enable = {_value(spec.with_nix)};")
    if spec.ssh_keys:
        lines.append("  services.openssh.enable = true;")
        lines.append(f"  users.users.root.openssh.authorizedKeys.keys = {_list(spec.ssh_keys)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
