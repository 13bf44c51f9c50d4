"""The plain data classes that flow between the edge runtime's stages.

capture -> :class:`Frame` -> detect -> :class:`Detection` -> track -> :class:`Crop` -> embed
-> (per tracklet) :class:`TrackletFeature` -> publish.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    camera_id: str
    index: int  # frame number from this camera, from 0
    ts: float  # capture time, seconds since the epoch (or video time for files)
    image: np.ndarray  # RGB uint8 [H, W, 3]
    modality: str  # visible or infrared (decided for "auto" cameras)


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x, y, w, h in pixels
    score: float


@dataclass
class Crop:
    camera_id: str
    modality: str
    track_id: int
    frame_index: int
    ts: float
    box: tuple[float, float, float, float]
    score: float
    image: np.ndarray  # RGB uint8 crop
    quality: float  # 0..1: detector score x size x sharpness, the weight in the tracklet mean


@dataclass
class TrackletFeature:
    """One tracklet's quality-weighted mean embedding, ready to publish."""

    camera_id: str
    modality: str
    track_id: int
    first_ts: float
    ts: float
    box: tuple[float, float, float, float]
    score: float
    quality: float
    frames: int
    embedding: np.ndarray
    final: bool
    extra: dict = field(default_factory=dict)
