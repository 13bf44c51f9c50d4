"""PK and cross-modality samplers, alone and split over DDP ranks."""

from __future__ import annotations

from collections import Counter

import pytest

from hybreid.data.samplers import CrossModalitySampler, IdentitySampler
from hybreid.train.config import OptimSection
from hybreid.train.trainer import learning_rate


def batches(sampler, size):
    indices = list(sampler)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def test_pk_batches_hold_p_identities_of_k_images():
    pids = [p for p in range(10) for _ in range(5 + p)]  # 5..14 images per identity
    sampler = IdentitySampler(pids, num_ids=4, num_instances=4, seed=3)
    for batch in batches(sampler, 16):
        counts = Counter(pids[i] for i in batch)
        assert len(counts) == 4 and set(counts.values()) == {4}
    assert len(sampler) == len(list(sampler))


def test_pk_epochs_differ_and_repeat_with_the_seed():
    pids = [p for p in range(8) for _ in range(8)]
    first = IdentitySampler(pids, 4, 4, seed=1)
    again = IdentitySampler(pids, 4, 4, seed=1)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)


@pytest.mark.parametrize("sampler_kind", ["pk", "cross"])
def test_ranks_split_each_batch_by_identity(sampler_kind):
    pids = [p for p in range(12) for _ in range(10)]
    modalities = ["visible", "infrared"] * 60
    if sampler_kind == "pk":
        def make(rank):
            return IdentitySampler(pids, 4, 4, seed=0, rank=rank, world_size=2)
        per_rank = 8
    else:
        def make(rank):
            return CrossModalitySampler(pids, modalities, 4, 2, seed=0, rank=rank, world_size=2)
        per_rank = 8
    single = IdentitySampler(pids, 4, 4, seed=0) if sampler_kind == "pk" else \
        CrossModalitySampler(pids, modalities, 4, 2, seed=0)
    rank0, rank1 = batches(make(0), per_rank), batches(make(1), per_rank)
    assert len(rank0) == len(rank1) == len(batches(single, 2 * per_rank))
    for b0, b1, whole in zip(rank0, rank1, batches(single, 2 * per_rank), strict=True):
        assert b0 + b1 == whole
        assert not {pids[i] for i in b0} & {pids[i] for i in b1}


def test_cross_modality_batches_hold_k_visible_and_k_infrared():
    pids = [p for p in range(6) for _ in range(6)] + [99, 99]  # 99 has no infrared image
    modalities = (["visible", "visible", "infrared"] * 12) + ["visible", "visible"]
    sampler = CrossModalitySampler(pids, modalities, num_ids=3, num_per_modality=4, seed=0)
    for batch in batches(sampler, 24):
        per_identity = Counter((pids[i], modalities[i]) for i in batch)
        assert len({pid for pid, _ in per_identity}) == 3 and 99 not in {pid for pid, _ in per_identity}
        assert set(per_identity.values()) == {4}


def test_learning_rate_schedules():
    fusion = OptimSection(lr=5e-3, schedule="warmup_cosine", warmup_epochs=10, warmup_start_lr=5e-4, epochs=180)
    assert learning_rate(0, fusion) == pytest.approx(5e-4)
    assert learning_rate(5, fusion) == pytest.approx(5e-4 + 4.5e-3 / 2)
    assert learning_rate(10, fusion) == pytest.approx(5e-3)
    assert learning_rate(95, fusion) == pytest.approx(2.5e-3)
    har = OptimSection(lr=0.01, schedule="step", step_epochs=[30], gamma=0.1)
    assert learning_rate(29, har) == pytest.approx(0.01)
    assert learning_rate(30, har) == pytest.approx(0.001)
