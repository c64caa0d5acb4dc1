# What nixos-generate-config writes on a real machine, plus the settings an
# ordinary configuration.nix adds: none of it may clash with the guest module.
{ lib, modulesPath, ... }:
{
  fileSystems."/" = { device = "/dev/disk/by-uuid/0f3e2c1a-7d5b-4e8e-9a61-3c2b1d0e9f84"; fsType = "ext4"; };
  fileSystems."/boot" = { device = "/dev/disk/by-uuid/1A2B-3C4D"; fsType = "vfat"; };
  swapDevices = [ { device = "/dev/disk/by-uuid/5c6d7e8f-0000-4000-8000-000000000001"; } ];
  boot.initrd.luks.devices.crypted.device = "/dev/disk/by-uuid/aaaaaaaa-0000-4000-8000-000000000002";
  boot.initrd.availableKernelModules = [ "xhci_pci" "ahci" "nvme" ];
  boot.loader.systemd-boot.enable = true;
  boot.loader.grub.enable = lib.mkDefault true;
  networking.hostName = "workstation";
  networking.useDHCP = lib.mkDefault true;
  nix.gc.automatic = true;
  services.openssh.enable = true;
}
