"""ReID metrics on hand-built cases whose answers are worked out by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hybreid.data.datasets import Sample
from hybreid.eval import protocols
from hybreid.eval.metrics import evaluate_ranking, same_pid_same_camera
from hybreid.eval.rerank import k_reciprocal_rerank


def test_market_protocol_by_hand():
    # Query 0 (pid 1, cam 0). After dropping g0 (same pid and camera) the ranking is
    # g1 (pid 2), g2 (pid 1), g3 (pid 3), g4 (pid 1): first hit at rank 2,
    # AP = (1/2 + 2/4) / 2 = 0.5, INP = 2 / 4 = 0.5.
    # Query 1 (pid 4, cam 0) has its only gallery image in its own camera: skipped.
    g_pids = np.array([1, 2, 1, 3, 1, 4])
    g_cams = np.array([0, 1, 1, 2, 2, 0])
    q_pids, q_cams = np.array([1, 4]), np.array([0, 0])
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]])
    result = evaluate_ranking(distmat, q_pids, g_pids, same_pid_same_camera(q_pids, g_pids, q_cams, g_cams))
    assert result.num_valid_queries == 1
    assert result.rank(1) == 0.0 and result.rank(2) == 1.0
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)


def test_market_protocol_averages_over_valid_queries():
    # Two queries: one ranks its match first (AP 1), one third of three (AP 1/3).
    g_pids, g_cams = np.array([1, 2, 3]), np.array([1, 1, 1])
    q_pids, q_cams = np.array([1, 3]), np.array([0, 0])
    distmat = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    result = evaluate_ranking(distmat, q_pids, g_pids, same_pid_same_camera(q_pids, g_pids, q_cams, g_cams))
    assert result.rank(1) == 0.5 and result.rank(3) == 1.0
    assert result.mAP == pytest.approx((1 + 1 / 3) / 2)


def sysu_case():
    # Gallery (0-based cameras: 1 = SYSU cam2, 0/3/4 = cam1/cam4/cam5), by distance:
    # a pid1 cam2, b pid2 cam1, c pid2 cam4, d pid1 cam1, e pid3 cam5.
    gallery = [Sample("a", 1, 1, "visible"), Sample("b", 2, 0, "visible"), Sample("c", 2, 3, "visible"),
               Sample("d", 1, 0, "visible"), Sample("e", 3, 4, "visible")]
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    return gallery, distances


def test_sysu_cam3_query_skips_cam2_and_counts_identities():
    # A cam3 query (camid 2) loses 'a' (cam2). Remaining ranking b, c, d, e: the true
    # match d is 3rd among images but 2nd among distinct identities (2, 1, 3).
    # CMC: rank-1 0, rank-2 1; AP = 1/3; INP = 1/3.
    gallery, distances = sysu_case()
    g_pids = np.array([s.pid for s in gallery])
    g_cams = np.array([s.camid for s in gallery])

    def rule(q, order):
        return (np.array([2])[q] == protocols.SYSU_CAM3) & (g_cams[order] == protocols.SYSU_CAM2)

    result = evaluate_ranking(distances[None], np.array([1]), g_pids, rule, identity_level_cmc=True)
    assert result.rank(1) == 0.0 and result.rank(2) == 1.0
    assert result.mAP == pytest.approx(1 / 3)
    assert result.mINP == pytest.approx(1 / 3)
    # The same ranking without identity-level CMC finds the match at rank 3.
    plain = evaluate_ranking(distances[None], np.array([1]), g_pids, rule)
    assert plain.rank(2) == 0.0 and plain.rank(3) == 1.0


def test_sysu_cam6_query_keeps_cam2():
    # A cam6 query (camid 5) keeps 'a': hit at rank 1, AP = (1/1 + 2/4) / 2 = 0.75.
    gallery, distances = sysu_case()
    query = [Sample("q", 1, 5, "infrared")]
    q = np.array([[1.0, 0.0]])
    # Features whose cosine distances to the query reproduce the ranking above.
    angles = np.arccos(1 - distances)
    g = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    result = protocols.evaluate_sysu(q, query, g, gallery, mode="all", trials=1)
    assert result["rank1"] == 1.0
    assert result["mAP"] == pytest.approx(0.75)


def test_single_shot_gallery_draws_like_the_reference_code():
    gallery = [Sample(f"cam{c}/{p:04d}/{n:04d}.jpg", p, c, "visible")
               for p in (3, 1, 2) for c in (0, 1, 3, 4) for n in range(1, 4) if not (p == 2 and c == 3)]
    picks = protocols.single_shot_gallery(gallery, (0, 1, 3, 4), trial=4)
    # The reference: random.seed(trial), identities ascending, cameras in order, one
    # random.choice among the sorted files of each (identity, camera) folder.
    random.seed(4)
    expected = []
    for pid in (1, 2, 3):
        for cam in (0, 1, 3, 4):
            files = sorted(s.path for s in gallery if s.pid == pid and s.camid == cam)
            if files:
                expected.append(random.choice(files))
    assert [gallery[i].path for i in picks] == expected
    assert len(picks) == 11
    assert picks != protocols.single_shot_gallery(gallery, (0, 1, 3, 4), trial=5)


def test_indoor_search_uses_only_cam1_and_cam2():
    gallery = [Sample(f"{c}/{p}", p, c, "visible") for p in (1, 2) for c in (0, 1, 3, 4)]
    picks = protocols.single_shot_gallery(gallery, protocols.SYSU_GALLERY_CAMERAS["indoor"], trial=0)
    assert {gallery[i].camid for i in picks} == {0, 1}


def test_regdb_removes_nothing_in_both_directions():
    visible = [Sample("v1", 1, 0, "visible"), Sample("v2", 2, 0, "visible")]
    thermal = [Sample("t1", 1, 1, "infrared"), Sample("t2", 2, 1, "infrared")]
    feats = np.eye(2)
    result = protocols.evaluate_regdb(feats, visible, feats, thermal)
    assert result["visible_to_infrared"]["rank1"] == 1.0
    assert result["infrared_to_visible"]["mAP"] == 1.0


def test_reranking_ranks_well_separated_identities_perfectly():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    gallery = np.repeat(centres, 4, axis=0) + 0.05 * rng.normal(size=(24, 16))
    query = centres + 0.05 * rng.normal(size=(6, 16))
    reranked = k_reciprocal_rerank(query, gallery, k1=6, k2=3)
    assert reranked.shape == (6, 24)
    g_pids = np.repeat(np.arange(6), 4)
    result = evaluate_ranking(reranked, np.arange(6), g_pids)
    assert result.rank(1) == 1.0 and result.mAP == pytest.approx(1.0)
