# `nix develop`: everything the Justfile's recipes call, with the libraries
# taken from Nix instead of tools/deps/fetch-build's Debian-built prefix.
{ pkgs, perSystem, ... }:
let
  inherit (pkgs) lib;
  quic = import ./lib/quic-stack.nix { inherit pkgs; };
  # clang (libFuzzer) and clang-tidy/clang-format from one LLVM release, so the
  # linter parses the code with the same front end that builds the fuzzers.
  llvm = pkgs.llvmPackages;
in
pkgs.mkShell {
  # Take the package's own inputs rather than a second hand-kept list, so that
  # `just build` here and `nix build` can never disagree about a dependency.
  inputsFrom = [ perSystem.self.ferry ];

  buildInputs = [
    # Already reached through inputsFrom; named again so the shell keeps the
    # wolfSSL/ngtcp2 pair even if the package ever stops linking one of them.
    quic.wolfssl
    quic.ngtcp2
    # Only the benchmarks use it, so the package does not carry it.
    pkgs.sqlite
  ];

  packages = [
    pkgs.just
    pkgs.meson
    pkgs.ninja
    pkgs.pkg-config
    llvm.clang
    llvm.clang-tools
    pkgs.cppcheck
    pkgs.openssh
    pkgs.python3
    pkgs.git
  ]
  # Only exist on Linux; keeps the shell evaluable should Darwin systems ever
  # be added to the flake.
  ++ lib.optionals pkgs.stdenv.hostPlatform.isLinux [
    pkgs.iproute2
    pkgs.iptables
  ];

  env = {
    # The Justfile and tools/setup read this: they then take PKG_CONFIG_PATH
    # from this shell instead of fetching and building the pinned prefix.
    FERRY_DEPS_FROM_NIX = "1";
  };

  # Debug builds run at -O0, where glibc turns nixpkgs' _FORTIFY_SOURCE into a
  # warning, and meson.build makes warnings errors. Sanitizer and fuzzer
  # builds want it off as well. The package build keeps fortify on.
  hardeningDisable = [
    "fortify"
    "fortify3"
  ];
}
