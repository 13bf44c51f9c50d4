"""``hybreid viz gradcam|attention|retrieval|distribution``."""

from __future__ import annotations

from hybreid.command_line import CHECKPOINT_HELP, add_output, command, group, output_folder
from hybreid.data.datasets import READERS

FIGURES = {"gradcam": "Grad-CAM per layer of cos(embedding, same person elsewhere)",
           "attention": "global-token attention per head and layer (SEU/MFU, TE)",
           "retrieval": "top-k gallery images per query, the evaluation's ranking",
           "distribution": "intra-/inter-class similarity histograms and t-SNE"}


def _figure(args) -> None:
    from hybreid.data.datasets import load_dataset
    from hybreid.models.checkpoint import load_model
    from hybreid.viz import commands

    model, _ = load_model(args.checkpoint)
    dataset = load_dataset(args.dataset, args.root)
    out = output_folder(args)
    out.mkdir(parents=True, exist_ok=True)
    if args.viz_command == "gradcam":
        result = commands.run_gradcam(model, dataset, out, count=args.count, method=args.method)
    elif args.viz_command == "attention":
        result = commands.run_attention(model, dataset, out, index=args.index)
    elif args.viz_command == "retrieval":
        result = commands.run_retrieval(model, dataset, out, queries=args.queries, top_k=args.top_k)
    else:
        result = commands.run_distribution(model, dataset, out, max_images=args.max_images)
        print(f"mean cosine similarity: intra-class {result['intra_mean']:.3f}, inter-class {result['inter_mean']:.3f}")
    print(f"saved {result['figure'] if 'figure' in result else result['path']} and "
          f"{commands.save_result(result, out, args.viz_command)}")


def register(commands) -> None:
    viz = group(commands, "viz", "the papers' figures for a trained model: gradcam, attention, retrieval, "
                                 "distribution")
    for name, text in FIGURES.items():
        figure = command(viz, name, text, _figure)
        figure.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
        figure.add_argument("--dataset", required=True, choices=sorted(READERS), help="the dataset's layout")
        figure.add_argument("--root", required=True, help="dataset folder (standard layout)")
        add_output(figure, f"viz-{name}", "the PNG and its JSON")
        if name == "gradcam":
            figure.add_argument("--count", type=int, default=4, help="query images (rows)")
            figure.add_argument("--method", choices=["hirescam", "gradcam"], default="hirescam",
                                help="element-wise gradient x activation, or channel-averaged Grad-CAM")
        elif name == "attention":
            figure.add_argument("--index", type=int, default=0, help="which probe image")
        elif name == "retrieval":
            figure.add_argument("--queries", type=int, default=6, help="query images (rows)")
            figure.add_argument("--top-k", type=int, default=10, help="gallery images per query")
        else:
            figure.add_argument("--max-images", type=int, default=400, help="images in the t-SNE")
