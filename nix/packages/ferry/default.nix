# ferry built the way CI builds it (Meson, release, tests run), but against
# Nix-provided libraries instead of tools/deps/fetch-build's pinned prefix.
# blueprint calls this with its per-system scope, hence `{ pkgs, pname, ... }`
# rather than individual nixpkgs attributes.
{ pkgs, pname, ... }:
let
  inherit (pkgs) lib;

  quic = import ../../lib/quic-stack.nix { inherit pkgs; };

  root = ../../..;

  # Only what the Meson build reads, so edits to docs, CI, the Justfile or the
  # Nix files themselves do not force a rebuild (and a rerun of the tests).
  # maybeMissing: a folder with no tracked file yet is absent from the flake's
  # source, and that must not break evaluation.
  sourceDirs = [
    "src"
    "proto"
    "coordinator"
    "admin"
    "agent"
    "tests"
    "tools"
  ];
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions (
      [
        (lib.fileset.fileFilter (
          file: file.name == "meson.build" || file.name == "meson_options.txt" || file.name == "meson.options"
        ) root)
      ]
      ++ map (dir: lib.fileset.maybeMissing (root + "/${dir}")) sourceDirs
    );
  };

  # meson.build is the one place the version is written; read it from the
  # project() call rather than repeat it here. `meson_version` is skipped by
  # requiring that `version` is not preceded by a letter or underscore.
  mesonVersion =
    let
      file = root + "/meson.build";
      flat = builtins.replaceStrings [ "\n" "\r" "\t" ] [ " " " " " " ] (builtins.readFile file);
      projectArgs = builtins.match ".*project\\(([^)]*)\\).*" flat;
      version =
        if projectArgs == null then
          null
        else
          builtins.match ".*[^_a-zA-Z]version[ ]*:[ ]*'([^']*)'.*" (" " + builtins.head projectArgs);
    in
    if builtins.pathExists file && version != null then builtins.head version else "0-unstable";
in
pkgs.stdenv.mkDerivation (_finalAttrs: {
  inherit pname src;
  version = mesonVersion;

  strictDeps = true;

  nativeBuildInputs = [
    pkgs.meson
    pkgs.ninja
    pkgs.pkg-config
    # For any python script under tests/ or tools/ that Meson runs: its
    # shebang is patched against this (meson already drags python3 in).
    pkgs.python3
  ];

  buildInputs = [
    quic.wolfssl
    quic.ngtcp2
    pkgs.nghttp3
    pkgs.libsodium
    pkgs.lmdb
    pkgs.libuv
    # nixpkgs' msgpack-c (>= 4) installs its pkg-config module as `msgpack-c`;
    # Debian's libmsgpack-dev calls it `msgpack`. meson.build accepts both.
    pkgs.msgpack-c
    pkgs.inih
    pkgs.jansson
    pkgs.curl
    # tests/meson.build asks for cmocka unconditionally, so it is needed to
    # configure at all, not only when checks run: not a checkInput.
    pkgs.cmocka
  ];

  # ssh-keygen makes the OpenSSH-format keys the key-import tests read.
  nativeCheckInputs = [ pkgs.openssh ];

  # The documented build is `meson setup --buildtype=release`; nixpkgs' Meson
  # hook would otherwise pick `plain` (no optimisation, asserts compiled in).
  mesonBuildType = "release";

  mesonFlags = [
    # FY_SYSCONFDIR is derived from sysconfdir; with the default it would point
    # into this store path, where nobody can put a config file. /etc/ferry is
    # where the NixOS module and admins expect the default <applet>.conf.
    "--sysconfdir=/etc"
    # The project builds with -Werror by default so that CI on Debian fails on
    # new warnings. A newer compiler in nixpkgs must not stop users from getting
    # a binary; the warnings still fail CI where they are meant to.
    (lib.mesonBool "werror" false)
  ];

  postPatch = ''
    # find_program() scripts start with #!/usr/bin/env, which the build
    # sandbox does not have.
    for dir in tests tools; do
      if [ -d "$dir" ]; then patchShebangs "$dir"; fi
    done
  '';

  doCheck = true;

  # nixpkgs disables Meson's per-test timeouts (multiplier 0). A QUIC test
  # that hangs would then hang the build forever; keep the timeouts, but give
  # loaded builders room.
  dontAddTimeoutMultiplier = true;
  mesonCheckFlags = [ "--timeout-multiplier=3" ];

  preCheck = ''
    # The sandbox's HOME does not exist; ssh-keygen and the CLI tests want one.
    export HOME="$(mktemp -d)"
  '';

  # The installed binary, not the build tree's, is what the module runs; make
  # sure it starts at all (wrong rpath, missing shared library...).
  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    "$out/bin/ferry" version
    runHook postInstallCheck
  '';

  passthru = {
    inherit (quic) wolfssl ngtcp2;
  };

  meta = {
    description = "Staged updates for fleets of machines behind NAT, over QUIC";
    license = lib.licenses.gpl2Plus;
    mainProgram = "ferry";
    # iproute2/netlink, systemd units, NixOS applier: Linux only for now.
    platforms = lib.platforms.linux;
  };
})
