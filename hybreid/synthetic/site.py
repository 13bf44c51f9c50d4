"""A synthetic site: several cameras, a camera graph, and people who come and go for minutes.

Where :func:`hybreid.synthetic.scenes.render_scenes` walks everyone once through each
camera, a site spec (YAML, :class:`SiteSpec`) lays out what a real site looks like:
visible, infrared and day/night cameras (a day/night camera switches from colour to
infrared mid-video), which cameras connect and how long the walk between them takes;
people who enter, visit some cameras along the graph, leave and come back later, some
in pairs, some seen by one camera only, crossing each camera in either direction so that
they pass and occlude each other; and light that changes slowly over the visible views.

Written next to the videos: ``ground_truth.json`` (every person's box in every frame
with its global id, the passages, the graph), ``gt/<camera>.txt`` in the
MOTChallenge text format and ``camera_graph.yaml`` (the graph as the matcher reads it).
numpy + OpenCV only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from tqdm import tqdm

from hybreid import protocol
from hybreid.config import load_typed
from hybreid.synthetic.people import (
    INFRARED,
    NEAR_INFRARED,
    VISIBLE,
    CameraSet,
    Pose,
    background,
    make_identity,
    person_layers,
)
from hybreid.synthetic.scenes import Passage, finish_frame, passage_box

Name = Annotated[str, StringConstraints(pattern=protocol.NAME_PATTERN)]
Share = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CameraSpec(_Spec):
    id: Name
    modality: Literal["visible", "infrared", "day_night"]
    switch_at_s: Annotated[float, Field(ge=0)] | None = None  # day_night: infrared from then on


class LinkSpec(_Spec):
    cameras: Annotated[list[Name], Field(min_length=2, max_length=2)]
    min_s: Annotated[float, Field(ge=0, le=3600)]
    max_s: Annotated[float, Field(ge=0, le=3600)]


class SiteSpec(_Spec):
    site: Name = "synthetic"
    seconds: Annotated[float, Field(gt=0, le=3600)] = 180.0
    fps: Annotated[int, Field(ge=1, le=60)] = 10
    size: Annotated[list[Annotated[int, Field(ge=64, le=1920)]], Field(min_length=2, max_length=2)] = [480, 270]
    people: Annotated[int, Field(ge=1, le=1000)] = 30
    walk_s: Annotated[float, Field(gt=0.5, le=60)] = 4.0  # to cross one camera's view
    pairs: Share = 0.2  # share of people who walk beside another
    one_camera: Share = 0.2  # share of people seen by a single camera
    returning: Share = 0.2  # share of people who come back after leaving
    lighting: Share = 0.15  # amplitude of the slow brightness change of visible views
    seed: int = 0
    cameras: Annotated[list[CameraSpec], Field(min_length=1, max_length=32)]
    graph: list[LinkSpec] = []

    @model_validator(mode="after")
    def _consistent(self) -> SiteSpec:
        ids = [c.id for c in self.cameras]
        if len(set(ids)) != len(ids):
            raise ValueError(f"camera ids must be distinct, got {ids}")
        for link in self.graph:
            unknown = set(link.cameras) - set(ids)
            if unknown:
                raise ValueError(f"the graph links unknown camera(s) {sorted(unknown)}")
            if link.max_s < link.min_s:
                raise ValueError(f"link {link.cameras}: max_s is below min_s")
        return self

    @classmethod
    def load(cls, path: str | Path) -> SiteSpec:
        return load_typed(path, cls, "site spec")


def default_spec(**changes) -> SiteSpec:
    """Four cameras in a ring (visible, near-infrared, visible, day/night), 30 people, 3 minutes."""
    ring = [("cam1", "cam2"), ("cam2", "cam3"), ("cam3", "cam4"), ("cam4", "cam1")]
    spec = {"cameras": [{"id": "cam1", "modality": "visible"}, {"id": "cam2", "modality": "infrared"},
                        {"id": "cam3", "modality": "visible"},
                        {"id": "cam4", "modality": "day_night"}],  # infrared from half-time
            "graph": [{"cameras": list(pair), "min_s": 6.0, "max_s": 20.0} for pair in ring]}
    return SiteSpec.model_validate({**spec, **changes})


def _neighbours(spec: SiteSpec) -> dict[str, list[tuple[str, float, float]]]:
    links: dict[str, list[tuple[str, float, float]]] = {c.id: [] for c in spec.cameras}
    for link in spec.graph:
        a, b = link.cameras
        links[a].append((b, link.min_s, link.max_s))
        links[b].append((a, link.min_s, link.max_s))
    return links


def plan_site(spec: SiteSpec) -> list[tuple[str, Passage]]:
    """(camera id, passage) for everyone: itineraries along the graph, pairs, returns."""
    rng = np.random.default_rng([spec.seed, 4242])
    fps, walk = spec.fps, int(spec.walk_s * spec.fps)
    total = int(spec.seconds * fps)
    index = {c.id: i for i, c in enumerate(spec.cameras)}
    links = _neighbours(spec)
    plans: list[tuple[str, Passage]] = []
    pid = 1
    while pid <= spec.people:
        group = [pid] if pid == spec.people or rng.random() >= spec.pairs else [pid, pid + 1]
        pid += len(group)
        visits = 1 + int(rng.random() >= spec.one_camera) * int(rng.integers(1, 4))
        trips = 2 if rng.random() < spec.returning else 1
        start = int(rng.uniform(0, 0.55 if trips == 2 else 0.8) * total)
        camera = spec.cameras[int(rng.integers(len(spec.cameras)))].id
        for _ in range(trips):
            for visit in range(visits):
                lane, left_to_right = int(rng.integers(2)), bool(rng.random() < 0.5)
                for member, person in enumerate(group):  # a pair: side by side, a step apart
                    offset = member * int(0.35 * fps)
                    other_lane = lane if member == 0 else 1 - lane
                    if start + offset + walk < total:
                        plans.append((camera, Passage(index[camera], person, start + offset, walk, other_lane,
                                                      left_to_right)))
                if visit + 1 < visits and links[camera]:
                    camera, least, most = links[camera][int(rng.integers(len(links[camera])))]
                    start += walk + int(rng.uniform(least, most) * fps)
            start += walk + int(rng.uniform(30, 60) * fps)  # away, then back
            camera = spec.cameras[int(rng.integers(len(spec.cameras)))].id
    return plans


def render_site(out_dir: str | Path, spec: SiteSpec | None = None, progress: bool = True) -> dict:
    """Write ``<camera>.mp4`` per camera, ``gt/<camera>.txt`` and ``ground_truth.json``."""
    from hybreid.eval.mtmc import write_mot

    spec = spec or default_spec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_site(spec)
    width, height = spec.size
    total = int(spec.seconds * spec.fps)
    styles = CameraSet.make([VISIBLE if c.modality != "infrared" else INFRARED for c in spec.cameras], spec.seed,
                            NEAR_INFRARED).cameras
    truth: dict = {"site": spec.site, "fps": spec.fps, "size": [width, height], "frames": total, "cameras": [],
                   "graph": [link.model_dump() for link in spec.graph]}
    bar = tqdm(total=total * len(spec.cameras), desc="rendering the site", unit="frame", disable=not progress)
    for camera, style in zip(spec.cameras, styles, strict=True):
        night = dataclasses.replace(style, modality=INFRARED)
        switch = int((camera.switch_at_s if camera.switch_at_s is not None else spec.seconds / 2) * spec.fps)
        scenes = {style.modality: background(style, np.random.default_rng([spec.seed, style.camid]), height, width)}
        if camera.modality == "day_night":
            scenes[INFRARED] = background(night, np.random.default_rng([spec.seed, style.camid]), height, width)
        writer = cv2.VideoWriter(str(out_dir / f"{camera.id}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), spec.fps,
                                 (width, height))
        noise_rng = np.random.default_rng([spec.seed, style.camid, 7])
        mine = sorted((p for c, p in plans if c == camera.id), key=lambda p: p.start_frame)
        boxes = []
        for frame in range(total):
            current = night if camera.modality == "day_night" and frame >= switch else style
            image = scenes[current.modality].copy()
            for passage in sorted((p for p in mine if p.start_frame <= frame < p.start_frame + p.frames),
                                  key=lambda p: -p.lane):  # far lane first, near lane on top
                box = _draw(image, passage, frame, current, spec)
                if box is not None:
                    boxes.append({"frame": frame, "pid": passage.pid, "box": box, "modality": current.modality})
            if current.modality == VISIBLE and spec.lighting:
                image = image * (1.0 + spec.lighting * math.sin(2 * math.pi * frame / max(total, 1)))
            writer.write(cv2.cvtColor(finish_frame(image, current, noise_rng), cv2.COLOR_RGB2BGR))
            bar.update()
        writer.release()
        write_mot(out_dir / "gt" / f"{camera.id}.txt", [(b["frame"] + 1, b["pid"], tuple(b["box"])) for b in boxes])
        truth["cameras"].append({
            "id": camera.id, "modality": "auto" if camera.modality == "day_night" else style.modality,
            "video": f"{camera.id}.mp4", "switch_frame": switch if camera.modality == "day_night" else None,
            "boxes": boxes,
            "passages": [{"pid": p.pid, "start_frame": p.start_frame, "frames": p.frames} for p in mine]})
    bar.close()
    (out_dir / "ground_truth.json").write_text(json.dumps(truth))
    # the camera graph as `hybreid matcher run --camera-graph` reads it
    (out_dir / "camera_graph.yaml").write_text(yaml.safe_dump({"sites": {spec.site: truth["graph"]}}, sort_keys=False))
    return truth


def _draw(image: np.ndarray, passage: Passage, frame: int, style, spec: SiteSpec) -> list[int] | None:
    """Paint one person into ``image``; returns the box of the visible silhouette."""
    width, height = spec.size
    x, y, w, h = passage_box(passage, frame, (width, height))
    pose = Pose(phase=frame * 0.9, view="right" if passage.left_to_right else "left", scale=1.0)
    person, alpha = person_layers(make_identity(passage.pid, spec.seed), pose, style, h, w)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    sub_alpha = alpha[y0 - y: y1 - y, x0 - x: x1 - x]
    patch = person[y0 - y: y1 - y, x0 - x: x1 - x]
    blend = sub_alpha[..., None] if style.modality == VISIBLE else sub_alpha
    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - blend) + patch * blend
    ys, xs = np.nonzero(sub_alpha > 0.5)
    if not len(xs):
        return None
    return [int(x0 + xs.min()), int(y0 + ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
