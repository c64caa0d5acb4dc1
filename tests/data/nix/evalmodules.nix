# Evaluates a module file and everything it imports (inline functions, paths)
# with the fake lib, returning one attribute set per module, minus imports.
# The test's Python side merges them by priority as the module system does.
{ file, release ? "25.05", nixEnable ? false }:
let
  lib = import ./fakelib.nix { inherit release; };
  args = {
    inherit lib;
    config = { nix.enable = nixEnable; };
    pkgs = { coreutils = "/nix/store/00000000000000000000000000000000-coreutils"; };
    modulesPath = "/modules";
  };
  collect = m:
    let
      f = if builtins.isPath m || builtins.isString m then import m else m;
      r = if builtins.isFunction f then f args else f;
    in [ (builtins.removeAttrs r [ "imports" ]) ]
       ++ builtins.concatLists (map collect (r.imports or [ ]));
in collect (/. + file)
