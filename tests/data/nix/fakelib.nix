# The few lib functions the generated modules call, defined as nixpkgs'
# lib/modules.nix and lib/trivial.nix define them (mkOverride, mkIf and the
# named priorities), so tests can evaluate a module to plain data without a
# nixpkgs checkout.  `release` is the nixpkgs version being imitated.
{ release ? "25.05" }:
rec {
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkVMOverride = mkOverride 10;
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  versionAtLeast = v: min: builtins.compareVersions v min >= 0;
  trivial.release = release;
}
