"""The edge runtime: capture -> detect -> track -> embed -> publish, for every camera of a box.

Threads: one capture thread per camera, this processing loop (detection and tracking
for every camera), one embedding worker (batches crops across cameras), and the
publisher (outbox -> MQTT). SIGINT/SIGTERM stop it cleanly: capture stops, every open
track is finalised and embedded, and the outbox is flushed to the broker for up to
``flush_timeout_s``; what is not acknowledged by then stays on disk for the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybreid import protocol
from hybreid.config import load_yaml
from hybreid.edge_runtime.annotate import Annotator
from hybreid.edge_runtime.capture import CameraCapture
from hybreid.edge_runtime.detect import BoxFilter, make_detector
from hybreid.edge_runtime.embed import EmbedderFailed, EmbedWorker, Split, TrackEnd, TrackletAggregator
from hybreid.edge_runtime.outbox import Outbox
from hybreid.edge_runtime.publish import Publisher
from hybreid.edge_runtime.site import SiteFile, resolve_paths, validate_site
from hybreid.edge_runtime.stages import Crop, Frame, TrackletFeature
from hybreid.edge_runtime.thumbnails import BestShots
from hybreid.edge_runtime.track import MotionTracker, logged_boxes
from hybreid.errors import UserError
from hybreid.files import MAX_PASSWORD_BYTES, read_text_file
from hybreid.mqtt import BrokerConfig
from hybreid.mqtt.client import check_tls_files

log = logging.getLogger("hybreid.edge")


@dataclass
class SiteConfig:
    """A site file validated (:class:`.site.SiteFile`), its relative paths resolved and the
    broker's password read: its sections are what the runtime's components take."""

    settings: SiteFile
    broker: BrokerConfig

    @classmethod
    def from_dict(cls, data: dict, base: Path = Path("."), source: str = "site config") -> SiteConfig:
        """Validate ``data`` against the site schema (:mod:`.site`); relative paths are relative to ``base``."""
        settings = resolve_paths(validate_site(data, source), base)
        given = settings.broker
        password = given.password
        if given.password_file:
            password = read_text_file(given.password_file, f"{source}: broker.password_file",
                                      MAX_PASSWORD_BYTES).strip()
        broker = BrokerConfig(url=given.url, client_id=given.client_id or f"hybreid-edge-{settings.site}-"
                              f"{settings.box_id}", username=given.username, password=password,
                              ca_certs=given.ca_certs, certfile=given.certfile, keyfile=given.keyfile,
                              protocol=given.protocol, keepalive=given.keepalive)
        check_tls_files(broker)  # before the outbox is created or anything runs
        return cls(settings, broker)

    @classmethod
    def load(cls, path: str | Path) -> SiteConfig:
        path = Path(path)
        return cls.from_dict(load_yaml(path), path.parent, source=f"site file {path}")


class Metrics:
    """Counters and stage timings; printed periodically and on exit."""

    def __init__(self):
        self.started = time.monotonic()
        self.frames = 0
        self.detections = 0
        self.crops = 0
        self.tracklets = 0
        self.seconds = {"detect": 0.0, "track": 0.0}

    def snapshot(self, runtime: EdgeRuntime) -> dict:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        worker, publisher, outbox = runtime.worker, runtime.publisher, runtime.outbox
        frames = max(self.frames, 1)
        return {
            "elapsed_s": elapsed,
            "frames": self.frames,
            "fps": self.frames / elapsed,
            "detect_ms_per_frame": 1000 * self.seconds["detect"] / frames,
            "track_ms_per_frame": 1000 * self.seconds["track"] / frames,
            "detections": self.detections,
            "crops": self.crops,
            "embed_backend": runtime.embedder.backend,
            "embed_batches": worker.batches,
            "embed_batch_fill": worker.batch_fill,
            "embed_ms_per_crop": 1000 * worker.embed_seconds / max(worker.crops, 1),
            "tracklets_published": self.tracklets,
            "outbox_depth": outbox.depth(),
            "outbox": outbox.stats(),
            "mqtt_published": publisher.published,
            "mqtt_acknowledged": publisher.acknowledged,
            "mqtt_refused": publisher.refused,
            "mqtt_disconnects": publisher.disconnects,
            "frames_dropped": {c.config.id: c.frames_dropped for c in runtime.captures},
            "reconnects": {c.config.id: c.reconnects for c in runtime.captures},
        }


# Relative weights in a tracklet's mean of crops that show more than its person (its blob
# has widened: someone walked into it) or less (the frame's edge cuts the person); chosen on
# the default synthetic site (docs/benchmarks.md, "Edge pipeline and matcher").
SHARED_CROP_WEIGHT = 0.05
CUT_CROP_WEIGHT = 0.1


def crop_quality(score: float, box: tuple[float, float, float, float], reference_height: float = 128.0,
                 shared: bool = False, cut: bool = False) -> float:
    """Detector score x how close the person's height comes to the model's input height,
    weighed down for a crop ``shared`` with another person or ``cut`` by the frame's edge."""
    quality = float(np.clip(score, 0, 1) * min(1.0, box[3] / reference_height))
    return quality * (SHARED_CROP_WEIGHT if shared else 1.0) * (CUT_CROP_WEIGHT if cut else 1.0)


