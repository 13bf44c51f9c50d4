"""Embeddings like a trained ReID model's, for the matcher's benchmark.

Random unit vectors are the wrong test for a matcher: in 1024 dimensions they are all
nearly orthogonal, and a sighting made as its identity's vector plus a little noise
scores 0.9999 against it. A trained model's embeddings are neither: people crowd a cone
(the mean of their unit prototypes is far from zero), spread unevenly over a few hundred
directions, and a person's sightings score 0.75-0.95 against that person's prototype, the
weakest ones deciding identities. :class:`EmbeddingGeometry` holds those three facts,
measured on a real model's embeddings of the synthetic test people
(:func:`measure_geometry`); :class:`SightingModel` draws prototypes and sightings with
them:

- prototypes: the measured mean direction's share plus a Gaussian whose variances follow
  the measured eigenvalue spectrum (a power law fitted to it, so a gallery of 10^6 people
  spreads over as many directions as the model's decay implies, not only over the few
  dozen the test people span), in a random orthonormal basis, normalised;
- sightings: a prototype moved to a drawn cosine from it, in a direction drawn from the
  same spread (a sighting differs from its person the way people differ from each other),
  the cosine drawn from the measured genuine scores or given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hybreid.errors import UserError

GEOMETRY_FILE = Path(__file__).with_name("embedding_geometry.json")
QUANTILES = 21  # of the genuine scores: 0 %, 5 %, ..., 100 %
SPECTRUM_FIT = 48  # leading eigenvalues the power law is fitted to (the test people span fewer than 100)


class EmbeddingGeometry(BaseModel):
    """How a model's embeddings of people are spread (see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str  # name@weights of the model measured
    measured_on: str  # the labelled images embedded
    dim: Annotated[int, Field(ge=2, le=8192)]
    identities: Annotated[int, Field(ge=2)]
    mean_norm: Annotated[float, Field(ge=0.0, lt=1.0)]  # |mean of the unit prototypes|
    spectrum_decay: Annotated[float, Field(gt=0.0, le=4.0)]  # eigenvalue k ~ k^-decay
    genuine_quantiles: list[Annotated[float, Field(ge=-1.0, le=1.0)]]  # sighting vs its prototype
    same_modality_threshold: Annotated[float, Field(ge=0.0, le=1.0)]
    cross_modality_threshold: Annotated[float, Field(ge=0.0, le=1.0)]

    @classmethod
    def load(cls, path: str | Path = GEOMETRY_FILE) -> EmbeddingGeometry:
        from hybreid.config import load_typed

        return load_typed(path, cls, "embedding geometry")

    @property
    def operating_cosine(self) -> float:
        return min(self.same_modality_threshold, self.cross_modality_threshold)


def measure_geometry(embeddings: np.ndarray, pids: np.ndarray, modalities: np.ndarray, model: str,
                     measured_on: str, target_fmr: float = 0.001) -> EmbeddingGeometry:
    """The geometry of L2-normalised ``embeddings`` of labelled people (``pids``), with the
    thresholds ``hybreid calibrate threshold`` would choose at ``target_fmr``."""
    from hybreid.calibration.threshold import calibrate_thresholds

    pids = np.asarray(pids)
    people = [pid for pid in np.unique(pids) if (pids == pid).sum() >= 2]
    if len(people) < 3:
        raise UserError("measuring an embedding geometry needs at least 3 people seen twice or more")
    prototypes, genuine = [], []
    for pid in people:
        own = embeddings[pids == pid]
        total = own.sum(0)
        prototypes.append(total / np.linalg.norm(total))
        for row in own:  # against the prototype of the person's other sightings, as the matcher scores
            rest = total - row
            genuine.append(float(row @ rest / max(np.linalg.norm(rest), 1e-12)))
    prototypes = np.stack(prototypes)
    mean = prototypes.mean(0)
    spectrum = np.linalg.svd(prototypes - mean, compute_uv=False) ** 2 / len(prototypes)
    leading = spectrum[: min(SPECTRUM_FIT, len(spectrum) - 1)]
    ranks = np.arange(1, len(leading) + 1)
    decay = float(-np.polyfit(np.log(ranks), np.log(leading), 1)[0])
    thresholds = calibrate_thresholds(embeddings, pids, modalities, target_fmr)
    same = thresholds["same_modality"].threshold
    cross = thresholds["cross_modality"].threshold if "cross_modality" in thresholds else same
    return EmbeddingGeometry(
        model=model, measured_on=measured_on, dim=int(embeddings.shape[1]), identities=len(people),
        mean_norm=round(float(np.linalg.norm(mean)), 4), spectrum_decay=round(min(max(decay, 0.05), 4.0), 4),
        genuine_quantiles=[round(float(q), 4) for q in np.quantile(genuine, np.linspace(0, 1, QUANTILES))],
        same_modality_threshold=round(same, 4), cross_modality_threshold=round(cross, 4))


class SightingModel:
    """Draws prototypes and sightings with a geometry, in ``dim`` dimensions (see the module)."""

    def __init__(self, geometry: EmbeddingGeometry, dim: int, rng: np.random.Generator):
        self.geometry, self.dim, self.rng = geometry, dim, rng
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.mean_direction = basis[:, 0].astype(np.float32)
        self.axes = basis[:, 1:].T.astype(np.float32)  # rows: the spread's directions, largest first
        variances = np.arange(1, dim, dtype=np.float64) ** -geometry.spectrum_decay
        variances *= (1.0 - geometry.mean_norm ** 2) / variances.sum()  # unit prototypes on average
        self.scales = np.sqrt(variances).astype(np.float32)

    def _spread(self, count: int) -> np.ndarray:
        return (self.rng.standard_normal((count, self.dim - 1)).astype(np.float32) * self.scales) @ self.axes

    def prototypes(self, count: int) -> np.ndarray:
        vectors = self.geometry.mean_norm * self.mean_direction + self._spread(count)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def sightings(self, prototypes: np.ndarray, cosines: np.ndarray) -> np.ndarray:
        """One sighting of each prototype at exactly its cosine from it."""
        drift = self._spread(len(prototypes))
        drift -= (drift * prototypes).sum(1, keepdims=True) * prototypes
        drift /= np.linalg.norm(drift, axis=1, keepdims=True)
        cosines = np.asarray(cosines, dtype=np.float32)[:, None]
        vectors = cosines * prototypes + np.sqrt(1 - cosines ** 2) * drift
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def genuine_cosines(self, count: int) -> np.ndarray:
        """Cosines drawn from the measured genuine scores (inverse transform of their quantiles)."""
        quantiles = np.asarray(self.geometry.genuine_quantiles)
        return np.interp(self.rng.random(count), np.linspace(0, 1, len(quantiles)), quantiles).astype(np.float32)


def save_geometry(geometry: EmbeddingGeometry, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(geometry.model_dump(), indent=1) + "\n")
    return path
