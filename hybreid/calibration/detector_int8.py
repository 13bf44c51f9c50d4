"""INT8 for the person detector: NanoDet-g's convolutions quantised by ONNX Runtime's static
quantisation, with activation ranges taken on frames of the camera's own footage.

The Q/DQ form is the ``cpu`` target's for the box's instruction set (:mod:`hybreid.calibration.int8`),
which ONNX Runtime and OpenVINO both run. Only convolutions are quantised, all of them, the
heads and those reading a concatenation included: on ``vtest.avi`` that found the same 135
of the 151 people counted as FP32, while quantising every op type (ONNX Runtime's default:
the sigmoids, resizes and splits too) found none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hybreid.calibration.int8 import QuantizationConfig, quantize
from hybreid.errors import UserError
from hybreid.inference.nanodet import METADATA_PREFIX, NanoDet, preprocess, read_metadata


@dataclass(frozen=True)
class DetectorInt8:
    path: Path
    frames: int  # calibration frames
    cpu_isa: str  # the instruction set its Q/DQ form was made for


def calibration_frames(video: str | Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over the video (every frame where it has fewer). Two
    passes, the first without decoding, so that only the chosen frames are held: an hour of
    footage does not fit in memory."""
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if not Path(video).is_file():
        raise UserError(f"cannot open the calibration video {video}: no such file")
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise UserError(f"cannot open the calibration video {video}")
    total = 0
    with tqdm(desc="counting frames", unit="frame") as bar:
        while capture.grab():
            total += 1
            bar.update()
    capture.release()
    if total == 0:
        raise UserError(f"{video} gave no frame OpenCV can read")
    picked = set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
    capture, frames = cv2.VideoCapture(str(video)), []
    for index in tqdm(range(total), desc="reading calibration frames", unit="frame"):
        if not capture.grab():
            break
        if index in picked:
            ok, image = capture.retrieve()
            if ok:
                frames.append(image)
    capture.release()
    if not frames:
        raise UserError(f"{video} gave no frame OpenCV can decode")
    return frames


def quantize_detector(detector: str | Path, out: str | Path, video: str | Path, count: int = 64,
                      cpu_isa: str = "") -> DetectorInt8:
    """Write the INT8 NanoDet of ``detector`` (what ``hybreid detector fetch`` wrote) to ``out``,
    calibrated on ``count`` frames of ``video``; its provenance goes along, with its precision."""
    import onnx

    detector, out = Path(detector), Path(out)
    model = NanoDet(detector)  # one sentence for a missing, foreign or damaged file
    provenance = read_metadata(detector)
    if not provenance:
        raise UserError(f"{detector} carries no provenance: quantise the file `hybreid detector fetch` wrote")
    if "precision" in provenance:
        raise UserError(f"{detector} is already {provenance['precision']}: quantise the FP32 detector")
    frames = calibration_frames(video, count)
    calibration = np.concatenate([preprocess(frame, model.size) for frame in frames])
    config = QuantizationConfig(target="cpu", cpu_isa=cpu_isa, op_types=("Conv",), quantize_concat_inputs=True,
                                quantize_output_layers=True)
    partial = out.with_name(out.name + ".partial")  # what a failed run leaves is never taken for the detector
    try:
        result = quantize(detector, partial, calibration, config)
        quantized = onnx.load(str(partial))
        del quantized.metadata_props[:]
        for key, value in {**provenance, "precision": f"int8-cpu-{result.config.method}",
                           "cpu_isa": result.config.cpu_isa,
                           "calibration": f"{len(frames)} frames of {Path(video).name}"}.items():
            quantized.metadata_props.add(key=METADATA_PREFIX + key, value=value)
        onnx.save(quantized, str(partial))
        NanoDet(partial)  # the written file loads and still has NanoDet's outputs
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return DetectorInt8(out, len(frames), result.config.cpu_isa)
