"""The ``hybreid`` command.

Each subcommand imports what it needs when it runs, so edge-side commands work on a
camera box that has no torch installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybreid.contract import model_identity
from hybreid.data.datasets import READERS
from hybreid.errors import UserError

DATASET_NAMES = sorted(READERS)
# hybreid.synthetic.people's band names, spelled here so building the parser stays free of OpenCV.
INFRARED_BANDS = ("near_infrared", "thermal")


PAPER_MODELS = ("fusionreid_vitb16_s12", "haresformer_h1l1", "haresformer_h1l2", "haresformer_h2l1")


def _cmd_models(args: argparse.Namespace) -> None:
    from hybreid.models import REGISTRY
    from hybreid.tables import format_table

    rows = [[name, entry.family, entry.description] for name, entry in sorted(REGISTRY.items())]
    print(format_table(["name", "family", "description"], rows))


def _cmd_bench_flops(args: argparse.Namespace) -> None:
    from hybreid.bench import flops
    from hybreid.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    names = list(PAPER_MODELS) if args.paper else (args.model or ["fusionreid_vitb16_s12"])
    payload: dict = {"models": []}
    for name in names:
        report = flops.count_model(name, **overrides)
        print(flops.format_report(report), end="\n\n")
        payload["models"].append(report.to_dict())
    if args.paper or args.table3:
        htm_rows = flops.count_htm_structures()
        print(flops.format_htm_table(htm_rows), end="\n\n")
        payload["htm_table_iii"] = htm_rows
    by_name = {m["model"]: m for m in payload["models"]}
    if "haresformer_h1l1" in by_name and "haresformer_h1l2" in by_name:
        one, two = by_name["haresformer_h1l1"], by_name["haresformer_h1l2"]
        payload["haresformer_l1_to_l2"] = {
            "params_m": two["paper_params_m"] - one["paper_params_m"],
            "gmacs": two["paper_gmacs"] - one["paper_gmacs"],
            "reference_params_m": 66.89,
            "reference_gflops": 14.34,
        }
        inc = payload["haresformer_l1_to_l2"]
        print(f"HAResformer L=1 -> 2: +{inc['params_m']:.2f} M params, +{inc['gmacs']:.2f} GMACs "
              f"(paper: +66.89 M, +14.34 G)")
    path = flops.save_json(payload, args.out)
    print(f"saved {path}")


def _cmd_data_synth(args: argparse.Namespace) -> None:
    from hybreid.data.datasets import load_dataset
    from hybreid.synthetic import datasets as synthetic_datasets
    from hybreid.tables import format_table

    settings = {"train_ids": args.train_ids, "test_ids": args.test_ids, "images_per_camera": args.images_per_camera,
                "seed": args.seed}
    if args.layout == "sysu_mm01":
        root = synthetic_datasets.write_sysu_mm01(args.out, infrared_band=args.infrared_band, **settings)
    else:
        root = synthetic_datasets.write_market1501(args.out, **settings)
    dataset = load_dataset(args.layout, root)
    print(format_table(["split", "identities", "images", "cameras"], dataset.summary(),
                       title=f"synthetic {args.layout} written to {root}"))


def _cmd_train(args: argparse.Namespace) -> None:
    from hybreid.config import parse_overrides
    from hybreid.train.config import resolve_config
    from hybreid.train.trainer import Trainer

    config = resolve_config(args.config, parse_overrides(args.overrides))
    history = Trainer(config).fit()
    final = history[-1] if history else {}
    summary = ", ".join(f"{k} {final[k]:.4f}" for k in ("loss", "mAP", "rank1", "mINP") if k in final)
    print(f"finished: {summary}; run folder {config['output']}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from hybreid.data.datasets import load_dataset
    from hybreid.eval.evaluate import evaluate
    from hybreid.tables import format_table
    from hybreid.train.checkpoint import load_model

    model, _ = load_model(args.model)
    options = {"trial": args.trial} if args.dataset == "regdb" else {}
    dataset = load_dataset(args.dataset, args.root, **options)
    metrics = evaluate(model, dataset, rerank=args.rerank, use_camids=args.camids, trials=args.trials,
                       progress=True)
    rows = [[key, 100 * metrics[key]] for key in ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP")]
    print(format_table(["metric", "%"], rows, title=f"{args.dataset} ({args.model})", floatfmt=".2f"))
    if args.out:
        from hybreid.bench.flops import save_json

        print(f"saved {save_json(metrics, args.out)}")


def _cmd_bench_train(args: argparse.Namespace) -> None:
    from hybreid.bench import training

    training.run(args.out, models=args.model or list(training.BENCHMARKS), workdir=args.workdir)


def _cmd_export_onnx(args: argparse.Namespace) -> None:
    from hybreid.export.onnx_export import export_onnx
    from hybreid.export.precision import convert_to_fp16
    from hybreid.train.checkpoint import load_model

    if args.model_file:
        model, payload = load_model(args.model_file)
        name, config = payload["model"], payload["options"]
    else:
        from hybreid.config import parse_overrides
        from hybreid.models import build

        config = parse_overrides(args.overrides)
        name = args.model
        model = build(name, **config).eval()
        print(f"note: exporting {name} with untrained weights (give --model-file for a trained model)")
    path = export_onnx(model, args.out, name, config, opset=args.opset, preprocess_in_graph=args.preprocess_in_graph)
    print(f"wrote {path} (opset {args.opset}, dynamic batch, embedding dim {model.embedding_dim})")
    if args.fp16:
        fp16 = path.with_suffix(".fp16.onnx")
        kept = convert_to_fp16(path, fp16)
        print(f"wrote {fp16} (FP16, {len(kept)} sensitive nodes kept FP32)")


def _cmd_export_engine(args: argparse.Namespace) -> None:
    from hybreid.export.tensorrt_build import build_engine
    from hybreid.inference.engine_cache import BuildOptions

    options = BuildOptions(args.precision, args.min_batch, args.opt_batch, args.max_batch, args.workspace_mib)
    path = build_engine(args.onnx, args.out_dir, options, args.calibration_cache, args.timing_cache)
    print(f"engine {path}")


def _cmd_bundle(args: argparse.Namespace) -> None:
    from hybreid.export import bundle
    from hybreid.inference.engine_cache import BuildOptions

    if args.bundle_command == "keygen":
        private, public = bundle.generate_key(args.out)
        print(f"signing key {private} (keep it secret); public key {public} (give it to the devices)")
    elif args.bundle_command == "create":
        precision = "int8" if args.int8_qdq else "fp16" if args.fp16 else "fp32"
        options = BuildOptions(args.precision or precision, args.min_batch, args.opt_batch, args.max_batch)
        path = bundle.create_bundle(args.out, args.onnx, args.fp16, args.int8_qdq, args.calibration_cache, options,
                                    sign=args.sign)
        print(f"bundle {path}" + (" (signed)" if args.sign else " (unsigned)"))
    elif args.bundle_command == "verify":
        manifest = bundle.verify_bundle(args.bundle, args.trust)
        signature = (f"signed by trusted key {manifest['signed_by']}" if manifest["signed_by"]
                     else "signed, signature not checked (give --trust)" if manifest["signed"] else "unsigned")
        print(f"bundle {args.bundle} is intact: {model_identity(manifest['model'], manifest['weights_sha256'])}, "
              f"files {', '.join(f['name'] for f in manifest['files'].values())}; {signature}")
    else:
        folder = bundle.install_bundle(args.bundle, args.dir, args.trust)
        print(f"installed into {folder}")
        if args.build_engine:
            from hybreid.export.tensorrt_build import build_engine

            manifest = json.loads((folder / bundle.MANIFEST).read_text())  # verified by the install
            options = BuildOptions(**manifest["build"])
            source = {"int8": "model.int8.qdq.onnx", "fp16": "model.fp16.onnx"}.get(options.precision, "model.onnx")
            if not (folder / source).is_file():
                source = "model.onnx"
            cache = folder / "calibration.cache"
            engine = build_engine(folder / source, folder / "engines", options,
                                  cache if cache.is_file() else None, folder / "timing.cache")
            print(f"engine {engine}")


def _cmd_bench_latency(args: argparse.Namespace) -> None:
    from hybreid.bench import latency
    from hybreid.config import parse_overrides

    int8 = dict(item.split("=", 1) for item in args.int8) if args.int8 else None
    engines = dict(item.split("=", 1) for item in args.engine) if args.engine else None
    latency.run(args.model or ["fusionreid_vitb16_s12", "haresformer_h1l1"], args.batch or [1, 8], args.out,
                threads=args.threads, repeats=args.repeats, int8=int8, options=parse_overrides(args.overrides),
                rounds=args.rounds, references=latency.REFERENCE_MODELS if args.reference else (),
                openvino=args.openvino, engines=engines)


def _cmd_bench_profile(args: argparse.Namespace) -> None:
    from hybreid.bench import profile

    profile.run(args.onnx, args.out, batch=args.batch, threads=args.threads, runs=args.runs)


def _cmd_bench_fidelity(args: argparse.Namespace) -> None:
    from hybreid.bench import fidelity

    fidelity.run(args.model or ["fusionreid_vitb16_s12", "haresformer_h1l1"], args.out)


def _cmd_calibrate_int8(args: argparse.Namespace) -> None:
    from hybreid.calibration.report import run_int8
    from hybreid.data.datasets import load_dataset

    dataset = load_dataset(args.eval_dataset, args.eval_root) if args.eval_dataset else None
    methods = ("minmax", "entropy", "percentile") if args.method == "all" else (args.method,)
    placement = {"exclude_nodes": tuple(args.exclude), "quantize_concat_inputs": args.quantize_concat_inputs,
                 "quantize_output_layers": args.quantize_output_layers}
    run_int8(args.onnx, args.out, target=args.target, methods=methods, source=args.source, count=args.count,
             eval_dataset=dataset, compare_attention=not args.no_attention_comparison, threads=args.threads,
             placement=placement)


def _cmd_calibrate_threshold(args: argparse.Namespace) -> None:
    from hybreid.calibration.threshold import calibrate_on_dataset, format_thresholds
    from hybreid.data.datasets import load_dataset
    from hybreid.inference import load_embedder

    result = calibrate_on_dataset(load_embedder(args.onnx), load_dataset(args.dataset, args.root), args.split,
                                  args.fmr, args.out)
    print(format_thresholds(result["thresholds"], args.fmr))
    print(f"saved {result['path']} (read by the matcher) and {result['plot']}")


def _cmd_edge_run(args: argparse.Namespace) -> None:
    import json
    import logging

    from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    runtime = EdgeRuntime(SiteConfig.load(args.config))
    runtime.install_signal_handlers()
    summary = runtime.run(max_seconds=args.max_seconds)
    print(json.dumps(summary, indent=2))


def _cmd_site_broker_acl(args: argparse.Namespace) -> None:
    from hybreid.edge_runtime.broker_acl import write_broker_files

    paths = write_broker_files(args.site_files, args.out, args.matcher_user, tuple(args.reader or ()),
                               args.overwrite)
    print(f"wrote {paths['acl']}, {paths['passwd']} and {paths['conf']} (include it in Mosquitto's "
          f"configuration); each user's password is in {Path(args.out) / 'passwords'} (mode 0600)")


def _cmd_edge_scenes(args: argparse.Namespace) -> None:
    if args.site:
        from hybreid.synthetic.site import SiteSpec, default_spec, render_site

        spec = default_spec() if args.site == "default" else SiteSpec.load(args.site)
        truth = render_site(args.out, spec)
        for camera in truth["cameras"]:
            print(f"{args.out}/{camera['video']}: {camera['modality']}, {truth['frames']} frames, "
                  f"{len(camera['passages'])} passages, ground truth {args.out}/gt/{camera['id']}.txt")
        print(f"ground truth and camera graph: {args.out}/ground_truth.json")
        return
    from hybreid.synthetic.scenes import render_scenes

    truth = render_scenes(args.out, tuple(args.modality or ["visible", "infrared"]), args.people, args.fps,
                          seed=args.seed, infrared_band=args.infrared_band)
    for camera in truth["cameras"]:
        print(f"{args.out}/{camera['video']}: {camera['modality']}, {truth['frames']} frames, "
              f"{len(camera['passages'])} passages")
    print(f"ground truth: {args.out}/ground_truth.json")


def _cmd_bench_pipeline(args: argparse.Namespace) -> None:
    from hybreid.bench import pipeline

    pipeline.run(args.onnx, args.out, people=args.people, max_batch=args.batch, threads=args.threads)


def _matcher_gallery(args: argparse.Namespace, create: bool = False):
    """The gallery of ``--db``; only ``matcher run`` may create one (a mistyped path elsewhere
    would silently query or purge an empty gallery)."""
    from hybreid.matcher.gallery import Gallery

    if not create and not Path(args.db).is_file():
        raise UserError(f"gallery {args.db} does not exist; give the --db of the running matcher")
    return Gallery(args.db, index=getattr(args, "index", "flat"))


def _broker_password(args: argparse.Namespace) -> str | None:
    """The MQTT password from --password-file or HYBREID_MQTT_PASSWORD: never a flag, which
    every user of the machine could read in the process list."""
    import os

    if args.password_file:
        try:
            return Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise UserError(f"password file {args.password_file} cannot be read ({exc.strerror})") from exc
    return os.environ.get("HYBREID_MQTT_PASSWORD")


def _cmd_matcher_run(args: argparse.Namespace) -> None:
    import logging
    import signal

    from hybreid.matcher.service import Matcher, MatcherService, MatchPolicy
    from hybreid.mqtt import BrokerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    policy = MatchPolicy.from_thresholds_file(args.thresholds) if args.thresholds else MatchPolicy()
    broker = BrokerConfig(url=args.broker, client_id=args.client_id, username=args.username,
                          password=_broker_password(args), ca_certs=args.ca_certs, protocol=args.protocol)
    broker.endpoint()  # a malformed URL is one clear error before anything starts
    service = MatcherService(Matcher(_matcher_gallery(args, create=True), policy), broker, site=args.site,
                             shared_group=args.shared_group)
    if args.camera_graph:
        from hybreid.matcher.camera_graph import CameraGraph

        service.min_transit = CameraGraph.load(args.camera_graph).min_transit
    signal.signal(signal.SIGTERM, service.request_stop)
    signal.signal(signal.SIGINT, service.request_stop)
    service.run_forever(report_every=args.report_every, reassociate_every=args.reassociate_every)
    print(json.dumps(service.status(), indent=2))


def _cmd_matcher_purge(args: argparse.Namespace) -> None:
    gallery = _matcher_gallery(args)
    if args.older_than_days is not None:
        import time

        args.until = time.time() - 86400 * args.older_than_days
    identity = gallery.resolve(args.identity) if args.identity is not None else None  # a merged id: its survivor
    deleted = gallery.purge(identity=identity, camera=args.camera, since=args.since, until=args.until,
                            site=args.site)
    print(json.dumps({"deleted_sightings": deleted, **gallery.stats()}))


def _cmd_matcher_query(args: argparse.Namespace) -> None:
    from hybreid.matcher.query import by_camera, by_identity, by_image

    gallery = _matcher_gallery(args)
    if args.identity is not None:
        result = by_identity(gallery, args.identity)
    elif args.image:
        if not args.model:
            raise UserError("--image needs --model: the site's exported model (ONNX or engine)")
        result = by_image(gallery, args.image, args.model, args.top_k)
    else:
        result = by_camera(gallery, args.camera, args.since, args.until)
    print(json.dumps(result, indent=2))


def _cmd_bench_matcher(args: argparse.Namespace) -> None:
    from hybreid.bench import matcher

    matcher.run(args.identities or [1000, 10000, 100000], args.out, messages=args.messages, dim=args.dim,
                index=args.index)


def _cmd_bench_site(args: argparse.Namespace) -> None:
    from hybreid.bench import site
    from hybreid.matcher.service import MatchPolicy
    from hybreid.synthetic.site import SiteSpec, default_spec

    policies = [MatchPolicy.from_thresholds_file(path) for path in args.thresholds] if args.thresholds else \
        [MatchPolicy() for _ in args.onnx]
    spec = SiteSpec.load(args.spec) if args.spec else default_spec()
    site.run(args.onnx, args.out, policies, spec, scenes=args.scenes)


def _cmd_bench_identities(args: argparse.Namespace) -> None:
    from hybreid.bench import identities
    from hybreid.matcher.service import MatchPolicy

    policy = MatchPolicy.from_thresholds_file(args.thresholds) if args.thresholds else \
        MatchPolicy.checked(same_modality=args.same, cross_modality=args.cross)
    identities.run(args.onnx, args.out, people=args.people, policy=policy)


def _cmd_viz(args: argparse.Namespace) -> None:
    from hybreid.data.datasets import load_dataset
    from hybreid.train.checkpoint import load_model
    from hybreid.viz import commands

    model, _ = load_model(args.model)
    dataset = load_dataset(args.dataset, args.root)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.viz_command == "gradcam":
        result = commands.run_gradcam(model, dataset, args.out, count=args.count, method=args.method)
    elif args.viz_command == "attention":
        result = commands.run_attention(model, dataset, args.out, index=args.index)
    elif args.viz_command == "retrieval":
        result = commands.run_retrieval(model, dataset, args.out, queries=args.queries, top_k=args.top_k)
    else:
        result = commands.run_distribution(model, dataset, args.out, max_images=args.max_images)
        print(f"mean cosine similarity: intra-class {result['intra_mean']:.3f}, inter-class {result['inter_mean']:.3f}")
    print(f"saved {result['figure'] if 'figure' in result else result['path']} and "
          f"{commands.save_result(result, args.out, args.viz_command)}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from hybreid.demo.pipeline import DemoConfig, run_demo

    run_demo(DemoConfig(out=Path(args.out), people=args.people, seconds=args.seconds, epochs=args.epochs,
                        train_ids=args.train_ids, test_ids=args.test_ids, edge_precision=args.edge_precision,
                        broker=args.broker, retrain=args.retrain, seed=args.seed))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybreid", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the named model configurations")
    models.set_defaults(func=_cmd_models)

    bench = commands.add_parser("bench", help="benchmarks (flops, train, latency, fidelity, pipeline, matcher, ...)")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    flops = bench_commands.add_parser(
        "flops", help="params and GFLOPs (paper count and full count) with a per-module breakdown"
    )
    flops.add_argument("--model", action="append", help="registry name (repeatable); see `hybreid models`")
    flops.add_argument("--paper", action="store_true", help="every paper configuration, plus FusionReID Table III")
    flops.add_argument("--table3", action="store_true", help="also count one HTM of each Table III structure")
    flops.add_argument("--out", default="benchmarks/flops.json", help="JSON file to write")
    flops.add_argument("overrides", nargs="*", metavar="key=value",
                       help="model options, e.g. image_size=[384,128] depth=3 pooling=avg")
    flops.set_defaults(func=_cmd_bench_flops)

    train_bench = bench_commands.add_parser(
        "train", help="train the tiny models on synthetic data; mAP trained vs untrained")
    train_bench.add_argument("--model", action="append", choices=["fusionreid_tiny", "haresformer_tiny"])
    train_bench.add_argument("--out", default="benchmarks/training", help="folder for the JSON, runs and plots")
    train_bench.add_argument("--workdir", default=None, help="where to write the synthetic data (default: --out)")
    train_bench.set_defaults(func=_cmd_bench_train)

    lat = bench_commands.add_parser(
        "latency", help="torch eager vs ONNX Runtime (FP32, OpenVINO, INT8) and TensorRT: latency, roofline")
    lat.add_argument("--model", action="append", help="registry name (repeatable); default: both paper models")
    lat.add_argument("--batch", action="append", type=int, help="batch size (repeatable); default 1 and 8")
    lat.add_argument("--threads", type=int, default=2)
    lat.add_argument("--repeats", type=int, default=10, help="timed runs per cell and round")
    lat.add_argument("--rounds", type=int, default=1, help="measure every cell this many times, interleaved")
    lat.add_argument("--int8", action="append", metavar="MODEL=QDQ.onnx",
                     help="also time a Q/DQ INT8 model from `hybreid calibrate int8`")
    lat.add_argument("--reference", action="store_true",
                     help="also time plain timm ResNet-50 and ViT-B/16 (224x224): what this machine allows")
    lat.add_argument("--engine", action="append", metavar="MODEL=ENGINE",
                     help="also time a TensorRT engine of that model (hybreid export engine; needs a GPU)")
    lat.add_argument("--openvino", action="store_true",
                     help="also time ONNX Runtime's OpenVINO execution provider, FP32 (hybreid[openvino], Intel CPUs)")
    lat.add_argument("--out", default="benchmarks/latency")
    lat.add_argument("overrides", nargs="*", metavar="key=value", help="model options")
    lat.set_defaults(func=_cmd_bench_latency)

    prof = bench_commands.add_parser("profile", help="where an ONNX model's CPU time goes, operator by operator")
    prof.add_argument("onnx", help="an exported model (hybreid export onnx)")
    prof.add_argument("--batch", type=int, default=8)
    prof.add_argument("--threads", type=int, default=2)
    prof.add_argument("--runs", type=int, default=3, help="profiled runs after one warm-up")
    prof.add_argument("--out", default="benchmarks/profile")
    prof.set_defaults(func=_cmd_bench_profile)

    fid = bench_commands.add_parser("fidelity", help="ONNX parity with PyTorch and FP16 fidelity, no GPU needed")
    fid.add_argument("--model", action="append", help="registry name (repeatable); default: both paper models")
    fid.add_argument("--out", default="benchmarks/fidelity")
    fid.set_defaults(func=_cmd_bench_fidelity)

    pipe = bench_commands.add_parser("pipeline", help="edge runtime on synthetic videos vs the embedder alone")
    pipe.add_argument("--onnx", action="append", required=True, help="exported model (repeatable)")
    pipe.add_argument("--people", type=int, default=6)
    pipe.add_argument("--batch", type=int, default=8)
    pipe.add_argument("--threads", type=int)
    pipe.add_argument("--out", default="benchmarks/pipeline")
    pipe.set_defaults(func=_cmd_bench_pipeline)

    mb = bench_commands.add_parser("matcher", help="matcher ingest rate and assignment latency vs gallery size")
    mb.add_argument("--identities", action="append", type=int, help="gallery size (repeatable)")
    mb.add_argument("--messages", type=int, default=2000)
    mb.add_argument("--dim", type=int, default=1024)
    mb.add_argument("--index", choices=["flat", "hnsw", "ivf"], default="flat")
    mb.add_argument("--out", default="benchmarks/matcher")
    mb.set_defaults(func=_cmd_bench_matcher)

    ident = bench_commands.add_parser("identities", help="videos -> edge -> broker -> matcher, scored vs ground truth")
    ident.add_argument("--onnx", required=True)
    ident.add_argument("--people", type=int, default=6)
    ident.add_argument("--thresholds", help="JSON from `hybreid calibrate threshold`")
    ident.add_argument("--same", type=float, default=0.6, help="same-modality threshold without --thresholds")
    ident.add_argument("--cross", type=float, default=0.45, help="cross-modality threshold without --thresholds")
    ident.add_argument("--out", default="benchmarks/identities")
    ident.set_defaults(func=_cmd_bench_identities)

    bsite = bench_commands.add_parser("site", help="a synthetic site (4+ cameras, minutes) -> edge -> broker -> "
                                                   "matcher: IDF1 online and re-associated, timelines")
    bsite.add_argument("--onnx", action="append", required=True, help="a site model (repeatable)")
    bsite.add_argument("--thresholds", action="append", help="its thresholds JSON, in the order of --onnx")
    bsite.add_argument("--spec", help="site spec YAML (default: 4 cameras, 30 people, 3 minutes)")
    bsite.add_argument("--scenes", help="a folder `edge scenes --site` rendered from the same spec (reused)")
    bsite.add_argument("--out", default="benchmarks/site")
    bsite.set_defaults(func=_cmd_bench_site)

    data = commands.add_parser("data", help="datasets: write synthetic people")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="synthetic people in a real dataset layout")
    synth.add_argument("--layout", choices=["market1501", "sysu_mm01"], required=True)
    synth.add_argument("--out", required=True, help="dataset root to create")
    synth.add_argument("--train-ids", type=int, default=200)
    synth.add_argument("--test-ids", type=int, default=100)
    synth.add_argument("--images-per-camera", type=int, default=4)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--infrared-band", choices=INFRARED_BANDS, default=INFRARED_BANDS[0],
                       help="sysu_mm01: what the infrared cameras see (the real dataset's are near infrared)")
    synth.set_defaults(func=_cmd_data_synth)

    train = commands.add_parser("train", help="train a model (single process, or under torchrun)")
    train.add_argument("--config", help="YAML training config (see configs/train/)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. dataset.root=/data/market optim.epochs=120")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained model with a dataset's protocol")
    evaluate.add_argument("--model", required=True, help="model.pt of a training run")
    evaluate.add_argument("--dataset", required=True,
                          choices=DATASET_NAMES)
    evaluate.add_argument("--root", required=True, help="dataset folder in its standard layout")
    evaluate.add_argument("--trial", type=int, default=1, help="RegDB split 1..10")
    evaluate.add_argument("--trials", type=int, default=10, help="gallery trials (SYSU-MM01, LLCM)")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    evaluate.add_argument("--camids", action="store_true",
                          help="give FusionReID the real camera ids (the authors' evaluation)")
    evaluate.add_argument("--out", help="JSON file for the metrics")
    evaluate.set_defaults(func=_cmd_eval)

    export = commands.add_parser("export", help="export: onnx, engine")
    export_commands = export.add_subparsers(dest="export_command", required=True)
    onnx_cmd = export_commands.add_parser("onnx", help="dynamic-batch ONNX with its contract in the metadata")
    source = onnx_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-file", help="model.pt of a training run")
    source.add_argument("--model", help="registry name (untrained weights; for benchmarks)")
    onnx_cmd.add_argument("--out", required=True, help="ONNX file to write")
    onnx_cmd.add_argument("--opset", type=int, default=17)
    onnx_cmd.add_argument("--preprocess-in-graph", action="store_true",
                          help="input uint8 RGB crops [N, H, W, 3]; the graph normalises them")
    onnx_cmd.add_argument("--fp16", action="store_true",
                          help="also write <out>.fp16.onnx with LayerNorm/Softmax/attention kept FP32")
    onnx_cmd.add_argument("overrides", nargs="*", metavar="key=value", help="model options with --model")
    onnx_cmd.set_defaults(func=_cmd_export_onnx)
    engine = export_commands.add_parser("engine", help="build a TensorRT engine on this device (needs a GPU)")
    engine.add_argument("--onnx", required=True, help="ONNX, FP16 ONNX or Q/DQ INT8 ONNX")
    engine.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    engine.add_argument("--min-batch", "--min", type=int, default=1)
    engine.add_argument("--opt-batch", "--opt", type=int, default=8)
    engine.add_argument("--max-batch", "--max", type=int, default=32)
    engine.add_argument("--workspace-mib", type=int, default=2048)
    engine.add_argument("--timing-cache", default="timing.cache")
    engine.add_argument("--calibration-cache", help="INT8 calibration cache (TensorRT <= 10, no Q/DQ ONNX)")
    engine.add_argument("--out-dir", default="engines")
    engine.set_defaults(func=_cmd_export_engine)

    calibrate = commands.add_parser("calibrate", help="calibration: int8, threshold")
    calibrate_commands = calibrate.add_subparsers(dest="calibrate_command", required=True)
    int8 = calibrate_commands.add_parser("int8", help="Q/DQ INT8 model and a report of what INT8 costs")
    int8.add_argument("--onnx", required=True, help="FP32 ONNX from `hybreid export onnx`")
    int8.add_argument("--target", choices=["tensorrt", "cpu"], default="tensorrt",
                      help="tensorrt: symmetric S8S8 Q/DQ; cpu: U8S8 with reduce_range for ONNX Runtime")
    int8.add_argument("--method", choices=["minmax", "entropy", "percentile", "all"], default="all")
    int8.add_argument("--source", default="synthetic", help="synthetic, folder:PATH or dataset:NAME:ROOT")
    int8.add_argument("--count", type=int, default=256, help="calibration crops")
    int8.add_argument("--eval-dataset", help="dataset to measure mAP / Rank-1 on (FP32 vs INT8)")
    int8.add_argument("--eval-root")
    int8.add_argument("--no-attention-comparison", action="store_true",
                      help="skip the comparison run that also quantises the attention MatMuls")
    int8.add_argument("--threads", type=int)
    int8.add_argument("--out", default="int8")
    int8.add_argument("--exclude", action="append", default=[], metavar="NODE",
                      help="keep this node in float (repeatable)")
    int8.add_argument("--quantize-concat-inputs", action="store_true",
                      help="quantise layers that read a concatenation as they are, one scale for all parts "
                           "(by default they are split into one op per part)")
    int8.add_argument("--quantize-output-layers", action="store_true",
                      help="also quantise the layers that write the embedding (kept float by default)")
    int8.set_defaults(func=_cmd_calibrate_int8)
    threshold = calibrate_commands.add_parser("threshold", help="match thresholds for a target false-match rate")
    threshold.add_argument("--onnx", required=True, help="exported model (ONNX or engine)")
    threshold.add_argument("--dataset", required=True)
    threshold.add_argument("--root", required=True)
    threshold.add_argument("--split", choices=["train", "query", "gallery", "test"], default="test")
    threshold.add_argument("--fmr", type=float, default=0.01, help="target false-match rate")
    threshold.add_argument("--out", default="thresholds.json")
    threshold.set_defaults(func=_cmd_calibrate_threshold)

    bundle = commands.add_parser("bundle", help="device bundles: create, verify, install")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    create = bundle_commands.add_parser("create", help="pack ONNX variants with a manifest of hashes")
    create.add_argument("--onnx", required=True)
    create.add_argument("--fp16")
    create.add_argument("--int8-qdq")
    create.add_argument("--calibration-cache")
    create.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="engine precision to build on device")
    create.add_argument("--min-batch", type=int, default=1)
    create.add_argument("--opt-batch", type=int, default=8)
    create.add_argument("--max-batch", type=int, default=32)
    create.add_argument("--out", required=True, help="bundle file (.tar.gz)")
    create.add_argument("--sign", metavar="KEY", help="Ed25519 private key (from `bundle keygen`) to sign with")
    verify = bundle_commands.add_parser("verify", help="check a bundle's members, manifest, hashes and signature")
    verify.add_argument("bundle")
    install = bundle_commands.add_parser("install", help="verify and unpack a bundle on this device")
    install.add_argument("bundle")
    install.add_argument("--dir", required=True, help="models folder on the device")
    install.add_argument("--build-engine", action="store_true", help="then build the TensorRT engine here")
    for sub in (verify, install):
        sub.add_argument("--trust", metavar="PUBKEY", action="append",
                         help="accept only a bundle signed by this Ed25519 public key (repeatable)")
    keygen = bundle_commands.add_parser("keygen", help="a new Ed25519 signing key and its public key (KEY.pub)")
    keygen.add_argument("--out", required=True, help="private key file to write (mode 0600)")
    for sub in (create, verify, install, keygen):
        sub.set_defaults(func=_cmd_bundle)

    edge = commands.add_parser("edge", help="edge runtime: run, scenes")
    edge_commands = edge.add_subparsers(dest="edge_command", required=True)
    edge_run = edge_commands.add_parser("run", help="capture -> detect -> track -> embed -> publish")
    edge_run.add_argument("--config", required=True, help="site YAML (see configs/site.example.yaml)")
    edge_run.add_argument("--max-seconds", type=float, help="stop after this long (default: until stopped)")
    edge_run.set_defaults(func=_cmd_edge_run)
    scenes = edge_commands.add_parser("scenes", help="synthetic camera videos with ground truth")
    scenes.add_argument("--out", required=True)
    scenes.add_argument("--modality", action="append", choices=["visible", "infrared"],
                        help="one per camera (repeatable); default: visible and infrared")
    scenes.add_argument("--people", type=int, default=6)
    scenes.add_argument("--fps", type=int, default=10)
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--infrared-band", choices=INFRARED_BANDS, default=INFRARED_BANDS[0])
    scenes.add_argument("--site", metavar="SPEC.yaml|default",
                        help="a whole site instead: cameras, camera graph, people coming and going (see "
                             "configs/site_scenes.yaml); the options above do not apply")
    scenes.set_defaults(func=_cmd_edge_scenes)

    site = commands.add_parser("site", help="a site's broker set-up from its site files")
    site_commands = site.add_subparsers(dest="site_command", required=True)
    acl = site_commands.add_parser("broker-acl", help="Mosquitto password file and ACL: each box writes only its "
                                                      "own cameras, the matcher alone writes events")
    acl.add_argument("site_files", nargs="+", metavar="SITE.yaml", help="one site file per camera box")
    acl.add_argument("--out", required=True, help="folder for acl, passwd, mosquitto.conf and passwords/")
    acl.add_argument("--matcher-user", default="matcher", help="the matcher's MQTT user")
    acl.add_argument("--reader", action="append", help="a user that may read events and statuses (repeatable)")
    acl.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    acl.set_defaults(func=_cmd_site_broker_acl)

    matcher = commands.add_parser("matcher", help="central matcher: run, purge, query")
    matcher_commands = matcher.add_subparsers(dest="matcher_command", required=True)
    m_run = matcher_commands.add_parser("run", help="subscribe to protocol v1 features and assign identities")
    m_run.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    m_run.add_argument("--db", default="gallery.sqlite")
    m_run.add_argument("--site", default="+", help="one site, or + for all")
    m_run.add_argument("--thresholds", help="JSON from `hybreid calibrate threshold`")
    m_run.add_argument("--index", choices=["flat", "hnsw", "ivf"], default="flat")
    m_run.add_argument("--shared-group", help="MQTT v5 shared subscription group (several matchers, one gallery)")
    m_run.add_argument("--client-id", default="hybreid-matcher")
    m_run.add_argument("--username")
    m_run.add_argument("--password-file", help="file holding the MQTT password (or set HYBREID_MQTT_PASSWORD)")
    m_run.add_argument("--ca-certs")
    m_run.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    m_run.add_argument("--report-every", type=float, default=60.0, help="seconds between status lines")
    m_run.add_argument("--reassociate-every", type=float, default=10.0,
                       help="seconds between re-associations of the recent tracklets (0: never)")
    m_run.add_argument("--camera-graph", help="YAML of connected cameras and their minimum walking times")
    m_run.set_defaults(func=_cmd_matcher_run)
    m_purge = matcher_commands.add_parser("purge", help="delete sightings (biometric data) for good")
    m_purge.add_argument("--db", default="gallery.sqlite")
    m_purge.add_argument("--identity", type=int)
    m_purge.add_argument("--site")
    m_purge.add_argument("--camera")
    m_purge.add_argument("--since", type=float, help="epoch seconds")
    m_purge.add_argument("--until", type=float, help="epoch seconds")
    m_purge.add_argument("--older-than-days", type=float, help="retention: delete what is older")
    m_purge.set_defaults(func=_cmd_matcher_purge)
    m_query = matcher_commands.add_parser("query", help="sightings by identity, camera and time, or image")
    m_query.add_argument("--db", default="gallery.sqlite")
    m_query.add_argument("--identity", type=int)
    m_query.add_argument("--camera")
    m_query.add_argument("--since", type=float)
    m_query.add_argument("--until", type=float)
    m_query.add_argument("--image", help="a person crop to look up")
    m_query.add_argument("--model", help="the site's exported model, to embed --image")
    m_query.add_argument("--top-k", type=int, default=5)
    m_query.set_defaults(func=_cmd_matcher_query)

    viz = commands.add_parser("viz", help="the papers' figures for a trained model: gradcam, attention, "
                                          "retrieval, distribution")
    viz_commands = viz.add_subparsers(dest="viz_command", required=True)
    for name, text in (("gradcam", "Grad-CAM per layer of cos(embedding, same person elsewhere)"),
                       ("attention", "global-token attention per head and layer (SEU/MFU, TE)"),
                       ("retrieval", "top-k gallery images per query, the evaluation's ranking"),
                       ("distribution", "intra-/inter-class similarity histograms and t-SNE")):
        command = viz_commands.add_parser(name, help=text)
        command.add_argument("--model", required=True, help="model.pt of a training run")
        command.add_argument("--dataset", required=True, choices=DATASET_NAMES)
        command.add_argument("--root", required=True, help="dataset folder (standard layout)")
        command.add_argument("--out", default="viz", help="folder for the PNG and its JSON")
        if name == "gradcam":
            command.add_argument("--count", type=int, default=4, help="query images (rows)")
            command.add_argument("--method", choices=["hirescam", "gradcam"], default="hirescam",
                                 help="element-wise gradient x activation (default) or channel-averaged Grad-CAM")
        elif name == "attention":
            command.add_argument("--index", type=int, default=0, help="which probe image")
        elif name == "retrieval":
            command.add_argument("--queries", type=int, default=6)
            command.add_argument("--top-k", type=int, default=10)
        else:
            command.add_argument("--max-images", type=int, default=400)
        command.set_defaults(func=_cmd_viz)

    from hybreid.demo.pipeline import DemoConfig

    demo_defaults = DemoConfig()
    demo = commands.add_parser(
        "demo", help="the whole chain on synthetic data: train, export, INT8, cameras -> MQTT -> matcher")
    demo.add_argument("--out", default="demo-report", help="report folder (a later run reuses its trained model)")
    demo.add_argument("--people", type=int, default=demo_defaults.people, help="people walking through the site")
    demo.add_argument("--seconds", type=float, default=demo_defaults.seconds, help="seconds of video per camera")
    demo.add_argument("--epochs", type=int, default=demo_defaults.epochs)
    demo.add_argument("--train-ids", type=int, default=demo_defaults.train_ids)
    demo.add_argument("--test-ids", type=int, default=demo_defaults.test_ids)
    demo.add_argument("--edge-precision", choices=["int8", "fp32"], default="int8",
                      help="the model the cameras run")
    demo.add_argument("--broker", help="mqtt://host:port of a running broker (default: an embedded one)")
    demo.add_argument("--retrain", action="store_true", help="train again even if a previous model matches")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Refuse option prefixes everywhere: `--password` must not quietly mean `--password-file`."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"hybreid: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
