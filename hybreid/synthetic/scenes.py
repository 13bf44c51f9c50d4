"""Synthetic multi-camera scenes: the synthetic people walking through camera views.

Writes one video per camera (at least one visible and one infrared) in which each
identity walks across the field of view, then later across another camera's, plus the
ground truth: every person's box in every frame, and each (camera, person) passage.
For tests, the demo and the pipeline benchmark. numpy + OpenCV only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hybreid.synthetic.people import (
    INFRARED,
    NEAR_INFRARED,
    VISIBLE,
    CameraSet,
    Pose,
    background,
    infrared_to_grey,
    make_identity,
    person_layers,
)


@dataclass
class Passage:
    camera: int
    pid: int
    start_frame: int
    frames: int
    lane: int  # 0 near (large), 1 far (small)
    left_to_right: bool


def plan_passages(num_people: int, num_cameras: int, fps: int, walk_seconds: float, rng) -> list[Passage]:
    """Each person crosses every camera once, cameras in turn; two lanes per camera so
    people overlap in time, but everyone in a camera walks the same way a third of the
    view apart, so nobody passes anyone (a background-subtraction blob would merge them)."""
    walk = int(walk_seconds * fps)
    passages = []
    for camera in range(num_cameras):
        left_to_right = bool(rng.random() < 0.5)
        for order, pid in enumerate(range(1, num_people + 1)):
            lane = order % 2
            start = (int(fps * 1.5) + (order // 2) * (walk + int(0.6 * fps)) + camera * int(0.5 * fps)
                     + lane * (walk // 3))
            passages.append(Passage(camera, pid, start, walk, lane, left_to_right))
    return passages


def passage_box(passage: Passage, frame: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    person_h = int(height * (0.78 if passage.lane == 0 else 0.58))
    person_w = int(person_h * 0.42)
    progress = (frame - passage.start_frame) / max(passage.frames - 1, 1)
    if not passage.left_to_right:
        progress = 1 - progress
    x = int(-0.2 * person_w + progress * (width - 0.6 * person_w))
    foot = int(height * (0.97 if passage.lane == 0 else 0.80))
    return x, foot - person_h, person_w, person_h


def render_scenes(out_dir: str | Path, modalities: tuple[str, ...] = (VISIBLE, INFRARED), num_people: int = 6,
                  fps: int = 10, walk_seconds: float = 4.0, size: tuple[int, int] = (480, 270),
                  seed: int = 0, infrared_band: str = NEAR_INFRARED) -> dict:
    """Write ``cam<k>.mp4`` for each modality and ``ground_truth.json``; return the ground truth."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 31])
    cameras = CameraSet.make(list(modalities), seed, infrared_band).cameras
    passages = plan_passages(num_people, len(cameras), fps, walk_seconds, rng)
    total = max(p.start_frame + p.frames for p in passages) + int(fps * 1.5)
    width, height = size
    truth: dict = {"fps": fps, "size": [width, height], "frames": total, "cameras": []}
    for camera in cameras:
        camera_id = f"cam{camera.camid + 1}"
        scene = background(camera, np.random.default_rng([seed, camera.camid]), height, width)
        writer = cv2.VideoWriter(str(out_dir / f"{camera_id}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                 (width, height))
        noise_rng = np.random.default_rng([seed, camera.camid, 7])
        boxes = []
        mine = [p for p in passages if p.camera == camera.camid]
        for frame_index in range(total):
            image = scene.copy()
            for passage in sorted(mine, key=lambda p: -p.lane):  # far lane first, near lane on top
                if not passage.start_frame <= frame_index < passage.start_frame + passage.frames:
                    continue
                x, y, w, h = passage_box(passage, frame_index, size)
                pose = Pose(phase=frame_index * 0.9, view="right" if passage.left_to_right else "left", scale=1.0)
                person, alpha = person_layers(make_identity(passage.pid, seed), pose, camera, h, w)
                x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
                if x1 <= x0 or y1 <= y0:
                    continue
                sub_alpha = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
                patch = person[y0 - y : y1 - y, x0 - x : x1 - x]
                if camera.modality == VISIBLE:
                    blend = sub_alpha[..., None]
                    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - blend) + patch * blend
                else:
                    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - sub_alpha) + patch * sub_alpha
                # Ground truth: the visible part of the person's silhouette.
                ys, xs = np.nonzero(sub_alpha > 0.5)
                if len(xs):
                    boxes.append({"frame": frame_index, "pid": passage.pid,
                                  "box": [int(x0 + xs.min()), int(y0 + ys.min()), int(xs.max() - xs.min() + 1),
                                          int(ys.max() - ys.min() + 1)]})
            writer.write(cv2.cvtColor(finish_frame(image, camera, noise_rng), cv2.COLOR_RGB2BGR))
        writer.release()
        truth["cameras"].append({"id": camera_id, "modality": camera.modality, "video": f"{camera_id}.mp4",
                                 "boxes": boxes,
                                 "passages": [{"pid": p.pid, "start_frame": p.start_frame, "frames": p.frames}
                                              for p in mine]})
    (out_dir / "ground_truth.json").write_text(json.dumps(truth))
    return truth


def finish_frame(image: np.ndarray, camera, rng) -> np.ndarray:
    """A fixed camera: steady colour cast and gain, light sensor noise (no per-frame jitter,
    which a background model would take for motion)."""
    if camera.modality == VISIBLE:
        image = image * np.array(camera.cast, np.float32) * camera.brightness
    else:
        image = np.repeat(infrared_to_grey(image, camera)[..., None], 3, 2)
    image = image + rng.normal(0, 0.01, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / max(aw * ah + bw * bh - inter, 1e-9)


def tracklet_ground_truth(track_log, truth: dict, min_iou: float = 0.3) -> dict[tuple[str, int], dict]:
    """For each (camera, track): the ground-truth identity of each of its boxes (by best
    IoU in that frame), its majority identity and purity (share of boxes of that identity)."""
    by_frame: dict[tuple[str, int], list] = {}
    for camera in truth["cameras"]:
        for entry in camera["boxes"]:
            by_frame.setdefault((camera["id"], entry["frame"]), []).append(entry)
    labels: dict[tuple[str, int], list[int]] = {}
    for camera_id, frame, track_id, box in track_log:
        best, best_iou = -1, min_iou
        for entry in by_frame.get((camera_id, frame), []):
            overlap = iou(box, entry["box"])
            if overlap > best_iou:
                best, best_iou = entry["pid"], overlap
        labels.setdefault((camera_id, track_id), []).append(best)
    result = {}
    for key, pids in labels.items():
        values, counts = np.unique(pids, return_counts=True)
        majority = int(values[np.argmax(counts)])
        result[key] = {"pid": majority, "purity": float(counts.max() / len(pids)), "boxes": len(pids)}
    return result


def tracklet_purity(track_log, truth: dict) -> float:
    """Box-weighted share of tracked boxes that belong to their tracklet's majority identity
    (boxes matching no person count against purity)."""
    scored = tracklet_ground_truth(track_log, truth)
    total = sum(t["boxes"] for t in scored.values())
    pure = sum(t["purity"] * t["boxes"] for t in scored.values() if t["pid"] >= 0)
    return pure / max(total, 1)
