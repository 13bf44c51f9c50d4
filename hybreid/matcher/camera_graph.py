"""The camera graph: which cameras of a site connect, and how long the walk between them takes.

Re-association uses the minimum walking time as a cannot-link: two tracklets on connected
cameras closer in time than anyone can walk are two people. And the walking time as
evidence: two sightings on connected cameras whose gap lies within the link's walking
time are a plausible transit, and their appearance needs less to be linked (the matcher's
``transit_bonus``). Without a graph, only time overlap constrains. The graph of a site
spec (``hybreid edge scenes --site SPEC.yaml``) is read as it is, and the scenes folder
holds it again as ``camera_graph.yaml``. A YAML file::

    sites:
      lobby:
        - {cameras: [cam-01, cam-02], min_s: 5, max_s: 120}
        - {cameras: [cam-02, cam-03], min_s: 20}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from hybreid import protocol
from hybreid.config import load_typed
from hybreid.errors import UserError

Name = Annotated[str, StringConstraints(pattern=protocol.NAME_PATTERN)]
Seconds = Annotated[float, Field(ge=0.0, le=86400.0, allow_inf_nan=False)]


class Link(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    cameras: Annotated[list[Name], Field(min_length=2, max_length=2)]
    min_s: Seconds = 0.0
    max_s: Seconds | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Link:
        if self.cameras[0] == self.cameras[1]:
            raise ValueError("a link joins two different cameras")
        if self.max_s is not None and self.max_s < self.min_s:
            raise ValueError(f"max_s {self.max_s} is below min_s {self.min_s}")
        return self


class CameraGraph(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sites: dict[Name, list[Link]]

    def transit(self, site: str, camera_a: str, camera_b: str) -> tuple[float, float | None] | None:
        """The least and the most walking time between two connected cameras (the most None: no
        bound), or None where the graph says nothing."""
        for link in self.sites.get(site, []):
            if {camera_a, camera_b} == set(link.cameras):
                return link.min_s, link.max_s
        return None

    @classmethod
    def load(cls, path: str | Path) -> CameraGraph:
        """A camera graph file (``sites:``)."""
        from hybreid.config import load_yaml

        data = load_yaml(path)
        if isinstance(data, dict) and "sites" not in data and "graph" in data:
            raise UserError(f"{path} is a synthetic site's spec, not a camera graph: give the camera_graph.yaml "
                            "that `hybreid edge scenes --site` wrote beside its videos")
        return load_typed(path, cls, "camera graph")
