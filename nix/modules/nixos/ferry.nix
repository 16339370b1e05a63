# NixOS services for the two long-running ferry applets.
#
# A plain NixOS module on purpose (no blueprint `{ flake, ... }:` wrapper):
# it then works both as `flake.nixosModules.ferry` and when imported by path,
# as a VM test may. The default package is built from this repository with
# the host's own nixpkgs, like any nixpkgs module would.
#
# How ferry reads its configuration (src/base/config.h): built-in default <
# config file < FERRY_<KEY> environment < --flag. The file is INI whose keys
# sit outside any section or in a section named after the applet; `settings`
# is rendered into that applet section. Paths the module owns (data dir, key,
# ticket) go on the command line so they win over anything in the file.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  inherit (lib) types mkOption;

  cfg = config.services.ferry;

  iniFormat = pkgs.formats.ini { };

  # ferry's config values are strings, paths, integers, booleans, durations
  # ("30s") and enums; null leaves a key out so ferry's own default applies.
  settingAtom = types.nullOr (
    types.oneOf [
      types.bool
      types.int
      types.str
    ]
  );

  defaultPackage = import ../../packages/ferry {
    inherit pkgs;
    pname = "ferry";
  };

  renderConfig =
    applet: settings:
    iniFormat.generate "ferry-${applet}.conf" {
      ${applet} = lib.filterAttrs (_: value: value != null) settings;
    };

  # StateDirectory= only takes paths below /var/lib; anything else has to be
  # created by tmpfiles and opened up explicitly under ProtectSystem=strict.
  stateDirectoryOf =
    dir:
    if lib.hasPrefix "/var/lib/" dir && lib.removePrefix "/var/lib/" dir != "" then
      lib.removePrefix "/var/lib/" dir
    else
      null;

  dataDirServiceConfig =
    dir:
    let
      stateDir = stateDirectoryOf dir;
    in
    if stateDir != null then
      {
        StateDirectory = stateDir;
        StateDirectoryMode = "0700";
      }
    else
      { ReadWritePaths = [ dir ]; };

  # Options both applets share. `applet` names the section in the rendered
  # file and the default data directory.
  commonOptions =
    applet:
    { extraSettings }:
    {
      enable = lib.mkEnableOption "the ferry ${applet}";

      package = mkOption {
        type = types.package;
        default = defaultPackage;
        defaultText = lib.literalMD "ferry built from this repository with the system's nixpkgs";
        description = "The ferry package whose `bin/ferry` runs the ${applet}.";
      };

      dataDir = mkOption {
        type = types.strMatching "/.+";
        default = "/var/lib/ferry-${applet}";
        description = ''
          Where the ${applet} keeps its LMDB store and state (`--data-dir`).
          Below /var/lib it is managed as the unit's StateDirectory; elsewhere
          it is created by systemd-tmpfiles.
        '';
      };

      keyFile = mkOption {
        type = types.nullOr (types.strMatching "/.+");
        default = null;
        example = "/run/secrets/ferry-${applet}.key";
        description = ''
          The node's private key (`--key-file`), read at run time and never
          copied to the Nix store. `null` leaves the choice to ferry.${lib.optionalString (applet == "coordinator") " The coordinator gets it through systemd's LoadCredential, so the file may stay readable by root alone."}
        '';
      };

      settings = mkOption {
        type = types.submodule {
          freeformType = types.attrsOf settingAtom;
          options = {
            log_level = mkOption {
              type = types.enum [
                "debug"
                "info"
                "warn"
                "error"
              ];
              default = "info";
              description = "How much the ${applet} logs.";
            };
          }
          // extraSettings;
        };
        default = { };
        description = ''
          Keys written to the `[${applet}]` section of the generated config
          file, one INI key per attribute. Ignored when `configFile` is set.
          `data_dir` and `key_file` belong in `dataDir` and `keyFile`.
        '';
      };

      configFile = mkOption {
        type = types.path;
        default = renderConfig applet cfg.${applet}.settings;
        defaultText = lib.literalMD "a file rendered from `services.ferry.${applet}.settings`";
        description = ''
          The INI file passed as `--config`. It ends up in the world-readable
          Nix store when generated, so keep secrets in files named by
          `keyFile`${lib.optionalString (applet == "agent") " and `ticketFile`"}.
        '';
      };

      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "--log-level=debug" ];
        description = "Further arguments appended to `ferry ${applet}`.";
      };
    };

  # The module passes these as flags; the same key in the file would only be
  # overridden, silently, so refuse it instead.
  flagOwnedKeyAssertions =
    applet:
    map
      (key: {
        assertion = !(cfg.${applet}.settings ? ${key});
        message = "services.ferry.${applet}.settings.${key}: set it through the module's own option (dataDir / keyFile) instead.";
      })
      [
        "data_dir"
        "key_file"
      ];

  escapeArgs = utils.escapeSystemdExecArgs;

  commonServiceConfig = {
    Restart = "always";
    RestartSec = "5s";
    # QUIC over UDP/IP, local sockets (journal, nix-daemon, D-Bus) and
    # netlink for libuv's interface enumeration.
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
      "AF_NETLINK"
    ];
  };
