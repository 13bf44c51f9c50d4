"""MQTT protocol v1, shared by the edge runtime and the matcher. Torch-free.

Topics (``site`` and ``camera_id`` are ``[A-Za-z0-9_-]{1,64}``):

- ``hybreid/v1/{site}/{camera_id}/features`` — one tracklet embedding per message, QoS 1;
- ``hybreid/v1/{site}/{camera_id}/status`` — retained ``online``/``offline`` JSON; the
  broker publishes ``offline`` as the camera's last will;
- ``hybreid/v1/{site}/events`` — the matcher's identity decisions.

A feature message is UTF-8 JSON, readable by any MQTT client (``mosquitto_sub -v -t
'hybreid/v1/#'``)::

    {"v": 1, "site": "lobby", "camera_id": "cam-01", "modality": "visible",
     "ts": 1763772000.125, "seq": 42, "track_id": 7, "box": [412, 96, 88, 231],
     "score": 0.91, "quality": 0.83, "frames": 14, "first_ts": 1763771998.5,
     "final": true, "model": {"name": "haresformer_tiny", "hash": "3f9c0a7d1e22b410"},
     "dim": 1024, "dtype": "float32", "embedding": "<base64 of little-endian values>"}

``seq`` counts up per camera and never repeats (it survives restarts), so a receiver
de-duplicates on ``(camera_id, seq)`` and can tell whether anything is missing.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

VERSION = 1
TOPIC_ROOT = "hybreid/v1"
MODALITIES = ("visible", "infrared")
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DIM = 8192
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def features_topic(site: str, camera_id: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{camera_id}/features"


def status_topic(site: str, camera_id: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{camera_id}/status"


def events_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/events"


def features_subscription(site: str = "+") -> str:
    return f"{TOPIC_ROOT}/{site}/+/features"


class ProtocolError(ValueError):
    """A message that breaks protocol v1; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class FeatureMessage:
    site: str
    camera_id: str
    modality: str
    ts: float
    seq: int
    track_id: int
    box: tuple[float, float, float, float]
    score: float
    model_name: str
    model_hash: str
    embedding: np.ndarray
    quality: float = 1.0
    frames: int = 1
    first_ts: float | None = None
    final: bool = True
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    @property
    def model_identity(self) -> str:
        return f"{self.model_name}@{self.model_hash}"

    @property
    def topic(self) -> str:
        return features_topic(self.site, self.camera_id)


def encode_feature(message: FeatureMessage) -> bytes:
    for name in ("site", "camera_id"):
        if not _NAME.match(getattr(message, name)):
            raise ValueError(f"{name} {getattr(message, name)!r} must match [A-Za-z0-9_-]{{1,64}}")
    vector = np.ascontiguousarray(message.embedding, dtype=DTYPES[message.dtype]).reshape(-1)
    payload = {
        "v": VERSION, "site": message.site, "camera_id": message.camera_id, "modality": message.modality,
        "ts": message.ts, "seq": message.seq, "track_id": message.track_id,
        "box": [float(v) for v in message.box], "score": float(message.score), "quality": float(message.quality),
        "frames": message.frames, "first_ts": message.first_ts if message.first_ts is not None else message.ts,
        "final": message.final, "model": {"name": message.model_name, "hash": message.model_hash},
        "dim": int(vector.size), "dtype": message.dtype,
        "embedding": base64.b64encode(vector.tobytes()).decode("ascii"),
    }
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def _require(payload: dict, key: str, kind, reason: str = "schema"):
    value = payload.get(key)
    if isinstance(value, bool) and kind is not bool:
        raise ProtocolError(reason, f"{key} must be {kind}")
    if not isinstance(value, kind):
        raise ProtocolError(reason, f"{key} missing or not {kind}")
    return value


