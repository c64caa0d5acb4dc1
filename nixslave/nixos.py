"""The guest side of a machine: the NixOS module generated from its spec.

The host wiring (drive labels, share tags, kernel command line) and this
module are derived from the same constants, so a guest can never look for a
disk label or 9p tag the host did not give it.

Priorities follow nixpkgs' ``nixos/modules/virtualisation/qemu-vm.nix`` so
that a user's own configuration (``hardware-configuration.nix`` included)
evaluates beside ours:

* ``mkVMOverride`` (priority 10) where the host's wiring must win over what a
  configuration written for real hardware says: file systems, swap, LUKS and
  the boot loader;
* ``mkDefault`` (priority 1000) where the user may choose: host name, Nix,
  networkd/DHCP switches, the password-less-login escape hatch.
"""

from __future__ import annotations

import json

from nixslave.nix import DATA_DIR
from nixslave.spec import MachineSpec

ROOT_LABEL = "nixslave-root"
STORE_LABEL = "nixslave-store"
STORE_TAG = "nixstore"
NINEP_MSIZE = 262144
NINEP_OPTIONS = ("trans=virtio", "version=9p2000.L", f"msize={NINEP_MSIZE}", "cache=loose", "ro")
# Under systemd stage 1 nothing loads 9pnet_virtio before the mount unit runs;
# qemu-vm.nix adds the same dependency to its 9p shares.
NINEP_SYSTEMD = "x-systemd.requires=modprobe@9pnet_virtio.service"
BOOT_MARKER = "NIXSLAVE-BOOT-OK"
MARKER_UNIT = "nixslave-boot-ok"


def store_kind(spec: MachineSpec) -> str:
    """How stage 1 finds /nix/store: disk, store-disk, 9p or virtiofs."""
    if spec.layout == "shared":
        return spec.share
    return spec.layout


def _s(value: str) -> str:
    """A Nix string literal (JSON's escapes plus ``${``)."""
    return json.dumps(value).replace("${", "\\${")


def _list(values: list[str] | tuple[str, ...]) -> str:
    return "[ " + " ".join(_s(v) for v in values) + " ]" if values else "[ ]"


def file_systems(spec: MachineSpec) -> dict[str, dict[str, object]]:
    """The guest's fileSystems, by label, share tag or drive serial; none by UUID."""
    fs: dict[str, dict[str, object]] = {
        "/": {"device": f"/dev/disk/by-label/{ROOT_LABEL}", "fsType": "ext4"},
    }
    kind = store_kind(spec)
    if kind == "store-disk":
        fs["/nix/store"] = _store_disk_fs(spec)
    elif kind == "9p":
        fs["/nix/store"] = {"device": STORE_TAG, "fsType": "9p",
                            "options": [*NINEP_OPTIONS, NINEP_SYSTEMD], "neededForBoot": True}
    elif kind == "virtiofs":
        fs["/nix/store"] = {"device": STORE_TAG, "fsType": "virtiofs",
                            "options": ["ro"], "neededForBoot": True}
    return fs


def store_device(spec: MachineSpec) -> str:
    """How the guest names its store disk.

    By label where the file system has one; squashfs has none, so its guest
    finds it by the serial every host gives the store drive (qemu's and
    libvirt's ``serial``), which udev links as ``/dev/disk/by-id/virtio-…``.
    """
    if spec.store_fs_resolved == "squashfs":
        return f"/dev/disk/by-id/virtio-{STORE_LABEL}"
    return f"/dev/disk/by-label/{STORE_LABEL}"


def _store_disk_fs(spec: MachineSpec) -> dict[str, object]:
    """The read-only store disk, never checked by stage 1.

    An ext4 store disk is attached read-only: e2fsck cannot open it for
    writing and exits 8, which stops stage 1.  noCheck drops the fstab pass
    number (systemd stage 1, nixos/modules/tasks/filesystems.nix); the
    scripted stage 1 ignores noCheck and only skips ext4 when
    boot.initrd.checkJournalingFS is false (stage-1-init.sh, checkFS).
    erofs and squashfs have no fsck in the initrd at all
    (nixos/modules/tasks/filesystems/erofs.nix leaves fsck.erofs out).
    """
    return {"device": store_device(spec), "fsType": spec.store_fs_resolved,
            "options": ["ro"], "neededForBoot": True, "noCheck": True}


def initrd_modules(spec: MachineSpec) -> list[str]:
    """Drivers stage 1 may need (boot.initrd.availableKernelModules)."""
    return ["virtio_pci", "virtio_blk", "virtio_net", "ext4"]


def initrd_forced_modules(spec: MachineSpec) -> list[str]:
    """Modules stage 1 must load itself (boot.initrd.kernelModules).

    A share is not a block device: no udev event loads its driver, so the
    mount of /nix/store would fail without these.
    """
    kind = store_kind(spec)
    if kind == "store-disk" and spec.store_fs_resolved != "ext4":
        # filesystems.nix adds a neededForBoot fsType to
        # boot.initrd.supportedFilesystems, and erofs.nix/squashfs.nix then
        # make the module available; loading it up front, as for the shares,
        # does not depend on stage 1 asking for it by file-system type.
        return [spec.store_fs_resolved]
    if kind == "9p":
        return ["9p", "9pnet_virtio"]
    if kind == "virtiofs":
        return ["virtiofs"]
    return []


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _s(v)
    if isinstance(v, list):
        return _list([str(x) for x in v])
    raise TypeError(v)


