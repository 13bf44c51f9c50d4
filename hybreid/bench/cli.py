"""``hybreid bench ...``: every benchmark prints a table and saves JSON (and plots) under
``--out``: a new folder below ``runs/`` unless given, never the committed ``benchmarks/``
results or an earlier run unless ``--overwrite`` says so."""

from __future__ import annotations

from hybreid.command_line import ARTIFACT_HELP, MODEL_HELP, add_output, command, group, output_folder
from hybreid.errors import UserError

PAPER_MODELS = ("fusionreid_vitb16_s12", "haresformer_h1l1", "haresformer_h1l2", "haresformer_h2l1")
BOTH_PAPER_MODELS = ["fusionreid_vitb16_s12", "haresformer_h1l1"]


def _flops(args) -> None:
    from hybreid.bench import flops
    from hybreid.config import parse_overrides

    flops.run(list(PAPER_MODELS) if args.paper else (args.model or ["fusionreid_vitb16_s12"]),
              output_folder(args), table3=args.paper or args.table3, overrides=parse_overrides(args.overrides))


def _train(args) -> None:
    from hybreid.bench import training

    training.run(output_folder(args), models=args.model or list(training.BENCHMARKS), workdir=args.workdir)


def _latency(args) -> None:
    from hybreid.bench import latency
    from hybreid.config import parse_overrides

    int8: dict[str, list[str]] = {}
    for item in args.int8 or []:
        model, _, path = item.partition("=")
        int8.setdefault(model, []).append(path)
    engines = dict(item.split("=", 1) for item in args.engine) if args.engine else None
    latency.run(args.model or BOTH_PAPER_MODELS, args.batch or [1, 8], output_folder(args), threads=args.threads,
                repeats=args.repeats, int8=int8 or None, options=parse_overrides(args.overrides), rounds=args.rounds,
                references=latency.REFERENCE_MODELS if args.reference else (), openvino=args.openvino,
                engines=engines)


def _profile(args) -> None:
    from hybreid.bench import profile

    profile.run(args.artifact, output_folder(args), batch=args.batch, threads=args.threads, runs=args.runs)


def _fidelity(args) -> None:
    from hybreid.bench import fidelity

    fidelity.run(args.model or BOTH_PAPER_MODELS, output_folder(args))


def _pipeline(args) -> None:
    from hybreid.bench import pipeline

    pipeline.run(args.artifact, output_folder(args), people=args.people, max_batch=args.batch, threads=args.threads)


def _matcher(args) -> None:
    from hybreid.bench import matcher
    from hybreid.bench.sightings import EmbeddingGeometry

    if args.measure_geometry:
        _measure_geometry(args)
        return
    if args.instances and "postgresql" not in (args.store or []):
        raise UserError("--instances needs --store postgresql: several matchers share a PostgreSQL gallery")
    geometry = EmbeddingGeometry.load(args.geometry) if args.geometry else None
    matcher.run(args.identities or [1000, 10000, 100000], output_folder(args), messages=args.messages, dim=args.dim,
                index=args.index, stores=tuple(args.store or ["sqlite"]), instances=tuple(args.instances or [1]),
                geometry=geometry)


def _measure_geometry(args) -> None:
    """How a trained model's embeddings of labelled people spread, for `bench matcher --geometry`."""
    import numpy as np

    from hybreid.bench.sightings import measure_geometry, save_geometry
    from hybreid.calibration.report import embed_images
    from hybreid.data.datasets import load_dataset
    from hybreid.inference import load_embedder
    from hybreid.tables import format_table

    if not args.root:
        raise UserError("--measure-geometry needs --root, the labelled dataset to embed")
    embedder = load_embedder(args.measure_geometry)
    dataset = load_dataset(args.dataset, args.root)
    samples = [s for s in dataset.query + dataset.gallery if s.pid > 0]
    embeddings = embed_images(embedder, [s.path for s in samples])
    geometry = measure_geometry(embeddings, np.array([s.pid for s in samples]), np.array([s.modality for s in samples]),
                                embedder.contract.identity, f"{args.dataset} test split, {len(samples)} images")
    path = save_geometry(geometry, output_folder(args) / "embedding_geometry.json")
    print(format_table(["measure", "value"], [[key, value] for key, value in dict(geometry).items()
                                               if key != "genuine_quantiles"]))
    print(f"genuine cosines, 5 % / 50 % / 95 %: {geometry.genuine_quantiles[1]} / {geometry.genuine_quantiles[10]} / "
          f"{geometry.genuine_quantiles[19]}; saved {path}")


