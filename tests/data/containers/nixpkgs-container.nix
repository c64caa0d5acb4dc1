# What nixpkgs itself defines for a NixOS container whose network is
# systemd-networkd, at the priorities nixpkgs uses, written by hand from the
# sources (the guest module must evaluate beside these without a clash, and
# resolved.nix's assertion `!networking.useHostResolvConf` must hold):
#   nixos/modules/virtualisation/container-config.nix (mkIf config.boot.isContainer)
#   nixos/modules/system/boot/networkd.nix           (mkIf config.systemd.network.enable)
{ lib, ... }:
{
  # container-config.nix
  networking.useHostResolvConf = lib.mkDefault true;
  console.enable = lib.mkDefault false;
  nix.optimise.automatic = lib.mkDefault false;
  services.openssh.startWhenNeeded = lib.mkDefault true;
  # networkd.nix
  services.resolved.enable = lib.mkDefault true;
}
