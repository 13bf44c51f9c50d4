"""Embedding: crops from every camera batched to one embedder, and tracklet means.

The :class:`EmbedWorker` thread collects crops into a batch until it holds ``max_batch``
crops or the oldest has waited ``max_wait_ms``, embeds them in one call, and hands each
embedding to the :class:`TrackletAggregator`. A track's end travels through the same
queue behind its crops, so a tracklet is finalised only after all its crops are embedded.

A camera track can hold two people: two walking as a pair merge into one region and part
again, and the tracker may carry on with the other one. The aggregator watches each
track's last few crops against the rest: where they stop looking like the same person
(``split_below``), what came before is published as a finished tracklet and the track
goes on under a new track id, so no published tracklet mixes the two.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hybreid.edge_runtime.site import EmbedSettings
from hybreid.edge_runtime.stages import Crop, TrackletFeature

log = logging.getLogger("hybreid.edge.embed")


class EmbedderFailed(RuntimeError):
    """The embedding thread died; the box cannot publish anything more."""

    def __init__(self, cause: BaseException):
        detail = " ".join(str(cause).split())  # ONNX Runtime's messages span lines
        super().__init__(f"{cause.__class__.__name__}: {detail[:300]}")
        self.cause = cause


@dataclass
class TrackEnd:
    camera_id: str
    track_id: int


@dataclass
class _Tracklet:
    camera_id: str
    modality: str
    track_id: int  # the id it is published under (a split track goes on under a new one)
    first_ts: float
    weighted_sum: np.ndarray
    weight: float = 0.0
    frames: int = 0
    last: Crop | None = None
    best_score: float = 0.0
    last_published: float = field(default=0.0)
    # the last crops, (embedding x weight, weight, crop), newest last: what a split would take
    recent: deque = field(default_factory=deque)
    settled_last: Crop | None = None  # the newest crop before them


@dataclass(frozen=True)
class Split:
    """From ``frame`` on, camera track ``track_id`` was published as ``new_track_id``."""

    camera_id: str
    track_id: int
    frame: int
    new_track_id: int


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


class TrackletAggregator:
    """Per tracklet the quality-weighted mean of L2-normalised embeddings (a crop's weight
    is its quality: detector score x size), published when the track ends and every
    ``interval_s`` seconds of video time while it lasts.

    With ``split_below`` (a cosine) and ``new_track_id`` (camera -> an unused track id), a
    track whose last ``split_crops`` crops, all of the modality of the ones before, each
    fall below ``split_below`` to the mean of at least ``split_crops`` crops before them is
    split at the first of them (:class:`Split`, kept in ``splits``).
    """

    def __init__(self, emit, interval_s: float, split_below: float | None = None,
                 new_track_id: Callable[[str], int] | None = None, split_crops: int = 4):
        if split_below is not None and new_track_id is None:
            raise ValueError("splitting tracks needs new_track_id")
        self.emit, self.interval_s = emit, interval_s
        self.split_below, self.new_track_id, self.split_crops = split_below, new_track_id, split_crops
        self.tracklets: dict[tuple[str, int], _Tracklet] = {}
        self.splits: list[Split] = []

    def add(self, crop: Crop, embedding: np.ndarray) -> None:
        key = (crop.camera_id, crop.track_id)
        tracklet = self.tracklets.get(key)
        if tracklet is None:
            tracklet = _Tracklet(crop.camera_id, crop.modality, crop.track_id, crop.ts,
                                 np.zeros_like(embedding, dtype=np.float64), last_published=crop.ts)
            self.tracklets[key] = tracklet
        weight = max(crop.quality, 1e-3)
        tracklet.weighted_sum += weight * embedding
        tracklet.weight += weight
        tracklet.frames += 1
        tracklet.best_score = max(tracklet.best_score, crop.score)
        tracklet.last = crop
        if self.split_below is not None:
            tracklet.recent.append((weight * embedding.astype(np.float64), weight, crop))
            if len(tracklet.recent) > self.split_crops:
                tracklet.settled_last = tracklet.recent.popleft()[2]
            if self._changed_person(tracklet):
                tracklet = self._split(key, tracklet)
        if self.interval_s and crop.ts - tracklet.last_published >= self.interval_s:
            tracklet.last_published = crop.ts
            self.emit(self._feature(tracklet, final=False))

    def _changed_person(self, tracklet: _Tracklet) -> bool:
        if len(tracklet.recent) < self.split_crops or tracklet.frames < 2 * self.split_crops:
            return False
        if any(crop.modality != tracklet.modality for _, _, crop in tracklet.recent):
            return False  # a day/night camera switching: the same person, looking otherwise
        before = _unit(tracklet.weighted_sum - sum(vector for vector, _, _ in tracklet.recent))
        # every one of the last crops unlike the person before: the split falls on the first of them
        return all(float(_unit(vector) @ before) < self.split_below for vector, _, _ in tracklet.recent)

    def _split(self, key: tuple[str, int], tracklet: _Tracklet) -> _Tracklet:
        """Publish the crops before the recent ones as a finished tracklet; the recent ones
        start the track's next tracklet, under a new id."""
        recent = list(tracklet.recent)
        first = recent[0][2]
        recent_sum, recent_weight = sum(vector for vector, _, _ in recent), sum(weight for _, weight, _ in recent)
        before = _Tracklet(tracklet.camera_id, tracklet.modality, tracklet.track_id, tracklet.first_ts,
                           tracklet.weighted_sum - recent_sum, tracklet.weight - recent_weight,
                           tracklet.frames - len(recent), tracklet.settled_last, tracklet.best_score)
        self.emit(self._feature(before, final=True))
        after = _Tracklet(tracklet.camera_id, tracklet.modality, self.new_track_id(tracklet.camera_id), first.ts,
                          recent_sum, recent_weight, len(recent), recent[-1][2],
                          max(crop.score for _, _, crop in recent), first.ts, deque(recent))
        self.splits.append(Split(tracklet.camera_id, key[1], first.frame_index, after.track_id))
        self.tracklets[key] = after
        return after

    def end(self, camera_id: str, track_id: int) -> None:
        tracklet = self.tracklets.pop((camera_id, track_id), None)
        if tracklet is not None and tracklet.frames:
            self.emit(self._feature(tracklet, final=True))

    @staticmethod
    def _feature(tracklet: _Tracklet, final: bool) -> TrackletFeature:
        mean = tracklet.weighted_sum / tracklet.weight
        mean = (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)
        last = tracklet.last
        return TrackletFeature(tracklet.camera_id, tracklet.modality, tracklet.track_id, tracklet.first_ts, last.ts,
                               last.box, tracklet.best_score, tracklet.weight / tracklet.frames, tracklet.frames,
                               mean, final)


