"""The matcher's decision thresholds, chosen on a labelled validation set.

Genuine pairs (same identity) and impostor pairs (different identities) are scored by
cosine similarity, separately for same-modality and cross-modality pairs (a visible to
infrared match scores lower, so it needs its own threshold). For a target false-match
rate the threshold is the smallest score that at most that fraction of impostor pairs
reach; the true-match rate there says what the site gives up. Torch-free.

The matcher compares tracklets, each the mean of a camera track's crops, and the mean of a
person's crops lies nearer the mean of everyone's than one crop does: two tracklets of
different people are closer than two crops of them. ``tracklet_crops`` K > 1 therefore
scores tracklets made of K crops of one person on one camera (:func:`tracklet_means`), so
that the false-match rate is the tracklets'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hybreid.errors import UserError


@dataclass
class Threshold:
    threshold: float
    false_match_rate: float
    true_match_rate: float
    genuine_pairs: int
    impostor_pairs: int


def pair_scores(embeddings: np.ndarray, pids: np.ndarray, modalities: np.ndarray,
                cross_modality: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(genuine scores, impostor scores) over the pairs i < j of the chosen kind
    (``None``: every pair) of L2-normalised ``embeddings``."""
    similarity = embeddings @ embeddings.T
    i, j = np.triu_indices(len(embeddings), k=1)
    if cross_modality is not None:
        kind = (modalities[i] != modalities[j]) if cross_modality else (modalities[i] == modalities[j])
        i, j = i[kind], j[kind]
    same = pids[i] == pids[j]
    return similarity[i, j][same], similarity[i, j][~same]


def choose_threshold(genuine: np.ndarray, impostor: np.ndarray, target_fmr: float) -> Threshold:
    """Smallest threshold with FMR <= ``target_fmr`` (a score >= threshold is a match)."""
    if len(genuine) == 0 or len(impostor) == 0:
        raise UserError("the validation set needs both genuine and impostor pairs of this kind")
    ordered = np.sort(impostor)[::-1]
    allowed = int(np.floor(target_fmr * len(impostor)))  # impostor pairs allowed at or above the threshold
    # Just above the (allowed+1)-th highest impostor score: at most `allowed` impostors pass.
    threshold = float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else float(ordered[-1])
    return Threshold(threshold, float(np.mean(impostor >= threshold)), float(np.mean(genuine >= threshold)),
                     len(genuine), len(impostor))


# Tracklets drawn per person and camera: on a hundred people (the synthetic SYSU-MM01
# test split) six give about 20,000 genuine and 2 million impostor pairs, enough for a
# false-match rate of 0.1 %.
TRACKLETS_PER_CAMERA = 6


