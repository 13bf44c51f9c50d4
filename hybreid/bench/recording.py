"""A site run recorded for replay: the feature messages the matcher received, batch by
batch, with the edge's tracked boxes and the scenes' ground truth.

The edge's output does not depend on the matcher's policy, so one recorded run of
``hybreid bench site --record`` replays through a fresh matcher (:func:`replay`) under
any policy in seconds, where the run itself takes about a minute a seed: that is what
lets ``hybreid bench policy`` try tens of thresholds on several renderings. A replay
scores what the run would have scored under that policy, since the matcher sees the
same messages in the same batches.

A recording is a folder::

    recording.json   the model, site, seed, camera graph and the policy of the run
    messages.jsonl   one received message a line: {"batch": n, "topic": ..., "payload": ...}
    tracks.jsonl     the edge's published boxes: [camera, frame, track, [x, y, w, h]]
    ground_truth.json  the scenes' truth, as the renderer wrote it
"""

from __future__ import annotations

import json
import logging
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hybreid.errors import UserError, validation_problem
from hybreid.files import MIB, read_text_file
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.camera_graph import CameraGraph
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.matcher.query import by_camera
from hybreid.protocol import MAX_PAYLOAD_BYTES
from hybreid.thresholds import ModelIdentityText

# A recorded site of minutes holds about a megabyte of messages; an hour of a large site
# stays far below these bounds, and a file above them is not a recording.
MAX_MESSAGES_BYTES = 1024 * MIB
MAX_TRUTH_BYTES = 256 * MIB


class RecordingInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelIdentityText
    site: str
    seed: int
    graph: list[dict] | None = None  # the links of the site's camera graph (the truth's "graph")
    same_modality: float
    cross_modality: float
    transit_bonus: Annotated[float, Field(ge=0.0, le=0.5)]


@dataclass
class Recording:
    folder: Path
    info: RecordingInfo
    batches: list[list[tuple[str, bytes]]]
    track_log: list[tuple[str, int, int, tuple]]
    truth: dict
    graph: CameraGraph | None


class RecordingMatcher(Matcher):
    """A matcher that keeps every batch it receives, for :func:`save`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[list[tuple[str, bytes]]] = []

    def handle_batch(self, messages: list[tuple[str, bytes]]) -> list[dict | None]:
        self.received.append([(topic, bytes(payload)) for topic, payload in messages])
        return super().handle_batch(messages)


def save(folder: Path, received: list[list[tuple[str, bytes]]], track_log, truth: dict, policy: MatchPolicy,
         model: str, site: str, seed: int) -> Path:
    """A run's recording (``received``: the batches of :class:`RecordingMatcher`)."""
    folder.mkdir(parents=True, exist_ok=True)
    graph = truth.get("graph") or None
    info = RecordingInfo(model=model, site=site, seed=seed, graph=graph, same_modality=policy.same_modality,
                         cross_modality=policy.cross_modality, transit_bonus=policy.transit_bonus)
    with open(folder / "messages.jsonl", "w") as out:
        for index, batch in enumerate(received):
            for topic, payload in batch:
                # A payload that is not UTF-8 is refused by the matcher, replayed or not.
                text = payload.decode("utf-8", errors="replace")
                out.write(json.dumps({"batch": index, "topic": topic, "payload": text}) + "\n")
    with open(folder / "tracks.jsonl", "w") as out:
        for camera, frame, track, box in track_log:
            out.write(json.dumps([camera, frame, track, [float(v) for v in box]]) + "\n")
    (folder / "ground_truth.json").write_text(json.dumps(truth))
    (folder / "recording.json").write_text(info.model_dump_json(indent=2))
    return folder


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    batch: Annotated[int, Field(ge=0)]
    topic: Annotated[str, Field(max_length=512)]
    payload: Annotated[str, Field(max_length=MAX_PAYLOAD_BYTES)]


def _lines(path: Path, what: str) -> list:
    items = []
    for number, line in enumerate(read_text_file(path, what, MAX_MESSAGES_BYTES).splitlines(), start=1):
        try:
            items.extend([json.loads(line)] if line else [])
        except json.JSONDecodeError as exc:
            raise UserError(f"{what} {path} is not JSON lines (line {number}: {exc.msg})") from None
    return items


def load(folder: str | Path) -> Recording:
    """A recording of ``bench site --record``; anything else is one sentence saying what is wrong.
    The payloads are not trusted: the matcher checks each as it would a broker's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"recording {folder} is not a folder; give one that `hybreid bench site --record` wrote")
    try:
        info = RecordingInfo.model_validate_json(read_text_file(folder / "recording.json", "recording", MIB))
        messages = [_Message.model_validate(item) for item in _lines(folder / "messages.jsonl", "recorded messages")]
        graph = CameraGraph.model_validate({"sites": {info.site: info.graph}}) if info.graph else None
    except ValidationError as exc:
        raise UserError(f"recording {folder} is not one `hybreid bench site --record` wrote "
                        f"({validation_problem(exc)})") from None
    batches: list[list[tuple[str, bytes]]] = []
    for message in messages:
        if message.batch < len(batches) - 1 or message.batch > len(batches):
            raise UserError(f"recording {folder}: its messages are out of batch order; was it edited?")
        if message.batch == len(batches):
            batches.append([])
        batches[-1].append((message.topic, message.payload.encode()))
    try:
        track_log = [(str(camera), int(frame), int(track), tuple(float(v) for v in box))
                     for camera, frame, track, box in _lines(folder / "tracks.jsonl", "recorded tracks")]
        truth = json.loads(read_text_file(folder / "ground_truth.json", "ground truth", MAX_TRUTH_BYTES))
        for camera in truth["cameras"]:
            for entry in camera["boxes"]:
                entry["frame"], entry["pid"], entry["box"] = int(entry["frame"]), int(entry["pid"]), \
                    [float(v) for v in entry["box"]]
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"recording {folder}: its tracks or ground truth do not have the layout "
                        f"`bench site --record` writes ({type(exc).__name__}: {exc})") from None
    return Recording(folder, info, batches, track_log, truth, graph)


def replay(recording: Recording, policy: MatchPolicy) -> dict[str, dict]:
    """The recorded messages through a fresh matcher under ``policy``, re-associated once at
    the end as the run did; scored as ``bench site`` scores a run, but for HOTA (a replay is
    one of tens, and HOTA would take most of its time)."""
    from hybreid.bench.identities import score_site

    matcher_log = logging.getLogger("hybreid.matcher")
    level = matcher_log.level
    matcher_log.setLevel(logging.WARNING)  # a line per re-association would bury a sweep's progress bar
    with tempfile.TemporaryDirectory() as work:
        gallery = Gallery(Path(work) / "gallery.sqlite")
        try:
            matcher = Matcher(gallery, policy)
            if recording.graph is not None:
                matcher.walks = recording.graph.walks()
            for batch in recording.batches:
                matcher.handle_batch(batch)
            online = by_camera(gallery, None, None, None)["sightings"]
            matcher.reassociate()
            sightings = by_camera(gallery, None, None, None)["sightings"]
        finally:
            gallery.close()
            matcher_log.setLevel(level)
    site = {"runtime": types.SimpleNamespace(track_log=recording.track_log), "sightings_online": online,
            "sightings": sightings}
    return score_site(site, recording.truth, hota=False)
