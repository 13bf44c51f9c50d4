"""The matcher's policy: its thresholds, search depth, prototype rate and re-association
window, typed and refusing what would break it (a NaN threshold merges everyone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hybreid.errors import UserError, validation_problem
from hybreid.thresholds import Cosine, ThresholdsFile


class MatchPolicy(BaseModel):
    """The assignment's thresholds and search depth."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    same_modality: Cosine = 0.6
    cross_modality: Cosine = 0.45
    top_k: Annotated[int, Field(ge=1, le=1000)] = 5
    prototype_rate: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.2
    window_s: Annotated[float, Field(ge=0.0, le=30 * 86400.0, allow_inf_nan=False)] = 600.0  # re-association
    # Added to the cosine of two sightings whose gap fits the camera graph's walking time
    # between their cameras (re-association, with a camera graph).
    transit_bonus: Annotated[float, Field(ge=0.0, le=0.5, allow_inf_nan=False)] = 0.03

    @classmethod
    def from_thresholds_file(cls, path: str | Path, **overrides) -> MatchPolicy:
        """The thresholds written by ``hybreid calibrate threshold``, validated here."""
        return cls.from_thresholds(ThresholdsFile.load(path), **overrides)

    @classmethod
    def from_thresholds(cls, thresholds: ThresholdsFile, **overrides) -> MatchPolicy:
        same = thresholds.same_modality.threshold
        cross = thresholds.cross_modality.threshold if thresholds.cross_modality else same
        return cls.checked(same_modality=same, cross_modality=cross, **overrides)

    @classmethod
    def checked(cls, **values) -> MatchPolicy:
        """A policy from user-given values; a bad one is one clear error."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise UserError(f"match policy: {validation_problem(exc, cls)}") from exc
