"""Tracking: an IoU tracker per camera, Hungarian assignment, ``n_init`` and ``max_age``.

A track is confirmed after ``n_init`` consecutive matches (one-frame false alarms never
reach the embedder) and ends after ``max_age`` frames without a match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

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


@dataclass
class Track:
    track_id: int
    box: tuple[float, float, float, float]
    score: float
    hits: int = 1
    misses: int = 0
    confirmed: bool = False


class IoUTracker:
    def __init__(self, next_id: Callable[[], int], iou_threshold: float = 0.3, n_init: int = 3, max_age: int = 15):
        self.next_id, self.iou_threshold, self.n_init, self.max_age = next_id, iou_threshold, n_init, max_age
        self.tracks: list[Track] = []

    def update(self, detections: list[Detection]) -> tuple[list[Track], list[Track]]:
        """Match this frame's detections; returns (confirmed tracks seen now, tracks that ended)."""
        boxes = np.array([d.box for d in detections], dtype=float).reshape(-1, 4)
        track_boxes = np.array([t.box for t in self.tracks], dtype=float).reshape(-1, 4)
        iou = iou_matrix(track_boxes, boxes)
        matched_tracks, matched_detections = set(), set()
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            for row, col in zip(rows, cols, strict=True):
                if iou[row, col] >= self.iou_threshold:
                    track, detection = self.tracks[row], detections[col]
                    track.box, track.score = detection.box, detection.score
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
            if track.misses > self.max_age or (not track.confirmed and track.misses > 0):
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
