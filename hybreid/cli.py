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

    bench = commands.add_parser("bench", help="benchmarks: flops")
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
