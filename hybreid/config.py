"""Configuration: YAML files plus ``key=value`` overrides from the command line.

Values are parsed as YAML, so ``depth=3``, ``share_seu=false``, ``image_size=[384,128]``
and ``vit_overrides.depth=2`` (dotted keys nest) all mean what they look like.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hybreid.errors import UserError
from hybreid.files import MIB, read_text_file

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


MAX_CONFIG_BYTES = MIB
# What a YAML document may expand to: a billion-laughs file is a few hundred bytes whose
# aliases expand to 10^9 nodes, and a few hundred nested brackets overflow the recursion of
# everything that walks the result. Counted on the composed node graph, before anything is
# built from it.
MAX_YAML_NODES = 200_000
MAX_YAML_DEPTH = 64


def _expanded_size(root) -> tuple[int, int]:
    """Nodes and depth of a YAML node graph as its aliases expand (each shared node counted
    where it is used, computed once: no expansion)."""
    sizes: dict[int, tuple[int, int]] = {}
    pending = [(root, False)]
    while pending:  # iterative: the depth itself may be what is hostile
        node, children_done = pending.pop()
        if id(node) in sizes:
            continue
        children = [] if isinstance(node, yaml.ScalarNode) else (
            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else node.value)
        if not children_done:
            pending.append((node, True))
            pending.extend((child, False) for child in children if id(child) not in sizes)
            if len(pending) > MAX_YAML_NODES:
                return MAX_YAML_NODES + 1, 0
            continue
        known = [sizes.get(id(child), (1, 1)) for child in children]  # a cycle back to an open node: 1
        sizes[id(node)] = (1 + sum(count for count, _ in known), 1 + max((depth for _, depth in known), default=0))
    return sizes[id(root)]


def parse_yaml(text: str, where: str):
    """YAML text as Python data (the safe loader), refusing what would expand past
    :data:`MAX_YAML_NODES` nodes or nest deeper than :data:`MAX_YAML_DEPTH`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        nodes, depth = _expanded_size(node)
        if nodes > MAX_YAML_NODES:
            raise UserError(f"{where} expands to more than {MAX_YAML_NODES} values (aliases of aliases?); refusing it")
        if depth > MAX_YAML_DEPTH:
            raise UserError(f"{where} nests deeper than {MAX_YAML_DEPTH} levels; refusing it")
        return loader.construct_document(node)
    except RecursionError:
        raise UserError(f"{where} nests too deeply to read; refusing it") from None
    finally:
        loader.dispose()


def parse_overrides(items: list[str]) -> dict:
    """``["a=1", "b.c=[2,3]"]`` -> ``{"a": 1, "b": {"c": [2, 3]}}``."""
    result: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key=value")
        try:
            parsed = parse_yaml(value, f"override {key}")
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc.__class__.__name__
            raise UserError(f"override {key!r}: cannot parse the value as YAML ({problem})") from None
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
    text = read_text_file(path, "config file", MAX_CONFIG_BYTES)
    try:
        data = parse_yaml(text, f"config file {path}") or {}
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
