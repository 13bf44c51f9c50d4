"""A tracklet's best shot, sent with its final message when the site file asks for it
(``publish.thumbnails: true``): of the crops taken for embedding, the tallest and sharpest
(height times the log of the variance of its Laplacian, a standard focus measure), as a
small JPEG within the protocol's limits."""

from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

from hybreid.protocol import MAX_THUMBNAIL_BYTES, MAX_THUMBNAIL_SIDE

HEIGHT = 96
QUALITY = 75
KEPT_TRACKS = 4096  # a track whose final tracklet never comes is forgotten after this many others


def _score(crop: np.ndarray) -> float:
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return crop.shape[0] * float(np.log1p(cv2.Laplacian(grey, cv2.CV_64F).var()))


class BestShots:
    def __init__(self):
        # The best crop so far, already scaled down (about 12 kB): encoded once, when taken, not
        # each time a better crop comes on the frames' thread.
        self._best: OrderedDict[tuple[str, int], tuple[float, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def offer(self, camera_id: str, track_id: int, crop: np.ndarray) -> None:
        """``crop``: RGB, as cut from the frame."""
        key, score = (camera_id, track_id), _score(crop)
        with self._lock:
            if key in self._best and self._best[key][0] >= score:
                return
        height, width = crop.shape[:2]
        scale = min(HEIGHT / height, MAX_THUMBNAIL_SIDE / width, 1.0)
        small = cv2.resize(crop, (max(int(round(width * scale)), 8), max(int(round(height * scale)), 8)),
                           interpolation=cv2.INTER_AREA)
        with self._lock:
            self._best[key] = (score, small)
            self._best.move_to_end(key)
            while len(self._best) > KEPT_TRACKS:
                self._best.popitem(last=False)

    def take(self, camera_id: str, track_id: int) -> bytes | None:
        """The track's best shot as a JPEG (None: no crop, or none within the protocol's limit)."""
        with self._lock:
            found = self._best.pop((camera_id, track_id), None)
        if found is None:
            return None
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(found[1], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        return jpeg.tobytes() if ok and len(jpeg) <= MAX_THUMBNAIL_BYTES else None