class EmbedWorker(threading.Thread):
    def __init__(self, embedder, aggregator: TrackletAggregator, settings: EmbedSettings | None = None,
                 queue_size: int = 512):
        super().__init__(name="embedder", daemon=True)
        settings = settings or EmbedSettings()
        self.embedder, self.aggregator = embedder, aggregator
        self.max_batch, self.max_wait = settings.max_batch, settings.max_wait_ms / 1000
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self.error: BaseException | None = None  # what stopped the thread, if it failed
        self.batches = self.crops = 0
        self.embed_seconds = 0.0
        self.lock = threading.Lock()  # held while the aggregator changes (the runtime reads it)

    def submit(self, item: Crop | TrackEnd) -> None:
        """Blocks when the queue is full: back-pressure slows capture rather than losing crops.

        Raises :class:`EmbedderFailed` once the thread has died, rather than wait for ever.
        """
        while True:
            if self.error is not None:
                raise EmbedderFailed(self.error)
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _embed(self, batch: list[Crop]) -> None:
        start = time.perf_counter()
        embeddings = self.embedder.embed([crop.image for crop in batch])
        self.embed_seconds += time.perf_counter() - start
        self.batches += 1
        self.crops += len(batch)
        with self.lock:
            for crop, embedding in zip(batch, embeddings, strict=True):
                self.aggregator.add(crop, embedding)

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # reported by the runtime, which stops the box with one sentence
            self.error = exc
            log.error("the embedder stopped: %s: %s", exc.__class__.__name__, exc)

    def _loop(self) -> None:
        batch: list[Crop] = []
        deadline = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self.queue.get(timeout=timeout if timeout is not None else 0.1)
            except queue.Empty:
                item = None
            if item is None:
                if batch and deadline is not None and time.monotonic() >= deadline:
                    self._embed(batch)
                    batch, deadline = [], None
                if self._stopping.is_set() and self.queue.empty() and not batch:
                    return
                continue
            if isinstance(item, TrackEnd):
                if batch:
                    self._embed(batch)
                    batch, deadline = [], None
                with self.lock:
                    self.aggregator.end(item.camera_id, item.track_id)
            else:
                batch.append(item)
                deadline = deadline or time.monotonic() + self.max_wait
                if len(batch) >= self.max_batch:
                    self._embed(batch)
                    batch, deadline = [], None
            self.queue.task_done()

    def drain(self) -> None:
        """Process everything queued, then stop (at once if the thread has failed)."""
        self._stopping.set()
        if self.is_alive():
            self.join()

    @property
    def batch_fill(self) -> float:
        return self.crops / max(self.batches, 1) / self.max_batch
