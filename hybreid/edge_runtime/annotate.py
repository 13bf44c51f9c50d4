"""What a camera detects, drawn on its frames for the person commissioning it: every
detection (thin, grey), every confirmed track with its id (its colour fixed by the id), and
``published`` on a track once a tracklet of it went to the outbox. Written as one video a
camera (``edge run --save-annotated DIR``) and kept as the latest JPEG a camera for the live
preview page (``edge run --preview``)."""

from __future__ import annotations

import html
import threading
from pathlib import Path

import cv2
import numpy as np

from hybreid.edge_runtime.stages import Detection, Frame

PREVIEW_QUALITY = 80
GREY = (160, 160, 160)


def _colour(track_id: int) -> tuple[int, int, int]:
    hue = (track_id * 47) % 180  # neighbouring ids far apart on the hue circle
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


class Annotator:
    def __init__(self, folder: str | Path | None = None, preview: bool = False, fps: float = 10.0):
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.preview, self.fps = preview, fps
        self._writers: dict[str, cv2.VideoWriter] = {}
        self._published: dict[str, set[int]] = {}
        self._latest: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def published(self, camera_id: str, track_id: int) -> None:
        with self._lock:
            self._published.setdefault(camera_id, set()).add(track_id)

    def draw(self, frame: Frame, detections: list[Detection], tracks) -> None:
        image = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
        for detection in detections:
            x, y, w, h = (int(round(v)) for v in detection.box)
            cv2.rectangle(image, (x, y), (x + w, y + h), GREY, 1)
        with self._lock:
            published = set(self._published.get(frame.camera_id, ()))
        for track in tracks:
            x, y, w, h = (int(round(v)) for v in track.box)
            colour = _colour(track.track_id)
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, 2)
            label = f"{track.track_id}" + (" published" if track.track_id in published else "")
            cv2.putText(image, label, (x, max(y - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
        cv2.putText(image, f"{frame.camera_id} {frame.modality} frame {frame.index}", (6, 16),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        if self.folder:
            self._writer(frame.camera_id, image.shape).write(image)
        if self.preview:
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_QUALITY])
            if ok:
                with self._lock:
                    self._latest[frame.camera_id] = jpeg.tobytes()

    def _writer(self, camera_id: str, shape: tuple[int, ...]) -> cv2.VideoWriter:
        writer = self._writers.get(camera_id)
        if writer is None:
            path = self.folder / f"{camera_id}.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (shape[1], shape[0]))
            self._writers[camera_id] = writer
        return writer

    def latest(self, camera_id: str) -> bytes | None:
        with self._lock:
            return self._latest.get(camera_id)

    def cameras(self) -> list[str]:
        with self._lock:
            return sorted(self._latest)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.release()
        self._writers.clear()

    def page(self, path: str) -> tuple[int, bytes, str] | None:
        """The live preview: ``/preview``, a page of every camera's latest frame that reloads
        itself (no script), and ``/preview/<camera>.jpg``, the frame."""
        if path == "/preview":
            figures = "".join(f'<figure><img src="/preview/{html.escape(camera)}.jpg" alt=""><figcaption>'
                              f"{html.escape(camera)}</figcaption></figure>" for camera in self.cameras())
            body = ('<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">'
                    "<title>hybreid edge preview</title></head><body><h1>What each camera detects</h1>"
                    f"{figures or '<p>no frame processed yet</p>'}</body></html>")
            return 200, body.encode(), "text/html; charset=utf-8"
        if path.startswith("/preview/") and path.endswith(".jpg"):
            jpeg = self.latest(path[len("/preview/"):-len(".jpg")])
            return (200, jpeg, "image/jpeg") if jpeg is not None else None
        return None
