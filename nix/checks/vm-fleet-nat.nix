# The NixOS VM test of the fleet behind NAT (vm-tests/fleet-nat.nix).
{ pkgs, flake, ... }:
import ../../vm-tests/fleet-nat.nix {
  inherit pkgs;
  ferryModule = flake.nixosModules.ferry;
}
