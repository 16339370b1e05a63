# blueprint already turns the package into the `pkgs-ferry` check, but that is
# a release build: b_ndebug=if-release compiles every assert() out, so the
# suite there cannot trip the invariants the C code asserts. This runs the
# same suite on an optimised build with the asserts left in.
#
# blueprint imports check files with its per-system arguments (not through
# callPackage), hence the `...`.
{ perSystem, ... }:
perSystem.self.ferry.overrideAttrs (_prev: {
  pname = "ferry-unit-tests";
  mesonBuildType = "debugoptimized";
  # Stated here, not inherited, so that turning tests off in the package for
  # a quick build can never silently empty this check.
  doCheck = true;
})
