"""Write the API of NVIDIA's real Python bindings as JSON: what exists, with which signature.

Run by the test set-up in a fresh interpreter where the bindings import (TensorRT's over
the stub libraries of ``tensorrt_stubs.c``):

    python dump_bindings_api.py tensorrt OUT.json
    python dump_bindings_api.py cuda OUT.json

pybind11 (TensorRT) writes each method's signatures as the first lines of its docstring;
Cython (cuda-bindings) writes the parameters on the first line and the returned tuple in
a numpydoc "Returns" section. Both are copied as they are; ``bindings_standin`` parses them.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Mapping

TENSORRT_PREFIX = "tensorrt_bindings.tensorrt."
# The special methods a stand-in may need: construction, and the sequence and number
# protocols of value classes such as Dims.
PROTOCOL_METHODS = {"__init__", "__len__", "__getitem__", "__iter__", "__int__", "__index__", "__str__"}


def _signatures(doc: str | None, name: str) -> list[str]:
    """pybind11's signature lines of ``name``: one, or one per overload."""
    pattern = re.compile(rf"^(?:\d+\. )?{re.escape(name)}(\(.*\) -> .+)$")
    lines = (doc or "").replace(TENSORRT_PREFIX, "tensorrt.").splitlines()
    found = [match.group(1) for line in lines if (match := pattern.match(line.strip()))]
    return [signature for signature in found if signature != "(*args, **kwargs) -> Any"]


def _accessor_signature(function) -> str | None:
    if function is None:
        return None
    first = (function.__doc__ or "").replace(TENSORRT_PREFIX, "tensorrt.").strip().splitlines()
    return first[0] if first and first[0].startswith("(") else None


def _is_pybind_enum(cls: type) -> bool:
    return isinstance(getattr(cls, "__members__", None), dict) and hasattr(cls, "__entries")


def _member(value) -> str:
    """``Owner.MEMBER`` of an enum member (some pybind11 enums shadow ``.name`` with a method)."""
    members = type(value).__members__
    return f"{type(value).__qualname__}.{next(key for key, item in members.items() if item == value)}"


def describe_tensorrt(module) -> dict:
    classes: dict[str, dict] = {}

    def qualname(cls: type) -> str:
        return cls.__qualname__

    def visit(cls: type) -> None:
        name = qualname(cls)
        if name in classes:
            return
        entry: dict = {"bases": [qualname(base) for base in cls.__mro__[1:]
                                 if base.__module__ == cls.__module__],
                       "buffer": "buffer protocol" in (cls.__doc__ or ""),
                       "methods": {}, "properties": {}, "constants": {}, "static": {}}
        if _is_pybind_enum(cls):
            entry["enum"] = {member: int(value) for member, value in cls.__members__.items()}
        classes[name] = entry
        for attribute, value in vars(cls).items():
            if attribute.startswith("__") and attribute not in PROTOCOL_METHODS or attribute.startswith("_pybind11"):
                continue
            if isinstance(value, type) and value.__module__ == cls.__module__:
                visit(value)
            elif isinstance(value, property):
                entry["properties"][attribute] = {"get": _accessor_signature(value.fget),
                                                  "set": _accessor_signature(value.fset)}
            elif isinstance(value, staticmethod):
                entry["static"][attribute] = _signatures(value.__func__.__doc__, attribute)
            elif type(value).__name__ == "instancemethod" or callable(value) and not isinstance(value, type):
                if type(type(value)).__name__ == "pybind11_type" or _is_pybind_enum(type(value)):
                    entry["constants"][attribute] = _member(value)
                else:
                    entry["methods"][attribute] = _signatures(value.__doc__, attribute)
            elif _is_pybind_enum(type(value)):
                entry["constants"][attribute] = _member(value)

    for value in vars(module).values():
        if isinstance(value, type) and value.__module__ == module.tensorrt.__name__:
            visit(value)
    functions, constants = {}, {}
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if type(value).__name__ == "builtin_function_or_method":
            functions[name] = _signatures(value.__doc__, name)
        elif not isinstance(value, type) and _is_pybind_enum(type(value)):
            constants[name] = _member(value)
    return {"module": "tensorrt", "version": module.__version__, "classes": classes, "functions": functions,
            "constants": constants}


def _returns_section(doc: str) -> list[str]:
    """The entries of a numpydoc "Returns" section: ``cudaError_t``, ``devPtr : Any``, ..."""
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Returns" and
                     i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"})
    except StopIteration:
        return []
    entries = []
    for line in lines[start + 2:]:
        if line.strip() in ("See Also", "Notes", "Examples") or set(line.strip()) == {"-"}:
            break
        if line and not line[0].isspace():
            entries.append(line.strip())
    if entries and set(entries[-1]) == {"-"}:
        entries.pop()
    return entries


def describe_cuda(runtime) -> dict:
    functions, enums, classes = {}, {}, {}
    for name, value in vars(runtime).items():
        if name.startswith("_"):
            continue
        if isinstance(value, type) and isinstance(getattr(value, "__members__", None), Mapping):
            # enum.Enum, or cuda-bindings' own FastEnum (12.9 and later)
            enums[name] = {member: int(value) for member, value in value.__members__.items()}
        elif isinstance(value, type):
            classes[name] = {"attributes": sorted(a for a in dir(value) if not a.startswith("_")),
                             "int": hasattr(value, "__int__")}
        elif callable(value) and value.__doc__:
            first = value.__doc__.strip().splitlines()[0]
            if first.startswith(f"{name}("):
                functions[name] = {"signature": first[len(name):], "returns": _returns_section(value.__doc__)}
    import cuda.bindings

    return {"module": "cuda.bindings.runtime", "version": cuda.bindings.__version__, "functions": functions,
            "enums": enums, "classes": classes}


def main(kind: str, out: str) -> None:
    if kind == "tensorrt":
        api = describe_tensorrt(importlib.import_module("tensorrt_bindings"))
    else:
        api = describe_cuda(importlib.import_module("cuda.bindings.runtime"))
    with open(out, "w") as handle:
        json.dump(api, handle, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
