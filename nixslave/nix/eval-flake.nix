# Builds nixosConfigurations.<attr> of a flake as a nix-slave, by extending
# the user's configuration with the guest module.  flakeRef is any reference
# builtins.getFlake accepts (an absolute path, path:, github:, git+https: ...).
{ flakeRef, attr, guestModule }:
let
  flake = builtins.getFlake flakeRef;
  system = flake.nixosConfigurations.${attr} or
    (throw "flake ${flakeRef} has no nixosConfigurations.${attr}");
in
(system.extendModules { modules = [ (/. + guestModule) ]; }).config.system.build.toplevel
