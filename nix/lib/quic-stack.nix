# The TLS + QUIC pair ferry links against, shared by the package and the dev
# shell so that `nix build` and `just` inside `nix develop` see the very same
# libraries. Outside Nix the same pair is pinned in tools/deps/pins.ini; keep
# the two in step when bumping either.
{ pkgs }:
let
  inherit (pkgs) lib stdenv;

  # Features ferry relies on: QUIC hooks for ngtcp2, Ed25519 keys and
  # self-signed certificates bound to node ids, tickets and ALPN for
  # resumption and RPC routing. The assembly paths only exist on x86-64;
  # elsewhere nixpkgs' own choice (ARMv8 asm where the CPU allows) stands.
  wantedWolfsslFeatures = [
    "quic"
    "sp"
    "ed25519"
    "curve25519"
    "certgen"
    "session-ticket"
    "alpn"
    "harden"
  ]
  ++ lib.optionals stdenv.hostPlatform.isx86_64 [
    "aesni"
    "intelasm"
    "sp-asm"
  ];

  # nixpkgs already turns some of these on, sometimes in a richer form
  # (`--enable-sp=yes,asm`). Appending a bare `--enable-sp` after that would
  # win in configure and quietly drop the asm, so only add what is missing.
  alreadyEnabled =
    flags: feature:
    lib.any (
      flag:
      flag == "--enable-${feature}"
      || (lib.hasPrefix "--enable-${feature}=" flag && flag != "--enable-${feature}=no")
    ) flags;

  wolfssl = pkgs.wolfssl.overrideAttrs (
    _finalAttrs: prev:
    let
      prevFlags = prev.configureFlags or [ ];
    in
    {
      configureFlags =
        prevFlags
        ++ map (feature: "--enable-${feature}") (
          lib.filter (feature: !alreadyEnabled prevFlags feature) wantedWolfsslFeatures
        );
    }
  );

  # nixpkgs' `ngtcp2` is a CMake build tied to an OpenSSL-family backend, and
  # bending it into a wolfSSL build through overrideAttrs means undoing most of
  # it (and whatever it grows later). This follows the shape of nixpkgs'
  # autotools variant (ngtcp2/gnutls.nix) instead, and uses the same release
  # and configure switches as tools/deps/pins.ini so both worlds agree.
  ngtcp2 = stdenv.mkDerivation (finalAttrs: {
    pname = "ngtcp2-wolfssl";
    version = "1.11.0";

    # The release tarball ships a generated configure script. Its sha256 is the
    # one pinned for Debian's orig tarball in tools/deps/pins.ini (same file).
    src = pkgs.fetchurl {
      url = "https://github.com/ngtcp2/ngtcp2/releases/download/v${finalAttrs.version}/ngtcp2-${finalAttrs.version}.tar.xz";
      hash = "sha256-OCwVv2a2MPJgIWMbJbfrH+rELGfB1oJhidYQkd+qTQk=";
    };

    # No separate doc output: the lib-only build installs a lone README, and an
    # output nothing lands in would fail the build.
    outputs = [
      "out"
      "dev"
    ];

    strictDeps = true;
    nativeBuildInputs = [ pkgs.pkg-config ];
    # ngtcp2_crypto_wolfssl's headers include wolfSSL's, so whoever builds
    # against this needs wolfSSL on its include and pkg-config paths too.
    propagatedBuildInputs = [ wolfssl ];

    # Only the crypto helper for wolfSSL; no examples, no other TLS backends
    # picked up by accident from the environment.
    configureFlags = [
      "--with-wolfssl"
      "--without-openssl"
      "--without-gnutls"
      "--without-boringssl"
      "--without-picotls"
      "--without-libev"
      "--without-libnghttp3"
      "--without-jemalloc"
      "--enable-lib-only"
    ];

    enableParallelBuilding = true;
    doCheck = true;

    meta = {
      description = "QUIC protocol library (RFC 9000), built with its wolfSSL crypto helper";
      homepage = "https://github.com/ngtcp2/ngtcp2";
      license = lib.licenses.mit;
      platforms = lib.platforms.unix;
    };
  });
in
{
  inherit wolfssl ngtcp2;
}
