"""The datasets' evaluation protocols on top of :func:`evaluate_ranking`.

- Market1501 / DukeMTMC / MSMT17: one query set against one gallery, same-pid-same-
  camera removal, plain CMC.
- SYSU-MM01 (AGW/DDAG code): query = infrared images of cam3 and cam6; single-shot
  gallery = one random visible image per (identity, camera) over cam1/2/4/5
  (all-search) or cam1/2 (indoor-search), drawn with ``random.seed(trial)`` for trials
  0..9 and averaged; a cam3 query skips every cam2 gallery image; identity-level CMC.
- RegDB: each of the 10 splits evaluated in both directions on the whole test
  gallery, nothing removed, plain CMC.
- LLCM: both directions, 10 single-shot gallery trials like SYSU, Market's
  same-pid-same-camera removal, identity-level CMC.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from hybreid.data.datasets import ReIDDataset, Sample
from hybreid.eval.metrics import (
    RankResult,
    RemoveRule,
    cosine_distance,
    evaluate_ranking,
    ranked_lists,
    remove_nothing,
    same_pid_same_camera,
)
from hybreid.eval.rerank import k_reciprocal_rerank

MARKET_STYLE = {"market1501", "dukemtmc", "msmt17"}
SYSU_CAM2, SYSU_CAM3 = 1, 2  # 0-based ids of SYSU's cam2 and cam3
SYSU_GALLERY_CAMERAS = {"all": (0, 1, 3, 4), "indoor": (0, 1)}  # cam1, cam2, cam4, cam5 / cam1, cam2


def _arrays(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s.pid for s in samples]), np.array([s.camid for s in samples])


def _distance(q_feats: np.ndarray, g_feats: np.ndarray, rerank: bool) -> np.ndarray:
    if rerank:
        return k_reciprocal_rerank(q_feats, g_feats)
    return cosine_distance(q_feats, g_feats)


def single_shot_gallery(gallery: Sequence[Sample], cameras: Sequence[int], trial: int) -> list[int]:
    """Indices of one random image per (identity, camera), as the reference code draws them.

    Identities in ascending order, cameras in the order given, files sorted by path,
    ``random.choice`` from a generator seeded with ``trial``.
    """
    by_key: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, sample in enumerate(gallery):
        by_key[(sample.pid, sample.camid)].append(index)
    rng = random.Random(trial)
    chosen = []
    for pid in sorted({s.pid for s in gallery}):
        for camid in cameras:
            candidates = by_key.get((pid, camid))
            if candidates:
                chosen.append(rng.choice(sorted(candidates, key=lambda i: gallery[i].path)))
    return chosen


def _mean(results: list[RankResult]) -> dict:
    rows = [r.to_dict() for r in results]
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def evaluate_market(q_feats, query: Sequence[Sample], g_feats, gallery: Sequence[Sample],
                    rerank: bool = False) -> dict:
    q_pids, q_cams = _arrays(query)
    g_pids, g_cams = _arrays(gallery)
    result = evaluate_ranking(_distance(q_feats, g_feats, rerank), q_pids, g_pids,
                              same_pid_same_camera(q_pids, g_pids, q_cams, g_cams))
    return result.to_dict()


def cam3_skips_cam2(q_cams: np.ndarray, g_cams: np.ndarray) -> RemoveRule:
    """SYSU-MM01's rule: a query from camera 3 is not matched against camera 2 (same room)."""
    def rule(q: int, order: np.ndarray) -> np.ndarray:
        return (q_cams[q] == SYSU_CAM3) & (g_cams[order] == SYSU_CAM2)
    return rule


def sysu_setting(query: Sequence[Sample], gallery: Sequence[Sample], mode: str,
                 trial: int) -> tuple[np.ndarray, RemoveRule]:
    """SYSU-MM01 trial ``trial``: the single-shot gallery (indices into ``gallery``) and its removal rule."""
    chosen = np.asarray(single_shot_gallery(gallery, SYSU_GALLERY_CAMERAS[mode], trial), dtype=int)
    _, q_cams = _arrays(query)
    _, g_cams = _arrays([gallery[i] for i in chosen])
    return chosen, cam3_skips_cam2(q_cams, g_cams)


def llcm_setting(query: Sequence[Sample], gallery: Sequence[Sample], trial: int) -> tuple[np.ndarray, RemoveRule]:
    """LLCM trial ``trial``: a single-shot gallery over every camera and Market's removal rule."""
    chosen = np.asarray(single_shot_gallery(gallery, sorted({s.camid for s in gallery}), trial), dtype=int)
    q_pids, q_cams = _arrays(query)
    g_pids, g_cams = _arrays([gallery[i] for i in chosen])
    return chosen, same_pid_same_camera(q_pids, g_pids, q_cams, g_cams)


