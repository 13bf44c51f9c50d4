"""Batch samplers of the papers, usable under DDP.

- :class:`IdentitySampler`, the PK sampler: P identities x K images (FusionReID: 8 x 16).
- :class:`CrossModalitySampler`: P identities x (K visible + K infrared) (HAResformer:
  4 x (4 + 4)).

Every rank builds the same sequence of global batches from ``seed + epoch`` and keeps
its own share of each batch (whole identities, so the metric losses see complete
groups on every rank). Call ``set_epoch`` each epoch, as with ``DistributedSampler``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class _GroupedBatchSampler(Sampler[int]):
    """Yields flat sample indices, ``batch_size // world_size`` per rank per batch."""

    def __init__(self, ids_per_batch: int, seed: int, rank: int, world_size: int):
        if ids_per_batch % world_size:
            raise ValueError(f"{ids_per_batch} identities per batch do not split over {world_size} processes")
        self.ids_per_batch, self.seed, self.rank, self.world_size = ids_per_batch, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, rng: np.random.Generator) -> list[list[list[int]]]:
        """Global batches, each a list of per-identity index groups."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        share = self.ids_per_batch // self.world_size
        for batch in self._batches(rng):
            for group in batch[self.rank * share : (self.rank + 1) * share]:
                yield from group

    def __len__(self) -> int:
        return sum(
            len(group)
            for batch in self._batches(np.random.default_rng([self.seed, self.epoch]))
            for group in batch[: self.ids_per_batch // self.world_size]
        )


def _take(rng: np.random.Generator, indices: Sequence[int], k: int) -> list[int]:
    """k indices of one identity, without replacement when there are enough."""
    return [int(i) for i in rng.choice(indices, size=k, replace=len(indices) < k)]


class IdentitySampler(_GroupedBatchSampler):
    """PK sampling: each identity's images are shuffled and cut into chunks of K; each
    batch draws P identities that still have chunks (identities with fewer than K images
    are topped up by repetition). One epoch uses every image about once."""

    def __init__(self, pids: Sequence[int], num_ids: int = 8, num_instances: int = 16, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__(num_ids, seed, rank, world_size)
        self.num_instances = num_instances
        self.by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.by_pid[int(pid)].append(index)
        if len(self.by_pid) < num_ids:
            raise ValueError(f"{len(self.by_pid)} identities cannot fill batches of {num_ids} identities")

    def _batches(self, rng):
        chunks: dict[int, list[list[int]]] = {}
        for pid in sorted(self.by_pid):
            indices = list(self.by_pid[pid])
            if len(indices) < self.num_instances:
                indices = _take(rng, indices, self.num_instances)
            rng.shuffle(indices)
            usable = len(indices) - len(indices) % self.num_instances
            chunks[pid] = [indices[i : i + self.num_instances] for i in range(0, usable, self.num_instances)]
        batches = []
        available = [pid for pid in chunks if chunks[pid]]
        while len(available) >= self.ids_per_batch:
            chosen = rng.choice(available, size=self.ids_per_batch, replace=False)
            batches.append([chunks[int(pid)].pop() for pid in chosen])
            available = [pid for pid in available if chunks[pid]]
        return batches


class CrossModalitySampler(_GroupedBatchSampler):
    """P identities x (K visible + K infrared); an epoch has as many batches as the
    visible images fill (the convention of the VI-ReID code)."""

    def __init__(self, pids: Sequence[int], modalities: Sequence[str], num_ids: int = 4, num_per_modality: int = 4,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(num_ids, seed, rank, world_size)
        self.k = num_per_modality
        groups: dict[tuple[int, str], list[int]] = defaultdict(list)
        for index, (pid, modality) in enumerate(zip(pids, modalities, strict=True)):
            groups[(int(pid), modality)].append(index)
        self.visible = {pid: idx for (pid, m), idx in groups.items() if m == "visible"}
        self.infrared = {pid: idx for (pid, m), idx in groups.items() if m == "infrared"}
        self.pids = sorted(set(self.visible) & set(self.infrared))
        if len(self.pids) < num_ids:
            raise ValueError(f"only {len(self.pids)} identities have both visible and infrared images; "
                             f"a batch needs {num_ids}")
        visible_images = sum(len(self.visible[p]) for p in self.pids)
        self.num_batches = max(1, visible_images // (num_ids * self.k))

    def _batches(self, rng):
        return [
            [_take(rng, self.visible[int(pid)], self.k) + _take(rng, self.infrared[int(pid)], self.k)
             for pid in rng.choice(self.pids, size=self.ids_per_batch, replace=False)]
            for _ in range(self.num_batches)
        ]
