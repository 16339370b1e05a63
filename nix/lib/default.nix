# blueprint imports nix/lib/ as a whole whenever the folder exists (it becomes
# the flake's `lib` output), so the folder needs this entry point even though
# the package and the dev shell import quic-stack.nix by path. Exposing it here
# lets other flakes (or vm-tests) build against the same QUIC stack.
{ ... }:
{
  # quicStack :: pkgs -> { wolfssl, ngtcp2 }
  quicStack = pkgs: import ./quic-stack.nix { inherit pkgs; };
}
