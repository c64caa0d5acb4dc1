{
  # Untested on a real nixpkgs: the development machines have none, so this
  # file is only parsed and partly evaluated there (tests/test_api.py).  See
  # docs/nix.md for what that does and does not prove.
  description = "Composable building blocks for NixOS machines that are configured from the outside";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      # The guests run under qemu-system-x86_64, so one system for now.
      systems = [ "x86_64-linux" ];
      # lib.genAttrs: lib/attrsets.nix
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # The package itself is default.nix, so `nix-build` and the flake build
      # the same derivation.
      packages = forAllSystems (pkgs: {
        default = import ./default.nix { inherit pkgs; };
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/nixslave";
        };
      });

      # Puts nixslave on a NixOS host:
      #   imports = [ nixslave.nixosModules.default ];
      #   programs.nixslave.enable = true;
      # lib.mkEnableOption, lib.mkOption: lib/options.nix; lib.types.package:
      # lib/types.nix; lib.mkIf: lib/modules.nix; environment.systemPackages:
      # nixos/modules/config/system-path.nix
      nixosModules.default =
        { config, lib, pkgs, ... }:
        let
          cfg = config.programs.nixslave;
        in
        {
          options.programs.nixslave = {
            enable = lib.mkEnableOption "nixslave, which builds and runs NixOS machines configured from the outside";
            package = lib.mkOption {
              type = lib.types.package;
              default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
              defaultText = lib.literalExpression "nixslave.packages.\${pkgs.stdenv.hostPlatform.system}.default";
              description = "The nixslave package to install.";
            };
          };
          config = lib.mkIf cfg.enable {
            environment.systemPackages = [ cfg.package ];
          };
        };

      lib = {
        # The profile-less part of every guest (no channels, no installer
        # tools, no switch, immutable users, no boot loader in the guest),
        # taken from the same file nixslave builds its guests with.  The
        # machine's own part (file systems by label, boot, network by MAC)
        # depends on its spec and topology node: print it with
        #   nixslave root module --name N --layout L [--topology F --node N]
        slaveModule = ./nixslave/nix/slave.nix;
      };
    };
}