def _identities(args) -> None:
    from hybreid.bench import identities
    from hybreid.matcher.policy import MatchPolicy

    policy = MatchPolicy.from_thresholds_file(args.thresholds) if args.thresholds else \
        MatchPolicy.checked(same_modality=args.same, cross_modality=args.cross)
    identities.run(args.artifact, output_folder(args), people=args.people, policy=policy)


def _detector(args) -> None:
    from hybreid.bench import detector

    detector.run(args.video, args.truth, output_folder(args), nanodet=args.nanodet, openvino=not args.no_openvino,
                 artifact=args.artifact, nanodet_int8=args.nanodet_int8)


def _site(args) -> None:
    from hybreid.bench import site
    from hybreid.matcher.policy import MatchPolicy
    from hybreid.synthetic.site import SiteSpec, default_spec

    choices = {} if args.transit_bonus is None else {"transit_bonus": args.transit_bonus}
    policies = [MatchPolicy.from_thresholds_file(path, **choices) for path in args.thresholds] if args.thresholds \
        else [MatchPolicy.checked(**choices) for _ in args.artifact]
    spec = SiteSpec.load(args.spec) if args.spec else default_spec()
    site.run(args.artifact, output_folder(args), policies, spec, scenes=args.scenes, seeds=args.seed,
             cache=args.site_cache, split_below=args.split_below, scrape_metrics=args.scrape_metrics,
             whole_people=args.whole_people, record=args.record)


def _policy(args) -> None:
    from hybreid.bench import policy

    policy.run(args.recording, output_folder(args), args.tune_seed, same=args.same, cross=args.cross,
               transit_bonus=args.transit_bonus)


def _tracks(args) -> None:
    from hybreid.bench import tracks
    from hybreid.synthetic.site import SiteSpec, default_spec

    spec = SiteSpec.load(args.spec) if args.spec else default_spec()
    tracks.run(output_folder(args), spec, seeds=args.seed, cache=args.site_cache, whole_people=args.whole_people)


def register(commands) -> None:
    bench = group(commands, "bench", "benchmarks (flops, train, latency, fidelity, pipeline, matcher, ...)")
    for add in (_add_flops, _add_train, _add_latency, _add_profile, _add_fidelity, _add_pipeline, _add_matcher,
                _add_identities, _add_detector, _add_site, _add_policy, _add_tracks, _add_console):
        add(bench)


def _add_flops(bench) -> None:
    flops = command(bench, "flops", "params and GFLOPs (paper count and full count) with a per-module breakdown",
                    _flops)
    flops.add_argument("--model", action="append", help=MODEL_HELP + " (repeatable)")
    flops.add_argument("--paper", action="store_true", help="every paper configuration, plus FusionReID Table III")
    flops.add_argument("--table3", action="store_true", help="also count one HTM of each Table III structure")
    add_output(flops, "bench-flops", "the JSON")
    flops.add_argument("overrides", nargs="*", metavar="key=value",
                       help="model options, e.g. image_size=[384,128] depth=3 pooling=avg")


def _add_train(bench) -> None:
    train = command(bench, "train", "train the tiny models on synthetic data; mAP trained vs untrained", _train)
    train.add_argument("--model", action="append", choices=["fusionreid_tiny", "haresformer_tiny"],
                       help="one of the tiny models (repeatable; default: both)")
    add_output(train, "bench-train", "the JSON, runs and plots")
    train.add_argument("--workdir", help="where to write the synthetic data (default: --out)")


def _add_latency(bench) -> None:
    lat = command(bench, "latency", "torch eager vs ONNX Runtime (FP32, OpenVINO, INT8) and TensorRT: latency, "
                                    "roofline", _latency)
    lat.add_argument("--model", action="append", help=MODEL_HELP + " (repeatable; default: both paper models)")
    lat.add_argument("--batch", action="append", type=int, help="batch size (repeatable); default 1 and 8")
    lat.add_argument("--threads", type=int, default=2, help="threads of every runtime")
    lat.add_argument("--repeats", type=int, default=10, help="timed runs per cell and round")
    lat.add_argument("--rounds", type=int, default=1, help="measure every cell this many times, interleaved")
    lat.add_argument("--int8", action="append", metavar="MODEL=QDQ.onnx",
                     help="also time a Q/DQ INT8 model from `hybreid calibrate int8` (repeatable, also for one "
                          "model: copies for several instruction sets are told apart)")
    lat.add_argument("--reference", action="store_true",
                     help="also time plain timm ResNet-50 and ViT-B/16 (224x224): what this machine allows")
    lat.add_argument("--engine", action="append", metavar="MODEL=ENGINE",
                     help="also time a TensorRT engine of that model (hybreid export engine; needs a GPU)")
    lat.add_argument("--openvino", action="store_true",
                     help="also time OpenVINO's runtime (hybreid[openvino], x86-64): FP32 and the --int8 copies, "
                          "float ops in f32 and, where the CPU has AVX512-BF16 or AMX, in bfloat16")
    add_output(lat, "bench-latency", "the JSON and plots")
    lat.add_argument("overrides", nargs="*", metavar="key=value", help="model options")