def published_track_log(track_log: list[tuple[str, int, int, tuple]], splits: list[Split]
                        ) -> list[tuple[str, int, int, tuple]]:
    """The track log under the track ids the tracklets were published with: a split track's
    boxes from the split's frame on belong to its new id."""
    by_track: dict[tuple[str, int], list[Split]] = {}
    for split in sorted(splits, key=lambda split: split.frame):
        by_track.setdefault((split.camera_id, split.track_id), []).append(split)
    if not by_track:
        return track_log
    result = []
    for camera, frame, track, box in track_log:
        published = track
        for split in by_track.get((camera, track), ()):
            if frame >= split.frame:
                published = split.new_track_id
        result.append((camera, frame, published, box))
    return result


class EdgeRuntime:
    def __init__(self, config: SiteConfig, embedder=None, annotator: Annotator | None = None):
        """``annotator``: draws what each camera detects and tracks (``--save-annotated``, ``--preview``)."""
        from hybreid.inference import load_embedder

        self.config = config
        settings = self.settings = config.settings
        model = settings.model
        self.embedder = embedder or load_embedder(model.path, threads=model.threads, providers=model.providers,
                                                  device=model.device)
        self.contract = self.embedder.contract
        self._probe_embedder()
        self.detectors = self._make_detectors()  # a detector file that does not load: before any file is made
        self.outbox = Outbox(settings.outbox.path, settings.outbox)
        self.publisher = Publisher(self.outbox, config.broker, settings.site, [c.id for c in settings.cameras],
                                   camera_logins=settings.broker.camera_logins)
        self.box_filter = BoxFilter(settings.box_filter)
        self.trackers = {c.id: MotionTracker(lambda cid=c.id: self.outbox.next_track_id(cid), settings.tracker)
                         for c in settings.cameras}
        self.crop_interval, self.max_crops = settings.embed.crop_interval, settings.embed.max_crops_per_track
        self.aggregator = TrackletAggregator(self._publish_tracklet, settings.publish.interval_s,
                                             settings.embed.split_below, self.outbox.next_track_id)
        self.worker = EmbedWorker(self.embedder, self.aggregator, settings.embed)
        self.captures = [CameraCapture(c) for c in settings.cameras]
        self.crops_per_track: dict[tuple[str, int], int] = {}
        self.metrics = Metrics()
        self.annotator = annotator
        self.best_shots = BestShots() if settings.publish.thumbnails else None
        self._stopping = threading.Event()
        # (camera, frame, track, box) of every confirmed track in every frame, for scoring
        # tracklets against ground truth (tests, benchmarks, the demo).
        self.track_log: list[tuple[str, int, int, tuple]] | None = [] if settings.metrics.record_tracks else None

    def _make_detectors(self) -> dict[str, object]:
        """Each camera's detector; cameras configured alike share one (one compiled CNN in memory)."""
        made: list[tuple[object, object]] = []  # (settings, detector): settings compare by value
        detectors = {}
        for camera in self.settings.cameras:
            options = self.settings.detector_of(camera)
            detector = next((built for settings, built in made if settings == options), None)
            if detector is None:
                detector = make_detector(options)
                made.append((options, detector))
            detectors[camera.id] = detector
        return detectors

    def _probe_embedder(self) -> None:
        """Before any thread starts: a graph that does not run as its contract says fails here,
        in one sentence, not later in the embedding thread."""
        self.embedder.probe(self.settings.model.path)

    # -- stages -------------------------------------------------------------------------

    def _publish_tracklet(self, feature: TrackletFeature) -> None:
        """Aggregator callback (embedding thread): store the record in the outbox."""
        thumbnail = (self.best_shots.take(feature.camera_id, feature.track_id)
                     if self.best_shots is not None and feature.final else None)

        def build(seq: int) -> bytes:
            return protocol.encode_feature(protocol.FeatureMessage(
                site=self.settings.site, camera_id=feature.camera_id, modality=feature.modality, ts=feature.ts,
                seq=seq, track_id=feature.track_id, box=feature.box, score=feature.score,
                model_name=self.contract.model, model_hash=self.contract.weights_sha256,
                embedding=feature.embedding, quality=feature.quality, frames=feature.frames,
                first_ts=feature.first_ts, final=feature.final, thumbnail=thumbnail))

        self.outbox.add(feature.camera_id, protocol.features_topic(self.settings.site, feature.camera_id), build)
        self.metrics.tracklets += 1
        if self.annotator is not None:
            self.annotator.published(feature.camera_id, feature.track_id)

    def process(self, frame: Frame) -> None:
        """Detect and track one frame; queue crops of confirmed tracks and the ends of tracks."""
        start = time.perf_counter()
        detections = self.box_filter(self.detectors[frame.camera_id](frame.camera_id, frame.image))
        detected = time.perf_counter()
        height, width = frame.image.shape[:2]
        seen, ended = self.trackers[frame.camera_id].update(detections, (width, height))
        self.metrics.seconds["detect"] += detected - start
        self.metrics.seconds["track"] += time.perf_counter() - detected
        self.metrics.frames += 1
        self.metrics.detections += len(detections)
        if self.annotator is not None:
            self.annotator.draw(frame, detections, seen)
        for track in seen:
            if self.track_log is not None:
                self.track_log.extend((frame.camera_id, index, track.track_id, box)
                                      for index, box in logged_boxes(track, frame.index))
            key = (frame.camera_id, track.track_id)
            taken = self.crops_per_track.get(key, 0)
            if frame.index % self.crop_interval or taken >= self.max_crops or track.shared:
                continue  # a shared box is where the person should be inside someone else's region
            x, y, w, h = (int(round(v)) for v in track.box)
            x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
            if x1 - x0 < 4 or y1 - y0 < 8:
                continue
            self.crops_per_track[key] = taken + 1
            self.metrics.crops += 1
            crop = frame.image[y0:y1, x0:x1].copy()
            if self.best_shots is not None:
                self.best_shots.offer(frame.camera_id, track.track_id, crop)
            self.worker.submit(Crop(frame.camera_id, frame.modality, track.track_id, frame.index, frame.ts,
                                    track.box, track.score, crop,
                                    crop_quality(track.score, track.box, self.contract.height, shared=track.widened,
                                                 cut=x0 <= 1 or x1 >= width - 1)))
        for track in ended:
            self._end(frame.camera_id, track.track_id)

    def _end(self, camera_id: str, track_id: int) -> None:
        self.crops_per_track.pop((camera_id, track_id), None)
        self.worker.submit(TrackEnd(camera_id, track_id))

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()
        self.publisher.start()
        for capture in self.captures:
            capture.start()

    def request_stop(self, *_) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    def run(self, max_seconds: float | None = None) -> dict:
        """Process until every file source is exhausted, a stop is requested, or ``max_seconds``."""
        self.start()
        interval = self.settings.metrics.interval_s
        next_report = time.monotonic() + interval
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        failure = None
        while not self._stopping.is_set():
            idle = True
            try:
                for capture in self.captures:
                    frame = capture.get(timeout=0.0)
                    if frame is not None:
                        idle = False
                        self.process(frame)
            except EmbedderFailed as exc:
                failure = f"the embedder stopped ({exc}); nothing more can be published"
                break
            if all(capture.done for capture in self.captures):
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            if idle:
                time.sleep(0.005)
            if time.monotonic() >= next_report:
                log.info("edge metrics: %s", self.metrics.snapshot(self))
                next_report += interval
            self._report_camera_states()
        summary = self.shutdown()
        failure = failure or next((capture.error for capture in self.captures if capture.error), None)
        silent = [capture.config.id for capture in self.captures if not capture.frames_read]
        if not failure and silent:
            failure = (f"camera(s) {', '.join(silent)} delivered no frame in {summary['elapsed_s']:.0f} s (their "
                       "status said no_frames); check their source")
        if failure:
            raise UserError(f"{failure}; what was published is in the summary logged above")
        return summary

    def _report_camera_states(self) -> None:
        """Each camera's retained status from its frames: ``online`` while they arrive,
        ``no_frames`` when none came for ``no_frames_after_s``."""
        now, quiet = time.monotonic(), self.settings.metrics.no_frames_after_s
        for capture, status in zip(self.captures, self.publisher.statuses, strict=True):
            if capture.done:  # a video file played to its end: the box's stop says offline
                continue
            arrived = capture.last_frame_at is not None and now - capture.last_frame_at < quiet
            status.report("online" if arrived else "no_frames")

    def shutdown(self) -> dict:
        for capture in self.captures:
            capture.stop()
        for camera_id, tracker in self.trackers.items():
            for track in tracker.flush():
                try:
                    self._end(camera_id, track.track_id)
                except EmbedderFailed:
                    break
        self.worker.drain()
        if self.track_log is not None:
            self.track_log = published_track_log(self.track_log, self.aggregator.splits)
        flushed = self.publisher.flush(self.settings.publish.flush_timeout_s)
        snapshot = self.metrics.snapshot(self)
        snapshot["flushed"] = flushed
        self.publisher.stop()
        self.outbox.close()
        if self.annotator is not None:
            self.annotator.close()
        log.info("edge stopped: %s", snapshot)
        return snapshot
