"""The site's identity figures beside the console (`hybreid console --figures site.json`): a
`hybreid bench site` result, scored against its ground truth, read through a schema of the
fields shown (the rest of the file is left alone)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from hybreid.errors import UserError, validation_problem
from hybreid.files import read_regular_file

MAX_FIGURES_BYTES = 16 * 1024 * 1024
METHODS = ("online", "re-associated", "true identities")


class _Read(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Mtmc(_Read):
    idf1: float


class _Hota(_Read):
    hota: float
    deta: float
    assa: float


class _Links(_Read):
    precision: float
    recall: float


class MethodScores(_Read):
    identities: int
    people: int
    purity: float
    mtmc: _Mtmc
    hota: _Hota | None = None
    cross_modality: _Links | None = None


class SiteRecord(_Read):
    model: str = Field(max_length=200)
    seed: int | None = None
    online: MethodScores
    reassociated: MethodScores = Field(alias="re-associated")
    true_identities: MethodScores = Field(alias="true identities")


_RECORDS = TypeAdapter(list[SiteRecord])


def load_figures(path: str | Path) -> list[dict]:
    """One row a model and rendering, one column group a method."""
    data = read_regular_file(path, "figures file", MAX_FIGURES_BYTES)
    try:
        records = _RECORDS.validate_json(data)
    except ValidationError as exc:
        raise UserError(f"{path} is not a `hybreid bench site` result (site.json): "
                        f"{validation_problem(exc, SiteRecord)}") from None
    return [{"model": r.model, "seed": r.seed,
             "methods": {name: scores for name, scores in zip(METHODS, (r.online, r.reassociated, r.true_identities),
                                                              strict=True)}}
            for r in records]