def _add_profile(bench) -> None:
    prof = command(bench, "profile", "where an ONNX model's CPU time goes, operator by operator", _profile)
    prof.add_argument("--artifact", required=True, help="an exported ONNX model")
    prof.add_argument("--batch", type=int, default=8, help="batch size")
    prof.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    prof.add_argument("--runs", type=int, default=3, help="profiled runs after one warm-up")
    add_output(prof, "bench-profile", "the JSON and plots")


def _add_fidelity(bench) -> None:
    fid = command(bench, "fidelity", "ONNX parity with PyTorch and FP16 fidelity, no GPU needed", _fidelity)
    fid.add_argument("--model", action="append", help=MODEL_HELP + " (repeatable; default: both paper models)")
    add_output(fid, "bench-fidelity", "the JSON")


def _add_pipeline(bench) -> None:
    pipe = command(bench, "pipeline", "edge runtime on synthetic videos vs the embedder alone", _pipeline)
    pipe.add_argument("--artifact", action="append", required=True, help=ARTIFACT_HELP + " (repeatable)")
    pipe.add_argument("--people", type=int, default=6, help="people in the synthetic videos")
    pipe.add_argument("--batch", type=int, default=8, help="the embedder's largest batch")
    pipe.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    add_output(pipe, "bench-pipeline", "the JSON")


def _add_matcher(bench) -> None:
    mb = command(bench, "matcher", "matcher ingest rate and assignment latency vs gallery size", _matcher)
    mb.add_argument("--identities", action="append", type=int, help="gallery size (repeatable)")
    mb.add_argument("--messages", type=int, default=2000, help="features published per gallery size")
    mb.add_argument("--dim", type=int, default=1024, help="embedding dimension")
    mb.add_argument("--index", choices=["auto", "flat", "hnsw", "ivf"], default="auto", help="FAISS index")
    mb.add_argument("--store", action="append", choices=["sqlite", "postgresql"],
                    help="gallery store (repeatable; default sqlite); postgresql starts a throwaway server")
    mb.add_argument("--instances", action="append", type=int,
                    help="with postgresql: also this many `matcher run` processes in one shared group (repeatable)")
    mb.add_argument("--geometry", help="how the embeddings spread (a JSON of --measure-geometry; default: the tiny "
                                       "HAResformer's, shipped with hybreid)")
    mb.add_argument("--measure-geometry", metavar="ARTIFACT",
                    help="instead: measure how this model's embeddings of --root's test people spread")
    mb.add_argument("--dataset", default="sysu_mm01", help="with --measure-geometry: the dataset's layout")
    mb.add_argument("--root", help="with --measure-geometry: the dataset's folder")
    add_output(mb, "bench-matcher", "the JSON")


def _console(args) -> None:
    from hybreid.bench import console

    console.run(args.identities, args.sightings, output_folder(args), repeats=args.repeats)


def _add_console(bench) -> None:
    cb = command(bench, "console", "how fast the console's pages and read API answer on a large gallery", _console)
    cb.add_argument("--identities", type=int, default=100_000, help="gallery size")
    cb.add_argument("--sightings", type=int, default=20_000,
                    help="tracklets a matcher then decides, from 8 cameras over an hour")
    cb.add_argument("--repeats", type=int, default=20, help="timed requests a page")
    add_output(cb, "bench-console", "the JSON")


def _add_identities(bench) -> None:
    ident = command(bench, "identities", "videos -> edge -> broker -> matcher, scored vs ground truth", _identities)
    ident.add_argument("--artifact", required=True, help=ARTIFACT_HELP)
    ident.add_argument("--people", type=int, default=6, help="people in the synthetic videos")
    ident.add_argument("--thresholds", help="JSON from `hybreid calibrate threshold`")
    ident.add_argument("--same", type=float, default=0.6, help="same-modality threshold without --thresholds")
    ident.add_argument("--cross", type=float, default=0.45, help="cross-modality threshold without --thresholds")
    add_output(ident, "bench-identities", "the JSON")


