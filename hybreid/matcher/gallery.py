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
the transaction that last wrote it; at the start of every write transaction (exclusive
across the instances) an instance loads the identities others wrote since it last
looked, so it decides with everyone's identities and prototypes.
"""

from __future__ import annotations

import threading
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


class Gallery:
    def __init__(self, location: str | Path, index: str = "auto"):
        """``location``: a SQLite file, or a ``postgresql://`` URL."""
        self.index_kind = index
        self.lock = threading.RLock()
        self.db = open_database(location)
        self.location = self.db.location
        self.index = PrototypeIndex(index)
        self._in_transaction = False
        self._write_version: int | None = None  # of the open transaction, once it writes an identity
        self._index_stale = False  # a failed transaction's prototypes, not yet reloaded (the store was away)
        self._model: str | None = None
        self._facts: dict[int, IdentityFacts] = {}  # of every identity in the index
        # What the open transaction writes at commit: identity -> new prototype, and sightings
        # by (site, camera_id, seq), as rows of the sightings table.
        self._pending_identities: dict[int, np.ndarray] = {}
        self._pending_sightings: dict[tuple[str, str, int], SightingRow] = {}
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
                               (self.synced_version,)).fetchall()
        for row in rows:
            self._facts[row[0]] = IdentityFacts.of(row)
            self.index.upsert(row[0], np.frombuffer(row[1], dtype=np.float32).copy())
        self.synced_version = latest
        return [row[0] for row in rows]

    def _version_for_writes(self) -> int:
        """The version this transaction stamps on the identities it writes."""
        if self._write_version is None:
            self._write_version = self._bump("version")
        return self._write_version

    @property
    def prototypes(self) -> dict[int, np.ndarray]:
        """Each identity's current prototype (the index's, kept in step with the store)."""
        return self.index.prototypes

    @property
    def dim(self) -> int | None:
        """The embedding dimension of the stored prototypes (None while the gallery is empty)."""
        with self.lock:
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

    def count_rejection(self, reason: str) -> None:
        with self.lock:
            self.db.execute("INSERT INTO rejections VALUES (?, 1) ON CONFLICT(reason) DO UPDATE SET "
                            "count = rejections.count + 1", (reason,))

    def rejections(self) -> dict[str, int]:
        with self.lock:
            return dict(self.db.execute("SELECT reason, count FROM rejections").fetchall())

    # -- sightings and identities -------------------------------------------------------

    def stored_decisions(self, keys) -> dict[tuple[str, str, int], tuple[int, float, str]]:
        """``(identity_id, similarity, decision)`` of each ``(site, camera_id, seq)`` already
        stored (a redelivery), this transaction's own included; one query for a batch."""
        with self.lock:
            found = self._rows_by_keys("SELECT site, camera_id, seq, identity_id, similarity, decision FROM sightings",
                                       "site = ? AND camera_id = ? AND seq = ?", keys)
            result = {(row[0], row[1], row[2]): (row[3], row[4], row[5]) for row in found}
            for key in set(keys) & self._pending_sightings.keys():
                row = self._pending_sightings[key]
                result[key] = (row.identity_id, row.similarity, row.decision)
        return result

    def stored_decision(self, site: str, camera_id: str, seq: int) -> tuple[int, float, str] | None:
        return self.stored_decisions([(site, camera_id, seq)]).get((site, camera_id, seq))

    def track_identities(self, keys) -> dict[tuple[str, str, int], int]:
        """The identity of each camera track ``(site, camera_id, track_id)`` already seen (its
        latest sighting's), this transaction's own sightings included; one query for a batch."""
        with self.lock:
            latest: dict[tuple[str, str, int], tuple[int, int]] = {}
            rows = self._rows_by_keys("SELECT site, camera_id, track_id, seq, identity_id FROM sightings",
                                      "site = ? AND camera_id = ? AND track_id = ?", keys)
            pending = [(row.site, row.camera_id, row.track_id, row.seq, row.identity_id)
                       for row in self._pending_sightings.values()]
            for site, camera, track, seq, identity in [*rows, *pending]:
                key = (site, camera, track)
                if key not in latest or seq > latest[key][0]:
                    latest[key] = (seq, identity)
        wanted = set(keys)
        return {key: identity for key, (_, identity) in latest.items() if key in wanted}

    def _rows_by_keys(self, select: str, match: str, keys) -> list:
        keys = sorted(set(keys))
        rows = []
        for start in range(0, len(keys), 200):  # within every engine's limit on bound parameters
            chunk = keys[start:start + 200]
            rows += self.db.execute(f"{select} WHERE {' OR '.join(f'({match})' for _ in chunk)}",
                                    [value for key in chunk for value in key]).fetchall()
        return rows

    def busy_elsewhere(self, identity_id: int, site: str, camera_id: str, first_ts: float, ts: float) -> bool:
        """Whether the identity was seen by another camera during [first_ts, ts]."""
        with self.lock:
            for row in self._pending_sightings.values():
                elsewhere = (row.site, row.camera_id) != (site, camera_id)
                if row.identity_id == identity_id and elsewhere and row.first_ts < ts and row.ts > first_ts:
                    return True
            return self.db.execute(
                "SELECT 1 FROM sightings WHERE identity_id = ? AND NOT (site = ? AND camera_id = ?) AND first_ts < ? "
                "AND ts > ? LIMIT 1", (identity_id, site, camera_id, ts, first_ts)).fetchone() is not None

    def identity_modalities(self, identity_id: int) -> set[str]:
        facts = self._facts.get(identity_id)
        return set(facts.modalities) if facts else set()

    def store(self, message: FeatureMessage, identity_id: int | None, similarity: float, prototype_rate: float,
              decision: str = "match") -> int:
        """Store the sighting (and a new identity when ``identity_id`` is None) in the open
        transaction; update the prototype at a bounded rate. Returns the identity id.

        A new identity is inserted at once (its id comes from the store); the sighting and
        the identity's new prototype are written with the rest of the batch at commit.
        """
        import json

        vector = message.embedding.astype(np.float32)
        with self.lock, self.transaction():
            if identity_id is None:
                identity_id = self.db.execute(
                    "INSERT INTO identities (created, last_seen, sightings, modalities, prototype) "
                    "VALUES (?, ?, 0, '', ?) RETURNING id", (message.ts, message.ts, vector.tobytes())).fetchone()[0]
                self._facts[identity_id] = IdentityFacts(0, set(), message.ts)
                prototype = vector
            else:
                old = self.prototypes[identity_id]  # present: the matcher refreshed before assigning
                rate = min(prototype_rate, 1.0 / (self._facts[identity_id].sightings + 1))
                prototype = (1 - rate) * old + rate * vector
                prototype = (prototype / np.linalg.norm(prototype)).astype(np.float32)
            facts = self._facts[identity_id]
            facts.sightings += 1
            facts.modalities.add(message.modality)
            facts.last_seen = max(facts.last_seen, message.ts)
            self._pending_identities[identity_id] = prototype
            self._pending_sightings[message.site, message.camera_id, message.seq] = SightingRow(
                message.camera_id, message.seq, message.site, message.track_id, message.modality,
                message.first_ts if message.first_ts is not None else message.ts, message.ts,
                json.dumps(list(message.box)), message.score, message.quality, message.frames,
                int(message.final), identity_id, similarity, vector.tobytes(), decision)
            # In the index at once: the next message of a batch must find this identity. A
            # transaction that fails reloads the index from the store (:meth:`transaction`).
            self.index.upsert(identity_id, prototype)
        return identity_id

    def _flush(self) -> None:
        """Write the transaction's sightings and identity updates, a statement per table."""
        if self._pending_identities:
            version = self._version_for_writes()
            self.db.executemany(
                "UPDATE identities SET last_seen = ?, sightings = ?, modalities = ?, prototype = ?, version = ? "
                "WHERE id = ?",
                [(self._facts[i].last_seen, self._facts[i].sightings, ",".join(sorted(self._facts[i].modalities)),
                  prototype.tobytes(), version, i) for i, prototype in self._pending_identities.items()])
        if self._pending_sightings:
            self.db.executemany("INSERT INTO sightings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                list(self._pending_sightings.values()))

    @contextmanager
    def transaction(self):
        """One write transaction around what runs inside, exclusive across the processes that
        share the store; nested uses join the outer one, so a batch of messages commits once.
        It starts by loading what other processes wrote (:attr:`changed_elsewhere`). On
        failure the store rolls back and the index, which took the batch's prototypes as
        they came, is rebuilt from it."""
        with self.lock:
            if self._in_transaction:
                yield
                return
            self.db.begin()
            self._in_transaction = True
            try:
                if self._index_stale:
                    self.rebuild_index()
                self.changed_elsewhere = self._follow_others()
                yield
                self._flush()
                self.db.commit()
                if self._write_version is not None:
                    self.synced_version = self._write_version
            except BaseException:
                self.db.rollback()
                self._index_stale = True  # it took this transaction's prototypes as they came
                self._pending_identities.clear()
                self._pending_sightings.clear()
                self.rebuild_index()
                raise
            finally:
                self._in_transaction = False
                self._write_version = None
                self._pending_identities.clear()
                self._pending_sightings.clear()

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
                "ORDER BY s.seq", (latest - window_s,)).fetchall()
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

    def apply_reassociation(self, plan: Plan, ts: float) -> tuple[dict[int, int], dict[tuple[str, str, int], int]]:
        """Move tracklets, create the new identities and record the merges in one transaction;
        returns (merged: old -> surviving, moved: tracklet -> identity)."""
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
        return dict(plan.merged), moved

    def _recompute_identity(self, identity_id: int) -> None:
        """Prototype, modalities, counts from the identity's sightings; delete it when it has none."""
        rows = self.db.execute("SELECT embedding, modality, ts FROM sightings WHERE identity_id = ?",
                               (identity_id,)).fetchall()
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
            cursor = self.db.execute(f"SELECT {IDENTITY_COLUMNS} FROM identities")
            ids, slices, self._facts = [], [], {}
            # a slice of rows at a time: a million prototypes as Python bytes would take 4 GiB more
            for rows in iter(lambda: cursor.fetchmany(LOAD_SLICE), []):
                ids += [row[0] for row in rows]
                self._facts.update((row[0], IdentityFacts.of(row)) for row in rows)
                slices.append(np.stack([np.frombuffer(row[1], dtype=np.float32) for row in rows]))
            self.index.rebuild_from(ids, np.concatenate(slices) if slices else None)
            self._index_stale = False

    def search(self, vector: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
        """Top-k ``(identity_id, cosine)`` by prototype."""
        with self.lock:
            return self.index.search(vector, k)

    def candidates(self, vectors: np.ndarray, k: int = 5) -> list[list[int]]:
        """The identities a search of each vector would score, for a whole batch at once."""
        with self.lock:
            return self.index.candidates(vectors, k)

    def rank(self, vector: np.ndarray, identities, k: int = 5) -> list[tuple[int, float]]:
        with self.lock:
            return self.index.rank(vector, identities, k)

    # -- retention ----------------------------------------------------------------------------

    def purge(self, identity: int | None = None, camera: str | None = None, since: float | None = None,
              until: float | None = None, site: str | None = None) -> int:
        """Delete sightings matching every given criterion, then identities left with none;
        returns the number of sightings deleted."""
        clauses, values = [], []
        for clause, value in (("identity_id = ?", identity), ("camera_id = ?", camera), ("ts >= ?", since),
                              ("ts < ?", until), ("site = ?", site)):
            if value is not None:
                clauses.append(clause)
                values.append(value)
        if not clauses:
            raise UserError("purge needs at least one of identity, site, camera, since, until")
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
