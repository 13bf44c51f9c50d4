"""The committed prototypes, one row per identity, in a few large float32 blocks.

Every message is scored against its shortlist of about forty prototypes. Gathered one
dictionary lookup and one small array at a time, they cost a quarter of a busy matcher's
time; as rows of a few blocks, a shortlist is gathered by NumPy indexing in one step.

Growth never copies what is held: the matrix a rebuild is given stays the first block, and
new identities fill blocks of :data:`BLOCK_ROWS` rows after it. One array grown by
reallocation would hold the gallery twice while it grows (8 GiB at 10^6 identities,
1024-d). An update writes its row in place.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping

import numpy as np

BLOCK_ROWS = 16_384  # 64 MiB a block at 1024-d


class PrototypeTable(Mapping):
    """``identity -> prototype``, a view of the identity's row (valid until the row is
    written again)."""

    def __init__(self, ids: list[int] | None = None, matrix: np.ndarray | None = None):
        """``matrix`` (one row per identity of ``ids``) becomes the first block and is written
        into by later updates: the table owns it."""
        self._blocks: list[np.ndarray] = []
        self._starts: list[int] = []  # each block's first slot
        self._slot_of: dict[int, int] = {}
        self._identity_of: list[int] = []  # slot -> identity
        if ids:
            if matrix.dtype != np.float32 or not matrix.flags.c_contiguous:
                matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            self._blocks, self._starts = [matrix], [0]
            self._slot_of = {identity: slot for slot, identity in enumerate(ids)}
            self._identity_of = list(ids)

    def __len__(self) -> int:
        return len(self._slot_of)

    def __iter__(self) -> Iterator[int]:
        return iter(self._slot_of)

    def __contains__(self, identity) -> bool:
        return identity in self._slot_of

    def __getitem__(self, identity: int) -> np.ndarray:
        return self._row(self._slot_of[identity])

    @property
    def dim(self) -> int | None:
        return self._blocks[0].shape[1] if self._blocks else None

    def _row(self, slot: int) -> np.ndarray:
        block = bisect_right(self._starts, slot) - 1
        return self._blocks[block][slot - self._starts[block]]

    def set_many(self, identities: list[int], vectors: np.ndarray) -> None:
        """Write these identities' prototypes (a new identity takes the next free row)."""
        for identity, vector in zip(identities, vectors, strict=True):
            slot = self._slot_of.get(identity)
            if slot is None:
                slot = self._slot_of[identity] = len(self._identity_of)
                self._identity_of.append(identity)
                if not self._blocks or slot >= self._starts[-1] + len(self._blocks[-1]):
                    self._starts.append(slot)
                    self._blocks.append(np.empty((BLOCK_ROWS, len(vector)), dtype=np.float32))
            self._row(slot)[:] = vector

    def slots(self, identities: list[int]) -> np.ndarray:
        """Each identity's row (-1 where it has none)."""
        get = self._slot_of.get
        return np.array([get(identity, -1) for identity in identities], dtype=np.int64)

    def gather(self, slots: np.ndarray) -> np.ndarray:
        """The rows of ``slots`` (all present) as one matrix: one indexing step per block they
        lie in, and one in all for the usual shortlist, held by the first block."""
        if slots.max() < len(self._blocks[0]):
            return self._blocks[0][slots]
        out = np.empty((len(slots), self.dim), dtype=np.float32)
        block_of = np.searchsorted(self._starts, slots, side="right") - 1
        for block in np.unique(block_of):
            mine = block_of == block
            out[mine] = self._blocks[block][slots[mine] - self._starts[block]]
        return out

    def chunks(self) -> Iterator[tuple[list[int], np.ndarray]]:
        """``(identities, their rows)`` a block at a time, in row order: the whole table without
        a copy of it."""
        for start, block in zip(self._starts, self._blocks, strict=True):
            filled = min(len(block), len(self._identity_of) - start)
            yield self._identity_of[start:start + filled], block[:filled]

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` rows drawn without replacement (all of them, in order, if there are fewer)."""
        if count >= len(self):
            return self.gather(np.arange(len(self)))
        return self.gather(np.sort(rng.choice(len(self), count, replace=False)))
