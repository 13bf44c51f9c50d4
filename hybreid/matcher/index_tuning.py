"""How the prototype index is fitted to its gallery: the projection IVF searches in, and the
sightings its search depth is calibrated on (:mod:`.index`)."""

from __future__ import annotations

import numpy as np

PROJECTION_ENERGY = 0.99  # of the prototypes' energy the IVF index's projection keeps
PROJECTION_MIN_DIMS = 32
PROJECTION_SAMPLE = 20_000  # prototypes the projection is computed on


def calibration_queries(matrix: np.ndarray, cosine, count: int, rng) -> np.ndarray:
    """Sightings at exactly ``cosine`` (one, or one per sighting) to a known prototype, drifting
    the way people differ: a real sighting moves within the space the gallery's people span (a
    pose, a colour seen under other light), not in a random direction. The difference of two
    other prototypes is a draw from that spread, however clustered and uneven the gallery is."""
    rows = rng.choice(len(matrix), size=min(count, len(matrix)), replace=False)
    picked = matrix[rows].astype(np.float32)
    drift = matrix[rng.integers(len(matrix), size=len(rows))] - matrix[rng.integers(len(matrix), size=len(rows))]
    drift -= (drift * picked).sum(1, keepdims=True) * picked
    length = np.linalg.norm(drift, axis=1, keepdims=True)
    lost = length[:, 0] < 1e-6  # a duplicate prototype: drift in a random direction instead
    if lost.any():
        noise = rng.standard_normal((int(lost.sum()), matrix.shape[1])).astype(np.float32)
        noise -= (noise * picked[lost]).sum(1, keepdims=True) * picked[lost]
        drift[lost], length[lost] = noise, np.linalg.norm(noise, axis=1, keepdims=True)
    cosine = np.broadcast_to(np.asarray(cosine, dtype=np.float32), (len(rows),))[:, None]
    queries = cosine * picked + np.sqrt(1 - cosine ** 2) * drift / length
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def projection_for(matrix: np.ndarray, sample: int = PROJECTION_SAMPLE) -> np.ndarray | None:
    """The leading right singular vectors of the prototypes (not centred: inner products stay
    inner products) that hold :data:`PROJECTION_ENERGY` of their energy, when they are at most
    a quarter of the dimensions; else None (random or isotropic prototypes: no projection).

    A trained model's embeddings span few directions (the tiny HAResformer's sightings: 128 of
    1024 hold 99.1 % of their energy), and an IVF list scan costs in proportion to the
    dimensions it reads; candidates
    are scored exactly against the full prototypes, and the search depth is calibrated on
    the projected index, so the projection only decides which identities are looked at."""
    rows = matrix if len(matrix) <= sample else matrix[np.random.default_rng(0).choice(len(matrix), sample,
                                                                                      replace=False)]
    _, singular, basis = np.linalg.svd(np.asarray(rows, dtype=np.float32), full_matrices=False)
    energy = np.cumsum(singular.astype(np.float64) ** 2) / np.sum(singular.astype(np.float64) ** 2)
    needed = int(np.searchsorted(energy, PROJECTION_ENERGY)) + 1
    kept = max(PROJECTION_MIN_DIMS, 2 ** int(np.ceil(np.log2(needed))))
    if kept > matrix.shape[1] // 4:
        return None
    return np.ascontiguousarray(basis[:kept].T, dtype=np.float32)


def cosine_between(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
