"""``hybreid matcher run|purge|query``."""

from __future__ import annotations

import json
from pathlib import Path

from hybreid.command_line import ARTIFACT_HELP, add_metrics_options, command, group, serve_metrics
from hybreid.errors import UserError

# hybreid.matcher.index.KINDS, spelled here so building the parser needs no FAISS.
INDEXES = ["auto", "flat", "hnsw", "ivf"]
MAX_THREADS = 1024


def _gallery(args, create: bool = False, query_cosine: float | None = None):
    """The gallery of ``--db``; only ``matcher run`` may create one (a mistyped path elsewhere
    would silently query or purge an empty gallery). ``query_cosine``: the weakest match its
    index must still find (the policy's lowest threshold)."""
    from hybreid.matcher.database import StoreUnavailable, is_postgresql
    from hybreid.matcher.gallery import Gallery
    from hybreid.matcher.index import DEFAULT_QUERY_COSINE

    if not create and not is_postgresql(args.db) and not Path(args.db).is_file():
        raise UserError(f"gallery {args.db} does not exist; give the --db of the running matcher")
    try:
        return Gallery(args.db, index=getattr(args, "index", "auto"), query_cosine=query_cosine or DEFAULT_QUERY_COSINE)
    except StoreUnavailable as exc:
        raise UserError(f"{exc}; start it, or check --db") from exc


def _broker_password(args) -> str | None:
    """The MQTT password from --password-file or HYBREID_MQTT_PASSWORD: never a flag, which
    every user of the machine could read in the process list."""
    import os

    if args.password_file:
        from hybreid.files import MAX_PASSWORD_BYTES, read_text_file

        return read_text_file(args.password_file, "password file", MAX_PASSWORD_BYTES).strip()
    return os.environ.get("HYBREID_MQTT_PASSWORD")


def _gallery_model(args, thresholds) -> str | None:
    """The model the gallery is for: ``--model-identity``, else the thresholds file's; they must agree.
    Without either the gallery takes the first accepted message's model, and a message of an
    older export still queued at the broker would claim it: said here."""
    import logging
    import re

    from hybreid.matcher.policy import MatchPolicy
    from hybreid.thresholds import MODEL_IDENTITY_PATTERN

    log = logging.getLogger("hybreid.matcher")
    if args.model_identity is not None and not re.match(MODEL_IDENTITY_PATTERN, args.model_identity):
        raise UserError(f"--model-identity must be NAME@WEIGHTS_HASH (as the features carry it), "
                        f"got {args.model_identity[:80]!r}")
    calibrated_for = thresholds.model if thresholds is not None else None
    if args.model_identity and calibrated_for and args.model_identity != calibrated_for:
        raise UserError(f"--thresholds {args.thresholds} were calibrated for {calibrated_for}, not for "
                        f"--model-identity {args.model_identity}; calibrate them for this model "
                        "(`hybreid calibrate threshold`)")
    if thresholds is None:
        defaults = MatchPolicy()
        log.warning("no --thresholds: matching at the default cosines %.2f / %.2f, calibrated for no model; give the "
                    "file `hybreid calibrate threshold` writes", defaults.same_modality, defaults.cross_modality)
    model = args.model_identity or calibrated_for
    if model is None:
        log.warning("no --model-identity (nor thresholds naming one): the gallery takes the model of the first "
                    "message it accepts, even one of an older export still queued at the broker")
    return model


def _run(args) -> None:
    import signal

    from hybreid.matcher.assignment import Matcher
    from hybreid.matcher.policy import MatchPolicy
    from hybreid.matcher.prometheus_metrics import MatcherMetrics
    from hybreid.matcher.service import MatcherService
    from hybreid.mqtt import BrokerConfig
    from hybreid.mqtt.client import check_tls_files
    from hybreid.thresholds import ThresholdsFile

    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads must be between 1 and {MAX_THREADS}, got {args.threads}")
    from hybreid.matcher.index import default_threads, limit_threads

    limit_threads(args.threads if args.threads is not None else default_threads())
    choices = {} if args.transit_bonus is None else {"transit_bonus": args.transit_bonus}
    thresholds = ThresholdsFile.load(args.thresholds) if args.thresholds else None
    policy = MatchPolicy.from_thresholds(thresholds, **choices) if thresholds else MatchPolicy.checked(**choices)
    model = _gallery_model(args, thresholds)
    broker = BrokerConfig(url=args.broker, client_id=args.client_id, username=args.username,
                          password=_broker_password(args), ca_certs=args.ca_certs, protocol=args.protocol)
    broker.endpoint()  # a malformed URL is one clear error before anything starts
    if args.drain:
        broker.protocol = "5"  # ending a session on disconnect is MQTT 5's
    check_tls_files(broker)
    graph = None
    if args.camera_graph:
        from hybreid.matcher.camera_graph import CameraGraph

        graph = CameraGraph.load(args.camera_graph)
    # Every input checked: only now may a gallery be created (a refused option left an empty one).
    # The index searches deep enough for the weakest match the calibrated thresholds accept; the
    # untrained defaults (0.6 / 0.45) would make it search nearly everything for no model's sake.
    lowest = min(policy.same_modality, policy.cross_modality) if thresholds else None
    gallery = _gallery(args, create=True, query_cosine=lowest)
    if model is not None:
        if gallery.model not in (None, model):
            gallery.close()
            raise UserError(f"gallery {args.db} holds embeddings of {gallery.model}, not of {model}: embeddings of "
                            "two models cannot be compared; give the new model a new gallery (--db)")
        gallery.bind_model(model)
    service = MatcherService(Matcher(gallery, policy), broker, site=args.site, shared_group=args.shared_group,
                             drain=args.drain)
    if graph is not None:
        service.use_camera_graph(graph)
    signal.signal(signal.SIGTERM, service.request_stop)
    signal.signal(signal.SIGINT, service.request_stop)
    metrics = serve_metrics(args, MatcherMetrics(service)) if args.metrics_port is not None else None
    try:
        service.run_forever(report_every=args.report_every, reassociate_every=args.reassociate_every)
    finally:
        if metrics is not None:
            metrics.stop()
    print(json.dumps(service.status(), indent=2))


