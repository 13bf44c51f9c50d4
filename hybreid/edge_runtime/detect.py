"""Detection: person boxes from a frame. Pluggable; every detector returns :class:`Detection`s.

- ``background`` (default for fixed cameras, no weights): OpenCV's MOG2 background
  subtraction, morphological clean-up, connected regions as boxes.
- ``hog``: OpenCV's HOG people detector, where the installed OpenCV still has it (OpenCV
  5 moved it out of the main package; hybreid pins ``opencv-python-headless<5``).
- ``yolo``: a person detector from a user's Ultralytics ONNX export, either the raw
  ``(1, 4 + classes, N)`` output (boxes then NMS here) or the NMS-free ``(1, N, 6)``
  output; the letterbox is undone so boxes are in frame pixels.

Boxes are filtered by size, aspect ratio and score (:class:`BoxFilter`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from hybreid.edge_runtime.stages import Detection
from hybreid.errors import UserError


@dataclass
class BoxFilter:
    min_height: int = 48
    min_aspect: float = 1.2  # height / width: people stand
    max_aspect: float = 7.0  # a person mid-stride seen side-on, legs together, is about 6 high per wide
    min_score: float = 0.3

    def __call__(self, detections: list[Detection]) -> list[Detection]:
        kept = []
        for d in detections:
            x, y, w, h = d.box
            upright = w > 0 and self.min_aspect <= h / w <= self.max_aspect
            if h >= self.min_height and upright and d.score >= self.min_score:
                kept.append(d)
        return kept


class BackgroundSubtractionDetector:
    """One MOG2 model per camera; a foreground region's score is its fill ratio.

    The model runs on the frame downscaled by ``scale`` (people are large; the
    foreground mask needs no full resolution) and boxes are scaled back. The opening
    that removes speckle is 3x3: at half scale a leg is 3 to 5 pixels wide, and a 5x5
    opening cut the legs off (boxes of the upper body only, IoU < 0.5 with the person).
    """

    def __init__(self, history: int = 200, var_threshold: float = 16.0, min_area: int = 400, scale: float = 0.5):
        self.history, self.var_threshold, self.min_area, self.scale = history, var_threshold, min_area, scale
        self._models: dict[str, cv2.BackgroundSubtractor] = {}
        self._open_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def __call__(self, camera_id: str, image: np.ndarray) -> list[Detection]:
        model = self._models.get(camera_id)
        if model is None:
            model = cv2.createBackgroundSubtractorMOG2(self.history, self.var_threshold, detectShadows=False)
            self._models[camera_id] = model
        small = image if self.scale == 1 else cv2.resize(image, None, fx=self.scale, fy=self.scale,
                                                          interpolation=cv2.INTER_AREA)
        mask = model.apply(small)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open_kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._kernel, iterations=2)
        count, _, stats, _ = cv2.connectedComponentsWithStats((mask > 127).astype(np.uint8))
        detections = []
        min_area = self.min_area * self.scale**2
        for label in range(1, count):
            x, y, w, h, area = stats[label]
            if area >= min_area:
                box = tuple(float(v) / self.scale for v in (x, y, w, h))
                detections.append(Detection(box, float(area) / float(w * h)))
        return detections


class HOGDetector:
    def __init__(self):
        if not hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector"):
            raise UserError("this OpenCV has no HOG people detector (OpenCV 5 moved it out): install "
                            "opencv-python-headless<5 or use the 'background' or 'yolo' detector")
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def __call__(self, camera_id: str, image: np.ndarray) -> list[Detection]:
        boxes, weights = self.hog.detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        return [Detection(tuple(float(v) for v in box), float(1 / (1 + np.exp(-w))))
                for box, w in zip(boxes, np.asarray(weights).reshape(-1), strict=True)]


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping aspect, pad to ``size`` x ``size`` (grey 114, as Ultralytics does)."""
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = round(width * scale), round(height * scale)
    pad_x, pad_y = (size - new_w) / 2, (size - new_h) / 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = int(round(pad_y - 0.1)), int(round(pad_x - 0.1))
    canvas[top : top + new_h, left : left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, scale, (left, top)


def decode_yolo(output: np.ndarray, scale: float, pad: tuple[float, float], person_class: int = 0,
                score_threshold: float = 0.25, iou_threshold: float = 0.45) -> list[Detection]:
    """Person boxes in frame pixels from an Ultralytics ONNX output.

    ``(1, 4 + C, N)``: raw centre-format boxes and class scores (YOLOv8/11), NMS here.
    ``(1, N, 6)``: ``x1, y1, x2, y2, score, class`` after the model's own NMS (YOLOv10/26).
    """
    output = np.asarray(output)
    if output.ndim != 3 or output.shape[0] != 1:
        raise UserError(f"unexpected YOLO output shape {output.shape}: expected (1, 4+C, N) or (1, N, 6)")
    left, top = pad
    if output.shape[2] == 6 and output.shape[1] != 6:
        rows = output[0]
        rows = rows[(rows[:, 5].astype(int) == person_class) & (rows[:, 4] >= score_threshold)]
        boxes = [((x1 - left) / scale, (y1 - top) / scale, (x2 - x1) / scale, (y2 - y1) / scale, s)
                 for x1, y1, x2, y2, s, _ in rows]
        return [Detection(tuple(float(v) for v in b[:4]), float(b[4])) for b in boxes]
    predictions = output[0].T  # [N, 4 + C]
    scores = predictions[:, 4 + person_class]
    keep = scores >= score_threshold
    predictions, scores = predictions[keep], scores[keep]
    if len(predictions) == 0:
        return []
    cx, cy, w, h = predictions[:, 0], predictions[:, 1], predictions[:, 2], predictions[:, 3]
    xywh = np.stack([(cx - w / 2 - left) / scale, (cy - h / 2 - top) / scale, w / scale, h / scale], axis=1)
    indices = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), score_threshold, iou_threshold)
    return [Detection(tuple(float(v) for v in xywh[i]), float(scores[i])) for i in np.asarray(indices).reshape(-1)]


class YoloOnnxDetector:
    """An Ultralytics person detector exported to ONNX (``yolo export format=onnx``)."""

    def __init__(self, path: str, size: int = 640, person_class: int = 0, score_threshold: float = 0.25):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        except Exception as exc:  # damaged or foreign file
            raise UserError(f"cannot load the YOLO detector {path} ({exc.__class__.__name__})") from exc
        self.input = self.session.get_inputs()[0].name
        self.size, self.person_class, self.score_threshold = size, person_class, score_threshold

    def __call__(self, camera_id: str, image: np.ndarray) -> list[Detection]:
        canvas, scale, pad = letterbox(image, self.size)
        batch = (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        output = self.session.run(None, {self.input: batch})[0]
        return decode_yolo(output, scale, pad, self.person_class, self.score_threshold)


def make_detector(kind: str, **options):
    if kind == "background":
        return BackgroundSubtractionDetector(**options)
    if kind == "hog":
        return HOGDetector()
    if kind == "yolo":
        if "path" not in options:
            raise UserError("the yolo detector needs detector.path: an Ultralytics ONNX export")
        return YoloOnnxDetector(**options)
    raise UserError(f"detector must be background, hog or yolo, got {kind!r}")
