"""MQTT protocol v1, shared by the edge runtime and the matcher. Torch-free.

Topics (``site`` and ``camera_id`` are ``[A-Za-z0-9_-]{1,64}``):

- ``hybreid/v1/{site}/{camera_id}/features`` — one tracklet embedding per message, QoS 1;
- ``hybreid/v1/{site}/{camera_id}/status`` — retained ``online``/``offline`` JSON; the
  broker publishes ``offline`` as the camera's last will;
- ``hybreid/v1/{site}/events`` — the matcher's identity decisions and re-association's
  reassignments and merges (:class:`DecisionEvent`, :class:`ReassignEvent`,
  :class:`MergeEvent`; :func:`decode_event`).

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
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from hybreid.contract import model_identity

VERSION = 1
TOPIC_ROOT = "hybreid/v1"
MODALITIES = ("visible", "infrared")
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_DIM = 8192
# A tracklet's optional best shot: a JPEG small enough to ride in its final message.
MAX_THUMBNAIL_BYTES = 16 * 1024
MAX_THUMBNAIL_SIDE = 256
MAX_TIMESTAMP = 4102444800.0  # 2100-01-01
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)
# A camera (or a box's MQTT user) named like a topic level of the site would match that
# level in the broker's ACL pattern hybreid/v1/<site>/<camera>/#.
RESERVED_CAMERA_IDS = frozenset({"events", "status", "features", "box"})


def features_topic(site: str, camera_id: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{camera_id}/features"


def status_topic(site: str, camera_id: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{camera_id}/status"


def events_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/events"


def status_login(box_user: str, camera_id: str) -> str:
    """The MQTT user a camera's status connection logs in as: a broker that binds client ids to
    users (``use_username_as_clientid``) needs a user per connection; camera ids hold no dot,
    so the name is unambiguous."""
    return f"{box_user}.{camera_id}"


def features_subscription(site: str = "+") -> str:
    return f"{TOPIC_ROOT}/{site}/+/features"


def status_subscription(site: str = "+") -> str:
    return f"{TOPIC_ROOT}/{site}/+/status"


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
    thumbnail: bytes | None = None  # JPEG (check_thumbnail), on a tracklet's final message

    @property
    def model_identity(self) -> str:
        return model_identity(self.model_name, self.model_hash)

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
    if message.thumbnail is not None:
        payload["thumbnail"] = base64.b64encode(message.thumbnail).decode("ascii")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


# The schema of a feature message. Strict: no type coercion (a string is not a number,
# true is not 1), no unknown fields, every number finite and in range, every name in the
# topic alphabet; a new field cannot skip validation.
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ModelText = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@+-]{1,128}$")]
Int64 = Annotated[int, Field(ge=0, le=2**63 - 1)]  # SQLite's and PostgreSQL's integers
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e9, le=1e9)]
Timestamp = Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=MAX_TIMESTAMP)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelIdentity(_Schema):
    name: ModelText
    hash: ModelText


class FeaturePayload(_Schema):
    # An integer, strictly: Literal[1] also lets true and 1.0 through (they equal 1 in Python).
    v: Annotated[int, Field(ge=VERSION, le=VERSION)]
    site: Name
    camera_id: Name
    modality: Literal["visible", "infrared"]
    ts: Timestamp
    seq: Int64
    track_id: Int64
    box: Annotated[list[Finite], Field(min_length=4, max_length=4)]
    score: Finite = 0.0
    quality: Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=1.0)] = 1.0
    frames: Annotated[int, Field(ge=1, le=10**7)] = 1
    first_ts: Timestamp | None = None
    final: bool = True
    model: ModelIdentity
    dim: Annotated[int, Field(ge=1, le=MAX_DIM)]
    dtype: Literal["float32", "float16"]
    embedding: Annotated[str, StringConstraints(max_length=4 * MAX_PAYLOAD_BYTES // 3 + 4)]
    thumbnail: Annotated[str, StringConstraints(max_length=4 * MAX_THUMBNAIL_BYTES // 3 + 4)] | None = None


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _reason(error: dict) -> str:
    """A counter name for pydantic's first complaint."""
    kind, where = error["type"], error["loc"]
    if kind == "json_invalid":
        return "invalid_json"
    if where and where[0] == "v":
        return "version"
    if kind == "finite_number":
        return "non_finite"
    if where and where[0] == "dim" and kind in _RANGE_ERRORS:
        return "dimension"
    if kind in _RANGE_ERRORS:
        return "out_of_range"
    return "schema"


