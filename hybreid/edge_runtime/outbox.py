"""The on-disk outbox: every record is stored before it is published and leaves only
when the broker acknowledges it, so a broker outage or a killed process loses nothing.

SQLite in WAL mode, one file. Per camera it also keeps the sequence counter (protocol
v1's ``seq`` never repeats, across restarts) and the track-id counter. The outbox has
a size bound; when it is full the policy decides, and every decision is counted:

- ``drop_oldest`` (default): the oldest unsent record makes room (a long outage keeps
  the most recent sightings);
- ``drop_newest``: the new record is refused (keeps the history from the outage's start).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

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
POLICIES = ("drop_oldest", "drop_newest")


class Outbox:
    def __init__(self, path: str | Path, max_messages: int = 100_000, when_full: str = "drop_oldest"):
        if when_full not in POLICIES:
            raise UserError(f"outbox.when_full must be one of {POLICIES}, got {when_full!r}")
        self.path, self.max_messages, self.when_full = Path(path), max_messages, when_full
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
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
            self._db.execute("INSERT INTO counters VALUES (?, 0, 1)", (camera_id,))
            return 0, 1
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

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM stats").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
