"""Detection recall against people marked by hand as points.

A hand count marks each person once, at the centre of their body, on a few frames of a
video (``frame,x,y`` rows, frames from 0 as OpenCV numbers them). A box finds a person
when the person's point lies inside it; each box finds at most one person and each
person is found at most once (an assignment that finds the most, nearest centres first,
by SciPy's Hungarian solver). Points rather than boxes: a hand-drawn box is too loose
for an IoU threshold to mean anything, while "is this person inside that box" is what
a count by eye can vouch for.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from hybreid.errors import UserError

Points = dict[int, list[tuple[float, float]]]


def read_points(path: str | Path) -> Points:
    """``frame,x,y`` rows (a header line first) as the points of each frame."""
    path = Path(path)
    points: Points = defaultdict(list)
    try:
        with open(path, newline="") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            if header != ["frame", "x", "y"]:
                raise UserError(f"{path} does not start with the header frame,x,y")
            for number, row in enumerate(rows, start=2):
                try:
                    frame, x, y = int(row[0]), float(row[1]), float(row[2])
                except (ValueError, IndexError):
                    raise UserError(f"{path}:{number} is not a frame,x,y row") from None
                if frame < 0 or not (np.isfinite(x) and np.isfinite(y)):
                    raise UserError(f"{path}:{number}: a frame number from 0 and finite coordinates")
                points[frame].append((x, y))
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror})") from None
    return dict(points)


def match_points(points: list[tuple[float, float]], boxes: np.ndarray) -> int:
    """How many of ``points`` the ``[x, y, w, h]`` boxes find, one box per person."""
    from scipy.optimize import linear_sum_assignment

    if not points or len(boxes) == 0:
        return 0
    xy = np.asarray(points, dtype=float)[:, None, :]
    boxes = np.asarray(boxes, dtype=float)[None, :, :]
    inside = ((xy[..., 0] >= boxes[..., 0]) & (xy[..., 0] <= boxes[..., 0] + boxes[..., 2])
              & (xy[..., 1] >= boxes[..., 1]) & (xy[..., 1] <= boxes[..., 1] + boxes[..., 3]))
    centre = boxes[..., :2] + boxes[..., 2:] / 2
    # distance in box heights, below 1 inside a box; 2 for a pair that may not match
    distance = np.linalg.norm(xy - centre, axis=2) / np.maximum(boxes[..., 3], 1.0)
    cost = np.where(inside, np.minimum(distance, 1.0), 2.0)
    rows, cols = linear_sum_assignment(cost)
    return int(inside[rows, cols].sum())


def point_recall(truth: Points, boxes_by_frame: dict[int, np.ndarray]) -> dict:
    """Recall over the frames of ``truth``; boxes on no counted person are counted too (they
    may be people the count left out: too small, mostly hidden)."""
    people = found = boxes = 0
    for frame, points in truth.items():
        frame_boxes = np.asarray(boxes_by_frame.get(frame, np.zeros((0, 4))), dtype=float).reshape(-1, 4)
        matched = match_points(points, frame_boxes)
        people, found, boxes = people + len(points), found + matched, boxes + len(frame_boxes)
    return {"frames": len(truth), "people": people, "found": found, "recall": found / max(people, 1),
            "boxes": boxes, "boxes_on_no_counted_person": boxes - found}
