"""Recording stand-ins for ``tensorrt`` and ``cuda.bindings.runtime``, built from the API of
NVIDIA's real bindings (the JSON of ``dump_bindings_api.py``) and checking every call.

A fake only for hardware that cannot exist on a CI machine: the classes, enums, methods,
properties and signatures are the real module's, read from its pybind11 / Cython
docstrings; what a call *does* comes from a ``world`` (``simulated_gpu.py``). Every call the
code under test makes is checked — the name exists on that class in that version, the
arguments bind to one of its signatures and their types match — and written to a
transcript that the tests keep as golden files.

Hand-written because no library does this: mocking libraries check a call against a
Python function's signature, never against a compiled module's documented one.
"""

from __future__ import annotations

import enum
import re
import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class ConformanceError(AssertionError):
    """The code under test used the bindings in a way the real module would refuse."""


class MissingInBindings(ConformanceError, AttributeError):
    """A name the real module does not have (an AttributeError, so ``getattr(x, n, None)`` works)."""


# ---------------------------------------------------------------- signatures


@dataclass(frozen=True)
class Param:
    name: str
    type: str | None  # None: untyped (accepts anything)
    optional: bool = False
    variadic: bool = False  # *args / **kwargs


@dataclass(frozen=True)
class Signature:
    text: str
    params: tuple[Param, ...]
    returns: tuple[str, ...]


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """``text`` split at ``separator`` outside brackets ([] () and pybind11's <repr> defaults)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[(<":
            depth += 1
        elif char in "])>":
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_pybind_signature(text: str) -> Signature:
    """``(self: tensorrt.X, flag: tensorrt.BuilderFlag = <...>) -> None`` (pybind11's form)."""
    match = re.fullmatch(r"\((.*)\) -> (.+)", text.strip())
    if not match:
        raise ConformanceError(f"unreadable pybind11 signature {text!r}")
    params = []
    for part in split_top_level(match.group(1)):
        if part.startswith("*"):
            params.append(Param(part.lstrip("*"), None, optional=True, variadic=True))
            continue
        head, _, default = part.partition(" = ")
        name, _, type_text = head.partition(": ")
        params.append(Param(name.strip(), type_text.strip() or None, optional=bool(default)))
    return Signature(text, tuple(params), (match.group(2).strip(),))


C_INTEGERS = {"int", "size_t", "unsigned int", "unsigned long long", "long long", "long", "unsigned long"}


def parse_cython_signature(text: str, returns: list[str]) -> Signature:
    """``(dst, src, size_t count, kind: cudaMemcpyKind, stream)`` and a numpydoc Returns list."""
    inner = text.strip()[1:-1]
    params = []
    for part in split_top_level(inner):
        head, _, default = part.partition("=")
        head = head.strip()
        if ":" in head:
            name, type_text = (item.strip() for item in head.split(":", 1))
        elif " " in head:
            type_text, name = head.rsplit(" ", 1)
            type_text = "int" if type_text in C_INTEGERS else type_text
        else:
            name, type_text = head, None
        params.append(Param(name, type_text, optional=bool(default)))
    kinds = []
    for entry in returns:
        _, _, type_text = entry.rpartition(" : ")
        type_text = type_text or entry
        kinds.append(re.sub(r":py:obj:`~\.(\w+)`", r"\1", type_text).split(".")[0].strip())
    return Signature(text, tuple(params), tuple(kinds))


def bind(signature: Signature, args: tuple, kwargs: dict, skip_self: bool) -> dict | str:
    """``{param: value}`` for a call, or why it does not bind."""
    params = list(signature.params[1:] if skip_self else signature.params)
    bound, positional = {}, list(args)
    for param in params:
        if param.variadic:
            return {"*": (tuple(positional), dict(kwargs))}
        if positional:
            bound[param.name] = positional.pop(0)
        elif param.name in kwargs:
            bound[param.name] = kwargs.pop(param.name)
        elif not param.optional:
            return f"argument {param.name!r} is missing"
    if positional:
        return f"{len(positional)} argument(s) too many"
    if kwargs:
        return f"no parameter named {', '.join(kwargs)}"
    return bound


def _generic(spec: str) -> tuple[str, list[str]]:
    match = re.fullmatch(r"([\w.]+)\[(.*)\]", spec)
    if not match:
        return spec, []
    return match.group(1), split_top_level(match.group(2))


# C++ names pybind11 leaves in a signature when the Python class was registered under another
TYPE_ALIASES = {"nvonnxparser::IParserError": "tensorrt.ParserError"}


def _strip_module(spec: str) -> str:
    for prefix in ("typing_extensions.", "typing.", "collections.abc.", "numpy.typing."):
        spec = spec.replace(prefix, "")
    return TYPE_ALIASES.get(spec.strip(), spec.strip())


# ---------------------------------------------------------------- values


class EnumMember:
    """A member of one of the real module's enums, as pybind11 gives it (int-convertible)."""

    def __init__(self, owner: str, name: str, value: int):
        self.owner, self.name, self.value = owner, name, value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other) -> bool:
        return isinstance(other, EnumMember) and (other.owner, other.value) == (self.owner, self.value)

    def __hash__(self) -> int:
        return hash((self.owner, self.value))

    def __repr__(self) -> str:
        return f"{self.owner}.{self.name}"


