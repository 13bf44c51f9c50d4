"""CMC, mAP and mINP from a distance matrix, as the community's evaluation code computes them.

Two rankings are in use:

- **Market / Duke / MSMT** (torchreid, fast-reid ``rank.py``): gallery samples with the
  query's pid *and* camera are removed; queries left with no true match are skipped;
  CMC counts from the first true match; AP is the mean precision at each true match;
  mINP = (number of true matches) / (rank of the last true match).
- **Visible-infrared** (the SYSU-MM01 code of AGW/DDAG): the CMC counts the rank among
  *distinct identities* (each identity's first occurrence), mAP and mINP use the raw
  ranking; which gallery samples are removed depends on the dataset (see
  :mod:`hybreid.eval.protocols`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Given (query index, gallery order), the boolean mask of gallery positions to drop.
RemoveRule = Callable[[int, np.ndarray], np.ndarray]


@dataclass
class RankResult:
    cmc: np.ndarray  # cmc[k] = fraction of valid queries with a true match within rank k+1
    mAP: float
    mINP: float
    num_valid_queries: int

    def rank(self, k: int) -> float:
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def to_dict(self) -> dict:
        return {"rank1": self.rank(1), "rank5": self.rank(5), "rank10": self.rank(10), "rank20": self.rank(20),
                "mAP": self.mAP, "mINP": self.mINP, "num_valid_queries": self.num_valid_queries}


def cosine_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``1 - cos`` between rows (features need not be normalised)."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return 1.0 - q @ g.T


def same_pid_same_camera(q_pids, g_pids, q_camids, g_camids) -> RemoveRule:
    """Market's rule: drop gallery samples of the query's identity seen by the query's camera."""
    def rule(q: int, order: np.ndarray) -> np.ndarray:
        return (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
    return rule


def remove_nothing(q: int, order: np.ndarray) -> np.ndarray:
    return np.zeros(len(order), dtype=bool)


def ranked_lists(distmat: np.ndarray, remove: RemoveRule = remove_nothing) -> list[np.ndarray]:
    """Per query, the gallery indices best first, without the ones ``remove`` drops: the
    ranking every metric below reads (and the retrieval figures show)."""
    orders = np.argsort(distmat, axis=1, kind="stable")
    return [order[~remove(q, order)] for q, order in enumerate(orders)]


def evaluate_ranking(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    remove: RemoveRule = remove_nothing,
    max_rank: int = 50,
    identity_level_cmc: bool = False,
) -> RankResult:
    """CMC / mAP / mINP of ``distmat`` ([num_query, num_gallery], smaller = closer).

    Ties are broken by gallery order (a stable sort), as ``np.argsort`` does in the
    reference code for the distances that occur in practice.
    """
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    max_rank = min(max_rank, distmat.shape[1])
    all_cmc, all_ap, all_inp = [], [], []
    for q, ranked in enumerate(ranked_lists(distmat, remove)):
        ranked_pids = g_pids[ranked]
        raw = ranked_pids == q_pids[q]
        if not raw.any():
            continue  # no true match left: the query is not counted
        if identity_level_cmc:
            _, first = np.unique(ranked_pids, return_index=True)
            distinct = ranked_pids[np.sort(first)]
            hits = (distinct == q_pids[q]).cumsum()
        else:
            hits = raw.cumsum()
        cmc = np.minimum(hits, 1)[:max_rank]
        all_cmc.append(np.pad(cmc, (0, max_rank - len(cmc)), constant_values=1))
        positions = np.flatnonzero(raw)
        num_rel = len(positions)
        precision_at_hits = np.arange(1, num_rel + 1) / (positions + 1)
        all_ap.append(precision_at_hits.mean())
        all_inp.append(num_rel / (positions[-1] + 1))
    if not all_cmc:
        raise ValueError("no query has a true match in the gallery: check the query and gallery lists")
    return RankResult(
        cmc=np.mean(all_cmc, axis=0),
        mAP=float(np.mean(all_ap)),
        mINP=float(np.mean(all_inp)),
        num_valid_queries=len(all_cmc),
    )
