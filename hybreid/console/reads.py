"""What the console and its read API show, from the gallery's store: JSON-ready records,
times as ISO 8601 in UTC. The store is the matcher's own (read here, never written); one
lock keeps the web server's threads from sharing its connection at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from hybreid.errors import UserError
from hybreid.matcher.database import is_postgresql
from hybreid.matcher.store import GalleryStore

PAGE_SIZE = 50
MAX_SIGHTINGS = 1000  # a page or an API answer never holds more


def iso(ts: float | None) -> str | None:
    """``ts`` in ISO 8601, UTC; None for none, or for one no calendar holds (the matcher refuses
    such times, but a gallery is a file another program may have written)."""
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def parse_iso(text: str | None, name: str) -> float | None:
    """Epoch seconds from ISO 8601 (a time without a zone is taken as UTC)."""
    if text in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{name} must be an ISO 8601 time such as 2026-12-07T08:00:00Z, got {text[:40]!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class ConsoleReads:
    def __init__(self, location: str | Path):
        if not is_postgresql(location) and not Path(location).is_file():
            raise UserError(f"no gallery at {location}: give the matcher's --db")
        self.store = GalleryStore(location)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.store.close()

    def overview(self) -> dict:
        with self._lock:
            sightings, identities = self.store.counts()
            cameras = self.store.camera_rows()
            latest = self.store.sightings_where(newest=20)
            merges = self.store.merge_rows(10)
        return {"identities": identities, "sightings": sightings, "model": self.store.model(),
                "cameras": [_camera(row) for row in cameras], "latest_sightings": [_sighting(s) for s in latest],
                "merges": [_merge(m) for m in merges]}

    def cameras(self) -> list[dict]:
        with self._lock:
            return [_camera(row) for row in self.store.camera_rows()]

    def identities(self, page: int = 1) -> dict:
        page = max(page, 1)
        with self._lock:
            _, total = self.store.counts()
            rows = self.store.identity_rows(PAGE_SIZE, (page - 1) * PAGE_SIZE)
            ids = [row["id"] for row in rows]
            cameras, thumbnails = self.store.cameras_by_identity(ids), self.store.thumbnail_keys(ids)
        return {"page": page, "pages": max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1), "total": total,
                "identities": [_identity(row, cameras[row["id"]], thumbnails[row["id"]]) for row in rows]}

    def identity(self, identity: int) -> dict | None:
        """One identity with its cameras, sightings (oldest first) and lineage; an identity merged
        away answers with the one it was merged into (``asked``, ``merged_into``)."""
        with self._lock:
            survivor = self.store.resolve(identity)
            rows = self.store.identity_rows(1, ids=[survivor])
            if not rows:
                return None
            cameras = self.store.cameras_by_identity([survivor])[survivor]
            thumbnails = self.store.thumbnail_keys([survivor])[survivor]
            sightings = self.store.sightings_where(identity=survivor, newest=MAX_SIGHTINGS)
            merged_from = self.store.merged_into(survivor)
        return {**_identity(rows[0], cameras, thumbnails), "asked": identity,
                "merged_into": survivor if survivor != identity else None, "merged_from": merged_from,
                "sightings": [_sighting(s) for s in reversed(sightings)]}

    def sightings(self, camera: str | None = None, since: float | None = None, until: float | None = None,
                  identity: int | None = None) -> dict:
        with self._lock:
            found = self.store.sightings_where(identity=identity, camera=camera, since=since, until=until,
                                               newest=MAX_SIGHTINGS)
        return {"camera": camera, "since": iso(since), "until": iso(until), "identity": identity,
                "sightings": [_sighting(s) for s in found], "limit": MAX_SIGHTINGS}

    def counts(self, camera: str | None = None, since: float | None = None, until: float | None = None) -> dict:
        """How many people (distinct identities) and sightings, by camera and time."""
        with self._lock:
            people, sightings = self.store.people_seen(camera, since, until)
        return {"camera": camera, "since": iso(since), "until": iso(until), "people": people,
                "sightings": sightings}

    def thumbnail(self, site: str, camera: str, seq: int) -> bytes | None:
        with self._lock:
            return self.store.thumbnail(site, camera, seq)

    def merges(self, limit: int = 100) -> dict:
        with self._lock:
            return {"merges": [_merge(m) for m in self.store.merge_rows(min(max(limit, 1), MAX_SIGHTINGS))]}


def _identity(row: dict, cameras: dict[str, int], thumbnails: dict[str, tuple[str, int]]) -> dict:
    return {"id": row["id"], "first_seen": iso(row["created"]), "last_seen": iso(row["last_seen"]),
            "sighting_count": row["sightings"], "modalities": [m for m in row["modalities"].split(",") if m],
            "cameras": dict(sorted(cameras.items())),
            "thumbnails": {camera: thumbnail_url(site, camera, seq)
                           for camera, (site, seq) in sorted(thumbnails.items())}}


def thumbnail_url(site: str, camera: str, seq: int) -> str:
    return f"/thumbnails/{quote(site, safe='')}/{quote(camera, safe='')}/{seq}.jpg"


def _sighting(row: dict) -> dict:
    return {"site": row["site"], "camera_id": row["camera_id"], "seq": row["seq"], "track_id": row["track_id"],
            "identity": row["identity_id"], "modality": row["modality"], "first_seen": iso(row["first_ts"]),
            "last_seen": iso(row["ts"]), "similarity": row["similarity"], "box": row["box"],
            "first_ts": row["first_ts"], "ts": row["ts"]}


def _camera(row: dict) -> dict:
    return {"site": row["site"], "camera_id": row["camera_id"], "sightings": row["sightings"],
            "last_seen": iso(row["last_ts"])}


def _merge(row: dict) -> dict:
    return {"from": row["from"], "into": row["into"], "at": iso(row["ts"])}