class Transcript:
    """The calls made, one readable line each; objects are named ``Class#n`` in order of birth."""

    def __init__(self, render_int: Callable[[int], str | None] = lambda value: None):
        self.lines: list[str] = []
        self.counts: dict[str, int] = {}
        self.render_int = render_int

    def label(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{kind}#{self.counts[kind]}"

    def render(self, value) -> str:
        if isinstance(value, StandIn):
            label = value.__dict__.get("_standin_label", f"<{type(value).__name__}, not initialised>")
            values = value.__dict__.get("_standin_state", {}).get("values")
            return label if values is None else f"{label}{tuple(values)}"
        if isinstance(value, (EnumMember, enum.Enum)):
            return repr(value) if isinstance(value, EnumMember) else f"{type(value).__name__}.{value.name}"
        if isinstance(value, CudaObject):
            return value.label
        if isinstance(value, (bytes, bytearray, memoryview)):
            return f"<{len(value)} bytes>"
        if isinstance(value, np.ndarray):
            return f"<ndarray {value.dtype} {tuple(value.shape)}>"
        if isinstance(value, bool) or value is None:
            return str(value)
        if isinstance(value, (int, np.integer)):
            return self.render_int(int(value)) or str(int(value))
        if isinstance(value, (tuple, list)):
            inner = ", ".join(self.render(item) for item in value)
            return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
        if isinstance(value, str):
            return repr(value)
        return type(value).__name__

    def call(self, receiver: str, name: str, args: tuple, kwargs: dict, result=None) -> None:
        shown = [self.render(arg) for arg in args] + [f"{key}={self.render(v)}" for key, v in kwargs.items()]
        line = f"{receiver}.{name}({', '.join(shown)})" if receiver else f"{name}({', '.join(shown)})"
        if result is not None:
            line += f" -> {self.render(result)}"
        self.lines.append(line)


# ---------------------------------------------------------------- TensorRT


class StandInMeta(type):
    def __getattr__(cls, name):
        api = cls.__dict__.get("_standin_api")
        if api is None:  # a user subclass: look through its stand-in bases
            return getattr(cls.__mro__[1], name)
        entry = api.classes[cls._standin_qualname]
        if "enum" in entry and name in entry["enum"]:
            return EnumMember(cls._standin_qualname, name, entry["enum"][name])
        raise MissingInBindings(f"tensorrt {api.version} has no {cls._standin_qualname}.{name}")


class StandIn(metaclass=StandInMeta):
    """Base of every stand-in TensorRT class; API names resolve through ``__getattr__``."""

    _standin_api: TensorRTApi
    _standin_qualname: str

    def __init__(self, *args, **kwargs):
        api, qualname = _api_of(type(self))
        generated = type(self).__dict__.get("_standin_api") is not None
        receiver = qualname if generated else f"{type(self).__name__}({qualname})"
        signatures = api.lookup(qualname, "methods", "__init__")
        if not signatures:
            raise ConformanceError(f"tensorrt {api.version}: {qualname} cannot be constructed from Python")
        api.check_call(f"{qualname}.__init__", signatures, args, kwargs, skip_self=True)
        object.__setattr__(self, "_standin_label", api.transcript.label(qualname))
        object.__setattr__(self, "_standin_state", {})
        api.transcript.call("", receiver, args, kwargs, result=self)
        api.world.created(self, qualname, args, kwargs)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "_standin_api" in cls.__dict__:
            return
        api, qualname = _api_of(cls)
        for name, value in cls.__dict__.items():
            if callable(value) and not name.startswith("__") and not api.lookup(qualname, "methods", name):
                raise ConformanceError(f"{cls.__name__}.{name} overrides nothing: tensorrt {api.version}'s "
                                       f"{qualname} has no method {name!r}")

    def __getattr__(self, name):
        if name.startswith("_standin"):
            raise AttributeError(name)
        api, qualname = _api_of(type(self))
        label = object.__getattribute__(self, "_standin_label")
        signatures = api.lookup(qualname, "methods", name)
        if signatures:
            return BoundMethod(api, self, qualname, name, signatures)
        prop = api.lookup(qualname, "properties", name)
        if prop is not None:
            if prop["get"] is None:
                raise ConformanceError(f"tensorrt {api.version}: {qualname}.{name} cannot be read")
            declared = parse_pybind_signature(prop["get"]).returns[0]
            value = api.answer(self, qualname, name, (), {}, declared)
            api.transcript.lines.append(f"{label}.{name} -> {api.transcript.render(value)}")
            return value
        raise MissingInBindings(f"tensorrt {api.version} has no {qualname}.{name}")

    def __setattr__(self, name, value):
        api, qualname = _api_of(type(self))
        prop = api.lookup(qualname, "properties", name)
        if prop is None:
            if type(self).__dict__.get("_standin_api") is None:
                object.__setattr__(self, name, value)  # a Python subclass's own attribute
                return
            raise MissingInBindings(f"tensorrt {api.version} has no {qualname}.{name} to set")
        if prop["set"] is None:
            raise ConformanceError(f"tensorrt {api.version}: {qualname}.{name} is read-only")
        api.check_call(f"{qualname}.{name} =", [prop["set"]], (value,), {}, skip_self=True)
        api.transcript.lines.append(f"{object.__getattribute__(self, '_standin_label')}.{name} = "
                                    f"{api.transcript.render(value)}")
        object.__getattribute__(self, "_standin_state")[name] = value
        api.world.assigned(self, qualname, name, value)

    def __bytes__(self):
        api, qualname = _api_of(type(self))
        if not api.classes[qualname].get("buffer"):
            raise ConformanceError(f"tensorrt {api.version}: {qualname} does not expose the buffer protocol")
        return bytes(object.__getattribute__(self, "_standin_state")["payload"])

    def __str__(self):
        api, qualname = _api_of(type(self))
        if not api.lookup(qualname, "methods", "__str__"):
            return object.__repr__(self)
        return object.__getattribute__(self, "_standin_state")["text"]

    def __len__(self):
        return len(self._standin_sequence("__len__"))

    def __getitem__(self, index):
        return self._standin_sequence("__getitem__")[index]

    def _standin_sequence(self, method: str) -> tuple:
        api, qualname = _api_of(type(self))
        if not api.lookup(qualname, "methods", method):
            raise ConformanceError(f"tensorrt {api.version}: {qualname} has no {method}")
        return object.__getattribute__(self, "_standin_state")["values"]


def _api_of(cls: type) -> tuple[TensorRTApi, str]:
    for klass in cls.__mro__:
        if "_standin_api" in klass.__dict__:
            return klass.__dict__["_standin_api"], klass.__dict__["_standin_qualname"]
    raise ConformanceError(f"{cls.__name__} is not a stand-in")


class BoundMethod:
    def __init__(self, api: TensorRTApi, receiver: StandIn, qualname: str, name: str, signatures: list[str]):
        self.api, self.receiver, self.qualname, self.name, self.signatures = api, receiver, qualname, name, signatures

    def __call__(self, *args, **kwargs):
        api = self.api
        signature = api.check_call(f"{self.qualname}.{self.name}", self.signatures, args, kwargs, skip_self=True)
        value = api.answer(self.receiver, self.qualname, self.name, args, kwargs, signature.returns[0])
        api.transcript.call(object.__getattribute__(self.receiver, "_standin_label"), self.name, args, kwargs,
                            result=value)
        return value


class TensorRTApi:
    """The real module's API (from JSON) and the checks that use it."""

    def __init__(self, description: dict, world, transcript: Transcript):
        self.version: str = description["version"]
        self.classes: dict[str, dict] = description["classes"]
        self.functions: dict[str, list[str]] = description["functions"]
        self.constants: dict[str, str] = description["constants"]
        self.world, self.transcript = world, transcript
        self.generated: dict[str, type] = {}

    # lookups --------------------------------------------------------------
    def lookup(self, qualname: str, kind: str, name: str):
        for owner in [qualname, *self.classes[qualname]["bases"]]:
            found = self.classes.get(owner, {}).get(kind, {}).get(name)
            if found:
                return found
        return None

    def is_a(self, qualname: str, wanted: str) -> bool:
        return qualname == wanted or wanted in self.classes[qualname]["bases"]

    def constant(self, reference: str) -> EnumMember:
        owner, _, member = reference.rpartition(".")
        return EnumMember(owner, member, self.classes[owner]["enum"][member])

    # checks ---------------------------------------------------------------
    def accepts(self, spec: str, value) -> bool:
        spec = _strip_module(spec)
        alternatives = split_top_level(spec, "|")
        if len(alternatives) > 1:
            return any(self.accepts(option, value) for option in alternatives)
        base, args = _generic(spec)
        if base == "Optional":
            return value is None or self.accepts(args[0], value)
        if base in ("None", "NoneType"):
            return value is None
        if base in ("int", "SupportsInt"):
            return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        if base in ("float", "SupportsFloat"):
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if base == "bool":
            return isinstance(value, (bool, np.bool_))
        if base == "str":
            return isinstance(value, str)
        if base == "bytes":
            return isinstance(value, bytes)
        if base in ("buffer", "Buffer"):
            return isinstance(value, (bytes, bytearray, memoryview, np.ndarray)) or (
                isinstance(value, StandIn) and self.classes[_api_of(type(value))[1]].get("buffer", False))
        if base in ("List", "list", "Sequence", "Tuple", "tuple"):
            return (isinstance(value, (list, tuple)) and
                    (not args or all(self.accepts(args[0], item) for item in value)))
        if base in ("object", "Any", "capsule", "Callable", "function"):
            return True
        if base == "numpy.ndarray":
            return isinstance(value, np.ndarray)
        if base.startswith("tensorrt."):
            wanted = base[len("tensorrt."):]
            if wanted not in self.classes:
                raise ConformanceError(f"the harness does not know tensorrt.{wanted}")
            if "enum" in self.classes[wanted]:
                return isinstance(value, EnumMember) and value.owner == wanted
            if isinstance(value, StandIn):
                if "_standin_label" not in value.__dict__:
                    raise ConformanceError(f"{type(value).__name__}.__init__ did not call its TensorRT base's "
                                           "__init__: pybind11 refuses such an object")
                return self.is_a(_api_of(type(value))[1], wanted)
            # pybind11 converts a sequence of ints to Dims implicitly (TensorRT's documented use)
            return wanted.startswith("Dims") and isinstance(value, (tuple, list)) and all(
                isinstance(item, (int, np.integer)) for item in value)
        raise ConformanceError(f"the harness cannot check the type {spec!r}")

    def check_call(self, where: str, signatures: list[str], args: tuple, kwargs: dict, skip_self: bool) -> Signature:
        reasons = []
        for text in signatures:
            signature = parse_pybind_signature(text)
            bound = bind(signature, args, dict(kwargs), skip_self)
            if isinstance(bound, str):
                reasons.append(f"{text}: {bound}")
                continue
            params = {param.name: param for param in signature.params}
            wrong = [f"{name}={self.transcript.render(value)} is not {params[name].type}"
                     for name, value in bound.items() if name != "*" and params[name].type
                     and not self.accepts(params[name].type, value)]
            if not wrong:
                return signature
            reasons.append(f"{text}: {'; '.join(wrong)}")
        raise ConformanceError(f"tensorrt {self.version}: {where} refuses this call:\n  " + "\n  ".join(reasons))

    # answers --------------------------------------------------------------
    def answer(self, receiver, qualname: str, name: str, args: tuple, kwargs: dict, declared: str):
        for owner in [qualname, *self.classes[qualname]["bases"]]:
            respond = self.world.responder(f"{owner}.{name}")
            if respond is not None:
                value = respond(receiver, *args, **kwargs)
                if not self.accepts(declared, value) and value is not None:
                    raise ConformanceError(f"the simulated GPU answered {owner}.{name} with "
                                           f"{self.transcript.render(value)}, not a {declared}")
                return value
        return self.default(declared, f"{qualname}.{name}")

    def default(self, declared: str, where: str):
        spec = _strip_module(declared)
        base, args = _generic(spec)
        if base in ("None", "NoneType"):
            return None
        if base == "bool":
            return True
        if base in ("int", "SupportsInt"):
            return 0
        if base in ("List", "list"):
            return []
        if base.startswith("tensorrt.") and "enum" not in self.classes.get(base[9:], {"enum": 1}):
            return self.new(base[len("tensorrt."):])
        raise ConformanceError(f"the simulated GPU has no answer for {where} (declared {declared})")

    def new(self, qualname: str, **state) -> StandIn:
        """An object the library hands out (no constructor call is recorded)."""
        instance = object.__new__(self.generated[qualname])
        object.__setattr__(instance, "_standin_label", self.transcript.label(qualname))
        object.__setattr__(instance, "_standin_state", dict(state))
        return instance

    # the module -----------------------------------------------------------
    def module(self) -> types.ModuleType:
        module = _StandInModule("tensorrt", self)
        module.__version__ = self.version
        for qualname in sorted(self.classes, key=lambda name: name.count(".")):
            self._generate(qualname)
        for qualname, cls in self.generated.items():
            owner, _, short = qualname.rpartition(".")
            type.__setattr__(self.generated[owner], short, cls) if owner else setattr(module, short, cls)
        for qualname, entry in self.classes.items():
            for name, reference in entry["constants"].items():
                type.__setattr__(self.generated[qualname], name, self.constant(reference))
        for name, reference in self.constants.items():
            setattr(module, name, self.constant(reference))
        for name, signatures in self.functions.items():
            setattr(module, name, _module_function(self, name, signatures))
        return module

    def _generate(self, qualname: str) -> type:
        if qualname in self.generated:
            return self.generated[qualname]
        entry = self.classes[qualname]
        direct = [base for base in entry["bases"] if base in self.classes]
        parents = tuple(self._generate(base) for base in direct[:1]) or (StandIn,)
        cls = StandInMeta(qualname.rpartition(".")[2], parents,
                          {"_standin_api": self, "_standin_qualname": qualname, "__module__": "tensorrt"})
        self.generated[qualname] = cls
        return cls


class _StandInModule(types.ModuleType):
    def __init__(self, name: str, api: TensorRTApi):
        super().__init__(name)
        self._standin = api

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingInBindings(f"tensorrt {self._standin.version} has no {name}")


def _module_function(api: TensorRTApi, name: str, signatures: list[str]):
    def call(*args, **kwargs):
        signature = api.check_call(name, signatures, args, kwargs, skip_self=False)
        value = api.default(signature.returns[0], name)
        api.transcript.call("tensorrt", name, args, kwargs, result=value)
        return value

    return call


# ---------------------------------------------------------------- CUDA


class CudaObject:
    """An instance of one of cuda-bindings' classes (a stream handle, a device's properties)."""

    def __init__(self, runtime: CudaApi, kind: str, label: str, handle: int = 0, **fields):
        allowed = set(runtime.classes[kind]["attributes"])
        unknown = set(fields) - allowed
        if unknown:
            raise ConformanceError(f"the simulated GPU gave {kind} fields it does not have: {sorted(unknown)}")
        object.__setattr__(self, "_runtime", runtime)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "handle", handle)
        object.__setattr__(self, "_fields", fields)

    def __getattr__(self, name):
        runtime, kind = object.__getattribute__(self, "_runtime"), object.__getattribute__(self, "_kind")
        if name not in runtime.classes[kind]["attributes"]:
            raise MissingInBindings(f"cuda-bindings {runtime.version}: {kind} has no {name}")
        fields = object.__getattribute__(self, "_fields")
        if name not in fields:
            raise ConformanceError(f"the simulated GPU did not fill {kind}.{name}")
        return fields[name]

    def __int__(self):
        runtime, kind = object.__getattribute__(self, "_runtime"), object.__getattribute__(self, "_kind")
        if not runtime.classes[kind]["int"]:
            raise ConformanceError(f"cuda-bindings {runtime.version}: int() of a {kind} is not defined")
        return self.handle


