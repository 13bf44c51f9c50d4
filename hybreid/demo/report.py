"""The demo's contact sheet: one row per matcher identity, one crop per sighting.

Each crop is cut from the camera video at the middle frame of its tracklet and framed
green when it shows the identity's majority person, red when it does not (so a mixed
identity stands out); the row's label names the identity, its person and its cameras.
Drawn with OpenCV (a grid of images with short labels needs no plotting library).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

CROP_SIZE = (48, 96)  # width, height of one crop on the sheet
LABEL_WIDTH = 190
MAX_PER_ROW = 14


def middle_boxes(track_log) -> dict[tuple[str, int], tuple[int, tuple]]:
    """(camera, track) -> (frame, box) at the middle of the tracklet."""
    frames: dict[tuple[str, int], list] = defaultdict(list)
    for camera_id, frame, track_id, box in track_log:
        frames[(camera_id, track_id)].append((frame, box))
    return {key: entries[len(entries) // 2] for key, entries in frames.items()}


def read_crops(scenes: Path, wanted: dict[tuple[str, int], tuple[int, tuple]]) -> dict[tuple[str, int], np.ndarray]:
    """Cut every wanted box from its camera video (one sequential pass per video)."""
    by_camera: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for key, (frame, box) in wanted.items():
        by_camera[key[0]][frame].append((key, box))
    crops = {}
    for camera_id, frames in by_camera.items():
        capture = cv2.VideoCapture(str(scenes / f"{camera_id}.mp4"))
        index, last = 0, max(frames)
        while index <= last:
            ok, image = capture.read()
            if not ok:
                break
            for key, (x, y, w, h) in frames.get(index, []):
                x0, y0 = max(0, int(x)), max(0, int(y))
                crop = image[y0 : int(y + h), x0 : int(x + w)]
                if crop.size:
                    crops[key] = cv2.resize(crop, CROP_SIZE)
            index += 1
        capture.release()
    return crops


def contact_sheet(sightings: list[dict], track_log, labels: dict[tuple[str, int], int], scenes: Path,
                  path: Path, events: list[dict] = ()) -> Path:
    """Write the sheet to ``path`` (PNG) and return it. ``events``: the matcher's re-association
    events; an identity names the ones merged into it, a moved sighting the identity it left."""
    boxes = middle_boxes(track_log)
    merged: dict[int, list[int]] = defaultdict(list)
    for event in events:
        if event["type"] == "merge" and event["from"] not in merged[event["into"]]:
            merged[event["into"]].append(event["from"])
    moved_from = {(e["camera_id"], e["track_id"]): e["from"] for e in events if e["type"] == "reassign"}
    members: dict[int, list[dict]] = defaultdict(list)
    for sighting in sightings:
        members[sighting["identity_id"]].append(sighting)
    crops = read_crops(scenes, {key: boxes[key] for key in
                                ((s["camera_id"], s["track_id"]) for s in sightings) if key in boxes})
    width, height = CROP_SIZE
    rows = []
    for identity, group in sorted(members.items(), key=lambda item: -len(item[1])):
        group = sorted(group, key=lambda s: (s["camera_id"], s["ts"]))[:MAX_PER_ROW]
        people = Counter(labels.get((s["camera_id"], s["track_id"]), -1) for s in group)
        majority = people.most_common(1)[0][0]
        row = np.full((height + 24, LABEL_WIDTH + MAX_PER_ROW * (width + 4), 3), 255, np.uint8)
        cameras = ",".join(sorted({s["camera_id"] for s in group}))
        title = f"identity {identity}" + (f" (+{','.join(map(str, merged[identity]))})" if merged[identity] else "")
        cv2.putText(row, title, (6, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        person = f"person {majority}" if majority >= 0 else "no person"
        cv2.putText(row, f"{person}, {len(group)} sightings", (6, 52), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (60, 60, 60), 1)
        cv2.putText(row, cameras, (6, 74), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (60, 60, 60), 1)
        for column, sighting in enumerate(group):
            key = (sighting["camera_id"], sighting["track_id"])
            x = LABEL_WIDTH + column * (width + 4)
            colour = (40, 160, 40) if labels.get(key, -1) == majority else (40, 40, 200)
            cv2.rectangle(row, (x, 2), (x + width + 3, height + 5), colour, 2)
            if key in crops:
                row[4 : 4 + height, x + 2 : x + 2 + width] = crops[key]
            caption = sighting["camera_id"] + (f" <{moved_from[key]}" if key in moved_from else "")
            cv2.putText(row, caption, (x + 2, height + 19), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        rows.append(row)
    if not rows:
        rows = [np.full((60, 400, 3), 255, np.uint8)]
        cv2.putText(rows[0], "no sightings reached the matcher", (8, 35), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(rows))
    return path