in
{
  options.services.ferry = {
    coordinator =
      commonOptions "coordinator" {
        extraSettings = {
          listen = mkOption {
            type = types.str;
            default = "[::]:4433";
            description = "UDP address and port the coordinator's QUIC endpoint binds.";
          };
        };
      }
      // {
        ownerFile = mkOption {
          type = types.nullOr (types.strMatching "/.+");
          default = null;
          example = "/etc/ferry/owner.pub";
          description = ''
            A file holding the first owner's node id or `ssh-ed25519` public
            key line. When set, a coordinator without a store is initialised
            on its first start (`ferry coordinator init --owner`), so a new
            host comes up serving; when `null`, run `ferry coordinator init`
            by hand once. The owner is the root of the fleet's trust and is
            fixed for the coordinator's life.
          '';
        };

        user = mkOption {
          type = types.str;
          default = "ferry";
          description = "Account the coordinator runs as; created when left at the default.";
        };

        group = mkOption {
          type = types.str;
          default = "ferry";
          description = "Group the coordinator runs as; created when left at the default.";
        };
      };

    agent =
      commonOptions "agent" {
        # The agent's update mode (proto/rollout.md): declared with the host,
        # reported to the coordinator in its facts.
        extraSettings = {
          update_mode = mkOption {
            type = types.enum [
              "follow"
              "pinned"
              "assigned"
              "latest"
            ];
            default = "follow";
            description = ''
              follow: install what rollouts deliver; pinned: install nothing;
              assigned: run `assigned_version` only (rollouts skip the host);
              latest: also catch up with the channel's newest release.
            '';
          };
          channel = mkOption {
            type = types.strMatching "[a-z0-9._-]{1,32}";
            default = "stable";
            description = "Release channel: rollouts on a channel select only its agents.";
          };
          assigned_version = mkOption {
            type = types.str;
            default = "";
            example = "kiosk-app@2.1.0";
            description = "With update_mode assigned: VERSION or NAME@VERSION this host runs.";
          };
        };
      }
      // {
      ticketFile = mkOption {
        type = types.nullOr (types.strMatching "/.+");
        default = null;
        example = "/run/secrets/ferry-enroll.ticket";
        description = ''
          One-time enrollment ticket made by `ferry admin` (`--ticket-file`).
          Only needed until the agent has enrolled; read at run time, never
          copied to the Nix store.
        '';
      };
    };
  };

  config = lib.mkMerge [
    (lib.mkIf cfg.coordinator.enable (
      let
        c = cfg.coordinator;
      in
      {
        assertions = flagOwnedKeyAssertions "coordinator";

        users.users = lib.mkIf (c.user == "ferry") {
          ferry = {
            isSystemUser = true;
            inherit (c) group;
            description = "ferry coordinator";
          };
        };
        users.groups = lib.mkIf (c.group == "ferry") { ferry = { }; };

        systemd.tmpfiles.rules = lib.optional (
          stateDirectoryOf c.dataDir == null
        ) "d ${c.dataDir} 0700 ${c.user} ${c.group} - -";

        systemd.services.ferry-coordinator = {
          description = "ferry coordinator";
          wantedBy = [ "multi-user.target" ];
          after = [ "network.target" ];

          serviceConfig =
            commonServiceConfig
            // dataDirServiceConfig c.dataDir
            // {
              ExecStart = lib.concatStringsSep " " (
                [
                  (escapeArgs [
                    "${c.package}/bin/ferry"
                    "coordinator"
                    "--config"
                    # Interpolated: older escapeSystemdExecArgs reject derivations.
                    "${c.configFile}"
                    "--data-dir"
                    c.dataDir
                  ])
                ]
                # %d is systemd's credentials directory; left unescaped so
                # systemd expands it.
                ++ lib.optional (c.keyFile != null) "--key-file %d/ferry-key"
                ++ [ (escapeArgs c.extraArgs) ]
              );

              # First start only: the store marks an initialised coordinator.
              ExecStartPre = lib.optional (c.ownerFile != null) (
                pkgs.writeShellScript "ferry-coordinator-init" ''
                  [ -e ${lib.escapeShellArg c.dataDir}/store/data.mdb ] && exit 0
                  exec ${c.package}/bin/ferry coordinator init \
                    --config ${c.configFile} --data-dir ${lib.escapeShellArg c.dataDir} \
                    ${lib.optionalString (c.keyFile != null) ''--key-file "$CREDENTIALS_DIRECTORY/ferry-key"''} \
                    --owner "$(cat ${lib.escapeShellArg c.ownerFile})"
                ''
              );

              # systemd reads the key as root and hands the service a private
              # copy, so the key file itself can stay root-only.
              LoadCredential = lib.optional (c.keyFile != null) "ferry-key:${c.keyFile}";

              # A fixed account rather than DynamicUser: the LMDB store and the
              # coordinator's identity must keep one owner across restarts and
              # be reachable by admins for backups.
              DynamicUser = false;
              User = c.user;
              Group = c.group;

              # It only needs its data directory and a UDP port above 1024.
              # A port below 1024 would need AmbientCapabilities=
              # CAP_NET_BIND_SERVICE and a bounding set that allows it.
              UMask = "0077";
              CapabilityBoundingSet = "";
              AmbientCapabilities = "";
              NoNewPrivileges = true;
              ProtectSystem = "strict";
              ProtectHome = true;
              PrivateTmp = true;
              PrivateDevices = true;
              ProtectKernelTunables = true;
              ProtectKernelModules = true;
              ProtectKernelLogs = true;
              ProtectControlGroups = true;
              ProtectClock = true;
              ProtectHostname = true;
              ProtectProc = "invisible";
              RestrictNamespaces = true;
              RestrictRealtime = true;
              RestrictSUIDSGID = true;
              LockPersonality = true;
              MemoryDenyWriteExecute = true;
              RemoveIPC = true;
              SystemCallArchitectures = "native";
              SystemCallFilter = [ "@system-service" ];
              # A refused call fails with EPERM and shows up in ferry's error
              # message, instead of the process dying with SIGSYS.
              SystemCallErrorNumber = "EPERM";
            };
        };
      }
    ))

    (lib.mkIf cfg.agent.enable (
      let
        a = cfg.agent;
      in
      {
        assertions = flagOwnedKeyAssertions "agent" ++ [
          {
            assertion = (a.settings.update_mode == "assigned") == (a.settings.assigned_version != "");
            message = "services.ferry.agent.settings: assigned_version goes with update_mode = \"assigned\", and only with it";
          }
        ];

        systemd.tmpfiles.rules = lib.optional (
          stateDirectoryOf a.dataDir == null
        ) "d ${a.dataDir} 0700 root root - -";

        systemd.services.ferry-agent = {
          description = "ferry agent";
          wantedBy = [ "multi-user.target" ];
          # It dials out to the coordinator as soon as it starts.
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];

          # The nixos applier realises closures and switches to them.
          path = [ config.nix.package ];

          # The agent is what runs switch-to-configuration. Letting that switch
          # restart the agent would kill the apply it is in the middle of; the
          # new agent binary is picked up at its next start instead.
          restartIfChanged = false;

          serviceConfig =
            commonServiceConfig
            // dataDirServiceConfig a.dataDir
            // {
              ExecStart = escapeArgs (
                [
                  "${a.package}/bin/ferry"
                  "agent"
                  "--config"
                  "${a.configFile}"
                  "--data-dir"
                  a.dataDir
                ]
                ++ lib.optionals (a.keyFile != null) [
                  "--key-file"
                  a.keyFile
                ]
                ++ lib.optionals (a.ticketFile != null) [
                  "--ticket-file"
                  a.ticketFile
                ]
                ++ a.extraArgs
              );

              # Runs as root, deliberately: applying an update means writing
              # the Nix store and profiles, switching the system, restarting
              # services and possibly rebooting, and the appliers and health
              # checks it spawns inherit whatever is taken away here (even a
              # UMask would leak into files activation writes). So beyond the
              # address families above, none of the coordinator's sandboxing
              # (ProtectSystem, ProtectHome, NoNewPrivileges, SystemCallFilter,
              # capability limits) applies to the agent.
              User = "root";
              Group = "root";
            };
        };
      }
    ))
  ];
}
