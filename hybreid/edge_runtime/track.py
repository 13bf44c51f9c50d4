"""Tracking: an IoU tracker per camera with constant-velocity motion, ``n_init`` and ``max_age``.

Each track predicts where its box is now from its smoothed velocity, and detections are
assigned to the predicted boxes (Hungarian assignment on IoU). Tracks that found no box
that way get a second chance by the distance of box centres, relative to the track's
height: a person walking on through a few missed detections (occlusion, a shadow that
merged two people into one blob) keeps the track instead of starting a new one.
Without motion, 795 frames of real footage (OpenCV's vtest.avi) gave 120 tracklets with
a median length of 12 frames.

A track is confirmed after ``n_init`` consecutive matches (one-frame false alarms never
reach the embedder) and ends after ``max_age`` frames without a match. A track also
follows its box's usual width: a box much wider than that is a blob this person shares
with someone who walked into it (background subtraction merges people who touch), and
its crops describe two people.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from hybreid.edge_runtime.site import TrackerSettings
from hybreid.edge_runtime.stages import Detection


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair of ``[x, y, w, h]`` boxes."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros((len(boxes_a), len(boxes_b)))
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    x1 = np.maximum(a[..., 0], b[..., 0])
    y1 = np.maximum(a[..., 1], b[..., 1])
    x2 = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
    y2 = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / np.maximum(union, 1e-9)


WIDENED = 1.35  # a stride widens a walker's box by up to a third; two people side by side by more


@dataclass
class Track:
    track_id: int
    box: tuple[float, float, float, float]
    score: float
    hits: int = 1
    misses: int = 0
    confirmed: bool = False
    velocity: tuple[float, float] = (0.0, 0.0)  # of the box's top-left corner, pixels per frame
    # Boxes of the frames before confirmation, oldest first (consecutive, since a tentative
    # track ends at its first miss); taken once by whoever records the track's history.
    unconfirmed_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    aspect: float = 0.0  # running width / height of the boxes that showed this person alone

    @property
    def widened(self) -> bool:
        """The box is much wider than this person has been: someone walked into the same blob."""
        x, y, w, h = self.box
        return self.aspect > 0 and w / max(h, 1.0) > WIDENED * self.aspect

    def left_view(self, frame_size: tuple[int, int]) -> bool:
        """The predicted box is cut by the frame's edge it is moving towards (or is past it):
        the person is walking out of view."""
        x, y, w, h = self.predicted()
        width, height = frame_size
        vx, vy = self.velocity
        return ((x < 0 and vx < 0) or (x + w > width and vx > 0) or (y < 0 and vy < 0) or (y + h > height and vy > 0)
                or not (0 <= x + w / 2 < width and 0 <= y + h / 2 < height))

    def predicted(self) -> tuple[float, float, float, float]:
        """Where the box is now, ``misses + 1`` frames after it was last seen."""
        steps = self.misses + 1
        x, y, w, h = self.box
        return x + self.velocity[0] * steps, y + self.velocity[1] * steps, w, h

    def follow(self, detection: Detection, smoothing: float) -> None:
        steps = self.misses + 1
        dx, dy = (detection.box[0] - self.box[0]) / steps, (detection.box[1] - self.box[1]) / steps
        if self.hits > 1 or self.misses:  # the first step has no velocity to smooth yet
            dx = smoothing * self.velocity[0] + (1 - smoothing) * dx
            dy = smoothing * self.velocity[1] + (1 - smoothing) * dy
        self.velocity = (dx, dy)
        self.box, self.score = detection.box, detection.score
        if not self.widened:
            ratio = detection.box[2] / max(detection.box[3], 1.0)
            self.aspect = smoothing * self.aspect + (1 - smoothing) * ratio if self.aspect else ratio


class IoUTracker:
    def __init__(self, next_id: Callable[[], int], settings: TrackerSettings | None = None,
                 max_center_distance: float = 0.5, velocity_smoothing: float = 0.6):
        settings = settings or TrackerSettings()
        self.next_id = next_id
        self.iou_threshold, self.n_init, self.max_age = settings.iou_threshold, settings.n_init, settings.max_age
        self.max_center_distance, self.velocity_smoothing = max_center_distance, velocity_smoothing
        self.tracks: list[Track] = []

    def _assign(self, detections: list[Detection]) -> list[tuple[int, int]]:
        """(track, detection) pairs: by IoU with the predicted boxes, then the tracks left over by
        centre distance (in track heights) to the detections left over, of a similar height."""
        boxes = np.array([d.box for d in detections], dtype=float).reshape(-1, 4)
        predicted = np.array([t.predicted() for t in self.tracks], dtype=float).reshape(-1, 4)
        iou = iou_matrix(predicted, boxes)
        pairs = []
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= self.iou_threshold]
        left_tracks = [i for i in range(len(self.tracks)) if i not in {r for r, _ in pairs} and
                       self.tracks[i].confirmed]
        left_detections = [j for j in range(len(detections)) if j not in {c for _, c in pairs}]
        if left_tracks and left_detections:
            a, b = predicted[left_tracks], boxes[left_detections]
            centre_a, centre_b = a[:, None, :2] + a[:, None, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2
            distance = np.linalg.norm(centre_a - centre_b, axis=2) / np.maximum(a[:, None, 3], 1.0)
            height_ratio = b[None, :, 3] / np.maximum(a[:, None, 3], 1.0)
            cost = np.where((height_ratio > 0.67) & (height_ratio < 1.5), distance, np.inf)
            cost = np.where(cost <= self.max_center_distance, cost, 1e6)
            rows, cols = linear_sum_assignment(cost)
            pairs += [(left_tracks[r], left_detections[c]) for r, c in zip(rows, cols, strict=True)
                      if cost[r, c] <= self.max_center_distance]
        return pairs

    def update(self, detections: list[Detection], frame_size: tuple[int, int] | None = None
               ) -> tuple[list[Track], list[Track]]:
        """Match this frame's detections; returns (confirmed tracks seen now, tracks that ended).

        ``frame_size`` (width, height): a track not seen now whose predicted box the frame's
        edge cuts, moving out, ends at once. Coasting there for ``max_age`` frames let the
        next person to enter at that edge continue the track of the one who left.
        """
        matched_tracks, matched_detections = set(), set()
        for row, col in self._assign(detections):
            track = self.tracks[row]
            if not track.confirmed:
                track.unconfirmed_boxes.append(track.box)
            track.follow(detections[col], self.velocity_smoothing)
            track.hits, track.misses = track.hits + 1, 0
            track.confirmed = track.confirmed or track.hits >= self.n_init
            matched_tracks.add(row)
            matched_detections.add(col)
        ended, alive = [], []
        for index, track in enumerate(self.tracks):
            if index not in matched_tracks:
                track.misses += 1
                if not track.confirmed:
                    track.hits = 0  # n_init counts consecutive matches
            walked_out = track.misses > 0 and frame_size is not None and track.left_view(frame_size)
            if track.misses > self.max_age or (not track.confirmed and track.misses > 0) or walked_out:
                if track.confirmed:
                    ended.append(track)
            else:
                alive.append(track)
        for col, detection in enumerate(detections):
            if col not in matched_detections:
                alive.append(Track(self.next_id(), detection.box, detection.score,
                                   confirmed=self.n_init <= 1))
        self.tracks = alive
        seen = [t for t in self.tracks if t.confirmed and t.misses == 0]
        return seen, ended

    def flush(self) -> list[Track]:
        """End every confirmed track (at shutdown)."""
        ended = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        return ended
