"""Tracking: one tracker per camera; a Kalman filter of each person's box, Hungarian
assignment on IoU, and what a crossing or a pair does to boxes handled on purpose.

- **Motion.** Each track's box centre, width and height and their rates of change are a
  constant-velocity Kalman filter (:class:`BoxKalman`), as SORT and ByteTrack do.
  Detections are assigned to the predicted boxes by IoU; tracks left over get a second
  chance by the distance of box centres relative to the track's height: a person walking
  on through a few missed detections keeps the track.
- **Shared detections.** Background subtraction merges people who touch into one region.
  Where the predicted boxes of two confirmed tracks lie mostly inside one detection, that
  detection describes neither person: the track it was assigned to and the tracks hidden in
  it follow their predictions (they are seen, with the predicted box, and flagged
  ``shared``) instead of taking the merged box and its motion. Once the people part, their
  predictions meet their own boxes again. Following the merged box swapped the two people
  of a crossing.
- **No turning back at the edge.** A track walking out at the frame's edge is not given a
  detection that lies behind it (against its velocity, from its last observed centre): the
  person walking out and one walking in there overlap for a moment, and the track went on
  with the entrant (OC-SORT weighs the direction of motion for the same reason). Inside the
  frame the rule cut real walkers' tracks: on ``vtest.avi`` slow, jittering boxes made 89
  tracks instead of 54.

A track is confirmed after ``n_init`` consecutive matches (one-frame false alarms never
reach the embedder) and ends after ``max_age`` frames without a match, or at its first miss
once its predicted box leaves the frame. A track also follows its box's usual width: a box
much wider than that is a blob this person shares with someone, and its crops describe two
people.

Measured by ``hybreid bench tracks`` (the detector and tracker alone, IDF1 with every
track given its true person) over five renderings of the default synthetic site: 0.888
mean / 0.845 minimum with the earlier tracker (one-step smoothed velocity of the top-left
corner, merged boxes followed), 0.928 / 0.905 with this one. The constants below were
chosen on seeds 0-2 and held on 3-4 (docs/benchmarks.md, "Tracks that do not swap").

Written here rather than taken from a library: filterpy (MIT) needs matplotlib on the
edge box, Roboflow's ``trackers`` needs the full opencv-python and supervision (PyAV);
BoxMOT is AGPL. The filter is the textbook one in a few lines of numpy.
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
    return _overlap(boxes_a, boxes_b, of_first=False)


def _overlap(boxes_a: np.ndarray, boxes_b: np.ndarray, of_first: bool) -> np.ndarray:
    """Intersection of every pair of ``[x, y, w, h]`` boxes over their union, or over the
    first box's area (``of_first``: how much of ``a`` lies inside ``b``)."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros((len(boxes_a), len(boxes_b)))
    a = boxes_a[:, None, :]
    b = boxes_b[None, :, :]
    x1 = np.maximum(a[..., 0], b[..., 0])
    y1 = np.maximum(a[..., 1], b[..., 1])
    x2 = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
    y2 = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = a[..., 2] * a[..., 3]
    denominator = area_a if of_first else area_a + b[..., 2] * b[..., 3] - inter
    return inter / np.maximum(denominator, 1e-9)


WIDENED = 1.35  # a stride widens a walker's box by up to a third; two people side by side by more
# Noise of the filter, per frame, as shares of the box's height (DeepSORT's scaling; the
# velocity noise measured, docs/benchmarks.md, "Where the code's constants come from").
POSITION_NOISE, VELOCITY_NOISE = 1 / 20, 1 / 80
# A detection is shared when at least this share of two confirmed tracks' predicted boxes
# lies inside it (measured, as above).
SHARED_INSIDE = 0.75
# No turning back, at the edge, for a track faster than this share of its height a frame, to
# a detection further than this share of its height behind its last observed centre.
WALKING_SPEED, BEHIND = 0.02, 0.05
_MOTION = np.eye(8)
_MOTION[:4, 4:] = np.eye(4)


