"""The training configuration: a typed schema that refuses unknown keys.

A config file is YAML; ``_base_: other.yaml`` (relative to the file) inherits another
file, which this one then overrides key by key; ``key=value`` arguments override both.
The resolved settings are what a run (and its checkpoint) records, so a later change
of defaults or of a base file does not change what an old run meant.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hybreid.config import find_config, load_yaml, merge
from hybreid.errors import UserError, check_options, validation_problem

Positive = Annotated[int, Field(ge=1)]
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSection(_Section):
    name: str = "market1501"
    root: str | None = None
    trial: Positive = 1  # RegDB's ten splits


class SamplerSection(_Section):
    num_ids: Positive = 8
    num_instances: Positive = 16


class DataSection(_Section):
    workers: Annotated[int, Field(ge=0)] = 0
    cache: bool = False
    eval_batch_size: Positive = 64
    pad: Annotated[int, Field(ge=0)] = 10  # pixels, before the random crop (both papers)
    erasing: Annotated[float, Field(ge=0, le=1)] = 0.5  # random-erasing probability (both papers)


class OptimSection(_Section):
    name: Literal["sgd", "adam"] = "sgd"
    lr: Rate = 0.005
    momentum: Rate = 0.9
    weight_decay: Rate = 1e-4
    bias_lr_factor: Rate = 2.0
    epochs: Positive = 180
    schedule: Literal["warmup_cosine", "step"] = "warmup_cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 10
    warmup_start_lr: Rate = 5e-4
    step_epochs: list[Positive] = [30]
    gamma: Rate = 0.1


class EvalSection(_Section):
    every: Annotated[int, Field(ge=0)] = 10  # epochs between evaluations; 0: none
    use_camids: bool = True
    trials: Positive = 10
    rerank: bool = False


class TrainConfig(_Section):
    model: str = "fusionreid_tiny"
    model_options: dict = {}  # checked against the model family's constructor
    dataset: DatasetSection = DatasetSection()
    sampler: SamplerSection = SamplerSection()
    data: DataSection = DataSection()
    optim: OptimSection = OptimSection()
    loss: dict = {}  # checked against the family's loss
    eval: EvalSection = EvalSection()
    amp: bool = True
    seed: int = 0
    output: str = "runs/train"
    resume: str | None = None  # a last.pt, or auto: the output folder's, if any
    overwrite: bool = False  # start again in an output folder that holds an earlier run
    max_steps_per_epoch: Positive | None = None


def load_with_bases(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config with its ``_base_`` chain merged under it."""
    path = find_config(path)
    if path in seen:
        raise UserError(f"config file {path} inherits itself through _base_")
    data = load_yaml(path)
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"config file {path}: _base_ must be the path of another config file")
    return merge(load_with_bases(path.parent / base, (*seen, path)), data)


def resolve_config(config_path: str | Path | None, overrides: dict) -> TrainConfig:
    """Defaults, then the config file (and its bases), then ``overrides``: validated and typed."""
    settings = merge(load_with_bases(config_path), overrides) if config_path else overrides
    try:
        config = TrainConfig.model_validate(settings)
    except ValidationError as exc:
        where = f"training config {config_path}" if config_path else "training config"
        raise UserError(f"{where}: {validation_problem(exc, TrainConfig)}") from None
    _check_family_options(config)
    return config


def _check_family_options(config: TrainConfig) -> None:
    from hybreid.models.registry import FAMILIES, model_config
    from hybreid.train.losses import FusionReIDLoss, HAResformerLoss

    family = model_config(config.model)["family"]
    check_options(config.model_options, _parameters(FAMILIES[family]), f"{family} model")
    loss = FusionReIDLoss if family == "fusionreid" else HAResformerLoss
    check_options(config.loss, _parameters(loss) - {"weights"}, f"{family} loss")


def _parameters(cls) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}
