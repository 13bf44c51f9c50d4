"""Detection: person boxes from a frame. Pluggable; every detector returns :class:`Detection`s.

- ``background`` (default for fixed cameras, no weights): OpenCV's MOG2 background
  subtraction, morphological clean-up, connected regions as boxes; a region that one
  person cannot explain (two people walking together make one region) is split in two
  by the camera's perspective (:class:`PersonSizes`, :func:`split_region`); a body and the
  feet under it that the floor cut apart are joined (:func:`join_fragments`), and one that
  is only the top of a person can be grown down to the whole person (:func:`whole_person`).
  A second, looser background model fills in faint pixels above and below the sure ones.
- ``hog``: OpenCV's HOG people detector, where the installed OpenCV still has it (OpenCV
  5 moved it out of the main package; hybreid pins ``opencv-python-headless<5``).
- ``nanodet``: NanoDet-g, a COCO CNN detector for real cameras (``hybreid detector fetch``
  converts it), on ONNX Runtime or OpenVINO (:mod:`hybreid.inference.nanodet`).
- ``yolo``: a person detector from a user's Ultralytics ONNX export, either the raw
  ``(1, 4 + classes, N)`` output (boxes then NMS here) or the NMS-free ``(1, N, 6)``
  output; the letterbox is undone so boxes are in frame pixels.

Boxes are filtered by size, aspect ratio and score (:class:`BoxFilter`).
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hybreid.edge_runtime.site import (
    BackgroundDetectorSettings,
    BoxFilterSettings,
    DetectorSettings,
    HogDetectorSettings,
    NanoDetSettings,
    YoloSettings,
)
from hybreid.edge_runtime.stages import Detection
from hybreid.errors import UserError


class BoxFilter:
    """Keeps the boxes that can be a standing person (:class:`BoxFilterSettings`)."""

    def __init__(self, settings: BoxFilterSettings | None = None):
        self.settings = settings or BoxFilterSettings()

    def __call__(self, detections: list[Detection]) -> list[Detection]:
        keep = self.settings
        kept = []
        for d in detections:
            x, y, w, h = d.box
            upright = w > 0 and keep.min_aspect <= h / w <= keep.max_aspect
            if h >= keep.min_height and upright and d.score >= keep.min_score:
                kept.append(d)
        return kept


class PersonSizes:
    """How tall and how wide a person whose feet are on a given image row looks in one fixed
    camera (its perspective), learned from the regions the camera sees.

    A row's height is the 75th percentile of the heights of the regions whose bottom lies
    within ``near`` rows: a fragment (legs the background swallowed, a head) only makes a
    region shorter, and two people who walk together are about as tall as the nearer one.
    Its width is the 30th percentile of the width-to-height ratios of the regions of full
    height there: two people who walk together make wide regions of full height, and where
    many walk in pairs the median took them for one person (on three synthetic sites, the
    recall of people who overlap another rose from 0.87, 0.66 and 0.72 to 0.93, 0.86 and
    0.82 with the 30th percentile).
    The table is rebuilt every ``refresh`` regions, from the last ``keep``.
    """

    def __init__(self, keep: int = 2000, near: int = 4, need: int = 10, refresh: int = 20):
        self.near, self.need, self.refresh = near, need, refresh
        self._samples: deque[tuple[int, int, int]] = deque(maxlen=keep)  # (bottom row, height, width)
        self._since_refresh = 0
        self._table: np.ndarray | None = None  # row -> (height, width), NaN where too few regions

    def add(self, bottom: int, height: int, width: int) -> None:
        self._samples.append((bottom, height, width))
        self._since_refresh += 1
        if self._since_refresh >= self.refresh or (self._table is None and len(self._samples) >= self.need):
            self._rebuild()

    def _rebuild(self) -> None:
        self._since_refresh = 0
        samples = np.array(self._samples, dtype=float)
        table = np.full((int(samples[:, 0].max()) + self.near + 1, 2), np.nan)
        # only rows some region ends near can have enough of them
        bottoms = np.unique(samples[:, 0].astype(int))
        rows = np.unique((bottoms[:, None] + np.arange(-self.near, self.near + 1)).clip(0, len(table) - 1))
        for row in rows:
            close = samples[np.abs(samples[:, 0] - row) <= self.near]
            if len(close) >= self.need:
                height = float(np.percentile(close[:, 1], 75))
                full = close[close[:, 1] >= 0.85 * height]
                table[row] = height, height * float(np.percentile(full[:, 2] / full[:, 1], 30))
        self._table = table

    def expected(self, bottom: int) -> tuple[float, float] | None:
        """(height, width) of a person whose region ends at row ``bottom``, or None where the
        camera has not yet seen enough people there."""
        if self._table is None or not 0 <= bottom < len(self._table) or np.isnan(self._table[bottom, 0]):
            return None
        height, width = self._table[bottom]
        return float(height), float(width)

    def standing_below(self, top: int) -> tuple[float, float] | None:
        """(height, width) of a person whose head is on row ``top``: the row whose
        expected height reaches up to it, within ``near`` rows. None where the camera has seen
        too few people there."""
        if self._table is None:
            return None
        rows = np.flatnonzero(~np.isnan(self._table[:, 0]))
        rows = rows[rows > top]
        if len(rows) == 0:
            return None
        reach = rows - self._table[rows, 0]
        nearest = int(np.argmin(np.abs(reach - top)))
        if abs(reach[nearest] - top) > self.near:
            return None
        height, width = self._table[rows[nearest]]
        return float(height), float(width)


def _box_sums(integral: np.ndarray, top, bottom, left, right):
    return integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]


# A region is split into two people when that explains its pixels better than one person by
# more than SPLIT_PENALTY of the second person's area. A box's cost is the region's pixels it
# leaves out plus BACKGROUND_WEIGHT of the background it takes in (a silhouette fills about
# half its box, so background inside a right box is normal). Measured on two synthetic sites
# (seeds 0, 1 and 2) against their ground truth: recall of people who overlap another went
# from 0.49, 0.47 and 0.42 to 0.93, 0.86 and 0.82; false boxes from 40, 199 and 199 to 60,
# 176 and 190.
SPLIT_PENALTY = 0.03
BACKGROUND_WEIGHT = 0.3
SIDE_BY_SIDE = 1.6  # two people on one row make a region at least this many people wide


def split_region(region: np.ndarray, top: int, sizes: PersonSizes) -> list[tuple[int, int, int, int]] | None:
    """Two person boxes ``(x, y, w, h)`` in the region's own pixels, or None when one person
    explains it. ``region``: the boolean mask of one connected region, cropped to its box;
    ``top``: its first row in the frame.

    The nearer person stands on the region's lowest row; the other stands on a row where some
    column of the region ends (further away, so higher in the frame, or on the same row when
    the region is wide enough for two side by side). Each person's box has the size the
    camera's perspective gives its row, and both positions are searched exhaustively. Written
    here: OpenCV's and scikit-image's segmentation take no perspective prior.
    """
    height, width = region.shape
    near = sizes.expected(top + height)
    if near is None:
        return None
    near_h, near_w = near
    if not 0.8 * near_h <= height <= 1.25 * near_h or width < 1.2 * near_w:
        return None  # not one person's height, or no wider than one person
    h1, w1 = min(int(round(near_h)), height), max(2, int(round(near_w)))
    if w1 >= width:
        return None
    pixels = region.astype(np.int64)
    total = int(pixels.sum())
    integral = np.pad(pixels, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    top1 = height - h1
    xs1 = np.arange(width - w1 + 1)
    covered1 = _box_sums(integral, top1, height, xs1, xs1 + w1)
    one_person = float(((total - covered1) + BACKGROUND_WEIGHT * (h1 * w1 - covered1)).min())
    ends = np.where(region.any(0), height - 1 - np.argmax(region[::-1], 0), -1)
    best: tuple[float, int, int, int, int, int] | None = None
    for foot in np.unique(ends[ends >= 0]).tolist():
        if foot >= height - 1 - 0.05 * height and width < SIDE_BY_SIDE * near_w:
            continue  # on the nearer person's row, and no room for two side by side
        other = sizes.expected(top + foot + 1)
        if other is None:
            continue
        h2, w2 = min(int(round(other[0])), foot + 1), max(2, int(round(other[1])))
        if w2 >= width:
            continue
        top2 = foot + 1 - h2
        xs2 = np.arange(width - w2 + 1)
        covered2 = _box_sums(integral, top2, foot + 1, xs2, xs2 + w2)
        left = np.maximum(xs1[:, None], xs2[None, :])
        right = np.maximum(np.minimum(xs1[:, None] + w1, xs2[None, :] + w2), left)
        overlap_top, overlap_bottom = max(top1, top2), max(min(height, foot + 1), max(top1, top2))
        covered_both = _box_sums(integral, overlap_top, overlap_bottom, left, right)
        covered = covered1[:, None] + covered2[None, :] - covered_both
        area = h1 * w1 + h2 * w2 - (right - left) * (overlap_bottom - overlap_top)
        cost = (total - covered) + BACKGROUND_WEIGHT * (area - covered)
        i, j = np.unravel_index(int(np.argmin(cost)), cost.shape)
        score = float(cost[i, j]) + SPLIT_PENALTY * h2 * w2
        if best is None or score < best[0]:
            best = (score, int(xs1[i]), int(xs2[j]), top2, w2, h2)
    if best is None or best[0] >= one_person:
        return None
    _, x1, x2, top2, w2, h2 = best
    return [(x1, top1, w1, h1), (x2, top2, w2, h2)]


# A region shorter than PART_OF_PERSON of the person whose head is on its top row is the top of
# that person: legs the background model cannot tell from the floor (grey trousers on a grey
# floor). Regions below PART_FLOOR of a person (a head, a bag) or not about one person wide are
# left as they are. How both were chosen: docs/benchmarks.md, "Where the code's constants come
# from".
PART_OF_PERSON = 0.8
PART_FLOOR = 0.35


def whole_person(width: int, height: int, top: int, sizes: PersonSizes, frame_rows: int) -> tuple[int, int, int, int]:
    """The box ``(x, y, w, h)``, in the region's own pixels, of the person a region of this size
    shows: the region itself, or grown down where it is only the top of one."""
    standing = sizes.standing_below(top)
    if standing is None:
        return 0, 0, width, height
    person_h, person_w = standing
    partial = PART_FLOOR * person_h <= height < PART_OF_PERSON * person_h
    if not partial or not 0.6 * person_w <= width <= 1.5 * person_w:
        return 0, 0, width, height
    return 0, 0, width, min(int(round(person_h)), frame_rows - top)


# A body and a fragment under it are one person when together they are this share of the
# height the camera's perspective gives the fragment's row (a row's height is a percentile of
# the people seen there, and people differ). Fragments as small as FRAGMENT_AREA of the
# detector's min_area (a pair of feet at the working scale) may join. Measured on five
# renderings of the synthetic site and checked on the harder site and vtest.avi
# (docs/benchmarks.md, "Faint legs").
JOINED_HEIGHT = (0.85, 1.2)
FRAGMENT_AREA = 0.1


def join_fragments(stats: np.ndarray, sizes: PersonSizes, min_area: float) -> list[list[int]]:
    """The connected regions (``stats`` of ``cv2.connectedComponentsWithStats``, row 0 the
    background) grouped into people: a region stays alone, or takes the regions below it in its
    columns when together they are as tall as a person standing on the lowest one's row and no
    wider than one, while the upper region alone is not as tall (a body whose legs the
    background swallowed, its feet a separate speck). Each group lists its labels."""
    count = len(stats)
    candidates = [label for label in range(1, count) if stats[label, 4] >= FRAGMENT_AREA * min_area]
    boxes = {label: tuple(int(v) for v in stats[label, :4]) for label in candidates}
    # the person standing on each candidate's lowest row: once per region, not once per pair
    standing = {label: sizes.expected(y + h) for label, (_, y, _, h) in boxes.items()}
    low, high = JOINED_HEIGHT
    upper, lower = [], []
    for a in candidates:
        ax, ay, aw, ah = boxes[a]
        for b in candidates:
            bx, by, bw, bh = boxes[b]
            if a == b or by + bh <= ay + ah or by < ay + ah / 2:
                continue  # b must lie below a
            if min(ax + aw, bx + bw) - max(ax, bx) < -2:
                continue  # and in its columns, or within two of them
            person = standing[b]
            if person is None:
                continue
            height, width = by + bh - ay, max(ax + aw, bx + bw) - min(ax, bx)
            if low * person[0] <= height <= high * person[0] and ah < 0.8 * height and width <= 1.5 * person[1] + 2:
                upper.append(a)
                lower.append(b)
    graph = coo_matrix((np.ones(len(upper)), (upper, lower)), shape=(count, count))
    _, group_of = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for label in range(1, count):
        groups.setdefault(int(group_of[label]), []).append(label)
    return list(groups.values())


class BackgroundSubtractionDetector:
    """One MOG2 model per camera; a foreground region's score is its fill ratio.

    The model runs on the frame downscaled by ``scale`` (people are large; the
    foreground mask needs no full resolution) and boxes are scaled back. The opening
    that removes speckle is 3x3: at half scale a leg is 3 to 5 pixels wide, and a 5x5
    opening cut the legs off (boxes of the upper body only, IoU < 0.5 with the person).
    With ``weak_var_threshold``, a second MOG2 model at that looser threshold adds its pixels
    where they lie within a narrow column band above or below the first model's regions
    (hysteresis, as Canny's edges): legs the colour of the floor are faint, and faint pixels
    away from a person are mostly noise. With ``join_fragments``, a body and the feet below it
    make one box (:func:`join_fragments`); with ``split_groups``, a region two people make
    together is split in two (:func:`split_region`); with ``whole_people``, a region that is
    only the top of a person is grown down to the whole person (:func:`whole_person`).
    """

    def __init__(self, settings: BackgroundDetectorSettings | None = None):
        settings = settings or BackgroundDetectorSettings()
        self.history, self.var_threshold = settings.history, settings.var_threshold
        self.min_area, self.scale, self.split_groups = settings.min_area, settings.scale, settings.split_groups
        self.whole_people, self.join_fragments = settings.whole_people, settings.join_fragments
        self.weak_var_threshold = settings.weak_var_threshold
        self._models: dict[str, list[cv2.BackgroundSubtractor]] = {}
        self._sizes: dict[str, PersonSizes] = {}
        self._open_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        # how far above and below a sure region faint pixels count, at the working scale: about
        # a fifth of a person at the synthetic sites' size, two leg-widths across
        self._band = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 41))

    def _foreground(self, camera_id: str, small: np.ndarray) -> np.ndarray:
        models = self._models.get(camera_id)
        if models is None:
            thresholds = [self.var_threshold] + ([self.weak_var_threshold] if self.weak_var_threshold else [])
            models = [cv2.createBackgroundSubtractorMOG2(self.history, threshold, detectShadows=False)
                      for threshold in thresholds]
            self._models[camera_id] = models
        sure = cv2.morphologyEx(models[0].apply(small), cv2.MORPH_OPEN, self._open_kernel)
        sure = cv2.morphologyEx(sure, cv2.MORPH_CLOSE, self._kernel, iterations=2)
        if len(models) == 1:
            return sure
        faint = cv2.morphologyEx(models[1].apply(small), cv2.MORPH_OPEN, self._open_kernel)
        mask = cv2.bitwise_or(sure, cv2.bitwise_and(faint, cv2.dilate(sure, self._band)))
        return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._kernel, iterations=2)

    def __call__(self, camera_id: str, image: np.ndarray) -> list[Detection]:
        sizes = self._sizes.setdefault(camera_id, PersonSizes())
        small = image if self.scale == 1 else cv2.resize(image, None, fx=self.scale, fy=self.scale,
                                                          interpolation=cv2.INTER_AREA)
        mask = self._foreground(camera_id, small)
        count, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 127).astype(np.uint8))
        min_area = self.min_area * self.scale**2
        if self.join_fragments:
            groups = join_fragments(stats, sizes, min_area)
        else:
            groups = [[label] for label in range(1, count)]
        detections = []
        for members in groups:
            area = int(stats[members, 4].sum())
            if area < min_area:
                continue
            x, y = int(stats[members, 0].min()), int(stats[members, 1].min())
            w = int((stats[members, 0] + stats[members, 2]).max()) - x
            h = int((stats[members, 1] + stats[members, 3]).max()) - y
            region = np.isin(labels[y : y + h, x : x + w], members)
            people = split_region(region, y, sizes) if self.split_groups else None
            if people is None:
                sizes.add(y + h, h, w)
                people = [whole_person(w, h, y, sizes, mask.shape[0]) if self.whole_people else (0, 0, w, h)]
            for px, py, pw, ph in people:
                fill = float(region[py : py + ph, px : px + pw].mean())
                detections.append(Detection(tuple(float(v) / self.scale for v in (x + px, y + py, pw, ph)), fill))
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

    def __init__(self, path: str, size: int, person_class: int, score_threshold: float):
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


class NanoDetDetector:
    """NanoDet-g's person boxes; one compiled model serves every camera that uses it."""

    def __init__(self, settings: NanoDetSettings):
        from hybreid.inference.nanodet import NanoDet

        self.model = NanoDet(settings.path, settings.runtime, settings.threads, settings.score_threshold,
                             settings.iou_threshold, settings.tiles)

    def __call__(self, camera_id: str, image: np.ndarray) -> list[Detection]:
        boxes = self.model.detect(image)
        return [Detection(tuple(float(v) for v in box), float(score))
                for box, score in zip(boxes.xywh, boxes.scores, strict=True)]


def make_detector(settings: DetectorSettings):
    """The detector a site file's ``detector`` section describes."""
    if isinstance(settings, BackgroundDetectorSettings):
        return BackgroundSubtractionDetector(settings)
    if isinstance(settings, HogDetectorSettings):
        return HOGDetector()
    if isinstance(settings, YoloSettings):
        return YoloOnnxDetector(settings.path, settings.size, settings.person_class, settings.score_threshold)
    return NanoDetDetector(settings)
