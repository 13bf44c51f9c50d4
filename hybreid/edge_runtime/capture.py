"""Capture: one thread per camera that keeps only the newest frame.

Sources: a USB index (``0``), a video file, an RTSP URL, or a GStreamer pipeline string
(anything containing ``!``, e.g. Jetson CSI ``nvarguscamerasrc ! ... ! appsink``). The
stream opens with timeouts and reopens with exponential backoff when it fails.

A live camera that the pipeline cannot keep up with drops frames (the newest wins and
the drops are counted). A video file is not live: by default its thread waits for the
consumer, so every frame is processed — what tests, benchmarks and the demo need.
"""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np

from hybreid.edge_runtime.site import CameraSettings
from hybreid.edge_runtime.stages import Frame

log = logging.getLogger("hybreid.edge.capture")


def decide_modality(image: np.ndarray, threshold: float = 6.0) -> str:
    """``infrared`` when the frame has (almost) no colour: a camera in night mode sends
    grey frames, so the mean spread between the colour channels is near zero."""
    small = cv2.resize(image, (64, 36), interpolation=cv2.INTER_AREA).astype(np.int16)
    spread = small.max(axis=2) - small.min(axis=2)
    return "infrared" if float(spread.mean()) < threshold else "visible"


def open_capture(source: str | int, timeout_ms: int = 5000) -> cv2.VideoCapture:
    text = str(source)
    if text.isdigit():
        return cv2.VideoCapture(int(text))
    if "!" in text:
        return cv2.VideoCapture(text, cv2.CAP_GSTREAMER)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    return cv2.VideoCapture(text, cv2.CAP_ANY, params)


class CameraCapture(threading.Thread):
    def __init__(self, config: CameraSettings, timeout_ms: int = 5000, max_backoff: float = 30.0,
                 start_time: float | None = None):
        super().__init__(name=f"capture-{config.id}", daemon=True)
        self.config = config
        self.timeout_ms = timeout_ms
        self.max_backoff = max_backoff
        self.realtime = (not config.is_file) if config.realtime is None else config.realtime
        self.start_time = time.time() if start_time is None else start_time
        self._slot: Frame | None = None
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self.finished = threading.Event()
        self.frames_read = self.frames_dropped = self.reconnects = 0
        self.last_frame_at: float | None = None  # time.monotonic() of the newest frame read
        self.error: str | None = None  # why a video file could not be read
        self.modality = config.modality if config.modality != "auto" else None

    def stop(self) -> None:
        self._stopping.set()
        with self._condition:
            self._condition.notify_all()

    def get(self, timeout: float = 0.1) -> Frame | None:
        """The newest frame not yet taken, or None."""
        with self._condition:
            if self._slot is None:
                self._condition.wait(timeout)
            frame, self._slot = self._slot, None
            self._condition.notify_all()
            return frame

    def _offer(self, frame: Frame) -> None:
        with self._condition:
            if not self.realtime:
                while self._slot is not None and not self._stopping.is_set():
                    self._condition.wait(0.1)
            elif self._slot is not None:
                self.frames_dropped += 1
            self._slot = frame
            self._condition.notify_all()

    def run(self) -> None:
        backoff = 0.5
        index = 0
        while not self._stopping.is_set():
            capture = open_capture(self.config.source, self.timeout_ms)
            if not capture.isOpened() and self.config.is_file:
                # A file that cannot be opened now will not open later: retrying would hide it.
                self.error = f"camera {self.config.id}: cannot read the video file {self.config.source}"
                log.error("%s", self.error)
                break
            if not capture.isOpened():
                self.reconnects += 1
                log.warning("camera %s: cannot open %s; retrying in %.1f s", self.config.id, self.config.source,
                            backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 0.5
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            opened = time.monotonic() - index / fps
            while not self._stopping.is_set():
                if self.config.pace:
                    self._stopping.wait(max(0.0, opened + index / fps - time.monotonic()))
                ok, bgr = capture.read()
                if not ok:
                    break
                image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if self.config.modality == "auto":
                    self.modality = decide_modality(image)
                ts = self.start_time + index / fps if self.config.is_file else time.time()
                self._offer(Frame(self.config.id, index, ts, image, self.modality or "visible"))
                self.frames_read += 1
                self.last_frame_at = time.monotonic()
                index += 1
            capture.release()
            if self.config.is_file and not self.config.loop:
                break
            if not self._stopping.is_set() and not self.config.is_file:
                self.reconnects += 1
                log.warning("camera %s: stream ended; reconnecting in %.1f s", self.config.id, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        self.finished.set()
        with self._condition:
            self._condition.notify_all()

    @property
    def done(self) -> bool:
        """The source is exhausted and its last frame was taken."""
        with self._condition:
            return self.finished.is_set() and self._slot is None