def _invalid(exc: ValidationError) -> ProtocolError:
    """pydantic's first complaint about a payload, as a counted reason and where it is."""
    error = exc.errors(include_url=False)[0]
    if error["loc"] and error["loc"][0] in EVENT_TYPES:  # an event's own fields, under its type's tag
        error = {**error, "loc": error["loc"][1:]}
    where = ".".join(str(part) for part in error["loc"]) or "top level"
    return ProtocolError(_reason(error), f"{where}: {error['msg']}")


def decode_feature(data: bytes, topic: str | None = None, max_bytes: int = MAX_PAYLOAD_BYTES,
                   now: float | None = None, max_clock_skew_s: float = 86400.0) -> FeatureMessage:
    """Parse and validate one feature message; raise :class:`ProtocolError` with a reason.

    Reasons: ``too_large``, ``not_utf8``, ``invalid_json``, ``version``, ``schema``,
    ``out_of_range``, ``dimension``, ``non_finite``, ``topic_mismatch``, ``clock_skew``
    (dated more than ``max_clock_skew_s`` after ``now``; a far-future record would outlive
    every retention).
    """
    if len(data) > max_bytes:
        raise ProtocolError("too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("not_utf8", str(exc)) from exc
    try:
        payload = FeaturePayload.model_validate_json(data)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if topic is not None and topic != features_topic(payload.site, payload.camera_id):
        raise ProtocolError("topic_mismatch", f"payload says {payload.site}/{payload.camera_id}, topic is {topic}")
    if payload.camera_id in RESERVED_CAMERA_IDS:
        raise ProtocolError("schema", f"camera_id {payload.camera_id!r} is reserved")
    first_ts = payload.first_ts if payload.first_ts is not None else payload.ts
    if first_ts > payload.ts:
        raise ProtocolError("out_of_range", "first_ts is after ts")
    latest = (time.time() if now is None else now) + max_clock_skew_s
    if payload.ts > latest:
        raise ProtocolError("clock_skew", f"ts {payload.ts} is more than {max_clock_skew_s:.0f} s in the future")
    try:
        raw = base64.b64decode(payload.embedding, validate=True)
    except ValueError as exc:
        raise ProtocolError("schema", "embedding is not base64") from exc
    if len(raw) != payload.dim * DTYPES[payload.dtype].itemsize:
        raise ProtocolError("dimension", f"{len(raw)} bytes for dim {payload.dim} {payload.dtype}")
    # float64: float32 values near its maximum are finite, but their norm is not.
    vector = np.frombuffer(raw, dtype=DTYPES[payload.dtype]).astype(np.float64)
    if not np.isfinite(vector).all():
        raise ProtocolError("non_finite", "NaN or infinity in the embedding")
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise ProtocolError("non_finite", "zero embedding")
    thumbnail = None
    if payload.thumbnail is not None:
        try:
            thumbnail = check_thumbnail(base64.b64decode(payload.thumbnail, validate=True))
        except ValueError as exc:
            raise ProtocolError("thumbnail", str(exc)) from None
    return FeatureMessage(
        site=payload.site, camera_id=payload.camera_id, modality=payload.modality, ts=payload.ts, seq=payload.seq,
        track_id=payload.track_id, box=tuple(payload.box), score=payload.score, model_name=payload.model.name,
        model_hash=payload.model.hash, embedding=(vector / norm).astype(np.float32), quality=payload.quality,
        frames=payload.frames, first_ts=first_ts, final=payload.final, dtype=payload.dtype, thumbnail=thumbnail,
    )


def check_thumbnail(data: bytes) -> bytes:
    """``data`` if it is a JPEG of at most :data:`MAX_THUMBNAIL_BYTES` that decodes to at most
    :data:`MAX_THUMBNAIL_SIDE` pixels a side; ValueError saying what it is not. Decoded with
    OpenCV, not trusted from its header: a file that claims to be a JPEG is not one yet."""
    import cv2

    if len(data) > MAX_THUMBNAIL_BYTES:
        raise ValueError(f"thumbnail of {len(data)} bytes > {MAX_THUMBNAIL_BYTES}")
    if not data.startswith(b"\xff\xd8\xff"):
        raise ValueError("thumbnail is not a JPEG")
    width, height = jpeg_size(data)
    if max(width, height) > MAX_THUMBNAIL_SIDE:  # before decoding: 16 kB can declare 65,535 pixels a side
        raise ValueError(f"thumbnail of {width}x{height} pixels; at most {MAX_THUMBNAIL_SIDE} a side")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("thumbnail does not decode as a JPEG")
    if max(image.shape[:2]) > MAX_THUMBNAIL_SIDE or min(image.shape[:2]) < 8:
        raise ValueError(f"thumbnail of {image.shape[1]}x{image.shape[0]} pixels; at most {MAX_THUMBNAIL_SIDE} "
                         "a side, at least 8")
    return data


MAX_STATUS_BYTES = 4096


def encode_status(state: str, camera_id: str, ts: float, **details) -> bytes:
    return json.dumps({"v": VERSION, "camera_id": camera_id, "state": state, "ts": ts, **details}).encode()


class StatusPayload(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # details may ride along
    v: Annotated[int, Field(ge=VERSION, le=VERSION)]
    camera_id: Name
    state: Literal["online", "no_frames", "offline"]
    ts: Timestamp


@dataclass
class StatusMessage:
    site: str
    camera_id: str
    state: str
    ts: float


def decode_status(data: bytes, topic: str) -> StatusMessage:
    """A camera's retained status; :class:`ProtocolError` for one that is malformed, oversized or
    whose camera disagrees with its topic."""
    if len(data) > MAX_STATUS_BYTES:
        raise ProtocolError("too_large", f"{len(data)} bytes > {MAX_STATUS_BYTES}")
    try:
        payload = StatusPayload.model_validate_json(data)
    except ValidationError as exc:
        raise _invalid(exc) from None
    parts = topic.split("/")
    if len(parts) != 5 or topic != status_topic(parts[2], payload.camera_id):
        raise ProtocolError("topic_mismatch", f"payload says camera {payload.camera_id}")
    return StatusMessage(parts[2], payload.camera_id, payload.state, payload.ts)


class _Event(_Schema):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    v: Annotated[int, Field(ge=VERSION, le=VERSION)] = VERSION
    site: Name
    ts: Timestamp


class DecisionEvent(_Event):
    """The matcher's decision on one feature message (de-duplicate on ``(site, camera_id, seq)``)."""

    type: Literal["new", "match", "cross_modality_match", "update"]
    identity: Int64
    camera_id: Name
    seq: Int64
    track_id: Int64
    modality: Literal["visible", "infrared"]
    similarity: Annotated[float, Field(allow_inf_nan=False, ge=-1.001, le=1.001)]


class ReassignEvent(_Event):
    """Re-association gave a camera track another identity."""

    type: Literal["reassign"]
    camera_id: Name
    track_id: Int64
    from_identity: Int64 = Field(alias="from")
    identity: Int64


class MergeEvent(_Event):
    """Re-association merged identity ``from`` into ``into``."""

    type: Literal["merge"]
    from_identity: Int64 = Field(alias="from")
    into: Int64


Event = Annotated[DecisionEvent | ReassignEvent | MergeEvent, Field(discriminator="type")]
EVENT_TYPES = ("new", "match", "cross_modality_match", "update", "reassign", "merge")
_EVENTS = TypeAdapter(Event)
MAX_EVENT_BYTES = 4096


def event(**fields) -> dict:
    """An event's fields, checked against its schema: the matcher builds every event it sends
    here, so a consumer can decode each one (:func:`decode_event`)."""
    try:
        return _EVENTS.validate_python({"v": VERSION, **fields}).model_dump(by_alias=True, exclude={"v"})
    except ValidationError as exc:
        raise _invalid(exc) from None


def encode_event(fields: dict) -> bytes:
    """An event as JSON with the protocol's version, checked against its schema (NaN or infinity
    are refused, never sent)."""
    return json.dumps({"v": VERSION, **event(**fields)}, separators=(",", ":")).encode()


def decode_event(data: bytes, max_bytes: int = MAX_EVENT_BYTES) -> DecisionEvent | ReassignEvent | MergeEvent:
    """An event from ``hybreid/v1/{site}/events``; :class:`ProtocolError` for one that is
    malformed, oversized or of another version."""
    if len(data) > max_bytes:
        raise ProtocolError("too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        return _EVENTS.validate_json(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


MAX_LOGGED_CHARS = 200


def loggable(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` as a log line may hold it: control characters escaped, cut at ``limit``
    characters (a topic or a payload field may be as long as the broker allows)."""
    shown = text[:limit].encode("unicode_escape").decode("ascii")[:limit]
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def message_summary(message: FeatureMessage) -> dict:
    """A JSON-friendly view without the embedding (for logs and queries)."""
    summary = asdict(message)
    summary.pop("embedding")
    summary["box"] = list(message.box)
    return summary


_START_OF_FRAME = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """A JPEG's width and height from its frame header, without decoding it. OpenCV, the one
    image library the edge and the matcher carry, only reads a size by decoding the whole
    image, which a hostile header can make gigabytes large."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _START_OF_FRAME and position + 9 <= len(data):
            return (int.from_bytes(data[position + 7:position + 9], "big"),
                    int.from_bytes(data[position + 5:position + 7], "big"))
        if marker == 0xDA or length < 2:  # the image data starts, or a damaged segment
            break
        position += 2 + length
    raise ValueError("no JPEG frame header")