class BoxKalman:
    """Constant-velocity Kalman filter of a box: state (cx, cy, w, h) and their rates."""

    def __init__(self, box: tuple[float, float, float, float]):
        x, y, w, h = box
        self.mean = np.array([x + w / 2, y + h / 2, w, h, 0, 0, 0, 0], dtype=float)
        spread = np.array([2 * POSITION_NOISE] * 4 + [10 * VELOCITY_NOISE] * 4) * h
        self.covariance = np.diag(spread**2)

    def predict(self) -> None:
        noise = (np.array([POSITION_NOISE] * 4 + [VELOCITY_NOISE] * 4) * self.mean[3]) ** 2
        self.mean = _MOTION @ self.mean
        self.covariance = _MOTION @ self.covariance @ _MOTION.T + np.diag(noise)

    def update(self, box: tuple[float, float, float, float]) -> None:
        x, y, w, h = box
        measured = np.array([x + w / 2, y + h / 2, w, h])
        innovation = self.covariance[:4, :4] + np.diag((POSITION_NOISE * self.mean[3] * np.ones(4)) ** 2)
        gain = self.covariance[:, :4] @ np.linalg.inv(innovation)
        self.mean = self.mean + gain @ (measured - self.mean[:4])
        self.covariance = self.covariance - gain @ self.covariance[:4, :]

    @property
    def box(self) -> tuple[float, float, float, float]:
        cx, cy, w, h = self.mean[:4]
        return float(cx - w / 2), float(cy - h / 2), float(w), float(h)

    @property
    def velocity(self) -> tuple[float, float]:
        """Of the box's centre, pixels per frame."""
        return float(self.mean[4]), float(self.mean[5])


