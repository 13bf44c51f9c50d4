"""The camera graph: which cameras of a site connect, and how long the walk between them takes.

The least walk between two cameras along the graph's links (:class:`Walks`) rules pairs
out: the online decisions do not give an identity a sighting that began sooner after (or
ended sooner before) one of its sightings on another camera than anyone could walk, and
re-association never joins two such tracklets. The walking time is evidence too: two
sightings on connected cameras whose gap lies within the link's walking time are a
plausible transit, and their appearance needs less to be linked (the matcher's
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

import numpy as np
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

    def walks(self) -> Walks:
        return Walks(self)

    @classmethod
    def load(cls, path: str | Path) -> CameraGraph:
        """A camera graph file (``sites:``)."""
        from hybreid.config import load_yaml

        data = load_yaml(path)
        if isinstance(data, dict) and "sites" not in data and "graph" in data:
            raise UserError(f"{path} is a synthetic site's spec, not a camera graph: give the camera_graph.yaml "
                            "that `hybreid edge scenes --site` wrote beside its videos")
        return load_typed(path, cls, "camera graph")


class Walks:
    """The least walking time between every two cameras of a site along the graph's links
    (shortest paths over ``min_s``): a site's graph lists the ways between its cameras, so no
    one gets from one camera to another faster. Cameras no path joins: 0 (no bound)."""

    def __init__(self, graph: CameraGraph):
        self.graph = graph
        self._least: dict[str, dict[tuple[str, str], float]] = {}
        for site, links in graph.sites.items():
            cameras = sorted({camera for link in links for camera in link.cameras})
            index = {camera: i for i, camera in enumerate(cameras)}
            least = np.full((len(cameras), len(cameras)), np.inf)
            np.fill_diagonal(least, 0.0)
            for link in links:
                a, b = index[link.cameras[0]], index[link.cameras[1]]
                least[a, b] = least[b, a] = min(least[a, b], link.min_s)
            # Floyd-Warshall by hand: scipy is none of the matcher's dependencies, and a site has tens of cameras
            for middle in range(len(cameras)):
                least = np.minimum(least, least[:, middle : middle + 1] + least[middle : middle + 1, :])
            self._least[site] = {(a, b): float(least[index[a], index[b]]) for a in cameras for b in cameras
                                 if np.isfinite(least[index[a], index[b]])}

    def least(self, site: str, camera_a: str, camera_b: str) -> float:
        return self._least.get(site, {}).get((camera_a, camera_b), 0.0)

    def link(self, site: str, camera_a: str, camera_b: str) -> tuple[float, float | None] | None:
        """The direct link's walking time (:meth:`CameraGraph.transit`)."""
        return self.graph.transit(site, camera_a, camera_b)

    def longest(self, site: str) -> float:
        """The longest of the site's least walks: how far in time a sighting can rule one out."""
        return max(self._least.get(site, {}).values(), default=0.0)