class CudaFailure(Exception):
    """Raised by the simulated GPU: the call returns this ``cudaError_t`` member's name."""


class CudaApi:
    """cuda.bindings.runtime's API (from JSON); its functions check every call."""

    def __init__(self, description: dict, world, transcript: Transcript):
        self.version: str = description["version"]
        self.functions: dict[str, dict] = description["functions"]
        self.classes: dict[str, dict] = description["classes"]
        self.enums = {name: enum.IntEnum(name, members) for name, members in description["enums"].items()}
        self.world, self.transcript = world, transcript

    def accepts(self, spec: str | None, value) -> bool:
        if spec is None:
            return True
        if spec == "int":
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0
        if spec in self.enums:
            return isinstance(value, self.enums[spec])
        if spec in self.classes:
            return isinstance(value, CudaObject) and object.__getattribute__(value, "_kind") == spec
        raise ConformanceError(f"the harness cannot check the cuda type {spec!r}")

    def returned(self, kind: str, value) -> bool:
        if kind in ("Any", "int"):
            return isinstance(value, int)
        if kind == "bytes":
            return isinstance(value, bytes)
        return self.accepts(kind, value)

    def call(self, name: str, args: tuple, kwargs: dict):
        entry = self.functions[name]
        signature = parse_cython_signature(entry["signature"], entry["returns"])
        bound = bind(signature, args, dict(kwargs), skip_self=False)
        if isinstance(bound, str):
            raise ConformanceError(f"cuda-bindings {self.version}: {name}{entry['signature']} refuses this call: "
                                   f"{bound}")
        params = {param.name: param for param in signature.params}
        for param_name, value in bound.items():
            if not self.accepts(params[param_name].type, value):
                raise ConformanceError(f"cuda-bindings {self.version}: {name}{entry['signature']}: "
                                       f"{param_name}={self.transcript.render(value)} is not {params[param_name].type}")
        respond = self.world.responder(name)
        if respond is None:
            raise ConformanceError(f"the simulated GPU has no answer for {name}")
        try:
            values = respond(*args, **kwargs)
            error = self.enums["cudaError_t"].cudaSuccess
        except CudaFailure as failure:
            values, error = None, self.enums["cudaError_t"][str(failure)]
        values = () if values is None else values if isinstance(values, tuple) else (values,)
        expected = signature.returns[1:]
        if error == self.enums["cudaError_t"].cudaSuccess:
            if len(values) != len(expected) or not all(map(self.returned, expected, values)):
                raise ConformanceError(f"the simulated GPU answered {name} with {values}, not {expected}")
        else:
            values = (None,) * len(expected)
        result = (error, *values)
        self.transcript.call("cudart", name, args, kwargs, result=result if len(result) > 1 else error)
        return result

    def module(self) -> types.ModuleType:
        runtime = types.ModuleType("cuda.bindings.runtime")
        for name, members in self.enums.items():
            setattr(runtime, name, members)
        for name in self.classes:
            setattr(runtime, name, type(name, (CudaObject,), {}))
        for name in self.functions:
            setattr(runtime, name, (lambda function: lambda *a, **k: self.call(function, a, k))(name))

        def missing(attribute):
            raise MissingInBindings(f"cuda-bindings {self.version} has no cuda.bindings.runtime.{attribute}")

        runtime.__getattr__ = missing
        return runtime
