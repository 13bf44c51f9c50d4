"""The site file's schema: every section typed, bounded and closed to unknown keys; the
sections are what the edge's components take, and each default is written here once.

A site file is what an operator edits by hand on a camera box, so a typo must be one
clear sentence ("unknown key tracker.max_ag; did you mean max_age?") before anything
starts, never a traceback in a worker thread. Names that become MQTT topic levels are
checked against the protocol's alphabet here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from hybreid import protocol
from hybreid.errors import UserError, validation_problem
from hybreid.inference import nanodet
from hybreid.mqtt.client import BrokerConfig

Name = Annotated[str, StringConstraints(pattern=protocol.NAME_PATTERN)]
Seconds = Annotated[float, Field(ge=0.0, le=86400.0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BackgroundDetectorSettings(Section):
    kind: Literal["background"] = "background"
    history: Annotated[int, Field(ge=1, le=100000)] = 200
    var_threshold: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 16.0
    min_area: Annotated[int, Field(ge=1)] = 400
    scale: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.5
    split_groups: bool = True  # split a region two people make together, by the camera's perspective
    # grow a region that is only the top of a person down to the whole person; off by default:
    # where the camera's perspective is still young it grows some whole people too (docs/benchmarks.md)
    whole_people: bool = False
    # a second, looser background model: its pixels count where they lie just above or below the
    # first one's regions (legs the colour of the floor); null: the first model alone
    weak_var_threshold: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] | None = 8.0
    # a region and the fragments under it (feet below a body) that together are one person of
    # the row's height make one box
    join_fragments: bool = True

    @model_validator(mode="after")
    def _weak_is_looser(self) -> BackgroundDetectorSettings:
        if self.weak_var_threshold is not None and self.weak_var_threshold >= self.var_threshold:
            raise ValueError(f"weak_var_threshold ({self.weak_var_threshold}) must be below var_threshold "
                             f"({self.var_threshold}), the looser of the two background models; set it lower, or "
                             f"null for one model")
        return self


class HogDetectorSettings(Section):
    kind: Literal["hog"]


class NanoDetSettings(Section):
    kind: Literal["nanodet"]
    path: Annotated[str, StringConstraints(min_length=1)]  # what `hybreid detector fetch` wrote
    runtime: Literal["onnxruntime", "openvino"] = "onnxruntime"
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    score_threshold: Fraction = nanodet.SCORE_THRESHOLD
    iou_threshold: Fraction = nanodet.IOU_THRESHOLD
    # also look at this many overlapping columns of the frame (people under ~30 px); 1: the whole frame only
    tiles: Annotated[int, Field(ge=1, le=4)] = 1


class YoloSettings(Section):
    kind: Literal["yolo"]
    path: Annotated[str, StringConstraints(min_length=1)]
    size: Annotated[int, Field(ge=32, le=4096)] = 640
    person_class: Annotated[int, Field(ge=0)] = 0
    score_threshold: Fraction = 0.25


DetectorSettings = Annotated[BackgroundDetectorSettings | HogDetectorSettings | NanoDetSettings | YoloSettings,
                             Field(discriminator="kind")]
DETECTORS_WITH_FILES = (NanoDetSettings, YoloSettings)


class CameraSettings(Section):
    id: Name
    source: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | Annotated[int, Field(ge=0, le=64)]
    modality: Literal["visible", "infrared", "auto"] = "visible"
    realtime: bool | None = None
    loop: bool = False
    pace: bool = False
    # this camera's own detector (a CNN for a real view, background subtraction for a fixed
    # synthetic one); the site's `detector` where absent
    detector: DetectorSettings | None = None

    @model_validator(mode="after")
    def _not_reserved(self) -> CameraSettings:
        if self.id in protocol.RESERVED_CAMERA_IDS:
            raise ValueError(f"camera id {self.id!r} is reserved (it would match the site's "
                             f"{', '.join(sorted(protocol.RESERVED_CAMERA_IDS))} topics)")
        return self

    @property
    def is_file(self) -> bool:
        """A video file, not a device index, a URL or a GStreamer pipeline."""
        source = str(self.source)
        return not (source.isdigit() or "://" in source or "!" in source)


class ModelSettings(Section):
    path: Annotated[str, StringConstraints(min_length=1)]
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    # ONNX Runtime's providers in order; [openvino] or [openvino-bf16] for OpenVINO's runtime;
    # or "auto": the faster of the CPU provider and OpenVINO (f32) for this model, measured
    # at first start and cached beside the model
    providers: list[str] | Literal["auto"] | None = None
    device: Annotated[int, Field(ge=0, le=64)] = 0


class BoxFilterSettings(Section):
    min_height: Annotated[int, Field(ge=0, le=10000)] = 48
    # height / width: people stand; a person mid-stride seen side-on, legs together, is about 6 high per wide
    min_aspect: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 1.2
    max_aspect: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 7.0
    min_score: Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)] = 0.3


class TrackerSettings(Section):
    iou_threshold: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.3
    n_init: Annotated[int, Field(ge=1, le=1000)] = 3
    max_age: Annotated[int, Field(ge=0, le=100000)] = 15


class EmbedSettings(Section):
    max_batch: Annotated[int, Field(ge=1, le=1024)] = 16
    max_wait_ms: Annotated[float, Field(ge=0, le=60000, allow_inf_nan=False)] = 50
    crop_interval: Annotated[int, Field(ge=1, le=10000)] = 2
    max_crops_per_track: Annotated[int, Field(ge=1, le=100000)] = 32
    # split a track where its last crops' mean falls below this cosine to the mean of those
    # before (two people the tracker swapped); the matcher's same-modality threshold is a
    # start; none: never split
    split_below: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] | None = None


class PublishSettings(Section):
    interval_s: Seconds = 10.0
    flush_timeout_s: Seconds = 10.0
    # A small best-shot JPEG with each tracklet's final message: off by default, and off where
    # privacy forbids images of people to leave the box.
    thumbnails: bool = False


class BrokerSettings(Section):
    url: str = BrokerConfig.url
    client_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,128}$")] | None = None
    username: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    password: str | None = None
    password_file: str | None = None
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    protocol: Literal["3.1.1", "5"] = BrokerConfig.protocol
    keepalive: Annotated[int, Field(ge=5, le=3600)] = BrokerConfig.keepalive
    # Each camera's status connection logs in as <username>.<camera> (a broker that binds client
    # ids to users needs a user per connection); false: as <username>.
    camera_logins: bool = True

    @model_validator(mode="after")
    def _mqtt_url(self) -> BrokerSettings:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"url must look like mqtt://host:1883 or mqtts://host:8883, got {self.url!r}")
        try:
            parsed.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"url {self.url!r}: {exc}") from None
        return self


class OutboxSettings(Section):
    path: str = "outbox.sqlite"
    max_messages: Annotated[int, Field(ge=1, le=100_000_000)] = 100_000
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"


class MetricsSettings(Section):
    interval_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] = 30.0
    record_tracks: bool = False
    # a camera that delivered no frame for this long says no_frames on its retained status
    no_frames_after_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] = 10.0


class SiteFile(Section):
    site: Name
    box_id: Name = "box"
    cameras: Annotated[list[CameraSettings], Field(min_length=1, max_length=64)]
    model: ModelSettings
    detector: DetectorSettings = BackgroundDetectorSettings()
    box_filter: BoxFilterSettings = BoxFilterSettings()
    tracker: TrackerSettings = TrackerSettings()
    embed: EmbedSettings = EmbedSettings()
    publish: PublishSettings = PublishSettings()
    broker: BrokerSettings = BrokerSettings()
    outbox: OutboxSettings = OutboxSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _distinct_cameras(self) -> SiteFile:
        ids = [camera.id for camera in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"camera ids must be distinct, got {ids}")
        return self

    def detector_of(self, camera: CameraSettings) -> DetectorSettings:
        """A camera's own detector, else the site's."""
        return camera.detector if camera.detector is not None else self.detector


def validate_detector(data: dict, source: str = "detector") -> DetectorSettings:
    """A ``detector`` section alone, validated as the site file would."""
    try:
        return TypeAdapter(DetectorSettings).validate_python(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {validation_problem(exc, SiteFile)}") from None


def validate_site(data: dict, source: str = "site config") -> SiteFile:
    """The site file's contents, validated; one sentence naming the first problem otherwise."""
    try:
        return SiteFile.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {validation_problem(exc, SiteFile)}") from None


def resolve_paths(site: SiteFile, base: Path) -> SiteFile:
    """Relative file paths are relative to the site file's folder; video files must exist."""
    def resolve(path: str | None) -> str | None:
        return path if path is None or Path(path).is_absolute() else str(base / path)

    for camera in site.cameras:
        if camera.is_file:
            camera.source = resolve(camera.source)
            if not Path(camera.source).is_file():
                raise UserError(f"camera {camera.id}: video file {camera.source} does not exist")
    site.model.path = resolve(site.model.path)
    site.outbox.path = resolve(site.outbox.path)
    for detector in [site.detector] + [camera.detector for camera in site.cameras]:
        if isinstance(detector, DETECTORS_WITH_FILES):
            detector.path = resolve(detector.path)
    for field in ("password_file", "ca_certs", "certfile", "keyfile"):
        setattr(site.broker, field, resolve(getattr(site.broker, field)))
    return site
