"""The on-disk outbox: every record is stored before it is published and leaves only
when the broker acknowledges it, so a broker outage or a killed process loses nothing.

SQLite in WAL mode, one file. Per camera it also keeps the sequence counter (protocol
v1's ``seq`` never repeats, across restarts) and the track-id counter. A camera's counters
start at the clock in microseconds, not at 0: an outbox replaced by a new one (damaged,
deleted, a box reinstalled) then numbers its records and tracks after everything the old
one sent, so the matcher takes none of them for a redelivery or for an old track's update
(it stays so while the box's clock is not set back past the old outbox's creation). The
outbox has a size bound; when it is full the policy decides, and every decision is counted:

- ``drop_oldest`` (default): the oldest unsent record makes room (a long outage keeps
  the most recent sightings);
- ``drop_newest``: the new record is refused (keeps the history from the outage's start).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hybreid.edge_runtime.site import OutboxSettings
from hybreid.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    camera_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (camera_id, seq));
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
CREATE TABLE IF NOT EXISTS counters (camera_id TEXT PRIMARY KEY, next_seq INTEGER NOT NULL,
    next_track INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def _first_counter() -> int:
    """Where a camera's new sequence and track counters start: the clock in microseconds."""
    return time.time_ns() // 1000


def damage(path: Path) -> str | None:
    """What is wrong with the outbox file at ``path`` (read only, nothing written), or None."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if problems == ["ok"] else " ".join(" ".join(problems).replace("*", "").split())[:300]


class Outbox:
    def __init__(self, path: str | Path, settings: OutboxSettings | None = None):
        """The outbox at ``path``; its size limit and policy from ``settings`` (its own ``path`` is
        the site file's, already resolved by the caller)."""
        settings = settings or OutboxSettings()
        self.path, self.max_messages, self.when_full = Path(path), settings.max_messages, settings.when_full
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.closed = False
        problem = damage(self.path) if self.path.exists() else None
        if problem:  # checked read-only first: a damaged outbox is left exactly as it is
            raise UserError(f"outbox {self.path} is damaged ({problem}); it was left untouched: recover what it "
                            f"still holds with `hybreid edge outbox-recover {self.path} --out NEW.sqlite` and "
                            "point outbox.path at the new file")
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"outbox {self.path} is not a usable SQLite file ({exc}); move it aside") from exc

    def _bump(self, name: str, amount: int = 1) -> None:
        self._db.execute("INSERT INTO stats VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                         (name, amount, amount))

    def _counter(self, camera_id: str) -> tuple[int, int]:
        row = self._db.execute("SELECT next_seq, next_track FROM counters WHERE camera_id = ?",
                               (camera_id,)).fetchone()
        if row is None:
            first = _first_counter()
            self._db.execute("INSERT INTO counters VALUES (?, ?, ?)", (camera_id, first, first))
            return first, first
        return row

    def next_track_id(self, camera_id: str) -> int:
        """A track id never used before by this camera (survives restarts)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            _, track = self._counter(camera_id)
            self._db.execute("UPDATE counters SET next_track = ? WHERE camera_id = ?", (track + 1, camera_id))
            self._db.execute("COMMIT")
            return track

    def add(self, camera_id: str, topic: str, build: Callable[[int], bytes]) -> int | None:
        """Assign the camera's next ``seq``, store ``build(seq)``; returns seq, or None if refused."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                if depth >= self.max_messages:
                    if self.when_full == "drop_newest":
                        self._bump("dropped_newest")
                        self._db.execute("COMMIT")
                        return None
                    excess = depth - self.max_messages + 1
                    self._db.execute("DELETE FROM outbox WHERE rowid IN (SELECT rowid FROM outbox ORDER BY created, "
                                     "seq LIMIT ?)", (excess,))
                    self._bump("dropped_oldest", excess)
                seq, _ = self._counter(camera_id)
                self._db.execute("UPDATE counters SET next_seq = ? WHERE camera_id = ?", (seq + 1, camera_id))
                self._db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
                                 (camera_id, seq, topic, build(seq), time.time()))
                self._bump("stored")
                self._db.execute("COMMIT")
                return seq
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def pending(self, limit: int = 100, exclude: set[tuple[str, int]] | frozenset = frozenset()):
        """Oldest unacknowledged records: ``[(camera_id, seq, topic, payload)]``."""
        with self._lock:
            rows = self._db.execute("SELECT camera_id, seq, topic, payload FROM outbox ORDER BY created, seq "
                                    "LIMIT ?", (limit + len(exclude),)).fetchall()
        return [row for row in rows if (row[0], row[1]) not in exclude][:limit]

    def ack(self, camera_id: str, seq: int) -> None:
        with self._lock:
            deleted = self._db.execute("DELETE FROM outbox WHERE camera_id = ? AND seq = ?", (camera_id, seq))
            if deleted.rowcount:
                self._bump("acknowledged")

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def oldest_created(self) -> float | None:
        """When the oldest record still waiting was stored (epoch seconds; None: none waits)."""
        with self._lock:
            return self._db.execute("SELECT MIN(created) FROM outbox").fetchone()[0]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM stats").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self.closed = True


