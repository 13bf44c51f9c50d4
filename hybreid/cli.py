"""The ``hybreid`` command.

Each subcommand imports what it needs when it runs, so edge-side commands work on a
camera box that has no torch installed.
"""

from __future__ import annotations

import argparse
import sys

from hybreid.errors import UserError

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
    from hybreid.data import synthetic_datasets
    from hybreid.data.datasets import load_dataset
    from hybreid.tables import format_table

    writer = {"market1501": synthetic_datasets.write_market1501, "sysu_mm01": synthetic_datasets.write_sysu_mm01}
    root = writer[args.layout](args.out, train_ids=args.train_ids, test_ids=args.test_ids,
                               images_per_camera=args.images_per_camera, seed=args.seed)
    dataset = load_dataset(args.layout, root)
    print(format_table(["split", "identities", "images", "cameras"], dataset.summary(),
                       title=f"synthetic {args.layout} written to {root}"))


def _cmd_train(args: argparse.Namespace) -> None:
    from hybreid.config import parse_overrides
    from hybreid.train.trainer import Trainer, resolve_config

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


def _cmd_demo(args: argparse.Namespace) -> None:
    from hybreid.models import build

    print(
        "hybreid demo -- the whole chain is not built yet. When it is, this command will:\n"
        "  1. render synthetic visible and infrared camera videos of synthetic people,\n"
        "  2. train the tiny HAResformer on synthetic people, export it to ONNX, calibrate INT8,\n"
        "  3. start an MQTT broker on 127.0.0.1, run the edge runtime on both cameras and the matcher,\n"
        "  4. print identities found vs ground truth and write a report folder.\n"
        "What exists today, and runs now: the two models. Building the tiny ones and one forward pass:"
    )
    import torch

    for name in ("fusionreid_tiny", "haresformer_tiny"):
        model = build(name).eval()
        with torch.no_grad():
            embedding = model(torch.rand(2, 3, *model.image_size))
        print(f"  {name}: input 2x3x{model.image_size[0]}x{model.image_size[1]} -> embeddings {tuple(embedding.shape)}")
    print("Parameters and FLOPs of the papers' models: hybreid bench flops --paper")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybreid", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the named model configurations")
    models.set_defaults(func=_cmd_models)

    bench = commands.add_parser("bench", help="benchmarks: flops, train")
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

    data = commands.add_parser("data", help="datasets: write synthetic people")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="synthetic people in a real dataset layout")
    synth.add_argument("--layout", choices=["market1501", "sysu_mm01"], required=True)
    synth.add_argument("--out", required=True, help="dataset root to create")
    synth.add_argument("--train-ids", type=int, default=200)
    synth.add_argument("--test-ids", type=int, default=100)
    synth.add_argument("--images-per-camera", type=int, default=4)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_data_synth)

    train = commands.add_parser("train", help="train a model (single process, or under torchrun)")
    train.add_argument("--config", help="YAML training config (see configs/train/)")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. dataset.root=/data/market optim.epochs=120")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained model with a dataset's protocol")
    evaluate.add_argument("--model", required=True, help="model.pt of a training run")
    evaluate.add_argument("--dataset", required=True,
                          choices=["market1501", "dukemtmc", "msmt17", "sysu_mm01", "regdb", "llcm"])
    evaluate.add_argument("--root", required=True, help="dataset folder in its standard layout")
    evaluate.add_argument("--trial", type=int, default=1, help="RegDB split 1..10")
    evaluate.add_argument("--trials", type=int, default=10, help="gallery trials (SYSU-MM01, LLCM)")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    evaluate.add_argument("--camids", action="store_true",
                          help="give FusionReID the real camera ids (the authors' evaluation)")
    evaluate.add_argument("--out", help="JSON file for the metrics")
    evaluate.set_defaults(func=_cmd_eval)

    demo = commands.add_parser("demo", help="run the whole chain on synthetic data")
    demo.set_defaults(func=_cmd_demo)
    return parser


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
