"""The papers' tables, counted the way their authors counted (hybreid bench flops)."""

from __future__ import annotations

import pytest

from hybreid.bench import flops


def _within(value: float, reference: float, tolerance: float) -> bool:
    return abs(value / reference - 1) <= tolerance


@pytest.fixture(scope="module")
def haresformer_reports():
    return {name: flops.count_model(name) for name in ("haresformer_h1l1", "haresformer_h1l2", "haresformer_h2l1")}


@pytest.mark.slow
def test_fusionreid_matches_table_v():
    """153.8 M params within 1%, 28.1 GFLOPs within 2% (FusionReID Table V)."""
    report = flops.count_model("fusionreid_vitb16_s12")
    assert _within(report.paper_params_m, 153.8, 0.01)
    assert _within(report.paper_gmacs, 28.1, 0.02)
    # The full count adds classifiers, embeddings and attention matmuls: strictly more.
    assert report.all_params_m > report.paper_params_m
    assert report.full_gmacs > report.paper_gmacs


def test_breakdown_rows_add_up_to_the_totals():
    report = flops.count_model("fusionreid_tiny")
    assert sum(r.paper_params_m for r in report.rows) == pytest.approx(report.paper_params_m, rel=1e-9)
    assert sum(r.paper_gmacs for r in report.rows) == pytest.approx(report.paper_gmacs, rel=1e-9)
    assert sum(r.all_params_m for r in report.rows) == pytest.approx(report.all_params_m, rel=1e-6)
    heads = next(r for r in report.rows if r.module.startswith("heads"))
    assert heads.paper_params_m == 0 and heads.all_params_m > 0  # classifiers do not run at test time


@pytest.mark.slow
def test_htm_structures_match_table_iii():
    """One HTM layer: params within 1% (21.3 / 7.1 / 21.3 / 14.2 M), MACs within 5% (2.9 / 2.5 G)."""
    rows = {r["structure"]: r for r in flops.count_htm_structures()}
    for structure, (params, gflops) in {"seu_mfu": (21.3, 2.9), "seu": (7.1, 2.5), "mfu_seu": (21.3, 2.9),
                                        "mfu": (14.2, 0.5)}.items():
        assert _within(rows[structure]["paper_params_m"], params, 0.01), structure
        if structure != "mfu":  # reported against 0.5 G, not held to it (see the issue)
            assert _within(rows[structure]["paper_gmacs"], gflops, 0.05), structure


@pytest.mark.slow
def test_haresformer_matches_table_v(haresformer_reports):
    """113.75 / 180.64 / 113.75 M params within 1%; 25.00 / 39.34 / 25.00 G MACs within 10%."""
    for name, (params, gflops) in {"haresformer_h1l1": (113.75, 25.00), "haresformer_h1l2": (180.64, 39.34),
                                   "haresformer_h2l1": (113.75, 25.00)}.items():
        report = haresformer_reports[name]
        assert _within(report.paper_params_m, params, 0.01), name
        assert _within(report.paper_gmacs, gflops, 0.10), name


def test_haresformer_depth_increment_matches_table_v(haresformer_reports):
    """L = 1 -> 2 adds 66.89 M params and 14.34 G within 1%."""
    one, two = haresformer_reports["haresformer_h1l1"], haresformer_reports["haresformer_h1l2"]
    assert _within(two.paper_params_m - one.paper_params_m, 66.89, 0.01)
    assert _within(two.paper_gmacs - one.paper_gmacs, 14.34, 0.01)
