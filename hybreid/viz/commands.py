"""``hybreid viz gradcam | attention | retrieval | distribution`` on a trained model and a
dataset split (the held-out people by default)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from hybreid.contract import read_rgb
from hybreid.data.datasets import ReIDDataset, Sample
from hybreid.data.transforms import test_transform
from hybreid.eval.evaluate import extract_features
from hybreid.eval.protocols import headline_ranking
from hybreid.viz import figures
from hybreid.viz.attention import attention_maps, upsample
from hybreid.viz.gradcam import similarity_gradcam


def model_input(model, samples: list[Sample]) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Preprocessed batch and the same images as RGB at the model's input size (for drawing)."""
    from PIL import Image

    height, width = model.image_size
    transform = test_transform(model.image_size, model.pixel_mean, model.pixel_std)
    images = [read_rgb(s.path) for s in samples]
    batch = torch.stack([transform(Image.fromarray(image)) for image in images])
    return batch, [cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) for image in images]


def probe_pairs(dataset: ReIDDataset, count: int, seed: int = 0) -> list[tuple[Sample, Sample]]:
    """``count`` queries of distinct people, each with a reference image of the same person
    from the gallery, in the other modality when there is one, else another camera."""
    rng = np.random.default_rng(seed)
    by_pid: dict[int, list[Sample]] = {}
    for sample in dataset.gallery:
        by_pid.setdefault(sample.pid, []).append(sample)
    pairs, seen = [], set()
    for index in rng.permutation(len(dataset.query)):
        query = dataset.query[index]
        if query.pid in seen or query.pid not in by_pid:
            continue
        candidates = sorted(by_pid[query.pid], key=lambda s: (s.modality == query.modality, s.camid == query.camid))
        pairs.append((query, candidates[0]))
        seen.add(query.pid)
        if len(pairs) == count:
            break
    return pairs


def run_gradcam(model, dataset: ReIDDataset, out: str | Path, count: int = 4, method: str = "hirescam") -> dict:
    pairs = probe_pairs(dataset, count)
    queries, shown = model_input(model, [q for q, _ in pairs])
    references, _ = model_input(model, [r for _, r in pairs])
    with torch.no_grad():
        reference = model.eval()(references)
    heatmaps = similarity_gradcam(model, queries, reference, method=method)
    kinds = sorted({f"{q.modality}->{r.modality}" for q, r in pairs})
    name = "HiResCAM" if method == "hirescam" else "Grad-CAM"
    title = (f"{model.model_name}: {name} of cos(embedding, reference embedding of the same person "
             f"in another {'modality' if any(q.modality != r.modality for q, r in pairs) else 'camera'}) "
             f"({', '.join(kinds)})")
    path = figures.gradcam_figure(shown, heatmaps, Path(out) / "gradcam.png", title)
    return {"figure": str(path), "layers": list(heatmaps), "images": [q.path for q, _ in pairs]}


def run_attention(model, dataset: ReIDDataset, out: str | Path, index: int = 0) -> dict:
    sample = probe_pairs(dataset, index + 1)[index][0]
    batch, shown = model_input(model, [sample])
    maps = attention_maps(model, batch)
    size = shown[0].shape[:2]
    drawn = {label: upsample(entry["maps"][0], size) for label, entry in maps.items()}
    title = f"{model.model_name}: attention of the global token over the local tokens, per head (id {sample.pid})"
    path = figures.attention_figure(shown[0], drawn, Path(out) / "attention.png", title)
    return {"figure": str(path), "layers": {label: list(entry["grid"]) for label, entry in maps.items()},
            "image": sample.path}


def run_retrieval(model, dataset: ReIDDataset, out: str | Path, queries: int = 6, top_k: int = 10,
                  seed: int = 0) -> dict:
    query_feats = extract_features(model, dataset.query, progress=True)
    gallery_feats = extract_features(model, dataset.gallery, progress=True)
    rankings = headline_ranking(dataset, query_feats, gallery_feats)
    chosen = sorted(np.random.default_rng(seed).choice(len(dataset.query), min(queries, len(dataset.query)),
                                                       replace=False))
    height, width = model.image_size

    def read_image(path: str) -> np.ndarray:
        return cv2.resize(read_rgb(path), (width, height))

    title = f"{model.model_name} on {dataset.name}: top-{top_k} per query (green = same person)"
    path = figures.retrieval_figure([dataset.query[i] for i in chosen], dataset.gallery,
                                    [rankings[i] for i in chosen], read_image, Path(out) / "retrieval.png",
                                    top_k, title)
    return {"figure": str(path), "queries": [dataset.query[i].path for i in chosen],
            "rankings": [[dataset.gallery[j].path for j in rankings[i][:top_k]] for i in chosen]}


def run_distribution(model, dataset: ReIDDataset, out: str | Path, max_images: int = 400, seed: int = 0) -> dict:
    samples = [s for s in dataset.query + dataset.gallery if s.pid > 0]
    if len(samples) > max_images:
        keep = np.random.default_rng(seed).choice(len(samples), max_images, replace=False)
        samples = [samples[i] for i in sorted(keep)]
    feats = extract_features(model, samples, progress=True)
    result = figures.distribution_figure(feats, np.array([s.pid for s in samples]),
                                         np.array([s.modality for s in samples]), Path(out) / "distribution.png",
                                         f"{model.model_name} on {dataset.name} ({len(samples)} images)", seed)
    return result


def save_result(result: dict, out: str | Path, name: str) -> Path:
    path = Path(out) / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path