def _indent(text: str, by: str) -> str:
    return "\n".join(by + ln if ln.strip() else "" for ln in text.strip().splitlines())


def machine_module(spec: MachineSpec, *, network_module: str | None = None) -> str:
    """The NixOS module that makes the guest agree with the host's wiring.

    ``network_module`` is the netconf rendering for this node, imported as is.
    """
    lines = ["{ config, lib, pkgs, ... }:", "{"]
    if network_module:
        lines += ["  imports = [", "    (", _indent(network_module, "      "), "    )", "  ];"]
    lines.append(f"  networking.hostName = lib.mkDefault {_s(spec.name)};")

    # The host's disks and shares replace whatever the configuration was
    # written for; swap and LUKS devices of real hardware do not exist here.
    lines.append("  fileSystems = lib.mkVMOverride {")
    for mount, attrs in file_systems(spec).items():
        body = " ".join(f"{k} = {_value(v)};" for k, v in attrs.items())
        lines.append(f"    {_s(mount)} = {{ {body} }};")
    lines += ["  };",
              "  swapDevices = lib.mkVMOverride [ ];",
              "  boot.initrd.luks.devices = lib.mkVMOverride { };"]
    if store_kind(spec) == "store-disk" and spec.store_fs_resolved == "ext4":
        lines.append("  boot.initrd.checkJournalingFS = lib.mkDefault false;")
    lines.append(f"  boot.initrd.availableKernelModules = {_list(initrd_modules(spec))};")
    forced = initrd_forced_modules(spec)
    if forced:
        lines.append(f"  boot.initrd.kernelModules = {_list(forced)};")
    lines.append('  boot.kernelParams = [ "console=ttyS0,115200" ];')

    # The host boots the guest: a kernel passed by qemu (direct) or the one
    # extlinux entry the host writes (bios).  No boot loader is installed or
    # updated from inside, whatever the user's configuration enabled.
    for loader in ("grub", "systemd-boot", "generic-extlinux-compatible"):
        lines.append(f"  boot.loader.{_s(loader) if '-' in loader else loader}.enable = "
                     "lib.mkVMOverride false;")

    lines.append(f"  nix.enable = lib.mkDefault {_value(spec.with_nix)};")
    # nix-gc.nix and nix-optimise.nix assert nix.enable when these are on.
    lines += ["  nix.gc.automatic = lib.mkIf (!config.nix.enable) (lib.mkForce false);",
              "  nix.optimise.automatic = lib.mkIf (!config.nix.enable) (lib.mkForce false);"]
    if spec.ssh_keys:
        lines.append("  services.openssh.enable = lib.mkDefault true;")
        lines.append(f"  users.users.root.openssh.authorizedKeys.keys = {_list(spec.ssh_keys)};")
    else:
        # With mutableUsers off and no key, users-groups.nix asserts that
        # nobody can log in; a slave is reached through its console or not at
        # all, so say that this is intended.
        lines.append("  users.allowNoPasswordLogin = lib.mkDefault true;")
    lines += _control_lines(spec, container=False)
    lines += _marker_unit()
    lines.append("}")
    return "\n".join(lines) + "\n"


def _control_lines(spec: MachineSpec, *, container: bool) -> list[str]:
    """What lets the host reach and switch a running guest (``nixslave exec/switch``).

    * ``services.qemuGuest.enable`` (nixos/modules/virtualisation/
      qemu-guest-agent.nix): qemu-ga, started by udev when the
      virtio-serial port ``org.qemu.guest_agent.0`` appears, which the host
      adds to every agent VM.  A container needs none: the host enters its
      namespaces.
    * ``system.switch.enable`` (nixos/modules/system/activation/
      switchable-system.nix): slave.nix turns switch-to-configuration off
      with mkDefault, since a slave is normally switched by swapping its
      image; a ``switchable`` machine keeps it so the host can run
      ``switch-to-configuration test`` online.  Priority 900 beats
      slave.nix's mkDefault and loses to any plain user setting.
    """
    out = []
    if spec.agent and not container:
        out.append("  services.qemuGuest.enable = lib.mkDefault true;")
    if spec.switchable:
        out.append("  system.switch.enable = lib.mkOverride 900 true;")
    return out


def _marker_unit() -> list[str]:
    """A oneshot that tells the host, on the console, what booted.

    It prints the same line as the demo's init, so ``run`` recognises a real
    NixOS guest exactly like the stand-in.
    """
    return [
        f"  systemd.services.{MARKER_UNIT} = {{",
        '    description = "Tell the host which system booted";',
        '    wantedBy = [ "multi-user.target" ];',
        '    after = [ "multi-user.target" ];',
        "    serviceConfig.Type = \"oneshot\";",
        "    serviceConfig.RemainAfterExit = true;",
        '    serviceConfig.StandardOutput = "journal+console";',
        f"    script = ''echo \"{BOOT_MARKER} $(${{pkgs.coreutils}}/bin/readlink -f "
        "/run/booted-system)\"'';",
        "  };",
    ]


