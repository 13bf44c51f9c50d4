"""Embed a dataset's query and gallery with a model and score it with the dataset's protocol."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from hybreid.data.datasets import ReIDDataset, Sample
from hybreid.data.image_dataset import ImageDataset
from hybreid.data.transforms import modality_transforms
from hybreid.eval import protocols


@torch.no_grad()
def extract_features(model: torch.nn.Module, samples: list[Sample], batch_size: int = 64, workers: int = 0,
                     use_camids: bool = False, progress: bool = False, device: str | torch.device = "cpu",
                     cache: bool = False) -> np.ndarray:
    """Eval-mode embeddings ``[len(samples), D]`` as float32 numpy."""
    model.eval()
    transforms = modality_transforms("", model.image_size, model.pixel_mean, model.pixel_std, train=False)
    loader = DataLoader(ImageDataset(samples, transforms, cache=cache), batch_size=batch_size, num_workers=workers)
    chunks = []
    for images, _, camids, _ in tqdm(loader, desc="embedding", disable=not progress, leave=False):
        images = images.to(device)
        chunks.append(model(images, camids.to(device) if use_camids else None).float().cpu())
    return torch.cat(chunks).numpy()


def evaluate(model: torch.nn.Module, dataset: ReIDDataset, rerank: bool = False, use_camids: bool = False,
             trials: int = 10, **extract_options) -> dict:
    """Embed ``dataset``'s query and gallery with ``model`` and score them (:func:`protocols.score`)."""
    query_feats = extract_features(model, dataset.query, use_camids=use_camids, **extract_options)
    gallery_feats = extract_features(model, dataset.gallery, use_camids=use_camids, **extract_options)
    return protocols.score(dataset, query_feats, gallery_feats, rerank, trials)
