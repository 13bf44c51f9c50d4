"""Multi-camera tracking scores: IDF1 / IDP / IDR (py-motmetrics) and HOTA / DetA / AssA
(TrackEval) over every camera's frames with global ids.

As the AI City Challenge scores multi-camera tracking, the cameras' sequences are laid
end to end and the identity matching is global: a person given one id in one camera and
another id in the next counts as an identity error, however well each camera tracked.
For IDF1 boxes match at IoU >= 0.5; HOTA averages over IoU thresholds 0.05 to 0.95, and
splits into detection (DetA) and association (AssA), which IDF1 mixes.

Ground truth and predictions are MOTChallenge text rows (``frame, id, x, y, w, h, conf,
-1, -1, -1``, frames from 1), one file per camera; :func:`write_mot` and :func:`read_mot`
read and write them. Torch-free.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hybreid.errors import UserError

Row = tuple[int, int, tuple[float, float, float, float]]  # frame (from 1), id, (x, y, w, h)


def write_mot(path: str | Path, rows: Iterable[Row], confidence: float = 1.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        for frame, identity, (x, y, w, h) in sorted(rows, key=lambda row: (row[0], row[1])):
            writer.writerow([frame, identity, f"{x:.2f}", f"{y:.2f}", f"{w:.2f}", f"{h:.2f}", confidence, -1, -1, -1])
    return path


def read_mot(path: str | Path) -> list[Row]:
    path = Path(path)
    rows: list[Row] = []
    try:
        with open(path, newline="") as handle:
            for number, fields in enumerate(csv.reader(handle), start=1):
                if not fields:
                    continue
                try:
                    rows.append((int(fields[0]), int(fields[1]), tuple(float(v) for v in fields[2:6])))
                except (ValueError, IndexError) as exc:
                    raise UserError(f"{path}:{number} is not a MOTChallenge row (frame,id,x,y,w,h,...)") from exc
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror})") from exc
    return rows


def box_iou(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """IoU of every truth box with every predicted box (x, y, w, h).

    Written here because py-motmetrics' own ``iou_matrix`` calls ``np.asfarray``, which
    NumPy 2 removed.
    """
    if len(truth) == 0 or len(predicted) == 0:
        return np.zeros((len(truth), len(predicted)))
    a, b = truth[:, None, :], predicted[None, :, :]
    width = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    height = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_distances(truth: np.ndarray, predicted: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """1 - IoU of every truth box with every predicted box (x, y, w, h), NaN below ``threshold``."""
    iou = box_iou(truth, predicted)
    return np.where(iou >= threshold, 1.0 - iou, np.nan)


def _frames(truth: dict[str, list[Row]], predicted: dict[str, list[Row]]):
    """(truth rows, predicted rows) of every frame of every camera, the cameras end to end."""
    for camera in sorted(set(truth) | set(predicted)):
        by_frame: dict[int, list[list]] = defaultdict(lambda: [[], []])
        for side, rows in enumerate((truth.get(camera, []), predicted.get(camera, []))):
            for frame, identity, box in rows:
                by_frame[frame][side].append((identity, box))
        for frame in sorted(by_frame):
            yield by_frame[frame]


def hota_unavailable_reason() -> str | None:
    """None where TrackEval imports, else how to install it."""
    import importlib.util

    if importlib.util.find_spec("trackeval") is None:
        return ("HOTA needs TrackEval: `pip install --no-deps trackeval==1.3.0` (its wheel asks for the full "
                "opencv-python, which would shadow opencv-python-headless)")
    return None


def hota_scores(truth: dict[str, list[Row]], predicted: dict[str, list[Row]]) -> dict:
    """HOTA, DetA and AssA (TrackEval's, each averaged over its IoU thresholds) over all
    cameras, ids global across cameras; the same inputs as :func:`identity_scores`."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # TrackEval names its datasets' missing extras
        from trackeval.metrics import HOTA

    gt_index: dict[int, int] = {}
    tracker_index: dict[int, int] = {}
    data: dict = {"gt_ids": [], "tracker_ids": [], "similarity_scores": [], "num_gt_dets": 0, "num_tracker_dets": 0}
    for true_rows, predicted_rows in _frames(truth, predicted):
        data["gt_ids"].append(np.array([gt_index.setdefault(i, len(gt_index)) for i, _ in true_rows], dtype=int))
        data["tracker_ids"].append(np.array([tracker_index.setdefault(i, len(tracker_index))
                                             for i, _ in predicted_rows], dtype=int))
        data["similarity_scores"].append(box_iou(np.array([b for _, b in true_rows], dtype=float).reshape(-1, 4),
                                                 np.array([b for _, b in predicted_rows], dtype=float).reshape(-1, 4)))
        data["num_gt_dets"] += len(true_rows)
        data["num_tracker_dets"] += len(predicted_rows)
    data["num_gt_ids"], data["num_tracker_ids"] = len(gt_index), len(tracker_index)
    result = HOTA().eval_sequence(data)
    return {name.lower(): float(np.mean(result[name])) for name in ("HOTA", "DetA", "AssA")}


def identity_scores(truth: dict[str, list[Row]], predicted: dict[str, list[Row]],
                    iou_threshold: float = 0.5) -> dict:
    """IDF1, IDP, IDR (and their counts) over all cameras, ids global across cameras.

    ``truth`` and ``predicted`` map a camera to its rows; a camera missing from
    ``predicted`` has no predictions (its truth all counts as missed).
    """
    import motmetrics

    accumulator = motmetrics.MOTAccumulator(auto_id=True)
    frames = 0
    for true_rows, predicted_rows in _frames(truth, predicted):
        distances = iou_distances(np.array([box for _, box in true_rows], dtype=float).reshape(-1, 4),
                                  np.array([box for _, box in predicted_rows], dtype=float).reshape(-1, 4),
                                  iou_threshold)
        accumulator.update([identity for identity, _ in true_rows], [identity for identity, _ in predicted_rows],
                           distances)
        frames += 1
    names = ["idf1", "idp", "idr", "idtp", "idfp", "idfn", "num_unique_objects"]
    summary = motmetrics.metrics.create().compute(accumulator, metrics=names, name="site")
    result = {name: float(summary[name].iloc[0]) for name in names}
    return {"idf1": result["idf1"], "idp": result["idp"], "idr": result["idr"], "idtp": int(result["idtp"]),
            "idfp": int(result["idfp"]), "idfn": int(result["idfn"]), "people": int(result["num_unique_objects"]),
            "frames": frames, "cameras": len(set(truth) | set(predicted))}
