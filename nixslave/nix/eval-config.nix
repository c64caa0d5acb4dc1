# Builds a user's NixOS configuration file as a nix-slave.
# Every input arrives through --argstr, so no path or reference is ever
# spliced into Nix source: spaces, '@' and the like need no quoting.
{ configuration, guestModule }:
(import <nixpkgs/nixos> {
  configuration = {
    imports = [ (/. + configuration) (/. + guestModule) ];
  };
}).config.system.build.toplevel