def tracklet_means(embeddings: np.ndarray, pids, camids, modalities,
                   crops: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, pids, modalities) of tracklets: each the L2-normalised mean of ``crops``
    crops of one person on one camera, drawn at random (``TRACKLETS_PER_CAMERA`` a person
    and camera that has that many crops; a fixed draw, so one model gives one file)."""
    pids, camids, modalities = np.asarray(pids), np.asarray(camids), np.asarray(modalities)
    rng = np.random.default_rng(0)
    means, mean_pids, mean_modalities = [], [], []
    for pid, camid in sorted(set(zip(pids.tolist(), camids.tolist(), strict=True))):
        members = np.flatnonzero((pids == pid) & (camids == camid))
        if len(members) < crops:
            continue
        for _ in range(TRACKLETS_PER_CAMERA):
            mean = embeddings[rng.choice(members, size=crops, replace=False)].mean(axis=0)
            means.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
            mean_pids.append(pid)
            mean_modalities.append(modalities[members[0]])
    if not means:
        raise UserError(f"no person has {crops} images from one camera in the validation set; give a smaller "
                        "--tracklet-crops")
    return np.stack(means), np.array(mean_pids), np.array(mean_modalities)


def calibrate_thresholds(embeddings: np.ndarray, pids, modalities, target_fmr: float = 0.01) -> dict[str, Threshold]:
    pids, modalities = np.asarray(pids), np.asarray(modalities)
    result = {"same_modality": choose_threshold(*pair_scores(embeddings, pids, modalities, False), target_fmr)}
    if len(set(modalities.tolist())) > 1:
        result["cross_modality"] = choose_threshold(*pair_scores(embeddings, pids, modalities, True), target_fmr)
    return result


def score_bins(*scores, count: int = 80) -> np.ndarray:
    """Histogram bins over the range the scores (and any marked value) occupy, with a small
    margin: a model whose cosines sit in 0.97-1.0 is unreadable on a -1..1 axis."""
    values = np.concatenate([np.atleast_1d(np.asarray(s, dtype=float)) for s in scores])
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if len(values) else (-1.0, 1.0)
    margin = max(0.02 * (high - low), 1e-3)
    return np.linspace(low - margin, high + margin, count + 1)


def save_thresholds(thresholds: dict[str, Threshold], path: str | Path, model: str, target_fmr: float,
                    tracklet_crops: int = 1) -> Path:
    """The JSON file the matcher reads (``--thresholds``), written through its schema."""
    from hybreid.thresholds import ThresholdsFile

    crops = {"tracklet_crops": tracklet_crops} if tracklet_crops > 1 else {}
    return ThresholdsFile.checked(model=model, target_false_match_rate=target_fmr,
                                  **{kind: {**asdict(t), **crops} for kind, t in thresholds.items()}).save(path)


def plot_scores(embeddings: np.ndarray, pids, modalities, thresholds: dict[str, Threshold], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pids, modalities = np.asarray(pids), np.asarray(modalities)
    kinds = list(thresholds)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        genuine, impostor = pair_scores(embeddings, pids, modalities, kind == "cross_modality")
        bins = score_bins(genuine, impostor, thresholds[kind].threshold)
        ax.hist(impostor, bins=bins, density=True, alpha=0.6, label=f"impostor ({len(impostor)})")
        ax.hist(genuine, bins=bins, density=True, alpha=0.6, label=f"genuine ({len(genuine)})")
        t = thresholds[kind]
        ax.axvline(t.threshold, color="k", linestyle="--",
                   label=f"threshold {t.threshold:.3f}\nFMR {t.false_match_rate:.3%}, TMR {t.true_match_rate:.1%}")
        ax.set(title=kind.replace("_", " "), xlabel="cosine similarity", ylabel="density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def calibrate_on_dataset(embedder, dataset, split: str, target_fmr: float, out: str | Path,
                         tracklet_crops: int = 1) -> dict:
    """Embed ``split`` of a labelled dataset (``test`` = query + gallery), choose both
    thresholds (for tracklets of ``tracklet_crops`` crops), save them where the matcher reads
    them and plot the score distributions.

    Returns ``{"thresholds", "path", "plot"}``.
    """
    from hybreid.calibration.report import embed_images

    samples = getattr(dataset, split) if split != "test" else dataset.query + dataset.gallery
    samples = [s for s in samples if s.pid > 0]  # distractors have no genuine pair
    embeddings = embed_images(embedder, [s.path for s in samples])
    pids = np.array([s.pid for s in samples])
    modalities = np.array([s.modality for s in samples])
    if tracklet_crops > 1:
        embeddings, pids, modalities = tracklet_means(embeddings, pids, [s.camid for s in samples], modalities,
                                                      tracklet_crops)
    thresholds = calibrate_thresholds(embeddings, pids, modalities, target_fmr)
    path = save_thresholds(thresholds, out, embedder.contract.identity, target_fmr, tracklet_crops)
    plot = plot_scores(embeddings, pids, modalities, thresholds, path.with_suffix(".png"))
    return {"thresholds": thresholds, "path": path, "plot": plot}


def format_thresholds(thresholds: dict[str, Threshold], target_fmr: float) -> str:
    from hybreid.tables import format_table

    rows = [[kind, t.threshold, 100 * t.false_match_rate, 100 * t.true_match_rate, t.genuine_pairs,
             t.impostor_pairs] for kind, t in thresholds.items()]
    return format_table(["pairs", "threshold", "FMR %", "TMR %", "genuine", "impostor"], rows, floatfmt=".4f",
                        title=f"match thresholds for a target false-match rate of {target_fmr:.2%}")
