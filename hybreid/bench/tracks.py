"""The tracker alone, on renderings of a synthetic site: how much of each person the edge's
detector and tracker keep, before any model or matcher has a say.

For each seed of the spec (renderings shared with ``bench site``'s cache), the site file's
default detector, box filter and tracker run on every camera video, and the tracks are
scored against the ground truth:

- detection recall and precision at IoU 0.5 (Hungarian per frame);
- the **detector's ceiling**: IDF1 of the detections when each one is given the person it
  matches, what a perfect tracker would make of them;
- the **tracker's ceiling**: IDF1 when every track is given its majority person (what
  ``bench site`` calls ``true identities``, without the embedder and the broker), its IDP
  and IDR, and the share of tracked boxes that belong to another person than their
  track's (swaps).

A seed takes seconds once rendered, so every change to detection or tracking can be
measured on every seed. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from hybreid.bench.identities import truth_boxes
from hybreid.bench.site import default_cache, rendered_site
from hybreid.edge_runtime.detect import BoxFilter, make_detector
from hybreid.edge_runtime.site import SiteFile
from hybreid.edge_runtime.stages import Detection
from hybreid.edge_runtime.track import MotionTracker, logged_boxes
from hybreid.errors import UserError
from hybreid.eval.mtmc import box_iou, identity_scores
from hybreid.synthetic.scenes import tracklet_ground_truth
from hybreid.synthetic.site import SiteSpec, default_spec
from hybreid.tables import format_table

COLUMNS = ("detection recall", "detection precision", "IDF1 detector ceiling", "IDF1 tracker ceiling", "IDP", "IDR",
           "swapped boxes", "tracks")


def _defaults(whole_people: bool = False) -> SiteFile:
    """The site file's defaults: the detector, box filter and tracker a user gets (``whole_people``:
    with the background detector's ``whole_people`` on)."""
    return SiteFile.model_validate({"site": "bench", "cameras": [{"id": "cam", "source": "video",
                                                                 "modality": "visible"}],
                                    "model": {"path": "model.onnx"}, "broker": {"url": "mqtt://127.0.0.1:1883"},
                                    "detector": {"kind": "background", "whole_people": whole_people}})


def detect(folder: Path, truth: dict, settings: SiteFile, progress: bool) -> dict[str, list[list[Detection]]]:
    """Every camera's filtered detections, frame by frame."""
    detector, box_filter = make_detector(settings.detector), BoxFilter(settings.box_filter)
    detections = {}
    with tqdm(total=truth["frames"] * len(truth["cameras"]), desc="detecting", unit="frame",
              disable=not progress) as bar:
        for camera in truth["cameras"]:
            capture = cv2.VideoCapture(str(folder / camera["video"]))
            frames = []
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                frames.append(box_filter(detector(camera["id"], image)))
                bar.update()
            capture.release()
            if not frames:
                raise UserError(f"{folder / camera['video']} has no frame OpenCV can read")
            detections[camera["id"]] = frames
    return detections


def track(truth: dict, detections: dict[str, list[list[Detection]]], settings: SiteFile) -> list[tuple]:
    """(camera, frame, track, box) of every confirmed track, as the edge runtime logs them."""
    log: list[tuple] = []
    ids = iter(range(1, 1 << 62))
    width, height = truth["size"]
    for camera in truth["cameras"]:
        tracker = MotionTracker(lambda: next(ids), settings.tracker)
        for frame, found in enumerate(detections[camera["id"]]):
            seen, _ = tracker.update(found, (width, height))
            for each in seen:
                log.extend((camera["id"], index, each.track_id, box) for index, box in logged_boxes(each, frame))
    return log


def score(truth: dict, detections: dict[str, list[list[Detection]]], log: list[tuple]) -> dict[str, float]:
    matched, found_total, truth_total = 0, 0, 0
    detector_rows: dict[str, list] = {}
    for camera in truth["cameras"]:
        people_by_frame: dict[int, list[dict]] = {}
        for entry in camera["boxes"]:
            people_by_frame.setdefault(entry["frame"], []).append(entry)
        truth_total += len(camera["boxes"])
        for frame, found in enumerate(detections[camera["id"]]):
            people = people_by_frame.get(frame, [])
            found_total += len(found)
            if not people or not found:
                continue
            iou = box_iou(np.array([p["box"] for p in people], float), np.array([d.box for d in found], float))
            for row, col in zip(*linear_sum_assignment(-iou), strict=True):
                if iou[row, col] >= 0.5:
                    matched += 1
                    detector_rows.setdefault(camera["id"], []).append(
                        (frame + 1, people[row]["pid"], tuple(found[col].box)))
    labels = tracklet_ground_truth(log, truth)
    identity = {key: value["pid"] if value["pid"] >= 0 else -1 - index
                for index, (key, value) in enumerate(labels.items())}
    tracked_rows: dict[str, list] = {}
    for camera, frame, track_id, box in log:
        tracked_rows.setdefault(camera, []).append((frame + 1, identity[camera, track_id], tuple(box)))
    tracked = identity_scores(truth_boxes(truth), tracked_rows)
    boxes = sum(value["boxes"] for value in labels.values())
    swapped = sum(value["boxes"] * (1 - value["purity"]) for value in labels.values() if value["pid"] >= 0)
    return {"detection recall": matched / max(truth_total, 1), "detection precision": matched / max(found_total, 1),
            "IDF1 detector ceiling": identity_scores(truth_boxes(truth), detector_rows)["idf1"],
            "IDF1 tracker ceiling": tracked["idf1"], "IDP": tracked["idp"], "IDR": tracked["idr"],
            "swapped boxes": swapped / max(boxes, 1), "tracks": len(labels)}


def run(out: str | Path, spec: SiteSpec | None = None, seeds: list[int] | None = None,
        cache: str | Path | None = None, whole_people: bool = False) -> list[dict]:
    spec, out = spec or default_spec(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache else default_cache()
    settings = _defaults(whole_people)
    rows = []
    for seed in dict.fromkeys(seeds or [spec.seed]):
        folder, truth = rendered_site(spec.model_copy(update={"seed": seed}), cache)
        detections = detect(folder, truth, settings, progress=True)
        rows.append({"seed": seed, **score(truth, detections, track(truth, detections, settings))})
    table = [[f"seed {row['seed']}", *(row[column] for column in COLUMNS)] for row in rows]
    values = np.array([[row[column] for column in COLUMNS] for row in rows], dtype=float)
    summary = {"mean": dict(zip(COLUMNS, values.mean(axis=0).tolist(), strict=True)),
               "min": dict(zip(COLUMNS, values.min(axis=0).tolist(), strict=True))}
    if len(rows) > 1:
        table += [[name, *summary[name].values()] for name in ("mean", "min")]
    print(format_table(["site", *COLUMNS], table, floatfmt=[".3f"] * len(COLUMNS) + [".1f"],
                       title=f"the detector and tracker alone on {len(rows)} rendering(s) of the spec"))
    (out / "tracks.json").write_text(json.dumps({"spec": spec.model_dump(), "seeds": rows, **summary}, indent=2))
    print(f"saved {out / 'tracks.json'}")
    return rows
