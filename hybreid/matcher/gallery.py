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
identities and prototypes. A batch's decisions wait in a :class:`Draft` until the commit.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hybreid.errors import UserError
from hybreid.matcher.database import open_database
from hybreid.matcher.index import PrototypeIndex
from hybreid.matcher.reassociate import Plan, Tracklet
from hybreid.protocol import FeatureMessage

IDENTITY_COLUMNS = "id, prototype, sightings, modalities, last_seen"
LOAD_SLICE = 10_000  # identity rows read at a time when the index is rebuilt


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


@dataclass
class IdentityFacts:
    """What assignment asks of an identity besides its prototype, kept beside the index."""

    sightings: int
    modalities: set[str]
    last_seen: float

    @classmethod
    def of(cls, row) -> IdentityFacts:
        """From a row of :data:`IDENTITY_COLUMNS`."""
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
    and the sightings. A journal of every write lets the batch take its decisions back from
    one message on and apply the unaffected ones again (:meth:`undo_to`, :meth:`record`):
    a batch decides before it holds the store's lock, then re-decides under the lock only
    what another instance's commit changed."""

    def __init__(self, capacity: int):
        self.prototypes: dict[int, np.ndarray] = {}
        self.facts: dict[int, IdentityFacts] = {}
        self.sightings: dict[tuple[str, str, int], SightingRow] = {}
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

    def record(self, write: Write) -> None:
        """Apply a write (anew, or again after :meth:`undo_to`)."""
        write.mark = len(self._journal)
        self._journal.append((write, self.prototypes.get(write.identity), self.facts.get(write.identity)))
        self.prototypes[write.identity], self.facts[write.identity] = write.prototype, write.facts
        self.sightings[write.key] = write.sighting
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
            if prototype is None:
                del self.prototypes[write.identity], self.facts[write.identity]
            else:
                self.prototypes[write.identity], self.facts[write.identity] = prototype, facts
            if write.new:
                self.created.pop()
                del self._created_row[write.identity]
            elif write.identity in self._created_row:
                self._created_matrix[self._created_row[write.identity]] = prototype

    def writes(self) -> list[Write]:
        return [write for write, _, _ in self._journal]

    def nearest_created(self, vector: np.ndarray, k: int) -> list[int]:
        if not self.created:
            return []
        scores = self._created_matrix[: len(self.created)] @ vector.astype(np.float32, copy=False)
        if len(self.created) > k:
            return [self.created[i] for i in np.argpartition(-scores, k - 1)[:k]]
        return list(self.created)