def _purge(args) -> None:
    import math

    if args.older_than_days is not None and not (math.isfinite(args.older_than_days) and args.older_than_days >= 0):
        raise UserError(f"--older-than-days must be a number of days, 0 or more, got {args.older_than_days} (a "
                        "negative age would reach into the future and delete everything)")
    gallery = _gallery(args)
    try:  # closed on a refusal too: an open SQLite gallery leaves its -wal and -shm files behind
        if args.older_than_days is not None:
            import time

            args.until = time.time() - 86400 * args.older_than_days
        identity = gallery.resolve(args.identity) if args.identity is not None else None  # a merged id: its survivor
        deleted = gallery.purge(identity=identity, camera=args.camera, since=args.since, until=args.until,
                                site=args.site, dry_run=args.dry_run)
        key = "would_delete_sightings" if args.dry_run else "deleted_sightings"
        print(json.dumps({key: deleted, **gallery.stats()}))
    finally:
        gallery.close()


def _query(args) -> None:
    from hybreid.matcher.query import by_camera, by_identity, by_image

    if args.image and not args.artifact:
        raise UserError("--image needs --artifact: the site's exported model (ONNX or engine)")
    gallery = _gallery(args)
    try:  # closed on a refusal too, as in purge
        if args.identity is not None:
            result = by_identity(gallery, args.identity)
        elif args.image:
            result = by_image(gallery, args.image, args.artifact, args.top_k)
        else:
            result = by_camera(gallery, args.camera, args.since, args.until)
    finally:
        gallery.close()
    print(json.dumps(result, indent=2))


def register(commands) -> None:
    matcher = group(commands, "matcher", "central matcher: run, purge, query")
    run = command(matcher, "run", "subscribe to protocol v1 features and assign identities", _run)
    run.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port or mqtts://host:port")
    run.add_argument("--db", default="gallery.sqlite",
                     help="the gallery: a SQLite file (created if missing), or postgresql://USER@HOST:PORT/DB, "
                          "which several matchers in one --shared-group share")
    run.add_argument("--site", default="+", help="one site, or + for all")
    run.add_argument("--thresholds", help="JSON from `hybreid calibrate threshold` (it names the model the gallery "
                                          "is for)")
    run.add_argument("--model-identity", help="the gallery's model, NAME@WEIGHTS_HASH as the features carry it "
                                              "(default: the thresholds file's); messages of any other model are "
                                              "rejected")
    run.add_argument("--index", choices=INDEXES, default="auto",
                     help="FAISS index of the identities: auto is exact below 5,000 identities, IVF above, "
                          "searched deep enough for recall@1 >= 0.99 against exact search")
    run.add_argument("--shared-group", help="MQTT v5 shared subscription group (several matchers, one gallery)")
    run.add_argument("--threads", type=int,
                     help="compute threads: index search and NumPy (default: every core but one, left to the "
                          "MQTT thread, the broker and the database; several instances on one host: a share each)")
    run.add_argument("--client-id", default="hybreid-matcher", help="MQTT client id")
    run.add_argument("--drain", action="store_true",
                     help="take over the session of an instance that will not come back (its --client-id, or its "
                          "--username where the broker binds client ids to users): decide what waits there, end "
                          "the session, exit")
    run.add_argument("--username", help="MQTT user")
    run.add_argument("--password-file", help="file holding the MQTT password (or set HYBREID_MQTT_PASSWORD)")
    run.add_argument("--ca-certs", help="CA certificates for mqtts://")
    run.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1", help="MQTT version")
    run.add_argument("--report-every", type=float, default=60.0, help="seconds between status lines (0: never)")
    run.add_argument("--reassociate-every", type=float, default=10.0,
                     help="seconds between re-associations of the recent tracklets (0: never)")
    run.add_argument("--camera-graph", help="YAML of connected cameras and their walking times (`edge scenes "
                                            "--site` writes one for a synthetic site)")
    run.add_argument("--transit-bonus", type=float,
                     help="added to the cosine of two sightings whose gap fits the camera graph's walking time "
                          "(default 0.03; 0 turns it off)")
    add_metrics_options(run)

    purge = command(matcher, "purge", "delete sightings (biometric data) for good", _purge)
    query = command(matcher, "query", "sightings by identity, camera and time, or image", _query)
    for sub in (purge, query):
        sub.add_argument("--db", default="gallery.sqlite", help="the matcher's gallery (file or postgresql:// URL)")
        sub.add_argument("--identity", type=int, help="one identity (a merged one: its survivor)")
        sub.add_argument("--camera", help="one camera")
        sub.add_argument("--since", type=float, help="epoch seconds")
        sub.add_argument("--until", type=float, help="epoch seconds")
    purge.add_argument("--site", help="one site")
    purge.add_argument("--older-than-days", type=float, help="retention: delete what is older")
    purge.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    query.add_argument("--image", help="a person crop to look up")
    query.add_argument("--artifact", help=ARTIFACT_HELP + ", to embed --image")
    query.add_argument("--top-k", type=int, default=5, help="identities to return for --image")