def slave_module() -> str:
    """nixslave/nix/slave.nix: what makes any configuration profile-less."""
    return (DATA_DIR / "slave.nix").read_text()


def guest_module(spec: MachineSpec, *, network_module: str | None = None) -> str:
    """The whole guest module: slave, machine and network, in one file.

    This is what ``nixslave root module`` prints for users to import in their
    own flake, and what nixslave imports itself for --config/--flake builds.
    """
    head = (f"# Guest module of nix-slave {spec.name}: layout {spec.layout}"
            f"{' (' + spec.share + ')' if spec.layout == 'shared' else ''}, boot {spec.boot}."
            "\n# Generated by nixslave; import it beside your own configuration.\n")
    return (head + "{ ... }:\n{\n  imports = [\n    (\n" + _indent(slave_module(), "      ")
            + "\n    )\n    (\n" + _indent(machine_module(spec, network_module=network_module),
                                      "      ")
            + "\n    )\n  ];\n}\n")


def container_module(spec: MachineSpec, network_module: str | None = None) -> str:
    """The whole guest module for a container artifact (nspawn, tar, OCI).

    A container has no kernel, initrd, file systems or boot loader of its
    own: the runtime mounts its root and runs ``<toplevel>/init`` as PID 1
    (nixpkgs' nixos-containers.nix runs exactly that script, wrapped by its
    container-init).  So this keeps only what a container needs: the
    container switch, the boot marker, the host name, Nix and the
    profile-less settings of slave.nix.  Every option was checked against the
    nixpkgs sources:

    * ``boot.isContainer``: declared in
      nixos/modules/virtualisation/nixos-containers.nix; what it switches off
      (kernel, udev, modprobe, boot loader installation) is in
      virtualisation/container-config.nix.
    * ``networking.hostName``, ``networking.useDHCP``,
      ``networking.useHostResolvConf``: tasks/network-interfaces.nix.
      nixos-containers.nix sets ``useDHCP = false`` for its own containers;
      container-config.nix sets ``useHostResolvConf = mkDefault true``, while
      networkd.nix enables resolved (``mkDefault true``) and resolved.nix
      asserts ``!useHostResolvConf`` (nixpkgs issue 162686), so with a planned
      network this module turns the host's resolv.conf off at priority 900:
      above container-config's mkDefault, below any plain user setting.
    * ``nix.enable``: config/nix.nix; ``nix.gc.automatic``:
      services/misc/nix-gc.nix; ``nix.optimise.automatic``:
      services/misc/nix-optimise.nix.
    * ``users.allowNoPasswordLogin``: config/users-groups.nix;
      ``services.openssh.enable`` and ``users.users.<name>.openssh
      .authorizedKeys.keys``: services/networking/ssh/sshd.nix.
    * the marker unit's ``systemd.services.<name>`` attributes:
      system/boot/systemd.nix and lib/systemd-unit-options.nix.  It writes to
      ``/dev/console``, which nspawn, podman (``-t``) and LXC connect to the
      runtime's console.
    """
    lines = ["{ config, lib, pkgs, ... }:", "{"]
    if network_module:
        lines += ["  imports = [", "    (", _indent(network_module, "      "), "    )", "  ];"]
    lines += [
        "  boot.isContainer = true;",
        f"  networking.hostName = lib.mkDefault {_s(spec.name)};",
        "  networking.useDHCP = lib.mkDefault false;",
    ]
    if network_module:
        lines.append("  networking.useHostResolvConf = lib.mkOverride 900 false;")
    lines.append(f"  nix.enable = lib.mkDefault {_value(spec.with_nix)};")
    lines += ["  nix.gc.automatic = lib.mkIf (!config.nix.enable) (lib.mkForce false);",
              "  nix.optimise.automatic = lib.mkIf (!config.nix.enable) (lib.mkForce false);"]
    if spec.ssh_keys:
        lines.append("  services.openssh.enable = lib.mkDefault true;")
        lines.append(f"  users.users.root.openssh.authorizedKeys.keys = {_list(spec.ssh_keys)};")
    else:
        lines.append("  users.allowNoPasswordLogin = lib.mkDefault true;")
    lines += _control_lines(spec, container=True)
    lines += _marker_unit()
    lines.append("}")
    machine = "\n".join(lines) + "\n"
    head = (f"# Guest module of nix-slave container {spec.name}: the runtime runs its init.\n"
            "# Generated by nixslave; import it beside your own configuration.\n")
    return (head + "{ ... }:\n{\n  imports = [\n    (\n" + _indent(slave_module(), "      ")
            + "\n    )\n    (\n" + _indent(machine, "      ") + "\n    )\n  ];\n}\n")
