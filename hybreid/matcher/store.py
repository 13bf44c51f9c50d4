"""Every SQL statement of the matcher: the gallery's reads and writes, the queries of
``hybreid matcher query`` and the benchmark's bulk load, over one :mod:`.database` (SQLite or
PostgreSQL, ``?`` placeholders and what both engines accept).

Methods that write run inside the caller's transaction (:meth:`GalleryStore.begin` ...
:meth:`commit`); the gallery holds its lock around them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import numpy as np

from hybreid.matcher.database import open_database
from hybreid.matcher.draft import Draft, SightingRow

IDENTITY_COLUMNS = "id, prototype, sightings, modalities, last_seen"
LOAD_SLICE = 10_000  # identity rows read at a time when the index is rebuilt
KEY_BATCH = 200  # keys per statement: within every engine's limit on bound parameters
QUERY_COLUMNS = ("camera_id", "seq", "site", "track_id", "modality", "first_ts", "ts", "box", "score", "quality",
                 "frames", "final", "identity_id", "similarity")
RECENT_COLUMNS = "site, camera_id, track_id, identity_id, modality, first_ts, ts, seq, embedding"


class GalleryStore:
    def __init__(self, location):
        self.db = open_database(location)
        self.location = self.db.location
        self.dialect = self.db.dialect

    # -- transactions ------------------------------------------------------------------------

    def begin(self) -> None:
        self.db.begin()

    def commit(self) -> None:
        self.db.commit()

    def rollback(self) -> None:
        self.db.rollback()

    def close(self) -> None:
        self.db.close()

    # -- meta -----------------------------------------------------------------------------------

    def meta_int(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def bump(self, key: str) -> int:
        """Add one to a counter in ``meta`` (inside a write transaction); returns the new value."""
        return int(self.db.execute(
            "INSERT INTO meta VALUES (?, '1') ON CONFLICT(key) DO UPDATE SET "
            "value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT) RETURNING value", (key,)).fetchone()[0])

    def model(self) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        return row[0] if row else None

    def bind_model(self, identity: str) -> None:
        self.db.execute("INSERT INTO meta VALUES ('model', ?) ON CONFLICT(key) DO NOTHING", (identity,))

    def count_rejection(self, reason: str, count: int) -> None:
        self.db.execute("INSERT INTO rejections VALUES (?, ?) ON CONFLICT(reason) DO UPDATE SET "
                        "count = rejections.count + excluded.count", (reason, count))

    def rejections(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT reason, count FROM rejections").fetchall())

    # -- identities -------------------------------------------------------------------------------

    def identity_slices(self) -> Iterator[list]:
        """Every identity's row (:data:`IDENTITY_COLUMNS`), a slice at a time: a million
        prototypes as Python bytes at once would take 4 GiB more."""
        cursor = self.db.execute(f"SELECT {IDENTITY_COLUMNS} FROM identities", binary=True)
        return iter(lambda: cursor.fetchmany(LOAD_SLICE), [])

    def identities_since(self, version: int) -> list:
        return self.db.execute(f"SELECT {IDENTITY_COLUMNS} FROM identities WHERE version > ?", (version,),
                               binary=True).fetchall()

    def reserve_identity_ids(self, count: int) -> list[int]:
        return self.db.reserve_identity_ids(count)

    def write_draft(self, draft: Draft, committed_ids: dict[int, int], version: int) -> None:
        """A batch's draft: its new identities under the ids the store reserved for them
        (``committed_ids``, by provisional id), its updated identities and its sightings, all
        stamped with ``version``; a statement per table."""
        writes = draft.writes()
        created_ts = {write.identity: write.created_ts for write in writes if write.new}

        def row(identity: int) -> tuple:
            facts = draft.facts[identity]
            return (facts.last_seen, facts.sightings, ",".join(sorted(facts.modalities)),
                    draft.prototypes[identity].tobytes(), version)

        self._write_batch(
            [(ts, *row(identity), committed_ids[identity]) for identity, ts in created_ts.items()],
            [(*row(identity), identity) for identity in draft.prototypes if identity not in created_ts],
            [sighting._replace(identity_id=committed_ids.get(sighting.identity_id, sighting.identity_id))
             for sighting in draft.sightings.values()])

    def _write_batch(self, created: list[tuple], updated: list[tuple], sightings: Iterable[SightingRow]) -> None:
        if created:
            self.db.executemany("INSERT INTO identities (created, last_seen, sightings, modalities, prototype, "
                                "version, id) VALUES (?, ?, ?, ?, ?, ?, ?)", created)
        if updated:
            self.db.executemany("UPDATE identities SET last_seen = ?, sightings = ?, modalities = ?, prototype = ?, "
                                "version = ? WHERE id = ?", updated)
        self.db.executemany("INSERT INTO sightings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            list(sightings))

    def recompute_identity(self, identity_id: int) -> None:
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

    def counts(self) -> tuple[int, int]:
        """(sightings, identities)."""
        sightings = self.db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0]
        return sightings, self.db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]

    # -- sightings ------------------------------------------------------------------------------

    def rows_by_keys(self, columns: str, key_columns: list[str], keys) -> list:
        """The sightings whose ``key_columns`` equal one of ``keys``, as a join with the keys."""
        keys = sorted(set(keys))
        select = ", ".join(f"s.{name.strip()}" for name in columns.split(","))
        join = " AND ".join(f"s.{name} = wanted.{name}" for name in key_columns)
        types = ["text", "text", "bigint"]  # every key here is (site, camera_id, a number)
        rows = []
        for start in range(0, len(keys), KEY_BATCH):
            wanted, params = self.db.keys_table(key_columns, types, keys[start:start + KEY_BATCH])
            rows += self.db.execute(f"{wanted} SELECT {select} FROM wanted JOIN sightings s ON {join}",
                                    params).fetchall()
        return rows

    def sightings_elsewhere(self, identity_id: int, site: str, camera_id: str, since: float,
                            until: float) -> Iterator[tuple[str, str, float, float]]:
        """(site, camera, first_ts, ts) of the identity's committed sightings by other cameras
        that overlap [since, until], read as they are taken (a caller looking for one stops there)."""
        return iter(self.db.execute(
            "SELECT site, camera_id, first_ts, ts FROM sightings WHERE identity_id = ? AND NOT (site = ? AND "
            "camera_id = ?) AND first_ts < ? AND ts > ?", (identity_id, site, camera_id, until, since)))

    def sightings_where(self, identity: int | None = None, camera: str | None = None, since: float | None = None,
                        until: float | None = None, newest: int | None = None) -> list[dict]:
        """The sightings matching every given criterion, oldest first (``matcher query``);
        ``newest``: only that many, the newest first (the console)."""
        where, values = _criteria(identity=identity, camera=camera, since=since, until=until)
        order = "ORDER BY ts" if newest is None else "ORDER BY ts DESC LIMIT ?"
        rows = self.db.execute(f"SELECT {', '.join(QUERY_COLUMNS)} FROM sightings WHERE {where or '1 = 1'} {order}",
                               values + ([] if newest is None else [newest])).fetchall()
        result = []
        for row in rows:
            item = dict(zip(QUERY_COLUMNS, row, strict=True))
            item["box"] = json.loads(item["box"])
            item["final"] = bool(item["final"])
            result.append(item)
        return result

    def purge(self, dry_run: bool, **criteria) -> int:
        """Delete the sightings matching every criterion, then identities left with none (inside a
        write transaction); returns how many sightings (``dry_run``: would be) deleted."""
        where, values = _criteria(**criteria)
        if dry_run:
            return self.db.execute(f"SELECT COUNT(*) FROM sightings WHERE {where}", values).fetchone()[0]
        deleted = self.db.execute(f"DELETE FROM sightings WHERE {where}", values).rowcount
        self.db.execute("DELETE FROM identities WHERE id NOT IN (SELECT DISTINCT identity_id FROM sightings)")
        self.db.execute("DELETE FROM merges WHERE into_id NOT IN (SELECT id FROM identities)")
        self.db.execute("UPDATE identities SET sightings = (SELECT COUNT(*) FROM sightings "
                        "WHERE identity_id = identities.id)")
        return deleted

    # -- re-association ----------------------------------------------------------------------------

    def recent_sightings(self, window_s: float) -> list:
        """The sightings of every tracklet seen in the last ``window_s`` seconds (:data:`RECENT_COLUMNS`)."""
        latest = self.db.execute("SELECT MAX(ts) FROM sightings").fetchone()[0]
        if latest is None:
            return []
        columns = ", ".join(f"s.{name.strip()}" for name in RECENT_COLUMNS.split(","))
        return self.db.execute(
            f"SELECT {columns} FROM sightings s JOIN (SELECT DISTINCT site, camera_id, track_id FROM sightings "
            "WHERE ts >= ?) w ON s.site = w.site AND s.camera_id = w.camera_id AND s.track_id = w.track_id "
            "ORDER BY s.seq", (latest - window_s,), binary=True).fetchall()

    def sighting_counts(self, identities: list[int]) -> dict[int, int]:
        if not identities:
            return {}
        return dict(self.db.execute(f"SELECT identity_id, COUNT(*) FROM sightings WHERE identity_id IN "
                                    f"({','.join('?' * len(identities))}) GROUP BY identity_id",
                                    identities).fetchall())

    def create_empty_identity(self, ts: float) -> int:
        return self.db.execute("INSERT INTO identities (created, last_seen, sightings, modalities, prototype) "
                               "VALUES (?, ?, 0, '', ?) RETURNING id", (ts, ts, b"")).fetchone()[0]

    def move_track(self, site: str, camera: str, track: int, target: int) -> set[int]:
        """Give a camera track's sightings to ``target``; returns the identities they had."""
        had = {row[0] for row in self.db.execute(
            "SELECT DISTINCT identity_id FROM sightings WHERE site = ? AND camera_id = ? AND track_id = ?",
            (site, camera, track))}
        self.db.execute("UPDATE sightings SET identity_id = ? WHERE site = ? AND camera_id = ? AND track_id = ?",
                        (target, site, camera, track))
        return had

    def record_merge(self, old: int, survivor: int, ts: float) -> None:
        self.db.execute("INSERT INTO merges VALUES (?, ?, ?) ON CONFLICT(old_id) DO UPDATE SET "
                        "into_id = excluded.into_id, ts = excluded.ts", (old, survivor, ts))
        self.db.execute("UPDATE merges SET into_id = ? WHERE into_id = ?", (survivor, old))

    def resolve(self, identity_id: int) -> int:
        row = self.db.execute("SELECT into_id FROM merges WHERE old_id = ?", (identity_id,)).fetchone()
        return row[0] if row else identity_id

    def merged_into(self, identity_id: int) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT old_id FROM merges WHERE into_id = ? ORDER BY old_id",
                                                  (identity_id,))]

    # -- the console's reads ----------------------------------------------------------------------------

    def identity_rows(self, limit: int, offset: int = 0, ids: list[int] | None = None) -> list[dict]:
        """Identities without their prototypes: the most recently seen first, or those of ``ids``."""
        columns = ("id", "created", "last_seen", "sightings", "modalities")
        if ids is None:
            rows = self.db.execute(f"SELECT {', '.join(columns)} FROM identities ORDER BY last_seen DESC, id "
                                   "LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        else:
            rows = self._where_in(f"SELECT {', '.join(columns)} FROM identities WHERE id IN ({{}})", ids)
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def cameras_by_identity(self, identities: list[int]) -> dict[int, dict[str, int]]:
        """Each identity's sightings per camera."""
        found: dict[int, dict[str, int]] = {identity: {} for identity in identities}
        for identity, camera, count in self._where_in("SELECT identity_id, camera_id, COUNT(*) FROM sightings "
                                                      "WHERE identity_id IN ({}) GROUP BY identity_id, camera_id",
                                                      identities):
            found[identity][camera] = count
        return found

    def thumbnail_keys(self, identities: list[int]) -> dict[int, dict[str, tuple[str, int]]]:
        """For each identity, each camera's latest sighting with a thumbnail: camera -> (site, seq)."""
        found: dict[int, dict[str, tuple[str, int]]] = {identity: {} for identity in identities}
        for identity, site, camera, seq in self._where_in(
                "SELECT identity_id, site, camera_id, MAX(seq) FROM sightings WHERE identity_id IN ({}) "
                "AND thumbnail IS NOT NULL GROUP BY identity_id, site, camera_id", identities):
            found[identity][camera] = (site, seq)
        return found

    def _where_in(self, sql: str, values: list) -> list:
        """The rows of ``sql`` with its ``{}`` made a list of ``values``, asked a batch at a time."""
        rows = []
        for start in range(0, len(values), KEY_BATCH):
            chunk = values[start:start + KEY_BATCH]
            rows += self.db.execute(sql.format(", ".join("?" * len(chunk))), chunk).fetchall()
        return rows

    def thumbnail(self, site: str, camera: str, seq: int) -> bytes | None:
        row = self.db.execute("SELECT thumbnail FROM sightings WHERE site = ? AND camera_id = ? AND seq = ?",
                              (site, camera, seq)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def camera_rows(self) -> list[dict]:
        """Each camera's site, sightings and latest sighting (its highest sequence number).

        Both from the primary key's index alone: a sighting's row holds its embedding, and
        reading every row to count people per camera took 165 ms at 120,000 sightings."""
        rows = self.db.execute("SELECT site, camera_id, COUNT(*) FROM sightings GROUP BY site, camera_id "
                               "ORDER BY site, camera_id").fetchall()
        return [{"site": site, "camera_id": camera, "sightings": count,
                 "last_ts": self.db.execute("SELECT ts FROM sightings WHERE site = ? AND camera_id = ? "
                                            "ORDER BY seq DESC LIMIT 1", (site, camera)).fetchone()[0]}
                for site, camera, count in rows]

    def people_seen(self, camera: str | None, since: float | None, until: float | None) -> tuple[int, int]:
        """(people, sightings) matching every given criterion."""
        where, values = _criteria(camera=camera, since=since, until=until)
        return tuple(self.db.execute(f"SELECT COUNT(DISTINCT identity_id), COUNT(*) FROM sightings "
                                     f"WHERE {where or '1 = 1'}", values).fetchone())

    def merge_rows(self, limit: int) -> list[dict]:
        rows = self.db.execute("SELECT old_id, into_id, ts FROM merges ORDER BY ts DESC, old_id LIMIT ?",
                               (limit,)).fetchall()
        return [{"from": old, "into": into, "ts": ts} for old, into, ts in rows]

    # -- events waiting for the broker -------------------------------------------------------------

    def store_events(self, events: list[dict], ts: float) -> None:
        self.db.executemany("INSERT INTO pending_events (payload, created) VALUES (?, ?)",
                            [(json.dumps(event), ts) for event in events])

    def pending_events(self, limit: int) -> list[tuple[int, dict]]:
        rows = self.db.execute("SELECT id, payload FROM pending_events ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(row[0], json.loads(row[1])) for row in rows]

    def delete_events(self, ids: list[int]) -> None:
        self.db.executemany("DELETE FROM pending_events WHERE id = ?", [(i,) for i in ids])

    # -- a benchmark's gallery ---------------------------------------------------------------------

    def bulk_load_prototypes(self, vectors: np.ndarray, site: str, model: str, progress=iter) -> None:
        """Identities ``1..len(vectors)`` with one sighting each, in one transaction of bulk
        statements (a benchmark's gallery of a million people)."""
        chunk_size = 5000
        self.db.begin()
        for start in progress(range(0, len(vectors), chunk_size)):
            chunk = vectors[start:start + chunk_size]
            self.db.executemany("INSERT INTO identities (id, created, last_seen, sightings, modalities, prototype) "
                                "VALUES (?, 0, 0, 1, 'visible', ?)",
                                [(start + i + 1, v.tobytes()) for i, v in enumerate(chunk)])
            self.db.executemany("INSERT INTO sightings VALUES (?, ?, ?, ?, 'visible', 0, 0, '[0,0,1,1]', 1, 1, 1, 1, "
                                "?, 1, ?, 'new', NULL)",
                                [("prefill", start + i, site, start + i, start + i + 1, v.tobytes())
                                 for i, v in enumerate(chunk)])
        if self.dialect == "postgresql":  # ids given explicitly: move the identity sequence past them
            self.db.execute("SELECT setval(pg_get_serial_sequence('identities', 'id'), ?)", (len(vectors),))
        self.bind_model(model)
        self.db.commit()


def _criteria(**criteria) -> tuple[str, list]:
    """``WHERE`` text and values for the given (not None) criteria of sightings."""
    clauses = {"identity": "identity_id = ?", "camera": "camera_id = ?", "since": "ts >= ?", "until": "ts < ?",
               "site": "site = ?"}
    given = [(clauses[name], value) for name, value in criteria.items() if value is not None]
    return " AND ".join(clause for clause, _ in given), [value for _, value in given]
