"""Configuration: YAML files plus ``key=value`` overrides from the command line.

Values are parsed as YAML, so ``depth=3``, ``share_seu=false``, ``image_size=[384,128]``
and ``vit_overrides.depth=2`` (dotted keys nest) all mean what they look like.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hybreid.errors import UserError

# The configs shipped with the package: in a source checkout `hybreid/configs` links to
# `configs/`, and a wheel carries copies.
PACKAGED_CONFIGS = Path(__file__).parent / "configs"

# YAML 1.1 reads "5e-4" (no dot) as a string; every config here means a number by it.
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(value):
    if isinstance(value, str) and _NUMBER.match(value):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def parse_overrides(items: list[str]) -> dict:
    """``["a=1", "b.c=[2,3]"]`` -> ``{"a": 1, "b": {"c": [2, 3]}}``."""
    result: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(f"override {item!r}: cannot parse the value ({exc})") from exc
        target = result
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = _numbers(parsed)
    return result


def merge(base: dict, overrides: dict) -> dict:
    """Recursive dict merge; ``overrides`` wins."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def find_config(path: str | Path) -> Path:
    """``path`` itself where it exists; otherwise the shipped config of that name
    (``configs/train/x.yaml`` or ``train/x.yaml``), so they work from any directory."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    packaged = PACKAGED_CONFIGS.joinpath(*parts) if parts else PACKAGED_CONFIGS
    return packaged if packaged.is_file() else path


def load_yaml(path: str | Path) -> dict:
    path = find_config(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist" if not path.exists() else
                        f"config file {path} is not a file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise UserError(f"config file {path} is not valid YAML: {problem}{where}") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of options at its top level")
    return _numbers(data)


def load_typed(path: str | Path, schema, what: str):
    """A YAML file validated against a pydantic ``schema``; one sentence naming ``what`` and the
    first problem otherwise (an unknown key with the nearest known one)."""
    from pydantic import ValidationError

    from hybreid.errors import validation_problem

    try:
        return schema.model_validate(load_yaml(path))
    except ValidationError as exc:
        raise UserError(f"{what} {path}: {validation_problem(exc, schema)}") from None
