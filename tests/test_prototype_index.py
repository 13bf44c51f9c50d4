"""The prototype index: updates at O(d), approximate search re-scored exactly, and a search
depth that reaches recall@1 >= 0.99 against exact search (checked here with numpy)."""

import numpy as np
import pytest

from hybreid.matcher import index as index_module
from hybreid.matcher import prototype_table
from hybreid.matcher.index import PrototypeIndex


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(vectors: np.ndarray, seed: int, noise: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = vectors + rng.standard_normal(vectors.shape).astype(np.float32) * noise / np.sqrt(vectors.shape[1])
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def test_an_exact_index_updates_a_prototype_in_place():
    vectors = unit(100, 32, 0)
    index = PrototypeIndex("flat")
    index.rebuild({i + 10: v for i, v in enumerate(vectors)})
    moved = unit(1, 32, 1)[0]
    index.upsert_many([15], [moved])
    assert index._index.ntotal == 100  # rewritten, not appended
    (best, score), *_ = index.search(moved, 3)
    assert best == 15 and score == pytest.approx(1.0, abs=1e-5)
    assert 15 not in [i for i, _ in index.search(vectors[5], 1)] or vectors[5] @ moved > 0.9


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_an_approximate_index_reaches_the_recall_it_was_built_for(kind):
    vectors = unit(4000, 64, 2)
    index = PrototypeIndex(kind)
    index.rebuild({i: v for i, v in enumerate(vectors)})
    assert index.structure == kind and index.recall_at_1 >= 0.99 and index.depth is not None
    queries = near(vectors[np.random.default_rng(3).choice(4000, 400, replace=False)], seed=4)
    exact = np.argmax(queries @ vectors.T, axis=1)
    found = [index.search(q, 1)[0][0] for q in queries]
    assert np.mean(np.array(found) == exact) >= 0.97  # fresh queries, not the calibration's


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_a_small_move_keeps_its_entry_and_a_large_one_is_indexed_again(kind):
    vectors = unit(4000, 32, 9)
    index = PrototypeIndex(kind)
    index.rebuild({i: v for i, v in enumerate(vectors)})
    nudged = 0.999 * vectors[3] + 0.001 * vectors[4]
    index.upsert_many([3], [nudged / np.linalg.norm(nudged)])
    assert index._index.ntotal == 4000  # no insertion
    (best, score), *_ = index.search(vectors[3], 1)
    assert best == 3 and score == pytest.approx(float(index.prototypes[3] @ vectors[3]))  # the current prototype
    index.upsert_many([3], [vectors[5]])
    assert index._index.ntotal == 4001 and index._stale == 1


def test_hnsw_skips_stale_entries_and_rebuilds_when_they_pile_up():
    vectors = unit(2000, 32, 5)
    index = PrototypeIndex("hnsw")
    index.rebuild({i: v for i, v in enumerate(vectors)})
    moved = unit(1, 32, 6)[0]
    index.upsert_many([7], [moved])
    assert index._index.ntotal == 2001 and index._stale == 1
    results = index.search(moved, 5)
    assert [i for i, _ in results].count(7) == 1 and results[0] == (7, pytest.approx(1.0, abs=1e-5))
    for identity in range(8, 8 + 500):  # a fifth of the index stale: rebuilt
        index.upsert_many([identity], [near(vectors[identity][None], seed=identity)[0]])
    assert index._stale < 100 and index._index.ntotal < 2400


def test_auto_is_exact_while_small_and_ivf_once_the_gallery_grows(monkeypatch):
    monkeypatch.setattr(index_module, "AUTO_EXACT_BELOW", 2600)
    vectors = unit(2700, 32, 7)
    index = PrototypeIndex("auto")
    index.rebuild({i: v for i, v in enumerate(vectors[:2550])})
    assert index.structure == "flat" and index.recall_at_1 is None
    for i in range(2550, 2700):
        index.upsert_many([i], [vectors[i]])
    assert index.structure == "ivf" and index.recall_at_1 >= 0.99
    assert index.search(vectors[2699], 1)[0][0] == 2699


@pytest.mark.parametrize("count, lists", [(2_500, 64), (10_000, 256), (100_000, 1024), (1_000_000, 4096)])
def test_ivf_lists_grow_with_the_square_root_of_the_gallery(count, lists):
    assert index_module.ivf_lists(count) == lists
    assert count // lists >= index_module.IVF_POINTS_PER_LIST  # every list can be trained


def test_ivf_is_trained_again_once_the_gallery_has_outgrown_its_lists(monkeypatch):
    monkeypatch.setattr(index_module, "IVF_RETRAIN_GROWTH", 1.1)
    vectors = unit(3000, 16, 10)
    index = PrototypeIndex("ivf")
    index.rebuild({i: v for i, v in enumerate(vectors[:2600])})
    assert index._trained_for == 2600
    for i in range(2600, 3000):
        index.upsert_many([i], [vectors[i]])
    assert index._trained_for > 2860 and index._index.ntotal == len(index.prototypes)
    assert index.search(vectors[2999], 1)[0][0] == 2999


def test_ivf_with_too_few_vectors_to_train_searches_exactly():
    index = PrototypeIndex("ivf")
    index.rebuild({i: v for i, v in enumerate(unit(100, 16, 8))})
    assert index.structure == "flat"


def test_the_command_line_offers_every_kind_of_index():
    from hybreid.matcher.cli import INDEXES

    assert tuple(INDEXES) == index_module.KINDS


def test_exact_search_a_slice_at_a_time_is_the_search_of_the_whole_gallery(monkeypatch):
    vectors = unit(1000, 16, 11)
    index = PrototypeIndex("flat")
    index.rebuild({i + 5: v for i, v in enumerate(vectors)})
    queries = np.concatenate([near(vectors[:50], seed=12), vectors[100:101]])  # the last: an exact copy
    whole = [i + 5 for i in np.argmax(queries @ vectors.T, axis=1)]
    monkeypatch.setattr(index_module, "EXACT_SLICE", 97)  # slices that do not divide the gallery
    assert index.exact_top(queries) == whole and whole[-1] == 105


def test_the_index_owns_the_matrix_it_is_built_from_rather_than_copying_it():
    vectors = unit(300, 16, 13)
    index = PrototypeIndex("flat")
    index.rebuild_from(list(range(300)), vectors)
    assert all(np.shares_memory(index.prototypes[i], vectors) for i in (0, 150, 299))
    moved = (vectors[8] + vectors[7]) / np.linalg.norm(vectors[8] + vectors[7])
    index.upsert_many([7], [moved])  # an update writes its row in place
    assert np.array_equal(vectors[7], moved) and np.array_equal(index.prototypes[7], moved)
    assert index.search(moved, 2)[0] == (7, pytest.approx(1.0, abs=1e-5))


def test_prototypes_added_past_a_block_are_gathered_and_ranked_from_every_block(monkeypatch):
    """New identities go to blocks after the rebuild's matrix; a shortlist spanning the blocks
    is scored as the same prototypes held one by one would be."""
    monkeypatch.setattr(prototype_table, "BLOCK_ROWS", 7)
    vectors = unit(60, 16, 21)
    index = PrototypeIndex("flat")
    index.rebuild_from(list(range(10)), vectors[:10].copy())
    for start in range(10, 60, 9):  # batches that straddle the blocks' edges
        index.upsert_many(list(range(start, min(start + 9, 60))), vectors[start:start + 9])
    assert len(index.prototypes) == 60 and len(index.prototypes._blocks) > 5
    assert all(np.array_equal(index.prototypes[i], vectors[i]) for i in range(60))
    query = vectors[44] + 0.3 * vectors[3]
    shortlist = [59, 3, 44, 12, 3, 999, 25]  # repeated, and one the index does not hold
    expected = sorted(((i, float(vectors[i] @ query)) for i in dict.fromkeys(shortlist) if i != 999),
                      key=lambda pair: -pair[1])
    ranked = index.rank(query, shortlist, k=4)
    assert [i for i, _ in ranked] == [i for i, _ in expected[:4]]
    assert [s for _, s in ranked] == pytest.approx([s for _, s in expected[:4]], abs=1e-5)
    override = unit(1, 16, 5)[0]
    assert index.rank(override, [44, 12], k=1, overrides={12: override})[0] == (12, pytest.approx(1.0, abs=1e-5))
    assert index.exact_top(vectors[[5, 33, 58]]) == [5, 33, 58]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_many_prototypes_in_one_call_new_moved_and_repeated(kind):
    """A batch's prototypes in one call: new identities are found, a moved one is indexed again,
    and an identity given twice keeps its last prototype and one current entry."""
    vectors = unit(4000, 32, 11)
    index = PrototypeIndex(kind)
    index.rebuild({i: v for i, v in enumerate(vectors[:3000])})
    entries = index._index.ntotal
    fresh = list(range(3000, 3010))
    batch = np.stack([*vectors[3000:3010], vectors[3500], vectors[3600], vectors[3700]])
    index.upsert_many([*fresh, 5, 7, 7], batch)
    assert not any(np.shares_memory(index.prototypes[i], batch) for i in (*fresh, 5, 7))  # the batch can go
    for identity in fresh:
        assert index.search(vectors[identity], 1)[0][0] == identity
    assert index.search(vectors[3500], 1)[0][0] == 5
    (best, score), *_ = index.search(vectors[3700], 1)
    assert best == 7 and score == pytest.approx(1.0, abs=1e-5) and np.array_equal(index.prototypes[7], vectors[3700])
    assert index.search(vectors[3600], 1)[0][0] != 7  # its first prototype of the call was replaced
    moved_entries = 0 if kind == "flat" else 2  # flat rewrites in place; IVF adds 5 and 7 once each
    assert index._index.ntotal == entries + len(fresh) + moved_entries
    assert int(index._rows.current[: index._rows.count].sum()) == len(index.prototypes) == 3010


@pytest.mark.slow
def test_the_search_depth_is_set_for_the_weakest_match_the_thresholds_accept():
    """Prototypes crowded in a cone and spread unevenly, as a trained model's are: an index
    calibrated for sightings at the operating threshold's cosine finds them; one calibrated
    for easy sightings (cosine 0.97) loses about a quarter of them."""
    from hybreid.bench.sightings import EmbeddingGeometry, SightingModel

    geometry = EmbeddingGeometry(model="test@0", measured_on="test", dim=128, identities=100, mean_norm=0.5,
                                 spectrum_decay=0.8, genuine_quantiles=[0.8, 0.9, 1.0],
                                 same_modality_threshold=0.84, cross_modality_threshold=0.84)
    people = SightingModel(geometry, 128, np.random.default_rng(0))
    prototypes = people.prototypes(20_000)
    picked = people.rng.integers(0, len(prototypes), 400)
    weak = people.sightings(prototypes[picked], people.rng.uniform(0.84, 0.90, 400))
    recall = {}
    for query_cosine in (geometry.operating_cosine, 0.97):
        index = PrototypeIndex("auto", query_cosine=query_cosine)
        index.rebuild_from(list(range(1, len(prototypes) + 1)), prototypes)
        assert index.structure == "ivf"
        recall[query_cosine] = index.measure_recall(weak, index.exact_top(weak))
    assert recall[0.84] >= 0.99 and recall[0.97] < 0.9