def evaluate_sysu(q_feats, query: Sequence[Sample], g_feats, gallery: Sequence[Sample],
                  mode: str = "all", trials: int = 10, rerank: bool = False) -> dict:
    """SYSU-MM01 single-shot, ``mode`` = ``all`` or ``indoor``, averaged over trials 0..trials-1."""
    q_pids, _ = _arrays(query)
    g_pids, _ = _arrays(gallery)
    results = []
    for trial in range(trials):
        chosen, remove = sysu_setting(query, gallery, mode, trial)
        results.append(evaluate_ranking(_distance(q_feats, g_feats[chosen], rerank), q_pids, g_pids[chosen],
                                        remove, identity_level_cmc=True))
    return _mean(results)


def evaluate_regdb(visible_feats, visible: Sequence[Sample], thermal_feats, thermal: Sequence[Sample],
                   rerank: bool = False) -> dict:
    """One RegDB split, both directions: {"visible_to_infrared": ..., "infrared_to_visible": ...}."""
    v_pids, _ = _arrays(visible)
    t_pids, _ = _arrays(thermal)
    return {
        "visible_to_infrared": evaluate_ranking(
            _distance(visible_feats, thermal_feats, rerank), v_pids, t_pids, remove_nothing).to_dict(),
        "infrared_to_visible": evaluate_ranking(
            _distance(thermal_feats, visible_feats, rerank), t_pids, v_pids, remove_nothing).to_dict(),
    }


def evaluate_llcm(visible_feats, visible: Sequence[Sample], infrared_feats, infrared: Sequence[Sample],
                  trials: int = 10, rerank: bool = False) -> dict:
    """LLCM, both directions, single-shot galleries over every camera, averaged over trials."""
    out = {}
    for direction, (qf, qs, gf, gs) in {
        "visible_to_infrared": (visible_feats, visible, infrared_feats, infrared),
        "infrared_to_visible": (infrared_feats, infrared, visible_feats, visible),
    }.items():
        q_pids, _ = _arrays(qs)
        g_pids, _ = _arrays(gs)
        results = []
        for trial in range(trials):
            chosen, remove = llcm_setting(qs, gs, trial)
            results.append(evaluate_ranking(_distance(qf, gf[chosen], rerank), q_pids, g_pids[chosen], remove,
                                            identity_level_cmc=True))
        out[direction] = _mean(results)
    return out


def headline_ranking(dataset: ReIDDataset, query_feats: np.ndarray, gallery_feats: np.ndarray,
                     trial: int = 0) -> list[np.ndarray]:
    """Per query, indices into ``dataset.gallery`` best first, in the headline setting of
    :func:`score` (SYSU all-search, RegDB/LLCM infrared to visible; trial ``trial`` of the
    single-shot galleries), after the protocol's removals."""
    query, gallery = dataset.query, dataset.gallery
    if dataset.name == "sysu_mm01":
        chosen, remove = sysu_setting(query, gallery, "all", trial)
    elif dataset.name == "llcm":
        chosen, remove = llcm_setting(query, gallery, trial)
    elif dataset.name == "regdb":
        chosen, remove = np.arange(len(gallery)), remove_nothing
    elif dataset.name in MARKET_STYLE:
        q_pids, q_cams = _arrays(query)
        g_pids, g_cams = _arrays(gallery)
        chosen, remove = np.arange(len(gallery)), same_pid_same_camera(q_pids, g_pids, q_cams, g_cams)
    else:
        raise ValueError(f"no evaluation protocol for dataset {dataset.name!r}")
    return [chosen[ranked] for ranked in ranked_lists(cosine_distance(query_feats, gallery_feats[chosen]), remove)]


def score(dataset: ReIDDataset, query_feats: np.ndarray, gallery_feats: np.ndarray, rerank: bool = False,
          trials: int = 10) -> dict:
    """Metrics of ``dataset``'s protocol. ``mAP``, ``rank1`` and ``mINP`` at the top level are the
    headline setting (Market-style: the only one; SYSU: all-search; RegDB and LLCM:
    infrared to visible); the other settings are under their own keys."""
    if dataset.name in MARKET_STYLE:
        return evaluate_market(query_feats, dataset.query, gallery_feats, dataset.gallery, rerank)
    if dataset.name == "sysu_mm01":
        result = {mode: evaluate_sysu(query_feats, dataset.query, gallery_feats, dataset.gallery, mode, trials, rerank)
                  for mode in ("all", "indoor")}
        return {**result["all"], "all_search": result["all"], "indoor_search": result["indoor"]}
    if dataset.name == "regdb":
        result = evaluate_regdb(gallery_feats, dataset.gallery, query_feats, dataset.query, rerank)
    elif dataset.name == "llcm":
        result = evaluate_llcm(gallery_feats, dataset.gallery, query_feats, dataset.query, trials, rerank)
    else:
        raise ValueError(f"no evaluation protocol for dataset {dataset.name!r}")
    return {**result["infrared_to_visible"], **result}

