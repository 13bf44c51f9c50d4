"""``hybreid edge run|outbox-recover`` and ``hybreid site broker-acl``."""

from __future__ import annotations

from pathlib import Path

from hybreid.command_line import add_metrics_options, command, group, serve_metrics
from hybreid.errors import UserError


def _run(args) -> None:
    import json

    from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig

    if args.preview and args.metrics_port is None:
        raise UserError("--preview is served beside the metrics: give --metrics-port too")
    annotator = None
    if args.preview or args.save_annotated:
        from hybreid.edge_runtime.annotate import Annotator

        annotator = Annotator(args.save_annotated, preview=args.preview)
    runtime = EdgeRuntime(SiteConfig.load(args.config), annotator=annotator)
    runtime.install_signal_handlers()
    metrics = None
    if args.metrics_port is not None:
        from hybreid.edge_runtime.prometheus_metrics import EdgeMetrics

        metrics = serve_metrics(args, EdgeMetrics(runtime), annotator.page if args.preview else None)
    try:
        summary = runtime.run(max_seconds=args.max_seconds)
    finally:
        if metrics is not None:
            metrics.stop()
    print(json.dumps(summary, indent=2))


def _outbox_recover(args) -> None:
    import json

    from hybreid.edge_runtime.outbox import recover

    print(json.dumps(recover(args.outbox, args.out)))


def _broker_acl(args) -> None:
    from hybreid.edge_runtime.broker_acl import write_broker_files

    paths = write_broker_files(args.site_files, args.out, tuple(args.matcher_user or ("matcher",)),
                               tuple(args.reader or ()), args.overwrite, args.new_passwords, args.persistence_dir)
    print(f"wrote {paths['acl']}, {paths['passwd']} and {paths['conf']} (include it in the listener's "
          f"configuration); each login's password is in {Path(args.out) / 'passwords'} (mode 0600; a box's "
          "camera status connections log in as <box user>.<camera> with the box's password)")


def register(commands) -> None:
    run = command(group(commands, "edge", "edge runtime: run, scenes"), "run",
                  "capture -> detect -> track -> embed -> publish", _run)
    run.add_argument("--config", required=True, help="site YAML (see configs/site.example.yaml)")
    run.add_argument("--max-seconds", type=float, help="stop after this long (default: until stopped)")
    add_metrics_options(run)
    run.add_argument("--save-annotated", metavar="DIR",
                     help="also write each camera's frames with its detections, tracks and published tracklets "
                          "drawn on them, as DIR/<camera>.mp4 (for commissioning; costs time a frame)")
    run.add_argument("--preview", action="store_true",
                     help="serve the latest such frame of each camera at /preview beside the metrics "
                          "(needs --metrics-port)")

    recover = command(group(commands, "edge", "edge runtime: run, scenes"), "outbox-recover",
                      "copy what a damaged outbox still holds into a new one (the damaged file is only read)",
                      _outbox_recover)
    recover.add_argument("outbox", help="the damaged outbox file")
    recover.add_argument("--out", required=True, help="the new outbox file (must not exist)")

    acl = command(group(commands, "site", "a site's broker set-up from its site files"), "broker-acl",
                  "Mosquitto password file and ACL: each box writes only its own cameras, the matcher alone "
                  "writes events", _broker_acl)
    acl.add_argument("site_files", nargs="+", metavar="SITE.yaml", help="one site file per camera box")
    acl.add_argument("--out", required=True, help="folder for acl, passwd, mosquitto.conf and passwords/")
    acl.add_argument("--matcher-user", action="append",
                     help="a matcher instance's MQTT user (repeatable: each instance of a shared group logs in as "
                          "its own; default: matcher)")
    acl.add_argument("--reader", action="append", help="a user that may read events and statuses (repeatable)")
    acl.add_argument("--overwrite", action="store_true",
                     help="replace the files of an earlier run in --out, keeping its users' passwords")
    acl.add_argument("--new-passwords", action="store_true", help="with --overwrite: new passwords for everyone")
    acl.add_argument("--persistence-dir", default="/var/lib/mosquitto",
                     help="where Mosquitto keeps its queues on disk (writable by the broker's user)")
