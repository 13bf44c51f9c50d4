"""The detector benchmark on real footage: each person detector over every frame of a video,
its recall on the frames counted by hand (:mod:`hybreid.eval.detection`), the boxes it
puts on no counted person and its time a frame; with a ReID model, also the whole edge
runtime on the video through a broker (tracks, tracklets published, median track length,
frames/s). A table, JSON and a PNG of counted frames with each detector's boxes.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hybreid.edge_runtime.detect import make_detector
from hybreid.edge_runtime.site import validate_detector
from hybreid.errors import UserError
from hybreid.eval.detection import Points, point_recall, read_points
from hybreid.tables import format_table


def detector_options(nanodet: str | None, openvino: bool, nanodet_int8: str | None = None) -> dict[str, dict]:
    """The detectors to compare, by name: background subtraction, and NanoDet (FP32, INT8)
    where given."""
    options = {"background": {"kind": "background"}}
    if nanodet:
        options["nanodet"] = {"kind": "nanodet", "path": nanodet}
        options["nanodet, 2 tiles"] = {"kind": "nanodet", "path": nanodet, "tiles": 2}
        if openvino:
            options["nanodet (OpenVINO)"] = {"kind": "nanodet", "path": nanodet, "runtime": "openvino"}
    if nanodet_int8:
        options["nanodet INT8"] = {"kind": "nanodet", "path": nanodet_int8}
        if openvino:
            options["nanodet INT8 (OpenVINO)"] = {"kind": "nanodet", "path": nanodet_int8, "runtime": "openvino"}
    return options


def detect_video(video: Path, options: dict, truth: Points) -> tuple[dict[int, np.ndarray], dict]:
    """Every frame through one detector (background subtraction needs them all); the boxes of
    the counted frames and the detector's timing."""
    detector = make_detector(validate_detector(options))
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise UserError(f"cannot open the video {video}")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    boxes, seconds, frame = {}, 0.0, 0
    with tqdm(total=total, desc=f"{options['kind']} detector", unit="frame") as bar:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            start = time.perf_counter()
            detections = detector("video", image)
            seconds += time.perf_counter() - start
            if frame in truth:
                boxes[frame] = np.array([d.box for d in detections], dtype=float).reshape(-1, 4)
            frame += 1
            bar.update()
    capture.release()
    if frame == 0:
        raise UserError(f"{video} gave no frame")
    missing = sorted(set(truth) - set(range(frame)))
    if missing:
        raise UserError(f"the count names frame {missing[0]}, but {video} has {frame} frames")
    return boxes, {"frames": frame, "ms_per_frame": 1000 * seconds / frame}


def edge_run(video: Path, artifact: str, options: dict, work: Path) -> dict:
    """The edge runtime on the video with this detector, through a throwaway broker."""
    from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig
    from hybreid.lab.mosquitto import Mosquitto

    with Mosquitto(work / "broker") as broker:
        config = SiteConfig.from_dict({
            "site": "footage", "cameras": [{"id": "video", "source": str(video), "detector": options}],
            "model": {"path": artifact}, "broker": {"url": broker.url, "protocol": "5"},
            "outbox": {"path": str(work / "outbox.sqlite")}, "metrics": {"record_tracks": True},
            "box_filter": {"min_height": 24},
        })
        runtime = EdgeRuntime(config)
        summary = runtime.run()
    lengths = Counter(track for _, _, track, _ in runtime.track_log)
    return {"tracks": len(lengths), "tracklets_published": summary["tracklets_published"],
            "median_track_frames": statistics.median(lengths.values()) if lengths else 0,
            "fps": summary["fps"]}


def draw(video: Path, truth: Points, boxes: dict[str, dict[int, np.ndarray]], path: Path, frames: int = 4) -> Path:
    """A few counted frames, one row per detector: its boxes (green) and the counted people
    (red dots), so a reader sees what each found and missed."""
    chosen = sorted(truth)[:: max(1, len(truth) // frames)][:frames]
    capture = cv2.VideoCapture(str(video))
    images = {}
    for frame in chosen:
        capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, image = capture.read()
        if ok:
            images[frame] = image
    capture.release()
    rows = []
    for name, by_frame in boxes.items():
        tiles = []
        for frame, image in images.items():
            tile = image.copy()
            for x, y, w, h in by_frame.get(frame, []):
                cv2.rectangle(tile, (int(x), int(y)), (int(x + w), int(y + h)), (0, 200, 0), 2)
            for x, y in truth[frame]:
                cv2.circle(tile, (int(x), int(y)), 5, (0, 0, 255), -1)
            cv2.putText(tile, f"{name}, frame {frame}", (8, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 3)
            tiles.append(cv2.resize(tile, None, fx=1 / 3, fy=1 / 3, interpolation=cv2.INTER_AREA))
        rows.append(np.hstack(tiles))
    cv2.imwrite(str(path), np.vstack(rows))
    return path


def run(video: str | Path, truth_path: str | Path, out: str | Path, nanodet: str | None = None,
        openvino: bool = True, artifact: str | None = None, nanodet_int8: str | None = None) -> list[dict]:
    video, out = Path(video), Path(out)
    if not video.is_file():
        raise UserError(f"video {video} does not exist")
    truth = read_points(truth_path)
    out.mkdir(parents=True, exist_ok=True)
    if openvino:
        from hybreid.inference.openvino_backend import openvino_unavailable_reason

        reason = openvino_unavailable_reason()
        if reason:
            print(f"note: no OpenVINO row: {reason}")
            openvino = False
    results, drawn = [], {}
    for name, options in detector_options(nanodet, openvino, nanodet_int8).items():
        boxes, timing = detect_video(video, options, truth)
        result = {"detector": name, **point_recall(truth, boxes), **timing}
        if artifact:
            with tempfile.TemporaryDirectory() as work:
                result["edge"] = edge_run(video, artifact, options, Path(work))
        results.append(result)
        drawn[name] = boxes
    people = results[0]["people"]
    rows = [[r["detector"], f"{r['found']} / {people}", r["recall"], r["boxes_on_no_counted_person"],
             r["ms_per_frame"]] + ([r["edge"]["tracks"], r["edge"]["tracklets_published"],
                                    r["edge"]["median_track_frames"], r["edge"]["fps"]] if artifact else [])
            for r in results]
    headers = ["detector", "people found", "recall", "boxes on no counted person", "ms a frame"] + \
        (["tracks", "tracklets published", "median track, frames", "frames/s end to end"] if artifact else [])
    print(format_table(headers, rows, floatfmt=".3g",
                       title=f"{video.name}: {people} people counted by hand on {len(truth)} frames"))
    picture = draw(video, truth, drawn, out / f"{video.stem}_detections.png")
    (out / "detector.json").write_text(json.dumps(results, indent=2))
    print(f"saved {out / 'detector.json'} and {picture}")
    return results
