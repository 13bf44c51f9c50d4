"""The matcher's gallery: sightings and identities in SQLite (WAL; the default) or a shared
PostgreSQL (:mod:`.database`), and a FAISS index over the identities' prototypes.

Sightings are keyed by ``(site, camera_id, seq)``, so a redelivered message changes
nothing and two sites may use the same camera ids.
Identities carry an L2-normalised prototype; the FAISS index over the prototypes is
rebuilt from SQLite at start (exact inner product by default; IVF or HNSW for large
galleries). Embeddings are biometric data: retention by age and purges by identity,
camera or time range delete them for good. A purge bumps the gallery's generation; a
matcher running beside it sees the new generation before its next message and reloads
its index, so purged identities are never matched again.

Several matcher instances may share one store. Each identity row carries the version of
the transaction that last wrote it; an instance loads the identities others wrote since
it last looked before it decides a batch, and again once its write transaction (exclusive
across the instances) has begun, so it commits decisions that hold against everyone's
identities and prototypes. A batch's decisions wait in a :class:`.draft.Draft` until the
commit. Every SQL statement is the store's (:mod:`.store`).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hybreid.errors import UserError
from hybreid.matcher.camera_graph import Walks
from hybreid.matcher.draft import BatchView, Draft, IdentityFacts, Write
from hybreid.matcher.index import DEFAULT_QUERY_COSINE, PrototypeIndex
from hybreid.matcher.store import GalleryStore
from hybreid.protocol import FeatureMessage


class Gallery:
    def __init__(self, location: str | Path, index: str = "auto", query_cosine: float = DEFAULT_QUERY_COSINE):
        """``location``: a SQLite file, or a ``postgresql://`` URL; ``query_cosine``: the weakest
        match the index must find (:class:`PrototypeIndex`)."""
        self.index_kind = index
        self.lock = threading.RLock()
        self.store = GalleryStore(location)
        self.db = self.store.db  # for inspection (the tests read what was committed)
        self.location = self.store.location
        self.index = PrototypeIndex(index, query_cosine=query_cosine)
        # Time spent in write transactions, which every instance sharing the store takes in
        # turn: the share of it in a busy instance's time bounds what more instances can add.
        self.locked_seconds = 0.0
        self._model: str | None = None
        self._facts: dict[int, IdentityFacts] = {}  # of every identity in the index
        self._draft: Draft | None = None  # the batch being decided (:meth:`drafting`)
        # The ids the last commit gave the draft's new identities, by provisional id.
        self.committed_ids: dict[int, int] = {}
        # What other processes changed, found as the last transaction began: the identities
        # they wrote, or None when they rewrote identities wholesale (the index was reloaded).
        self.changed_elsewhere: list[int] | None = []
        self.generation = self.store.meta_int("generation")
        self.rebuild_index()

    @contextmanager
    def rewriting_identities(self):
        """One transaction that rewrites identities other matcher processes hold in their
        index: it bumps the generation they watch (:meth:`refresh`), then reloads ours."""
        with self.lock:
            self.store.begin()
            try:
                yield
                self.store.bump("generation")
                self.store.commit()
            except BaseException:
                self.store.rollback()
                raise
            self.generation = self.store.meta_int("generation")
            self.rebuild_index()

    def refresh(self) -> bool:
        """Follow what other processes did since (True when the index was reloaded)."""
        with self.lock:
            return self._follow_others() is None

    def _follow_others(self) -> list[int] | None:
        """Reload the index after a purge or a re-association by another process (None), else
        load the identities other processes wrote (their ids)."""
        stored = self.store.meta_int("generation")
        if stored != self.generation:
            self.generation = stored
            self.rebuild_index()
            return None
        return self._catch_up()

    def _catch_up(self) -> list[int]:
        """Load the identities other processes wrote since this one last looked."""
        latest = self.store.meta_int("version")
        if latest <= self.synced_version:
            return []
        rows = self.store.identities_since(self.synced_version)
        for row in rows:
            self._facts[row[0]] = IdentityFacts.of(row)
        if rows:
            self.index.upsert_many([row[0] for row in rows], np.stack([np.frombuffer(row[1], dtype=np.float32)
                                                                       for row in rows]))
        self.synced_version = latest
        return [row[0] for row in rows]

    @property
    def prototypes(self) -> dict[int, np.ndarray]:
        """Each committed identity's prototype (the index's, kept in step with the store)."""
        return self.index.prototypes

    def prototype(self, identity: int) -> np.ndarray | None:
        """The identity's prototype as the open draft leaves it."""
        if self._draft is not None and identity in self._draft.prototypes:
            return self._draft.prototypes[identity]
        return self.index.prototypes.get(identity)

    @property
    def dim(self) -> int | None:
        """The embedding dimension of the prototypes (None while the gallery and draft are empty)."""
        with self.lock:
            if self.index.dim is None and self._draft is not None and self._draft.prototypes:
                return next(iter(self._draft.prototypes.values())).size
            return self.index.dim

    # -- model identity --------------------------------------------------------------

    @property
    def model(self) -> str | None:
        if self._model is None:  # once bound, for good: asked for every message
            self._model = self.store.model()
        return self._model

    def bind_model(self, identity: str) -> None:
        """The first accepted message fixes the gallery's model; embeddings never mix."""
        with self.lock:
            self.store.bind_model(identity)

    # -- counters --------------------------------------------------------------------

    def count_rejection(self, reason: str, count: int = 1) -> None:
        with self.lock:
            self.store.count_rejection(reason, count)

    def rejections(self) -> dict[str, int]:
        with self.lock:
            return self.store.rejections()

    # -- sightings and identities -------------------------------------------------------

    def stored_decisions(self, keys) -> dict[tuple[str, str, int], tuple[int, float, str]]:
        """``(identity_id, similarity, decision)`` of each ``(site, camera_id, seq)`` already
        committed (a redelivery); one query for a batch."""
        with self.lock:
            found = self.store.rows_by_keys("site, camera_id, seq, identity_id, similarity, decision",
                                            ["site", "camera_id", "seq"], keys)
        return {(row[0], row[1], row[2]): (row[3], row[4], row[5]) for row in found}

    def stored_decision(self, site: str, camera_id: str, seq: int) -> tuple[int, float, str] | None:
        return self.stored_decisions([(site, camera_id, seq)]).get((site, camera_id, seq))

    def track_identities(self, keys) -> dict[tuple[str, str, int], int]:
        """The identity of each camera track ``(site, camera_id, track_id)`` already committed
        (its latest sighting's); one query for a batch."""
        with self.lock:
            latest: dict[tuple[str, str, int], tuple[int, int]] = {}
            for site, camera, track, seq, identity in self.store.rows_by_keys(
                    "site, camera_id, track_id, seq, identity_id", ["site", "camera_id", "track_id"], keys):
                key = (site, camera, track)
                if key not in latest or seq > latest[key][0]:
                    latest[key] = (seq, identity)
        return {key: identity for key, (_, identity) in latest.items()}

    def busy_elsewhere(self, identity_id: int, site: str, camera_id: str, first_ts: float, ts: float,
                       walks: Walks | None = None) -> bool:
        """Whether the identity was seen by another camera during [first_ts, ts], or (``walks``,
        the camera graph's least walking times) too close to it in time for anyone to have
        walked between that camera and this one."""

        def too_close(row_site: str, row_camera: str, row_first_ts: float, row_ts: float) -> bool:
            walk = walks.least(site, row_camera, camera_id) if walks is not None and row_site == site else 0.0
            return row_first_ts < ts + walk and row_ts > first_ts - walk

        margin = walks.longest(site) if walks is not None else 0.0
        with self.lock:
            for row in (self._draft.sightings_of(identity_id) if self._draft is not None else ()):
                elsewhere = (row.site, row.camera_id) != (site, camera_id)
                if elsewhere and too_close(row.site, row.camera_id, row.first_ts, row.ts):
                    return True
            if identity_id < 0:  # provisional: no committed sighting yet
                return False
            committed = self._facts.get(identity_id)
            if committed is not None and committed.last_seen <= first_ts - margin:  # each committed one ended before
                return False
            return any(too_close(*row) for row in
                       self.store.sightings_elsewhere(identity_id, site, camera_id, first_ts - margin, ts + margin))

    def _identity_facts(self, identity_id: int) -> IdentityFacts | None:
        if self._draft is not None and identity_id in self._draft.facts:
            return self._draft.facts[identity_id]
        return self._facts.get(identity_id)

    def identity_modalities(self, identity_id: int) -> set[str]:
        facts = self._identity_facts(identity_id)
        return set(facts.modalities) if facts else set()

    def sightings(self, identity: int | None = None, camera: str | None = None, since: float | None = None,
                  until: float | None = None) -> list[dict]:
        """Committed sightings matching every given criterion, oldest first."""
        with self.lock:
            return self.store.sightings_where(identity=identity, camera=camera, since=since, until=until)

    # -- a batch ---------------------------------------------------------------------------------

    @contextmanager
    def drafting(self, capacity: int):
        """Hold a batch's decisions in a draft until :meth:`transaction` commits them; left
        without a commit, the draft is dropped and the index never saw it. Yields the
        :class:`BatchView` the assignment works through."""
        with self.lock:
            self._draft, self.committed_ids = Draft(capacity), {}
            try:
                yield BatchView(self._draft)
            finally:
                self._draft = None

    def add_sighting(self, message: FeatureMessage, identity_id: int | None, similarity: float,
                     prototype_rate: float, decision: str = "match", provisional_id: int | None = None) -> Write:
        """Record the sighting in the draft (and a new identity, under ``provisional_id`` or a fresh
        provisional id, when ``identity_id`` is None). Written to the store when the transaction
        commits."""
        with self.lock:
            if identity_id is None:
                return self._draft.add(message, None, None, None, similarity, prototype_rate, decision,
                                       provisional_id)
            # present: the matcher refreshed before assigning
            return self._draft.add(message, identity_id, self.prototype(identity_id),
                                   self._identity_facts(identity_id), similarity, prototype_rate, decision)

    def _flush(self) -> int | None:
        """Write the draft; returns the version stamped on it (None: nothing to write)."""
        writes = self._draft.writes() if self._draft is not None else []
        if not writes:
            return None
        created = [write.identity for write in writes if write.new]
        self.committed_ids = dict(zip(created, self.store.reserve_identity_ids(len(created)), strict=True))
        version = self.store.bump("version")
        self.store.write_draft(self._draft, self.committed_ids, version)
        return version

    def _adopt_draft(self) -> None:
        """The committed draft into the index and the facts beside it."""
        if self._draft.prototypes:
            self.index.upsert_many([self.committed_ids.get(identity, identity) for identity in self._draft.prototypes],
                                   np.stack(list(self._draft.prototypes.values())))
        for identity, facts in self._draft.facts.items():
            self._facts[self.committed_ids.get(identity, identity)] = facts

    @contextmanager
    def transaction(self):
        """The write transaction of a batch, exclusive across the processes that share the store:
        it starts by loading what other processes committed since (:attr:`changed_elsewhere`),
        and writes the draft at the end. On failure the store rolls back, and the index, which
        takes the draft only after the commit, needs no repair."""
        with self.lock:
            self.store.begin()
            locked_at = time.perf_counter()  # the lock is held from here (waiting for it is not counted)
            try:
                self.changed_elsewhere = self._follow_others()
                yield
                written = self._flush()
                self.store.commit()
            except BaseException:
                self.store.rollback()
                raise
            finally:
                self.locked_seconds += time.perf_counter() - locked_at
            if written is not None:
                self.synced_version = written
            if self._draft is not None:
                self._adopt_draft()

    # -- re-association ----------------------------------------------------------------------

    def resolve(self, identity_id: int) -> int:
        """The identity an old one was merged into (itself when it was never merged)."""
        with self.lock:
            return self.store.resolve(identity_id)

    def merged_into(self, identity_id: int) -> list[int]:
        with self.lock:
            return self.store.merged_into(identity_id)

    def pending_events(self, limit: int = 500) -> list[tuple[int, dict]]:
        """Stored events not yet acknowledged by the broker, oldest first: ``[(id, event)]``."""
        with self.lock:
            return self.store.pending_events(limit)

    def events_delivered(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.lock:
            self.store.delete_events(ids)

    # -- the index ---------------------------------------------------------------------------

    def rebuild_index(self) -> None:
        with self.lock:
            self.synced_version = self.store.meta_int("version")
            ids, slices, self._facts = [], [], {}
            for rows in self.store.identity_slices():
                ids += [row[0] for row in rows]
                self._facts.update((row[0], IdentityFacts.of(row)) for row in rows)
                slices.append(np.stack([np.frombuffer(row[1], dtype=np.float32) for row in rows]))
            self.index.rebuild_from(ids, np.concatenate(slices) if slices else None)

    def search(self, vector: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
        """Top-k ``(identity_id, cosine)`` by prototype."""
        with self.lock:
            return self.index.search(vector, k)

    def candidates(self, vectors: np.ndarray, k: int = 5) -> list[list[int]]:
        """The identities a search of each vector would score, for a whole batch at once."""
        with self.lock:
            return self.index.candidates(vectors, k)

    def rank(self, vector: np.ndarray, identities, k: int = 5) -> list[tuple[int, float]]:
        """Top-k of ``identities`` by cosine with their prototypes as the open draft leaves them."""
        with self.lock:
            return self.index.rank(vector, identities, k, self._draft.prototypes if self._draft is not None else None)

    def nearest_created(self, vector: np.ndarray, k: int = 5) -> list[int]:
        """The open draft's new identities nearest ``vector`` (the index has not seen them)."""
        return self._draft.nearest_created(vector, k) if self._draft is not None else []

    # -- retention ----------------------------------------------------------------------------

    def purge(self, identity: int | None = None, camera: str | None = None, since: float | None = None,
              until: float | None = None, site: str | None = None, dry_run: bool = False) -> int:
        """Delete sightings matching every given criterion, then identities left with none;
        returns the number of sightings deleted (``dry_run``: that would be, deleting nothing)."""
        criteria = {"identity": identity, "camera": camera, "since": since, "until": until, "site": site}
        if all(value is None for value in criteria.values()):
            raise UserError("purge needs at least one of identity, site, camera, since, until")
        if dry_run:
            with self.lock:
                return self.store.purge(True, **criteria)
        with self.rewriting_identities():
            return self.store.purge(False, **criteria)

    def stats(self) -> dict:
        with self.lock:
            sightings, identities = self.store.counts()
            index = {"kind": self.index.kind, "structure": self.index.structure, "search_depth": self.index.depth,
                     "recall_at_1": self.index.recall_at_1}
        return {"sightings": sightings, "identities": identities, "model": self.model, "index": index,
                "rejections": self.rejections()}

    def close(self) -> None:
        with self.lock:
            self.store.close()