def _readable_rows(db: sqlite3.Connection, table: str, columns: str) -> tuple[list[tuple], int]:
    """Every row of ``table`` a damaged file still gives, and how many rowids failed to read.

    Row by row: one read across a damaged page fails as a whole, and would lose the rows
    around the damage with it. No library reads around damage in a SQLite file (the sqlite3
    shell's ``.recover`` is not in Python's module), hence this walk.
    """
    try:
        last = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:  # the table's last page is damaged: walk until a long gap
        last = None
    rows, failed, rowid, since_found = [], 0, 0, 0
    while (rowid < last) if last is not None else (since_found < 100_000):
        rowid += 1
        try:
            row = db.execute(f"SELECT {columns} FROM {table} WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            failed += 1
            since_found += 1
            continue
        if row is None:
            since_found += 1
        else:
            rows.append(row)
            since_found = 0
    return rows, failed


def recover(damaged: str | Path, out: str | Path) -> dict:
    """Copy every record and counter a damaged outbox still holds into a new outbox at ``out``;
    the damaged file is only read. The new counters start past every recovered number and the
    clock, so nothing it sends repeats a number the old one may have sent."""
    damaged, out = Path(damaged), Path(out)
    if not damaged.is_file():
        raise UserError(f"outbox {damaged} does not exist")
    if out.exists():
        raise UserError(f"{out} exists already; give a new file for the recovered outbox")
    with contextlib.closing(sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)) as source:
        try:
            source.execute("SELECT name FROM sqlite_master").fetchall()
        except sqlite3.DatabaseError as exc:  # its first page, which names the tables, is gone
            raise UserError(f"{damaged} cannot be read as an outbox at all ({exc})") from None
        records, lost = _readable_rows(source, "outbox", "camera_id, seq, topic, payload, created")
        counters, _ = _readable_rows(source, "counters", "camera_id, next_seq, next_track")
    first = _first_counter()
    next_seq, next_track = {}, {}
    for camera_id, seq, track in counters:
        next_seq[camera_id], next_track[camera_id] = max(seq, first), max(track, first)
    for camera_id, seq, *_ in records:
        next_seq[camera_id] = max(next_seq.get(camera_id, first), seq + 1)
        next_track.setdefault(camera_id, first)
    outbox = Outbox(out)
    with outbox._lock:
        outbox._db.execute("BEGIN IMMEDIATE")
        outbox._db.executemany("INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?)", records)
        outbox._db.executemany("INSERT INTO counters VALUES (?, ?, ?)",
                               [(camera, next_seq[camera], next_track[camera]) for camera in next_seq])
        outbox._db.execute("COMMIT")
    outbox.close()
    return {"recovered_records": len(records), "unreadable_rows": lost, "cameras": sorted(next_seq)}
