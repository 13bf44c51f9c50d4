"""NanoDet-g, a COCO detector (person is class 0), run on ONNX Runtime or OpenVINO with its
pre- and post-processing in numpy.

The model is the one ``hybreid detector fetch`` converts from its TF.js release: one
``1x3xSxS`` BGR input normalised by NanoDet's mean and std after a plain resize, and per
stride (8, 16, 32) two outputs told apart by shape: class scores ``[1, cells, 80]``, already
sigmoid, and box sides ``[1, cells, 4 * 11]``. Each side (left, top, right, bottom) is a
distribution over 11 bins (generalised focal loss): its distance from the cell's centre is
the softmax's expectation over 0..10, in strides. Boxes of all strides then go through
OpenCV's NMS. Written here: no package ships NanoDet's decoder without torch.

Torch-free: this runs on the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybreid.errors import UserError

MEAN = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD = np.array([57.375, 57.12, 58.395], dtype=np.float32)
STRIDES = (8, 16, 32)
CLASSES = 80
BINS = 11
PERSON = 0
RUNTIMES = ("onnxruntime", "openvino")

# The ONNX metadata ``hybreid detector fetch`` writes into the converted model.
METADATA_PREFIX = "hybreid.detector."
# NanoDet's own post-processing defaults (its demo's): a person at 0.45 or more, NMS at IoU 0.45.
SCORE_THRESHOLD = 0.45
IOU_THRESHOLD = 0.45


@dataclass(frozen=True)
class Boxes:
    """Person boxes in frame pixels, ``[x, y, w, h]`` rows, and their scores."""

    xywh: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def check_outputs(size: int, shapes: list[tuple]) -> dict[int, tuple[int, int]]:
    """For each stride, the indices of its (scores, sides) outputs; one sentence where the
    model's outputs are not NanoDet's for a ``size`` x ``size`` input."""
    by_cells: dict[int, dict[int, int]] = {}
    for index, shape in enumerate(shapes):
        if len(shape) == 3 and shape[0] == 1 and shape[2] in (CLASSES, 4 * BINS):
            by_cells.setdefault(shape[1], {})[shape[2]] = index
    layout = {}
    for stride in STRIDES:
        cells = (size // stride) ** 2
        found = by_cells.get(cells, {})
        if CLASSES not in found or 4 * BINS not in found:
            raise ValueError(f"no [1, {cells}, {CLASSES}] scores and [1, {cells}, {4 * BINS}] box outputs for "
                             f"stride {stride}")
        layout[stride] = (found[CLASSES], found[4 * BINS])
    if len(shapes) != 2 * len(STRIDES):
        raise ValueError(f"{len(shapes)} outputs, not {2 * len(STRIDES)}")
    return layout


def decode(outputs: list[np.ndarray], layout: dict[int, tuple[int, int]], size: int,
           frame_size: tuple[int, int], score_threshold: float, iou_threshold: float) -> Boxes:
    """Person boxes in the frame's pixels (``frame_size``: width, height) from the model's
    outputs, after NMS."""
    import cv2

    width, height = frame_size
    scale = np.array([width / size, height / size, width / size, height / size], dtype=np.float32)
    corners, scores = [], []
    for stride, (score_index, side_index) in layout.items():
        person = outputs[score_index][0, :, PERSON]
        cells = np.flatnonzero(person >= score_threshold)
        if len(cells) == 0:
            continue
        logits = outputs[side_index][0, cells].reshape(-1, 4, BINS).astype(np.float32)
        weights = np.exp(logits - logits.max(axis=2, keepdims=True))
        weights /= weights.sum(axis=2, keepdims=True)
        sides = (weights @ np.arange(BINS, dtype=np.float32)) * stride  # left, top, right, bottom
        grid = size // stride
        centre_x, centre_y = (cells % grid + 0.5) * stride, (cells // grid + 0.5) * stride
        corners.append(np.stack([centre_x - sides[:, 0], centre_y - sides[:, 1],
                                 centre_x + sides[:, 2], centre_y + sides[:, 3]], axis=1) * scale)
        scores.append(person[cells])
    if not corners:
        return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    corners_all, scores_all = np.concatenate(corners), np.concatenate(scores).astype(np.float32)
    xywh = np.concatenate([corners_all[:, :2], corners_all[:, 2:] - corners_all[:, :2]], axis=1)
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores_all.tolist(), score_threshold, iou_threshold),
                      dtype=int).reshape(-1)
    return Boxes(xywh[keep], scores_all[keep])


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """A BGR frame as the model's ``1x3xSxS`` input."""
    import cv2

    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return ((resized - MEAN) / STD).transpose(2, 0, 1)[None]


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``hybreid.detector.*`` metadata of a converted model (empty for another file)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a damaged or foreign file
        raise UserError(f"{path} is not an ONNX model ({exc.__class__.__name__})") from None
    return {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


# Tiles overlap by this share of their width, so a person on a border is whole in one of them.
TILE_OVERLAP = 0.2


def tile_windows(width: int, height: int, columns: int) -> list[tuple[int, int, int, int]]:
    """``columns`` side-by-side windows ``(x, y, w, h)`` over the frame, overlapping."""
    tile_width = min(width, int(round(width / columns * (1 + TILE_OVERLAP))))
    step = (width - tile_width) / max(columns - 1, 1)
    return [(int(round(column * step)), 0, tile_width, height) for column in range(columns)]


class NanoDet:
    """One compiled NanoDet; ``detect`` returns a frame's person boxes.

    The model sees a frame squeezed to 416 x 416: a person 30 pixels tall in a 576-row
    frame is 22 there, below what it finds. With ``tiles`` of 2 or more it also looks at
    that many overlapping columns of the frame, each squeezed alone, and keeps the boxes of
    all views through one NMS: on vtest.avi, two columns found 142 of 151 counted people
    instead of 135 (one box on no counted person), at three times the compute.
    """

    def __init__(self, path: str | Path, runtime: str = "onnxruntime", threads: int | None = None,
                 score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD, tiles: int = 1):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"detector model {path} does not exist (`hybreid detector fetch` makes it)")
        if runtime not in RUNTIMES:
            raise UserError(f"detector runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.path, self.runtime, self.tiles = path, runtime, tiles
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        try:
            input_shape, output_shapes = self._load(path, threads)
        except UserError:
            raise
        except Exception as exc:  # a damaged, foreign or hostile file: the runtime's own complaint
            raise UserError(f"cannot load the detector {path} ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'})") from None
        if len(input_shape) != 4 or input_shape[1] != 3 or input_shape[2] != input_shape[3] \
                or not isinstance(input_shape[2], int):
            raise UserError(f"{path} is not a NanoDet detector: its input is {input_shape}, not 1x3xSxS")
        self.size = int(input_shape[2])
        try:
            self.layout = check_outputs(self.size, output_shapes)
        except ValueError as exc:
            raise UserError(f"{path} is not a NanoDet detector: {exc}") from None

    def _load(self, path: Path, threads: int | None) -> tuple[list, list[tuple]]:
        if self.runtime == "openvino":
            from hybreid.inference.openvino_backend import compile_for_cpu, openvino_unavailable_reason

            reason = openvino_unavailable_reason()
            if reason:
                raise UserError(reason)
            _, compiled = compile_for_cpu(path, "openvino", threads)
            self._request = compiled.create_infer_request()
            self._run = lambda batch: [self._request.infer([batch])[output] for output in compiled.outputs]
            return (list(compiled.inputs[0].get_partial_shape().to_shape()),
                    [tuple(output.get_partial_shape().to_shape()) for output in compiled.outputs])
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        self._run = lambda batch: session.run(None, {name: batch})
        return session.get_inputs()[0].shape, [tuple(output.shape) for output in session.get_outputs()]

    def _detect_view(self, image: np.ndarray) -> Boxes:
        height, width = image.shape[:2]
        outputs = self._run(preprocess(image, self.size))
        return decode(outputs, self.layout, self.size, (width, height), self.score_threshold, self.iou_threshold)

    def detect(self, image: np.ndarray) -> Boxes:
        whole = self._detect_view(image)
        if self.tiles < 2:
            return whole
        import cv2

        height, width = image.shape[:2]
        views = [whole]
        for x, y, w, h in tile_windows(width, height, self.tiles):
            found = self._detect_view(image[y : y + h, x : x + w])
            views.append(Boxes(found.xywh + np.array([x, y, 0, 0], np.float32), found.scores))
        xywh = np.concatenate([view.xywh for view in views])
        scores = np.concatenate([view.scores for view in views])
        keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score_threshold,
                                           self.iou_threshold), dtype=int).reshape(-1)
        return Boxes(xywh[keep], scores[keep])
