"""``hybreid edge run`` and ``hybreid site broker-acl``."""

from __future__ import annotations

from pathlib import Path

from hybreid.command_line import command, group


def _run(args) -> None:
    import json

    from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig

    runtime = EdgeRuntime(SiteConfig.load(args.config))
    runtime.install_signal_handlers()
    summary = runtime.run(max_seconds=args.max_seconds)
    print(json.dumps(summary, indent=2))


def _broker_acl(args) -> None:
    from hybreid.edge_runtime.broker_acl import write_broker_files

    paths = write_broker_files(args.site_files, args.out, args.matcher_user, tuple(args.reader or ()),
                               args.overwrite)
    print(f"wrote {paths['acl']}, {paths['passwd']} and {paths['conf']} (include it in Mosquitto's "
          f"configuration); each user's password is in {Path(args.out) / 'passwords'} (mode 0600)")


def register(commands) -> None:
    run = command(group(commands, "edge", "edge runtime: run, scenes"), "run",
                  "capture -> detect -> track -> embed -> publish", _run)
    run.add_argument("--config", required=True, help="site YAML (see configs/site.example.yaml)")
    run.add_argument("--max-seconds", type=float, help="stop after this long (default: until stopped)")

    acl = command(group(commands, "site", "a site's broker set-up from its site files"), "broker-acl",
                  "Mosquitto password file and ACL: each box writes only its own cameras, the matcher alone "
                  "writes events", _broker_acl)
    acl.add_argument("site_files", nargs="+", metavar="SITE.yaml", help="one site file per camera box")
    acl.add_argument("--out", required=True, help="folder for acl, passwd, mosquitto.conf and passwords/")
    acl.add_argument("--matcher-user", default="matcher", help="the matcher's MQTT user")
    acl.add_argument("--reader", action="append", help="a user that may read events and statuses (repeatable)")
    acl.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