def decode_feature(data: bytes, topic: str | None = None, max_bytes: int = MAX_PAYLOAD_BYTES) -> FeatureMessage:
    """Parse and validate one feature message; raise :class:`ProtocolError` with a reason.

    Reasons: ``too_large``, ``not_utf8``, ``invalid_json``, ``version``, ``schema``,
    ``dimension``, ``non_finite``, ``topic_mismatch``.
    """
    if len(data) > max_bytes:
        raise ProtocolError("too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("not_utf8", str(exc)) from exc
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("invalid_json", str(exc)) from exc
    if not isinstance(payload, dict):
        raise ProtocolError("schema", "top level is not an object")
    if payload.get("v") != VERSION:
        raise ProtocolError("version", f"v={payload.get('v')!r}, expected {VERSION}")
    site = _require(payload, "site", str)
    camera_id = _require(payload, "camera_id", str)
    if not _NAME.match(site) or not _NAME.match(camera_id):
        raise ProtocolError("schema", "site or camera_id is not [A-Za-z0-9_-]{1,64}")
    if topic is not None and topic != features_topic(site, camera_id):
        raise ProtocolError("topic_mismatch", f"payload says {site}/{camera_id}, topic is {topic}")
    modality = _require(payload, "modality", str)
    if modality not in MODALITIES:
        raise ProtocolError("schema", f"modality {modality!r}")
    ts = float(_require(payload, "ts", (int, float)))
    seq = _require(payload, "seq", int)
    track_id = _require(payload, "track_id", int)
    if seq < 0:
        raise ProtocolError("schema", "seq < 0")
    box = _require(payload, "box", list)
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise ProtocolError("schema", "box must be [x, y, w, h]")
    model = _require(payload, "model", dict)
    model_name, model_hash = model.get("name"), model.get("hash")
    if not isinstance(model_name, str) or not isinstance(model_hash, str):
        raise ProtocolError("schema", "model needs name and hash")
    dtype = _require(payload, "dtype", str)
    if dtype not in DTYPES:
        raise ProtocolError("schema", f"dtype {dtype!r}")
    dim = _require(payload, "dim", int)
    if not 0 < dim <= MAX_DIM:
        raise ProtocolError("dimension", f"dim {dim}")
    try:
        raw = base64.b64decode(_require(payload, "embedding", str), validate=True)
    except ValueError as exc:
        raise ProtocolError("schema", "embedding is not base64") from exc
    if len(raw) != dim * DTYPES[dtype].itemsize:
        raise ProtocolError("dimension", f"{len(raw)} bytes for dim {dim} {dtype}")
    vector = np.frombuffer(raw, dtype=DTYPES[dtype]).astype(np.float32)
    numbers = [ts, float(payload.get("score", 0.0)), float(payload.get("quality", 1.0)), *map(float, box)]
    if not np.isfinite(vector).all() or not all(math.isfinite(v) for v in numbers):
        raise ProtocolError("non_finite", "NaN or infinity in the message")
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ProtocolError("non_finite", "zero embedding")
    first_ts = payload.get("first_ts", ts)
    return FeatureMessage(
        site=site, camera_id=camera_id, modality=modality, ts=ts, seq=seq, track_id=track_id,
        box=tuple(float(v) for v in box), score=float(payload.get("score", 0.0)), model_name=model_name,
        model_hash=model_hash, embedding=vector / norm, quality=float(payload.get("quality", 1.0)),
        frames=int(payload.get("frames", 1)), first_ts=float(first_ts) if first_ts is not None else ts,
        final=bool(payload.get("final", True)), dtype=dtype,
    )


def encode_status(state: str, camera_id: str, ts: float, **details) -> bytes:
    return json.dumps({"v": VERSION, "camera_id": camera_id, "state": state, "ts": ts, **details}).encode()


def encode_event(event: dict) -> bytes:
    return json.dumps({"v": VERSION, **event}, separators=(",", ":")).encode()


def message_summary(message: FeatureMessage) -> dict:
    """A JSON-friendly view without the embedding (for logs and queries)."""
    summary = asdict(message)
    summary.pop("embedding")
    summary["box"] = list(message.box)
    return summary
