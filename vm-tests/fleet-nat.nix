# A NixOS VM test of the fleet's trust behind NAT; its network-namespace twin,
# tests/netns_fleet.sh, is what runs where no Nix store is available.
#
#   vlan 1 "public": coordinator 192.168.1.1, router 192.168.1.254
#   vlan 2 "LAN":    router 10.0.2.1 (NAT), agent1 10.0.2.2, agent2 10.0.2.3
#   vlan 3 "admins": router 10.0.3.1, admin 10.0.3.2
#
# The admin makes a ticket; both agents enroll with it from behind the NAT
# through the NixOS module's ticketFile; the admin sees them enrolled, online
# and with facts, from its own segment; then it rolls a signed artifact out
# to them in two waves and both install it.
#
# Called from nix/checks/vm-fleet-nat.nix with pkgs and the module.
{ pkgs, ferryModule }:
let
  # The admin's key is made in the test and named at `coordinator init`; the
  # module runs init on first start when `owner` is set, so the coordinator
  # gets it through a file the test writes before starting the service.
  ownerFile = "/run/ferry-owner";

  # The script applier: installs the artifact as /var/lib/app/current.
  applier = pkgs.writeShellScript "install-app" ''
    mkdir -p /var/lib/app
    case "$FERRY_ACTION" in
    activate) cp "$FERRY_ARTIFACT" /var/lib/app/current && echo "$FERRY_VERSION" > /var/lib/app/version ;;
    rollback) echo "''${FERRY_PREVIOUS_VERSION:-none}" > /var/lib/app/version ;;
    esac
  '';

  agentNode = address: {
    imports = [ ferryModule ];
    virtualisation.vlans = [ 2 ];
    networking.firewall.enable = false;
    networking.interfaces.eth1.ipv4.addresses = [
      {
        inherit address;
        prefixLength = 24;
      }
    ];
    networking.defaultGateway = "10.0.2.1";
    services.ferry.agent = {
      enable = true;
      ticketFile = "/run/ferry.ticket";
      settings = {
        keepalive = "2s";
        apply_command = "${applier}";
        health_command = "${pkgs.coreutils}/bin/true";
      };
    };
    # Started by the test script once the ticket is in place.
    systemd.services.ferry-agent.wantedBy = pkgs.lib.mkForce [ ];
  };
in
pkgs.testers.runNixOSTest {
  name = "ferry-fleet-nat";

  nodes = {
    coordinator = {
      imports = [ ferryModule ];
      virtualisation.vlans = [ 1 ];
      networking.firewall.allowedUDPPorts = [ 4433 ];
      networking.interfaces.eth1.ipv4.addresses = [
        {
          address = "192.168.1.1";
          prefixLength = 24;
        }
      ];
      networking.interfaces.eth1.ipv4.routes = [
        {
          address = "10.0.3.0";
          prefixLength = 24;
          via = "192.168.1.254";
        }
      ];
      services.ferry.coordinator = {
        enable = true;
        ownerFile = ownerFile;
        settings.listen = "192.168.1.1:4433";
      };
      systemd.services.ferry-coordinator.wantedBy = pkgs.lib.mkForce [ ];
    };

    router = {
      virtualisation.vlans = [
        1
        2
        3
      ];
      networking.firewall.enable = false;
      networking.interfaces.eth1.ipv4.addresses = [
        {
          address = "192.168.1.254";
          prefixLength = 24;
        }
      ];
      networking.interfaces.eth2.ipv4.addresses = [
        {
          address = "10.0.2.1";
          prefixLength = 24;
        }
      ];
      networking.interfaces.eth3.ipv4.addresses = [
        {
          address = "10.0.3.1";
          prefixLength = 24;
        }
      ];
      networking.nat = {
        enable = true;
        internalInterfaces = [ "eth2" ];
        externalInterface = "eth1";
      };
    };

    agent1 = agentNode "10.0.2.2";
    agent2 = agentNode "10.0.2.3";

    admin = {
      imports = [ ferryModule ];
      virtualisation.vlans = [ 3 ];
      networking.firewall.enable = false;
      networking.interfaces.eth1.ipv4.addresses = [
        {
          address = "10.0.3.2";
          prefixLength = 24;
        }
      ];
      networking.defaultGateway = "10.0.3.1";
      environment.systemPackages = [
        (import ../nix/packages/ferry {
          inherit pkgs;
          pname = "ferry";
        })
      ];
    };
  };

  testScript = ''
    start_all()
    router.wait_for_unit("network.target")

    # The admin's key; its id becomes the coordinator's owner.
    admin.succeed("mkdir -p /root/.config/ferry && ferry key generate --out /root/.config/ferry/admin.key")
    owner = admin.succeed("ferry key show --id /root/.config/ferry/admin.key").strip()
    coordinator.succeed(f"echo {owner} > ${ownerFile}")
    coordinator.systemctl("start ferry-coordinator")
    coordinator.wait_for_unit("ferry-coordinator")
    coordinator.wait_until_succeeds("journalctl -u ferry-coordinator | grep -q 'admins connect with'")
    line = coordinator.succeed("journalctl -u ferry-coordinator | grep 'admins connect with' | tail -1")
    spec = line.split("--coordinator ")[1].strip()

    admin_env = f"FERRY_COORDINATOR={spec}"
    ticket = admin.succeed(f"{admin_env} ferry admin enroll create --tenant shop --uses 2 --ttl 10m").strip()

    for agent in (agent1, agent2):
        agent.succeed(f"echo '{ticket}' > /run/ferry.ticket && chmod 600 /run/ferry.ticket")
        agent.systemctl("start ferry-agent")
        agent.wait_for_unit("ferry-agent")

    # Both enrolled and online, seen from the admins' segment through the router.
    admin.wait_until_succeeds(f"{admin_env} ferry admin agents list | grep -c 'enrolled.*yes' | grep -qx 2", timeout=60)
    admin.succeed(f"{admin_env} ferry admin status | grep -q '2 enrolled'")

    # The coordinator cannot open a flow into the LAN: the agents dialled out.
    coordinator.fail("ping -c1 -W1 10.0.2.2")

    # A signed artifact rolled out in two waves to the agents behind the NAT.
    # The same file sits at the same path on every machine (file:// URI).
    for machine in (admin, agent1, agent2):
        machine.succeed("mkdir -p /srv && echo 'app 2.0.0' > /srv/app-2.0.0")
    admin.succeed(f"{admin_env} ferry admin artifact add --tenant shop --name app --version 2.0.0 --file /srv/app-2.0.0")
    admin.succeed(f"{admin_env} ferry admin rollout create --tenant shop --artifact app@2.0.0 --waves 2 --id nat")
    admin.succeed(f"{admin_env} ferry admin rollout start nat --tenant shop")
    admin.wait_until_succeeds(f"{admin_env} ferry admin rollout show nat | grep -q '^state: *completed'", timeout=120)
    for agent in (agent1, agent2):
        agent.succeed("grep -qx 2.0.0 /var/lib/app/version")
  '';
}
