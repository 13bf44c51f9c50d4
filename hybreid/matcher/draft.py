"""What a batch intends to write before its commit: the :class:`Draft` and the rows it holds.

A batch decides before it holds the store's lock, then re-decides under the lock only what
another instance's commit changed; the draft's journal lets it take its decisions back from
one message on and apply the unaffected ones again. The assignment sees the draft only
through :class:`BatchView`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from hybreid.protocol import FeatureMessage


class SightingRow(NamedTuple):
    """A row of the sightings table, in its columns' order."""

    camera_id: str
    seq: int
    site: str
    track_id: int
    modality: str
    first_ts: float
    ts: float
    box: str
    score: float | None
    quality: float | None
    frames: int | None
    final: int
    identity_id: int
    similarity: float
    embedding: bytes
    decision: str
    thumbnail: bytes | None = None


@dataclass
class IdentityFacts:
    """What assignment asks of an identity besides its prototype, kept beside the index."""

    sightings: int
    modalities: set[str]
    last_seen: float

    @classmethod
    def of(cls, row) -> IdentityFacts:
        """From a row of ``id, prototype, sightings, modalities, last_seen``."""
        return cls(row[2], set(filter(None, row[3].split(","))), row[4])

    def copy(self) -> IdentityFacts:
        return IdentityFacts(self.sightings, set(self.modalities), self.last_seen)


@dataclass(eq=False)
class Write:
    """What storing one message changes: its sighting and its identity's prototype and facts
    afterwards (``new``: the identity is created by it, under a provisional id)."""

    identity: int
    new: bool
    key: tuple[str, str, int]
    sighting: SightingRow
    prototype: np.ndarray
    facts: IdentityFacts
    created_ts: float
    mark: int = 0  # the draft's journal length before it


class Draft:
    """A batch's decisions before its commit, over the index: the identities' moved prototypes
    and facts, the new identities (negative provisional ids until the commit numbers them)
    and the sightings, with a journal of every write (:meth:`undo_to`, :meth:`record`)."""

    def __init__(self, capacity: int):
        self.prototypes: dict[int, np.ndarray] = {}
        self.facts: dict[int, IdentityFacts] = {}
        self.sightings: dict[tuple[str, str, int], SightingRow] = {}
        self._keys_of: dict[int, list[tuple[str, str, int]]] = {}  # identity -> its sightings' keys, in order
        self._journal: list[tuple[Write, np.ndarray | None, IdentityFacts | None]] = []
        self._last_provisional = 0
        # The new identities, their prototypes in one matrix: every later message of the batch
        # scores them (the batch's index search ran before they existed), and gathering a
        # hundred prototypes a message cost more than its search.
        self.created: list[int] = []
        self._created_row: dict[int, int] = {}
        self._created_matrix: np.ndarray | None = None
        self._capacity = capacity

    def provisional_id(self) -> int:
        self._last_provisional -= 1  # never reused within the batch: a taken-back id may still be read
        return self._last_provisional

    def add(self, message: FeatureMessage, identity: int | None, prototype: np.ndarray | None,
            facts: IdentityFacts | None, similarity: float, prototype_rate: float, decision: str,
            provisional_id: int | None = None) -> Write:
        """Record a message's sighting of ``identity`` (its ``prototype`` and ``facts`` as they are
        now), whose prototype moves towards it at a bounded rate (``1/n``, at most
        ``prototype_rate``); ``identity`` None: a new identity, under ``provisional_id`` or a fresh
        provisional id."""
        vector = message.embedding.astype(np.float32)
        if identity is None:
            identity = provisional_id if provisional_id is not None else self.provisional_id()
            facts, prototype, new = IdentityFacts(0, set(), message.ts), vector, True
        else:
            facts, new = facts.copy(), False
            rate = min(prototype_rate, 1.0 / (facts.sightings + 1))
            prototype = (1 - rate) * prototype + rate * vector
            prototype = (prototype / np.linalg.norm(prototype)).astype(np.float32)
        facts.sightings += 1
        facts.modalities.add(message.modality)
        facts.last_seen = max(facts.last_seen, message.ts)
        sighting = SightingRow(
            message.camera_id, message.seq, message.site, message.track_id, message.modality,
            message.first_ts if message.first_ts is not None else message.ts, message.ts,
            json.dumps(list(message.box)), message.score, message.quality, message.frames,
            int(message.final), identity, similarity, vector.tobytes(), decision, message.thumbnail)
        write = Write(identity, new, (message.site, message.camera_id, message.seq), sighting, prototype, facts,
                      message.ts)
        self.record(write)
        return write

    def record(self, write: Write) -> None:
        """Apply a write (anew, or again after :meth:`undo_to`)."""
        write.mark = len(self._journal)
        self._journal.append((write, self.prototypes.get(write.identity), self.facts.get(write.identity)))
        self.prototypes[write.identity], self.facts[write.identity] = write.prototype, write.facts
        self.sightings[write.key] = write.sighting
        self._keys_of.setdefault(write.identity, []).append(write.key)
        if write.new:
            if self._created_matrix is None:
                self._created_matrix = np.empty((self._capacity, write.prototype.size), dtype=np.float32)
            self._created_row[write.identity] = len(self.created)
            self.created.append(write.identity)
        row = self._created_row.get(write.identity)
        if row is not None:
            self._created_matrix[row] = write.prototype

    def undo_to(self, mark: int) -> None:
        """Take back every write from the ``mark``-th on, the latest first."""
        while len(self._journal) > mark:
            write, prototype, facts = self._journal.pop()
            del self.sightings[write.key]
            keys = self._keys_of[write.identity]
            keys.pop()  # the latest of the identity's: the journal is undone latest first
            if not keys:
                del self._keys_of[write.identity]
            if prototype is None:
                del self.prototypes[write.identity], self.facts[write.identity]
            else:
                self.prototypes[write.identity], self.facts[write.identity] = prototype, facts
            if write.new:
                self.created.pop()
                del self._created_row[write.identity]
            elif write.identity in self._created_row:
                self._created_matrix[self._created_row[write.identity]] = prototype

    def sightings_of(self, identity: int) -> list[SightingRow]:
        return [self.sightings[key] for key in self._keys_of.get(identity, ())]

    def writes(self) -> list[Write]:
        return [write for write, _, _ in self._journal]

    def nearest_created(self, vector: np.ndarray, k: int) -> list[int]:
        if not self.created:
            return []
        scores = self._created_matrix[: len(self.created)] @ vector.astype(np.float32, copy=False)
        if len(self.created) > k:
            return [self.created[i] for i in np.argpartition(-scores, k - 1)[:k]]
        return list(self.created)


class BatchView:
    """All the assignment may do to a batch's draft: take its decisions back from one write on
    (:meth:`take_back_to`) and apply a kept one again (:meth:`apply_again`)."""

    def __init__(self, draft: Draft):
        self._draft = draft

    def take_back_to(self, mark: int) -> None:
        self._draft.undo_to(mark)

    def apply_again(self, write: Write) -> None:
        self._draft.record(write)