def _centre(box: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([box[0] + box[2] / 2, box[1] + box[3] / 2])


@dataclass
class Track:
    track_id: int
    box: tuple[float, float, float, float]  # the detection it took, or its prediction where it took none
    score: float
    kalman: BoxKalman
    hits: int = 1
    misses: int = 0
    hidden: int = 0  # consecutive frames spent inside another track's detection
    confirmed: bool = False
    shared: bool = False  # its box now is a prediction inside a detection of several people
    # Boxes of the frames before confirmation, oldest first (consecutive, since a tentative
    # track ends at its first miss); taken once by whoever records the track's history.
    unconfirmed_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    aspect: float = 0.0  # running width / height of the boxes that showed this person alone
    observed: np.ndarray | None = None  # centre of the last detection that showed this person alone

    @property
    def widened(self) -> bool:
        """The box is much wider than this person has been: someone walked into the same blob."""
        x, y, w, h = self.box
        return self.aspect > 0 and w / max(h, 1.0) > WIDENED * self.aspect

    @property
    def velocity(self) -> tuple[float, float]:
        return self.kalman.velocity

    def predicted(self) -> tuple[float, float, float, float]:
        return self.kalman.box

    def left_view(self, frame_size: tuple[int, int]) -> bool:
        """The predicted box is cut by the frame's edge it is moving towards (or is past it):
        the person is walking out of view."""
        x, y, w, h = self.predicted()
        width, height = frame_size
        return self.near_edge(frame_size, 0.0) or not (0 <= x + w / 2 < width and 0 <= y + h / 2 < height)

    def near_edge(self, frame_size: tuple[int, int], reach: float = 0.5) -> bool:
        """The predicted box comes within ``reach`` of its own size of the frame's edge it is
        moving towards (0: the edge cuts it)."""
        x, y, w, h = self.predicted()
        width, height = frame_size
        vx, vy = self.velocity
        return ((vx < 0 and x < reach * w) or (vx > 0 and x + w > width - reach * w) or (vy < 0 and y < reach * h)
                or (vy > 0 and y + h > height - reach * h))

    def take(self, detection: Detection, smoothing: float) -> None:
        """This detection shows this person alone."""
        self.kalman.update(detection.box)
        self.box, self.score, self.shared = detection.box, detection.score, False
        if not self.widened:  # a widened box's centre lies between two people
            self.observed = _centre(detection.box)
            ratio = detection.box[2] / max(detection.box[3], 1.0)
            self.aspect = smoothing * self.aspect + (1 - smoothing) * ratio if self.aspect else ratio

    def follow_prediction(self) -> None:
        """This person is inside a detection of several: the box is where the motion puts it."""
        self.box, self.shared = self.predicted(), True


def logged_boxes(track: Track, frame_index: int) -> list[tuple[int, tuple[float, float, float, float]]]:
    """(frame, box) of a confirmed track seen in this frame for the track log: the boxes of the
    frames that led to its confirmation the first time (taken, so once), then this one."""
    earlier, track.unconfirmed_boxes = track.unconfirmed_boxes, []
    return [(frame_index - len(earlier) + step, box) for step, box in enumerate(earlier)] + [(frame_index, track.box)]


class MotionTracker:
    def __init__(self, next_id: Callable[[], int], settings: TrackerSettings | None = None,
                 max_center_distance: float = 0.5, aspect_smoothing: float = 0.6):
        settings = settings or TrackerSettings()
        self.next_id = next_id
        self.iou_threshold, self.n_init, self.max_age = settings.iou_threshold, settings.n_init, settings.max_age
        self.max_center_distance, self.aspect_smoothing = max_center_distance, aspect_smoothing
        self.tracks: list[Track] = []

    def _behind(self, boxes: np.ndarray, frame_size: tuple[int, int] | None) -> np.ndarray:
        """(track, detection): the track is walking out at the frame's edge and the detection
        lies behind it, against its motion (someone walking in there)."""
        behind = np.zeros((len(self.tracks), len(boxes)), dtype=bool)
        if frame_size is None:
            return behind
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        for row, track in enumerate(self.tracks):
            velocity, height = np.array(track.velocity), track.kalman.mean[3]
            if (not track.confirmed or track.observed is None or np.linalg.norm(velocity) < WALKING_SPEED * height
                    or not track.near_edge(frame_size)):
                continue
            offset = centres - track.observed
            behind[row] = (offset @ velocity < 0) & (np.linalg.norm(offset, axis=1) > BEHIND * height)
        return behind

    def _assign(self, boxes: np.ndarray, predicted: np.ndarray, frame_size: tuple[int, int] | None
                ) -> list[tuple[int, int]]:
        """(track, detection) pairs: by IoU with the predicted boxes, then the tracks left over by
        centre distance (in track heights) to the detections left over, of a similar height."""
        behind = self._behind(boxes, frame_size)
        iou = np.where(behind, 0.0, iou_matrix(predicted, boxes))
        pairs = []
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= self.iou_threshold]
        left_tracks = [i for i in range(len(self.tracks)) if i not in {r for r, _ in pairs} and
                       self.tracks[i].confirmed]
        left_detections = [j for j in range(len(boxes)) if j not in {c for _, c in pairs}]
        if left_tracks and left_detections:
            a, b = predicted[left_tracks], boxes[left_detections]
            centre_a, centre_b = a[:, None, :2] + a[:, None, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2
            distance = np.linalg.norm(centre_a - centre_b, axis=2) / np.maximum(a[:, None, 3], 1.0)
            height_ratio = b[None, :, 3] / np.maximum(a[:, None, 3], 1.0)
            similar = (height_ratio > 0.67) & (height_ratio < 1.5) & ~behind[np.ix_(left_tracks, left_detections)]
            cost = np.where(similar, distance, np.inf)
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
        for track in self.tracks:
            track.kalman.predict()
        boxes = np.array([d.box for d in detections], dtype=float).reshape(-1, 4)
        predicted = np.array([t.predicted() for t in self.tracks], dtype=float).reshape(-1, 4)
        pairs = self._assign(boxes, predicted, frame_size)
        confirmed = np.array([t.confirmed for t in self.tracks], dtype=bool)
        inside = _overlap(predicted, boxes, of_first=True) >= SHARED_INSIDE
        shared = (inside & confirmed[:, None]).sum(axis=0) >= 2  # per detection
        matched_tracks, matched_detections = set(), set()
        for row, col in pairs:
            track = self.tracks[row]
            if not track.confirmed:
                track.unconfirmed_boxes.append(track.box)
            if track.confirmed and shared[col]:
                track.follow_prediction()
                track.score = detections[col].score
            else:
                track.take(detections[col], self.aspect_smoothing)
            track.hits, track.misses, track.hidden = track.hits + 1, 0, 0
            track.confirmed = track.confirmed or track.hits >= self.n_init
            matched_tracks.add(row)
            matched_detections.add(col)
        shared_taken = [col for col in matched_detections if shared[col]]
        ended, alive = [], []
        for index, track in enumerate(self.tracks):
            if index not in matched_tracks:
                if (track.confirmed and track.hidden < self.max_age and
                        any(inside[index, col] for col in shared_taken)):
                    track.hidden += 1
                    track.follow_prediction()
                else:
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
                alive.append(Track(self.next_id(), detection.box, detection.score, BoxKalman(detection.box),
                                   confirmed=self.n_init <= 1, observed=_centre(detection.box)))
        self.tracks = alive
        seen = [t for t in self.tracks if t.confirmed and t.misses == 0]
        return seen, ended

    def flush(self) -> list[Track]:
        """End every confirmed track (at shutdown)."""
        ended = [t for t in self.tracks if t.confirmed]
        self.tracks = []
        return ended
