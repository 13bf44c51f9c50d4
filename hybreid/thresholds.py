"""The match thresholds file: what ``hybreid calibrate threshold`` writes and ``hybreid matcher
run --thresholds`` reads, one schema for both.

A threshold is a cosine in [0, 1] (NaN or a negative one would merge everyone); ``model`` is
the model's identity as its contract forms it (``name@weights hash``): the matcher refuses
thresholds calibrated for another model than its gallery's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from hybreid.errors import UserError, validation_problem
from hybreid.files import MIB, read_regular_file

Cosine = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
MODEL_IDENTITY_PATTERN = r"^[A-Za-z0-9_.+-]{1,128}@[A-Za-z0-9_.+-]{1,128}$"
ModelIdentityText = Annotated[str, StringConstraints(pattern=MODEL_IDENTITY_PATTERN)]


class ThresholdEntry(BaseModel):
    """One kind of pair's threshold; the calibration's statistics ride along (rates, pair counts)."""

    model_config = ConfigDict(extra="allow", strict=True)
    threshold: Cosine


class ThresholdsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelIdentityText | None = None  # the model they were calibrated for
    target_false_match_rate: Annotated[float, Field(ge=0, lt=1)] | None = None
    same_modality: ThresholdEntry
    cross_modality: ThresholdEntry | None = None

    @classmethod
    def load(cls, path: str | Path) -> ThresholdsFile:
        path = Path(path)
        try:
            return cls.model_validate_json(read_regular_file(path, "thresholds file", MIB))
        except ValidationError as exc:
            raise UserError(f"{path} is not a valid thresholds file from `hybreid calibrate threshold` "
                            f"({validation_problem(exc, ThresholdsFile)})") from exc

    @classmethod
    def checked(cls, **values) -> ThresholdsFile:
        """A thresholds file from calibrated values; one that breaks the schema is one clear error."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise UserError(f"the calibrated thresholds cannot be used ({validation_problem(exc, cls)})") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(exclude_none=True), indent=2))
        return path
