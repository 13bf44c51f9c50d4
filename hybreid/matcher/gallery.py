"""The matcher's gallery: SQLite (WAL) of sightings and identities, and a FAISS index.

Sightings are keyed by ``(site, camera_id, seq)``, so a redelivered message changes
nothing and two sites may use the same camera ids.
Identities carry an L2-normalised prototype; the FAISS index over the prototypes is
rebuilt from SQLite at start (exact inner product by default; IVF or HNSW for large
galleries). Embeddings are biometric data: retention by age and purges by identity,
camera or time range delete them for good. A purge bumps the gallery's generation; a
matcher running beside it sees the new generation before its next message and reloads
its index, so purged identities are never matched again.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hybreid.errors import UserError
from hybreid.matcher.index import PrototypeIndex
from hybreid.matcher.reassociate import Plan, Tracklet
from hybreid.protocol import FeatureMessage

SIGHTINGS = """
CREATE TABLE IF NOT EXISTS sightings (
    camera_id TEXT NOT NULL, seq INTEGER NOT NULL, site TEXT NOT NULL, track_id INTEGER NOT NULL,
    modality TEXT NOT NULL, first_ts REAL NOT NULL, ts REAL NOT NULL, box TEXT NOT NULL, score REAL,
    quality REAL, frames INTEGER, final INTEGER, identity_id INTEGER NOT NULL, similarity REAL,
    embedding BLOB NOT NULL, decision TEXT NOT NULL DEFAULT 'match', PRIMARY KEY (site, camera_id, seq));