class Gallery:
    def __init__(self, location: str | Path, index: str = "auto"):
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self.index_kind = index
        self.lock = threading.RLock()
        self.db = open_database(location)
        self.location = self.db.location
        self.index = PrototypeIndex(index)
        # Time spent in write transactions, which every instance sharing the store takes in
        # turn: the share of it in a busy instance's time bounds what more instances can add.
        self.locked_seconds = 0.0
        self._model: str | None = None
        self._facts: dict[int, IdentityFacts] = {}  # of every identity in the index
        self.draft: Draft | None = None  # the batch being decided (:meth:`drafting`)
        # The ids the last commit gave the draft's new identities, by provisional id.
        self.committed_ids: dict[int, int] = {}
        # What other processes changed, found as the last transaction began: the identities
        # they wrote, or None when they rewrote identities wholesale (the index was reloaded).
        self.changed_elsewhere: list[int] | None = []
        self.generation = self._stored_generation()
        self.rebuild_index()

    @contextmanager
    def _rewriting_identities(self):
        """One transaction that rewrites identities other matcher processes hold in their
        index: it bumps the generation they watch (:meth:`refresh`), then reloads ours."""
        with self.lock:
            self.db.begin()
            try:
                yield
                self._bump("generation")
                self.db.commit()
            except BaseException:
                self.db.rollback()
                raise
            self.generation = self._stored_generation()
            self.rebuild_index()

    def _meta_int(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, key: str) -> int:
        """Add one to a counter in ``meta`` (inside a write transaction); returns the new value."""
        return int(self.db.execute(
            "INSERT INTO meta VALUES (?, '1') ON CONFLICT(key) DO UPDATE SET "
            "value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT) RETURNING value", (key,)).fetchone()[0])

    def _stored_generation(self) -> int:
        return self._meta_int("generation")

    def refresh(self) -> bool:
        """Follow what other processes did since (True when the index was reloaded)."""
        with self.lock:
            return self._follow_others() is None

    def _follow_others(self) -> list[int] | None:
        """Reload the index after a purge or a re-association by another process (None), else
        load the identities other processes wrote (their ids)."""
        stored = self._stored_generation()
        if stored != self.generation:
            self.generation = stored
            self.rebuild_index()
            return None
        return self._catch_up()

    def _catch_up(self) -> list[int]:
        """Load the identities other processes wrote since this one last looked."""
        latest = self._meta_int("version")
        if latest <= self.synced_version:
            return []
        rows = self.db.execute(f"SELECT {IDENTITY_COLUMNS} FROM identities WHERE version > ?",
                               (self.synced_version,), binary=True).fetchall()
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
        if self.draft is not None and identity in self.draft.prototypes:
            return self.draft.prototypes[identity]
        return self.index.prototypes.get(identity)

    @property
    def dim(self) -> int | None:
        """The embedding dimension of the prototypes (None while the gallery and draft are empty)."""
        with self.lock:
            if self.index.dim is None and self.draft is not None and self.draft.prototypes:
                return next(iter(self.draft.prototypes.values())).size
            return self.index.dim

    # -- model identity --------------------------------------------------------------

    @property
    def model(self) -> str | None:
        if self._model is None:  # once bound, for good: asked for every message
            row = self.db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
            self._model = row[0] if row else None
        return self._model

    def bind_model(self, identity: str) -> None:
        """The first accepted message fixes the gallery's model; embeddings never mix."""
        with self.lock:
            self.db.execute("INSERT INTO meta VALUES ('model', ?) ON CONFLICT(key) DO NOTHING", (identity,))

    # -- counters --------------------------------------------------------------------

    def count_rejection(self, reason: str, count: int = 1) -> None:
        with self.lock:
            self.db.execute("INSERT INTO rejections VALUES (?, ?) ON CONFLICT(reason) DO UPDATE SET "
                            "count = rejections.count + excluded.count", (reason, count))

    def rejections(self) -> dict[str, int]:
        with self.lock:
            return dict(self.db.execute("SELECT reason, count FROM rejections").fetchall())

    # -- sightings and identities -------------------------------------------------------

    def stored_decisions(self, keys) -> dict[tuple[str, str, int], tuple[int, float, str]]:
        """``(identity_id, similarity, decision)`` of each ``(site, camera_id, seq)`` already
        committed (a redelivery); one query for a batch."""
        with self.lock:
            found = self._rows_by_keys("site, camera_id, seq, identity_id, similarity, decision",
                                       ["site", "camera_id", "seq"], keys)
        return {(row[0], row[1], row[2]): (row[3], row[4], row[5]) for row in found}

    def stored_decision(self, site: str, camera_id: str, seq: int) -> tuple[int, float, str] | None:
        return self.stored_decisions([(site, camera_id, seq)]).get((site, camera_id, seq))

    def track_identities(self, keys) -> dict[tuple[str, str, int], int]:
        """The identity of each camera track ``(site, camera_id, track_id)`` already committed
        (its latest sighting's); one query for a batch."""
        with self.lock:
            latest: dict[tuple[str, str, int], tuple[int, int]] = {}
            for site, camera, track, seq, identity in self._rows_by_keys(
                    "site, camera_id, track_id, seq, identity_id", ["site", "camera_id", "track_id"], keys):
                key = (site, camera, track)
                if key not in latest or seq > latest[key][0]:
                    latest[key] = (seq, identity)
        return {key: identity for key, (_, identity) in latest.items()}

    def _rows_by_keys(self, columns: str, key_columns: list[str], keys) -> list:
        """The sightings whose ``key_columns`` equal one of ``keys``, as a join with the keys."""
        keys = sorted(set(keys))
        select = ", ".join(f"s.{name.strip()}" for name in columns.split(","))
        join = " AND ".join(f"s.{name} = wanted.{name}" for name in key_columns)
        types = ["text", "text", "bigint"]  # every key here is (site, camera_id, a number)
        rows = []
        for start in range(0, len(keys), 200):  # within every engine's limit on bound parameters
            wanted, params = self.db.keys_table(key_columns, types, keys[start:start + 200])
            rows += self.db.execute(f"{wanted} SELECT {select} FROM wanted JOIN sightings s ON {join}",
                                    params).fetchall()
        return rows

    def busy_elsewhere(self, identity_id: int, site: str, camera_id: str, first_ts: float, ts: float) -> bool:
        """Whether the identity was seen by another camera during [first_ts, ts]."""
        with self.lock:
            for row in (self.draft.sightings.values() if self.draft is not None else ()):
                elsewhere = (row.site, row.camera_id) != (site, camera_id)
                if row.identity_id == identity_id and elsewhere and row.first_ts < ts and row.ts > first_ts:
                    return True
            if identity_id < 0:  # provisional: no committed sighting yet
                return False
            return self.db.execute(
                "SELECT 1 FROM sightings WHERE identity_id = ? AND NOT (site = ? AND camera_id = ?) AND first_ts < ? "
                "AND ts > ? LIMIT 1", (identity_id, site, camera_id, ts, first_ts)).fetchone() is not None

    def _identity_facts(self, identity_id: int) -> IdentityFacts | None:
        if self.draft is not None and identity_id in self.draft.facts:
            return self.draft.facts[identity_id]
        return self._facts.get(identity_id)

    def identity_modalities(self, identity_id: int) -> set[str]:
        facts = self._identity_facts(identity_id)
        return set(facts.modalities) if facts else set()

    @contextmanager
    def drafting(self, capacity: int):
        """Hold a batch's decisions in a :class:`Draft` until :meth:`transaction` commits them;
        left without a commit, the draft is dropped and the index never saw it."""
        with self.lock:
            self.draft, self.committed_ids = Draft(capacity), {}
            try:
                yield self.draft
            finally:
                self.draft = None

    def store(self, message: FeatureMessage, identity_id: int | None, similarity: float, prototype_rate: float,
              decision: str = "match", provisional_id: int | None = None) -> Write:
        """Record the sighting in the draft (and a new identity, under ``provisional_id`` or a fresh
        provisional id, when ``identity_id`` is None); the prototype moves at a bounded rate.
        Written to the store when the transaction commits."""
        import json

        vector = message.embedding.astype(np.float32)
        with self.lock:
            if identity_id is None:
                identity_id = provisional_id if provisional_id is not None else self.draft.provisional_id()
                facts, prototype, new = IdentityFacts(0, set(), message.ts), vector, True
            else:
                old = self.prototype(identity_id)  # present: the matcher refreshed before assigning
                facts, new = self._identity_facts(identity_id).copy(), False
                rate = min(prototype_rate, 1.0 / (facts.sightings + 1))
                prototype = (1 - rate) * old + rate * vector
                prototype = (prototype / np.linalg.norm(prototype)).astype(np.float32)
            facts.sightings += 1
            facts.modalities.add(message.modality)
            facts.last_seen = max(facts.last_seen, message.ts)
            key = (message.site, message.camera_id, message.seq)
            sighting = SightingRow(
                message.camera_id, message.seq, message.site, message.track_id, message.modality,
                message.first_ts if message.first_ts is not None else message.ts, message.ts,
                json.dumps(list(message.box)), message.score, message.quality, message.frames,
                int(message.final), identity_id, similarity, vector.tobytes(), decision)
            write = Write(identity_id, new, key, sighting, prototype, facts, message.ts)
            self.draft.record(write)
        return write

    def _flush(self) -> int | None:
        """Write the draft: its new identities numbered by the store, its sightings and identity
        updates, a statement per table. Returns the version stamped on them (None: nothing to write)."""
        writes = self.draft.writes() if self.draft is not None else []
        if not writes:
            return None
        created = {write.identity: write.created_ts for write in writes if write.new}
        self.committed_ids = dict(zip(created, self.db.reserve_identity_ids(len(created)), strict=True))
        version = self._bump("version")
        identities = self.draft.prototypes
        facts = self.draft.facts

        def row(identity: int) -> tuple:
            return (facts[identity].last_seen, facts[identity].sightings, ",".join(sorted(facts[identity].modalities)),
                    identities[identity].tobytes(), version)

        if created:
            self.db.executemany(
                "INSERT INTO identities (created, last_seen, sightings, modalities, prototype, version, id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(ts, *row(identity), self.committed_ids[identity]) for identity, ts in created.items()])
        updated = [identity for identity in identities if identity not in created]
        if updated:
            self.db.executemany(
                "UPDATE identities SET last_seen = ?, sightings = ?, modalities = ?, prototype = ?, version = ? "
                "WHERE id = ?", [(*row(identity), identity) for identity in updated])
        self.db.executemany("INSERT INTO sightings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [sighting._replace(identity_id=self.committed_ids.get(sighting.identity_id,
                                                                                  sighting.identity_id))
                             for sighting in self.draft.sightings.values()])
        return version

    def _adopt_draft(self) -> None:
        """The committed draft into the index and the facts beside it."""
        if self.draft.prototypes:
            self.index.upsert_many([self.committed_ids.get(identity, identity) for identity in self.draft.prototypes],
                                   np.stack(list(self.draft.prototypes.values())))
        for identity, facts in self.draft.facts.items():
            self._facts[self.committed_ids.get(identity, identity)] = facts

    @contextmanager
    def transaction(self):
        """The write transaction of a batch, exclusive across the processes that share the store:
        it starts by loading what other processes committed since (:attr:`changed_elsewhere`),
        and writes the draft at the end. On failure the store rolls back, and the index, which
        takes the draft only after the commit, needs no repair."""
        with self.lock:
            self.db.begin()
            locked_at = time.perf_counter()  # the lock is held from here (waiting for it is not counted)
            try:
                self.changed_elsewhere = self._follow_others()
                yield
                written = self._flush()
                self.db.commit()
            except BaseException:
                self.db.rollback()
                raise
            finally:
                self.locked_seconds += time.perf_counter() - locked_at
            if written is not None:
                self.synced_version = written
            if self.draft is not None:
                self._adopt_draft()

    # -- re-association ----------------------------------------------------------------------

    def resolve(self, identity_id: int) -> int:
        """The identity an old one was merged into (itself when it was never merged)."""
        with self.lock:
            row = self.db.execute("SELECT into_id FROM merges WHERE old_id = ?", (identity_id,)).fetchone()
        return row[0] if row else identity_id

    def merged_into(self, identity_id: int) -> list[int]:
        with self.lock:
            return [row[0] for row in self.db.execute("SELECT old_id FROM merges WHERE into_id = ? ORDER BY old_id",
                                                      (identity_id,))]

    def recent_tracklets(self, window_s: float) -> tuple[list[Tracklet], dict[int, int]]:
        """The tracklets with a sighting in the last ``window_s`` seconds (of message time),
        and each of their identities' sightings outside those tracklets."""
        with self.lock:
            latest = self.db.execute("SELECT MAX(ts) FROM sightings").fetchone()[0]
            if latest is None:
                return [], {}
            rows = self.db.execute(
                "SELECT s.site, s.camera_id, s.track_id, s.identity_id, s.modality, s.first_ts, s.ts, s.seq, "
                "s.embedding FROM sightings s JOIN (SELECT DISTINCT site, camera_id, track_id FROM sightings "
                "WHERE ts >= ?) w ON s.site = w.site AND s.camera_id = w.camera_id AND s.track_id = w.track_id "
                "ORDER BY s.seq", (latest - window_s,), binary=True).fetchall()
            grouped: dict[tuple[str, str, int], list] = {}
            for row in rows:
                grouped.setdefault((row[0], row[1], row[2]), []).append(row)
            tracklets = []
            for key, items in grouped.items():
                mean = np.mean([np.frombuffer(item[8], dtype=np.float32) for item in items], axis=0)
                tracklets.append(Tracklet(key, items[-1][3], items[-1][4], min(i[5] for i in items),
                                          max(i[6] for i in items), mean / max(np.linalg.norm(mean), 1e-12),
                                          len(items)))
            identities = sorted({t.identity for t in tracklets})
            inside = {i: sum(t.sightings for t in tracklets if t.identity == i) for i in identities}
            totals = dict(self.db.execute(f"SELECT identity_id, COUNT(*) FROM sightings WHERE identity_id IN "
                                          f"({','.join('?' * len(identities))}) GROUP BY identity_id",
                                          identities).fetchall()) if identities else {}
        return tracklets, {i: totals.get(i, 0) - inside[i] for i in identities}

    def apply_reassociation(self, plan: Plan, ts: float, events_of=None) -> tuple[dict[int, int],
                                                                                  dict[tuple[str, str, int], int]]:
        """Move tracklets, create the new identities and record the merges in one transaction;
        returns (merged: old -> surviving, moved: tracklet -> identity). ``events_of(merged, moved)``
        gives the events that announce it, stored in the same transaction until
        :meth:`events_delivered` (a merge committed is a merge announced, whatever fails after)."""
        moved: dict[tuple[str, str, int], int] = {}
        with self._rewriting_identities():
            for group in plan.new_groups:
                created = self.db.execute("INSERT INTO identities (created, last_seen, sightings, modalities, "
                                          "prototype) VALUES (?, ?, 0, '', ?) RETURNING id", (ts, ts, b"")).fetchone()
                moved.update(dict.fromkeys(group, created[0]))
            moved.update({key: target for key, target in plan.moves.items() if target is not None})
            touched = set(moved.values())
            for (site, camera, track), target in moved.items():
                touched |= {row[0] for row in self.db.execute(
                    "SELECT DISTINCT identity_id FROM sightings WHERE site = ? AND camera_id = ? AND track_id = ?",
                    (site, camera, track))}
                self.db.execute("UPDATE sightings SET identity_id = ? WHERE site = ? AND camera_id = ? AND "
                                "track_id = ?", (target, site, camera, track))
            for old, survivor in plan.merged.items():
                self.db.execute("INSERT INTO merges VALUES (?, ?, ?) ON CONFLICT(old_id) DO UPDATE SET "
                                "into_id = excluded.into_id, ts = excluded.ts", (old, survivor, ts))
                self.db.execute("UPDATE merges SET into_id = ? WHERE into_id = ?", (survivor, old))
            for identity in touched:
                self._recompute_identity(identity)
            if events_of is not None:
                self.db.executemany("INSERT INTO pending_events (payload, created) VALUES (?, ?)",
                                    [(json.dumps(event), ts) for event in events_of(dict(plan.merged), moved)])
        return dict(plan.merged), moved

    def pending_events(self, limit: int = 500) -> list[tuple[int, dict]]:
        """Stored events not yet acknowledged by the broker, oldest first: ``[(id, event)]``."""
        with self.lock:
            rows = self.db.execute("SELECT id, payload FROM pending_events ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(row[0], json.loads(row[1])) for row in rows]

    def events_delivered(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.lock:
            self.db.executemany("DELETE FROM pending_events WHERE id = ?", [(i,) for i in ids])

    def _recompute_identity(self, identity_id: int) -> None:
        """Prototype, modalities, counts from the identity's sightings; delete it when it has none."""
        rows = self.db.execute("SELECT embedding, modality, ts FROM sightings WHERE identity_id = ?",
                               (identity_id,), binary=True).fetchall()
        if not rows:
            self.db.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
            return
        mean = np.mean([np.frombuffer(row[0], dtype=np.float32) for row in rows], axis=0)
        prototype = (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)
        self.db.execute("UPDATE identities SET sightings = ?, modalities = ?, last_seen = ?, prototype = ? "
                        "WHERE id = ?", (len(rows), ",".join(sorted({row[1] for row in rows})),
                                         max(row[2] for row in rows), prototype.tobytes(), identity_id))

    # -- the index ---------------------------------------------------------------------------

    def rebuild_index(self) -> None:
        with self.lock:
            self.synced_version = self._meta_int("version")
            cursor = self.db.execute(f"SELECT {IDENTITY_COLUMNS} FROM identities", binary=True)
            ids, slices, self._facts = [], [], {}
            # a slice of rows at a time: a million prototypes as Python bytes would take 4 GiB more
            for rows in iter(lambda: cursor.fetchmany(LOAD_SLICE), []):
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
            return self.index.rank(vector, identities, k, self.draft.prototypes if self.draft is not None else None)

    def nearest_created(self, vector: np.ndarray, k: int = 5) -> list[int]:
        """The open draft's new identities nearest ``vector`` (the index has not seen them)."""
        return self.draft.nearest_created(vector, k) if self.draft is not None else []

    # -- retention ----------------------------------------------------------------------------

    def purge(self, identity: int | None = None, camera: str | None = None, since: float | None = None,
              until: float | None = None, site: str | None = None, dry_run: bool = False) -> int:
        """Delete sightings matching every given criterion, then identities left with none;
        returns the number of sightings deleted (``dry_run``: that would be, deleting nothing)."""
        clauses, values = [], []
        for clause, value in (("identity_id = ?", identity), ("camera_id = ?", camera), ("ts >= ?", since),
                              ("ts < ?", until), ("site = ?", site)):
            if value is not None:
                clauses.append(clause)
                values.append(value)
        if not clauses:
            raise UserError("purge needs at least one of identity, site, camera, since, until")
        if dry_run:
            with self.lock:
                return self.db.execute(f"SELECT COUNT(*) FROM sightings WHERE {' AND '.join(clauses)}",
                                       values).fetchone()[0]
        with self._rewriting_identities():
            deleted = self.db.execute(f"DELETE FROM sightings WHERE {' AND '.join(clauses)}", values).rowcount
            self.db.execute("DELETE FROM identities WHERE id NOT IN (SELECT DISTINCT identity_id FROM sightings)")
            self.db.execute("DELETE FROM merges WHERE into_id NOT IN (SELECT id FROM identities)")
            self.db.execute("UPDATE identities SET sightings = (SELECT COUNT(*) FROM sightings "
                            "WHERE identity_id = identities.id)")
        return deleted

    def stats(self) -> dict:
        with self.lock:
            sightings = self.db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0]
            identities = self.db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
            index = {"kind": self.index.kind, "structure": self.index.structure, "search_depth": self.index.depth,
                     "recall_at_1": self.index.recall_at_1}
        return {"sightings": sightings, "identities": identities, "model": self.model, "index": index,
                "rejections": self.rejections()}

    def close(self) -> None:
        with self.lock:
            self.db.close()
