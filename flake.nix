{
  description = "ferry: staged updates for fleets of machines behind NAT, over QUIC";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

    blueprint.url = "github:numtide/blueprint";
    blueprint.inputs.nixpkgs.follows = "nixpkgs";

    # blueprint builds outputs for `inputs.systems` when the flake has one.
    # ferry is Linux-only (netlink, systemd, the NixOS applier), so offer no
    # Darwin outputs that could only fail to evaluate or build.
    systems.url = "github:nix-systems/default-linux";
    blueprint.inputs.systems.follows = "systems";
  };

  # Everything else lives under nix/ (packages, devshell, checks, modules), laid
  # out the way blueprint maps folders to flake outputs.
  outputs = inputs: inputs.blueprint { inherit inputs; prefix = "nix/"; };
}