"""
SCHEMA = SIGHTINGS + """
CREATE INDEX IF NOT EXISTS sightings_identity ON sightings (identity_id);
CREATE INDEX IF NOT EXISTS sightings_time ON sightings (ts);
DROP INDEX IF EXISTS sightings_track;
CREATE INDEX IF NOT EXISTS sightings_site_track ON sightings (site, camera_id, track_id);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY, created REAL NOT NULL, last_seen REAL NOT NULL, sightings INTEGER NOT NULL,
    modalities TEXT NOT NULL, prototype BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS merges (old_id INTEGER PRIMARY KEY, into_id INTEGER NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rejections (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


class Gallery:
    def __init__(self, path: str | Path, index: str = "auto"):
        self.path, self.index_kind = Path(path), index
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"gallery {self.path} is not a usable SQLite file ({exc})") from exc
        self.index = PrototypeIndex(index)
        self._in_transaction = False
        self.generation = self._stored_generation()
        self.rebuild_index()

    def _migrate(self) -> None:
        """Galleries written before sightings were keyed by site: re-key them in one transaction."""
        row = self.db.execute("SELECT sql FROM sqlite_master WHERE name = 'sightings'").fetchone()
        if row is None or "PRIMARY KEY (site, camera_id, seq)" in row[0]:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("ALTER TABLE sightings RENAME TO sightings_by_camera")
            self.db.execute(SIGHTINGS)
            self.db.execute("INSERT INTO sightings SELECT *, 'match' FROM sightings_by_camera")
            self.db.execute("DROP TABLE sightings_by_camera")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @contextmanager
    def _rewriting_identities(self):
        """One transaction that rewrites identities other matcher processes hold in their
        index: it bumps the generation they watch (:meth:`refresh`), then reloads ours."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("INSERT INTO meta VALUES ('generation', '1') ON CONFLICT(key) DO UPDATE SET "
                                "value = CAST(value AS INTEGER) + 1")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.generation = self._stored_generation()
            self.rebuild_index()

    def _stored_generation(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def refresh(self) -> bool:
        """Reload the index if another process purged since (True when it did)."""
        with self.lock:
            stored = self._stored_generation()
            if stored == self.generation:
                return False
            self.generation = stored
            self.rebuild_index()
            return True

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
        row = self.db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        return row[0] if row else None

    def bind_model(self, identity: str) -> None:
        """The first accepted message fixes the gallery's model; embeddings never mix."""
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('model', ?)", (identity,))

    # -- counters --------------------------------------------------------------------

    def count_rejection(self, reason: str) -> None:
        with self.lock:
            self.db.execute("INSERT INTO rejections VALUES (?, 1) ON CONFLICT(reason) DO UPDATE SET count = count + 1",
                            (reason,))

    def rejections(self) -> dict[str, int]:
        with self.lock:
            return dict(self.db.execute("SELECT reason, count FROM rejections").fetchall())

    # -- sightings and identities -------------------------------------------------------

    def stored_decision(self, site: str, camera_id: str, seq: int) -> tuple[int, float, str] | None:
        """``(identity_id, similarity, decision)`` of a sighting already stored, else None."""
        with self.lock:
            return self.db.execute("SELECT identity_id, similarity, decision FROM sightings WHERE site = ? AND "
                                   "camera_id = ? AND seq = ?", (site, camera_id, seq)).fetchone()

    def identity_of_track(self, site: str, camera_id: str, track_id: int) -> int | None:
        with self.lock:
            row = self.db.execute("SELECT identity_id FROM sightings WHERE site = ? AND camera_id = ? AND "
                                  "track_id = ? ORDER BY seq DESC LIMIT 1", (site, camera_id, track_id)).fetchone()
        return row[0] if row else None

    def busy_elsewhere(self, identity_id: int, site: str, camera_id: str, first_ts: float, ts: float) -> bool:
        """Whether the identity was seen by another camera during [first_ts, ts]."""
        with self.lock:
            return self.db.execute(
                "SELECT 1 FROM sightings WHERE identity_id = ? AND NOT (site = ? AND camera_id = ?) AND first_ts < ? "
                "AND ts > ? LIMIT 1", (identity_id, site, camera_id, ts, first_ts)).fetchone() is not None

    def identity_modalities(self, identity_id: int) -> set[str]:
        with self.lock:
            row = self.db.execute("SELECT modalities FROM identities WHERE id = ?", (identity_id,)).fetchone()
        return set(row[0].split(",")) if row and row[0] else set()

    def store(self, message: FeatureMessage, identity_id: int | None, similarity: float, prototype_rate: float,
              decision: str = "match") -> int:
        """Insert the sighting (and a new identity when ``identity_id`` is None) in one
        transaction; update the prototype at a bounded rate. Returns the identity id."""
        import json

        vector = message.embedding.astype(np.float32)
        with self.lock, self.transaction():
            if identity_id is None:
                cursor = self.db.execute(
                    "INSERT INTO identities (created, last_seen, sightings, modalities, prototype) "
                    "VALUES (?, ?, 0, '', ?)", (message.ts, message.ts, vector.tobytes()))
                identity_id = cursor.lastrowid
                prototype = vector
            else:
                old = self.prototypes[identity_id]  # present: the matcher refreshed before assigning
                rows = self.db.execute("SELECT sightings FROM identities WHERE id = ?", (identity_id,)).fetchone()
                rate = min(prototype_rate, 1.0 / (rows[0] + 1))
                prototype = (1 - rate) * old + rate * vector
                prototype = (prototype / np.linalg.norm(prototype)).astype(np.float32)
            modalities = self.identity_modalities(identity_id) | {message.modality}
            self.db.execute("UPDATE identities SET last_seen = MAX(last_seen, ?), sightings = sightings + 1, "
                            "modalities = ?, prototype = ? WHERE id = ?",
                            (message.ts, ",".join(sorted(modalities - {""})), prototype.tobytes(), identity_id))
            self.db.execute(
                "INSERT INTO sightings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message.camera_id, message.seq, message.site, message.track_id, message.modality,
                 message.first_ts if message.first_ts is not None else message.ts, message.ts,
                 json.dumps(list(message.box)), message.score, message.quality, message.frames,
                 int(message.final), identity_id, similarity, vector.tobytes(), decision))
            # In the index at once: the next message of a batch must find this identity. A
            # transaction that fails reloads the index from the store (:meth:`transaction`).
            self.index.upsert(identity_id, prototype)
        return identity_id

    @contextmanager
    def transaction(self):
        """One SQLite transaction around what runs inside; nested uses join the outer one, so a
        batch of messages commits once. On failure the store rolls back and the index, which
        took the batch's prototypes as they came, is rebuilt from it."""
        with self.lock:
            if self._in_transaction:
                yield
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                self.rebuild_index()
                raise
            finally:
                self._in_transaction = False

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
                cursor = self.db.execute("INSERT INTO identities (created, last_seen, sightings, modalities, "
                                         "prototype) VALUES (?, ?, 0, '', x'')", (ts, ts))
                moved.update(dict.fromkeys(group, cursor.lastrowid))
            moved.update({key: target for key, target in plan.moves.items() if target is not None})
            touched = set(moved.values())
            for (site, camera, track), target in moved.items():
                touched |= {row[0] for row in self.db.execute(
                    "SELECT DISTINCT identity_id FROM sightings WHERE site = ? AND camera_id = ? AND track_id = ?",
                    (site, camera, track))}
                self.db.execute("UPDATE sightings SET identity_id = ? WHERE site = ? AND camera_id = ? AND "
                                "track_id = ?", (target, site, camera, track))
            for old, survivor in plan.merged.items():
                self.db.execute("INSERT OR REPLACE INTO merges VALUES (?, ?, ?)", (old, survivor, ts))
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
            rows = self.db.execute("SELECT id, prototype FROM identities").fetchall()
            self.index.rebuild({i: np.frombuffer(p, dtype=np.float32).copy() for i, p in rows})

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