def _add_detector(bench) -> None:
    det = command(bench, "detector", "person detectors on real footage: recall against a hand count, time a frame, "
                                     "and with --artifact the edge runtime's tracks", _detector)
    det.add_argument("--video", required=True, help="a video file (e.g. OpenCV's vtest.avi)")
    det.add_argument("--truth", required=True, help="its hand count: frame,x,y rows, one per person "
                                                    "(benchmarks/detector/vtest_people.csv for vtest.avi)")
    det.add_argument("--nanodet", help="NanoDet-g ONNX (`hybreid detector fetch`) to compare with background "
                                       "subtraction")
    det.add_argument("--nanodet-int8", help="its INT8 form (`hybreid calibrate detector`), compared too")
    det.add_argument("--no-openvino", action="store_true", help="leave out NanoDet on OpenVINO")
    det.add_argument("--artifact", help=ARTIFACT_HELP + ": also run the edge runtime on the video with each detector")
    add_output(det, "bench-detector", "the JSON and the picture")


def _add_site(bench) -> None:
    site = command(bench, "site", "a synthetic site (4+ cameras, minutes) -> edge -> broker -> matcher: IDF1 "
                                  "online and re-associated, timelines", _site)
    site.add_argument("--artifact", action="append", required=True, help=ARTIFACT_HELP + " (repeatable)")
    site.add_argument("--thresholds", action="append", help="its thresholds JSON, in the order of --artifact")
    site.add_argument("--spec", help="site spec YAML (default: 4 cameras, 30 people, 3 minutes)")
    site.add_argument("--scenes", help="a folder `edge scenes --site` rendered from the same spec (reused)")
    site.add_argument("--seed", type=int, action="append",
                      help="render the spec with this seed (repeatable: a row each, then the mean and the minimum; "
                           "default: the spec's own)")
    site.add_argument("--transit-bonus", type=float,
                      help="as `matcher run --transit-bonus`: added to the cosine of a walk the camera graph allows")
    site.add_argument("--split-below", type=float, metavar="COSINE",
                      help="the edge splits a track whose last crops fall below this cosine to its earlier ones "
                           "(embed.split_below; default: never)")
    site.add_argument("--whole-people", action="store_true",
                      help="the background detector grows regions that are the top of a person (detector.whole_people)")
    site.add_argument("--site-cache", help="where renderings are kept, by spec hash (default: "
                                           "~/.cache/hybreid/sites)")
    site.add_argument("--scrape-metrics", action="store_true",
                      help="serve both services' Prometheus metrics during the run, scrape them and print them "
                           "beside the benchmark's own figures")
    site.add_argument("--record", action="store_true",
                      help="keep each run's messages, tracks and truth in OUT/recordings/, for `bench policy` to "
                           "replay under other thresholds")
    add_output(site, "bench-site", "the JSON and the timelines")


def _add_policy(bench) -> None:
    policy = command(bench, "policy", "the matcher's thresholds (and transit bonus) chosen on recorded sites "
                                      "(`bench site --record`) and checked on held-out ones: every candidate "
                                      "replayed, a thresholds file",
                     _policy)
    policy.add_argument("--recording", action="append", required=True,
                        help="a folder `bench site --record` wrote (repeatable: one per rendering)")
    policy.add_argument("--tune-seed", type=int, action="append", required=True,
                        help="a rendering the thresholds are chosen on (repeatable); the other recordings are the "
                             "held-out check")
    policy.add_argument("--same", type=float, action="append",
                        help="a same-modality threshold to try (repeatable; default: the recorded one, 0.02 below "
                             "and up to 0.08 above)")
    policy.add_argument("--cross", type=float, action="append",
                        help="a cross-modality threshold to try (repeatable; default: the recorded one, 0.02 below "
                             "and up to 0.04 above)")
    policy.add_argument("--transit-bonus", type=float, action="append",
                        help="a transit bonus to try (repeatable; default: the recorded one)")
    add_output(policy, "bench-policy", "the JSON, the heat map and the thresholds file")


def _add_tracks(bench) -> None:
    tracks = command(bench, "tracks", "the edge's detector and tracker alone on a synthetic site: detection "
                                      "recall, the tracker's IDF1 ceiling, swapped boxes, per seed", _tracks)
    tracks.add_argument("--spec", help="site spec YAML (default: 4 cameras, 30 people, 3 minutes)")
    tracks.add_argument("--seed", type=int, action="append",
                        help="render the spec with this seed (repeatable: a row each, then the mean and the minimum; "
                             "default: the spec's own)")
    tracks.add_argument("--site-cache", help="where renderings are kept, by spec hash, shared with `bench site` "
                                             "(default: ~/.cache/hybreid/sites)")
    tracks.add_argument("--whole-people", action="store_true",
                        help="the background detector grows regions that are the top of a person "
                             "(detector.whole_people)")
    add_output(tracks, "bench-tracks", "the JSON")
