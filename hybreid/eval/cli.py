"""``hybreid eval``."""

from __future__ import annotations

from hybreid.command_line import CHECKPOINT_HELP, command
from hybreid.data.datasets import READERS


def _evaluate(args) -> None:
    from hybreid.data.datasets import load_dataset
    from hybreid.eval.evaluate import evaluate
    from hybreid.models.checkpoint import load_model
    from hybreid.tables import format_table, save_json

    model, _ = load_model(args.checkpoint)
    options = {"trial": args.trial} if args.dataset == "regdb" else {}
    dataset = load_dataset(args.dataset, args.root, **options)
    metrics = evaluate(model, dataset, rerank=args.rerank, use_camids=args.camids, trials=args.trials,
                       progress=True)
    rows = [[key, 100 * metrics[key]] for key in ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP")]
    print(format_table(["metric", "%"], rows, title=f"{args.dataset} ({args.checkpoint})", floatfmt=".2f"))
    if args.out:
        print(f"saved {save_json(metrics, args.out)}")


def register(commands) -> None:
    evaluate = command(commands, "eval", "evaluate a trained model with a dataset's protocol", _evaluate)
    evaluate.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    evaluate.add_argument("--dataset", required=True, choices=sorted(READERS), help="the dataset's protocol")
    evaluate.add_argument("--root", required=True, help="dataset folder in its standard layout")
    evaluate.add_argument("--trial", type=int, default=1, help="RegDB split 1..10")
    evaluate.add_argument("--trials", type=int, default=10, help="gallery trials (SYSU-MM01, LLCM)")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    evaluate.add_argument("--camids", action="store_true",
                          help="give FusionReID the real camera ids (the authors' evaluation)")
    evaluate.add_argument("--out", help="JSON file for the metrics")
