"""The four figures of ``hybreid viz``, drawn with matplotlib, plus the numbers behind them.

- :func:`gradcam_figure`: one row per image, one column per layer (heatmaps over the image);
- :func:`attention_figure`: per layer and head, the global token's attention over the image;
- :func:`retrieval_figure`: top-k gallery images per query, green = same person, red = not;
- :func:`distribution_figure`: intra-/inter-class cosine histograms and a t-SNE of the
  features by identity (colour) and modality (marker).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybreid.calibration.threshold import pair_scores, score_bins
from hybreid.contract import l2_normalize
from hybreid.data.datasets import Sample


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def gradcam_figure(images: list[np.ndarray], heatmaps: dict[str, np.ndarray], path: str | Path,
                   title: str) -> Path:
    """``images``: RGB uint8 at the model's input size; ``heatmaps``: layer -> [N, H, W]."""
    plt = _pyplot()
    layers = list(heatmaps)
    fig, axes = plt.subplots(len(images), len(layers) + 1, figsize=(1.3 * (len(layers) + 1), 2.4 * len(images)),
                             squeeze=False)
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        for column, layer in enumerate(layers, start=1):
            axes[row, column].imshow(image)
            heat = axes[row, column].imshow(heatmaps[layer][row], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if row == 0:
                axes[row, column].set_title(layer, fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.colorbar(heat, ax=axes, fraction=0.02, pad=0.01, label="relevance (each map scaled to its maximum)")
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def attention_figure(image: np.ndarray, maps: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """``maps``: layer -> [heads, H, W] attention already upsampled to the image."""
    plt = _pyplot()
    layers = list(maps)
    heads = max(m.shape[0] for m in maps.values())
    fig, axes = plt.subplots(len(layers), heads + 1, figsize=(1.3 * (heads + 1), 2.4 * len(layers)), squeeze=False)
    for row, layer in enumerate(layers):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(layer, fontsize=7)
        layer_maps = maps[layer]
        for head in range(heads):
            ax = axes[row, head + 1]
            if head < layer_maps.shape[0]:
                ax.imshow(image)
                shown = layer_maps[head] / max(float(layer_maps[head].max()), 1e-12)
                heat = ax.imshow(shown, cmap="viridis", alpha=0.6, vmin=0, vmax=1)
                ax.set_title(f"head {head + 1}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.colorbar(heat, ax=axes, fraction=0.02, pad=0.01, label="attention (each head scaled to its maximum)")
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def retrieval_figure(query: list[Sample], gallery: list[Sample], rankings: list[np.ndarray], read_image,
                     path: str | Path, top_k: int, title: str) -> Path:
    """One row per query: the query, then its ``top_k`` gallery images in ``rankings`` order."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(query), top_k + 1, figsize=(1.0 * (top_k + 1), 2.1 * len(query)), squeeze=False)
    for row, (sample, ranked) in enumerate(zip(query, rankings, strict=True)):
        axes[row, 0].imshow(read_image(sample.path))
        axes[row, 0].set_title(f"query\nid {sample.pid} {sample.modality[:3]}", fontsize=6)
        for column, index in enumerate(ranked[:top_k], start=1):
            match = gallery[index]
            ax = axes[row, column]
            ax.imshow(read_image(match.path))
            colour = "limegreen" if match.pid == sample.pid else "red"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title(f"{column}: id {match.pid}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[:, 0]:
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def distribution_figure(features: np.ndarray, pids: np.ndarray, modalities: np.ndarray, path: str | Path,
                        title: str, seed: int = 0) -> dict:
    """Histograms and t-SNE; returns the means drawn and the figure's path."""
    plt = _pyplot()
    intra, inter = pair_scores(l2_normalize(features), pids, modalities)
    points = tsne(features, seed)
    fig, (ax_hist, ax_tsne) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = score_bins(intra, inter)
    for values, label, colour in ((intra, "intra-class", "tab:green"), (inter, "inter-class", "tab:red")):
        ax_hist.hist(values, bins=bins, density=True, alpha=0.55, color=colour, label=f"{label} ({len(values)})")
        ax_hist.axvline(values.mean(), color=colour, linestyle="--", label=f"{label} mean {values.mean():.3f}")
    ax_hist.set(xlabel="cosine similarity", ylabel="density", title="similarity distributions")
    ax_hist.legend(fontsize=7)
    identities = sorted(set(pids.tolist()))
    colours = plt.get_cmap("tab20")
    markers = {"visible": "o", "infrared": "^"}
    for modality in sorted(set(modalities.tolist())):
        chosen = modalities == modality
        ax_tsne.scatter(points[chosen, 0], points[chosen, 1], marker=markers.get(modality, "s"), s=22,
                        c=[colours(identities.index(p) % 20) for p in pids[chosen]], label=modality,
                        edgecolors="k", linewidths=0.3)
    ax_tsne.set(title="t-SNE: colour = identity, marker = modality", xticks=[], yticks=[])
    ax_tsne.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    saved = _save(fig, path)
    return {"intra_mean": float(intra.mean()), "inter_mean": float(inter.mean()), "path": str(saved),
            "pairs": {"intra": len(intra), "inter": len(inter)}}
