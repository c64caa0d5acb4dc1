# Makes any NixOS configuration a nix-slave: configured and booted from the
# outside, with no way to rebuild, switch or keep generations from inside.
# Old versions live in powered-off images, not in profiles.
#
# Every option set here exists in current nixpkgs:
#   nix.channel.enable            nixos/modules/config/nix-channel.nix
#   system.disableInstallerTools  nixos/modules/installer/tools/tools.nix
#   system.switch.enable          nixos/modules/system/activation/switchable-system.nix
#   nix.enable                    nixos/modules/config/nix.nix
#   users.mutableUsers            nixos/modules/config/users-groups.nix
#   boot.loader.grub.enable       nixos/modules/system/boot/loader/grub/grub.nix
{ lib, ... }:
{
  # No channels: the host owns the nixpkgs the guest was built from.
  nix.channel.enable = lib.mkDefault false;
  # No nixos-rebuild, nixos-install, nixos-generate-config ...
  system.disableInstallerTools = lib.mkDefault true;
  # ... and no switch-to-configuration: the host swaps the whole image.
  system.switch.enable = lib.mkDefault false;
  # Users are part of the configuration, never edited inside the guest.
  users.mutableUsers = lib.mkDefault false;
  # The host writes the boot configuration (direct kernel boot or the
  # extlinux entry of a self-booting disk); no boot loader runs in the guest.
  boot.loader.grub.enable = lib.mkDefault false;
}
