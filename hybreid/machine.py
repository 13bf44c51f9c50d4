"""The machine a figure was measured on, and the code that measured it: every result
folder of ``hybreid bench`` (and of the other commands that write results) gets a
``provenance.json`` with the commit, the processor and the command line. Also the CPU's
instruction set for int8 work, and the Q/DQ form its kernels run best (the ``cpu`` INT8
target is made for one, and the embedder checks it against the CPU it runs on)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def _cpuinfo_field(*names: str) -> str | None:
    """The first of ``names`` that /proc/cpuinfo holds (its first processor's value), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in names:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model_name() -> str:
    """The processor's name, as /proc/cpuinfo gives it (or the platform's answer elsewhere)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# What the CPU's int8 matrix kernels can use, best first: AMX tiles; AVX-512 VNNI and AVX-VNNI
# (vpdpbusd: uint8 x int8 dot products accumulated in int32, no saturation); AVX2 alone
# (vpmaddubsw: int16 intermediate sums that saturate); ARM's dot product (sdot/udot).
CPU_ISAS = ("amx", "avx512-vnni", "avx-vnni", "avx2", "arm-dotprod", "arm", "generic")


@dataclass(frozen=True)
class CpuInt8Format:
    """The Q/DQ form of the ``cpu`` target for one instruction set."""

    activations: str  # "uint8" or "int8"; weights are int8, per channel, symmetric
    reduce_range: bool  # 7-bit values, so that a pair of products fits an int16 sum
    why: str = field(compare=False)  # two instruction sets with one form are one form


CPU_INT8_FORMATS = {
    # Chosen by measurement with ONNX Runtime's CPU kernels (docs/deployment.md, "INT8
    # calibration and match thresholds").
    "amx": CpuInt8Format("uint8", False, "AMX and VNNI accumulate uint8 x int8 products in int32: full range, "
                                        "no saturation (AMX itself not measured here)"),
    "avx512-vnni": CpuInt8Format("uint8", False, "VNNI's vpdpbusd accumulates uint8 x int8 products in int32: "
                                                "full range, no saturation; S8S8 ran 30 % slower"),
    "avx-vnni": CpuInt8Format("uint8", False, "VNNI's vpdpbusd accumulates uint8 x int8 products in int32: "
                                             "full range, no saturation"),
    "avx2": CpuInt8Format("uint8", True, "AVX2's vpmaddubsw saturates its int16 sums: U8S8 needs reduce_range"),
    "arm-dotprod": CpuInt8Format("int8", False, "sdot multiplies int8 by int8 into int32; not measured here"),
    "arm": CpuInt8Format("uint8", False, "NEON widens before it sums (no saturation); not measured here"),
    "generic": CpuInt8Format("uint8", True, "unknown int8 kernels: the form that cannot saturate"),
}


def cpu_features() -> frozenset[str]:
    """The CPU's feature flags, lower case, as Linux names them (``avx512_vnni``, ``asimddp``).

    Read from /proc/cpuinfo (x86 ``flags``, ARM ``Features``): NumPy's own dispatch table
    knows neither AMX nor AVX-VNNI. Elsewhere, NumPy's table, renamed to the same flags.
    """
    flags = _cpuinfo_field("flags", "Features")
    if flags is not None:
        return frozenset(flags.split())
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        return frozenset()
    renamed = {"AVX512VNNI": "avx512_vnni", "AVX2": "avx2", "ASIMDDP": "asimddp", "ASIMD": "asimd",
               "AVX512BF16": "avx512_bf16", "AVX512F": "avx512f"}
    return frozenset(flag for name, flag in renamed.items() if __cpu_features__.get(name))


def cpu_isa(features: frozenset[str] | set[str] | None = None) -> str:
    """The best of :data:`CPU_ISAS` that ``features`` (default: this CPU's) offer."""
    features = cpu_features() if features is None else features
    if "amx_int8" in features:
        return "amx"
    if "avx512_vnni" in features:
        return "avx512-vnni"
    if "avx_vnni" in features:
        return "avx-vnni"
    if "avx2" in features:
        return "avx2"
    if "asimddp" in features:
        return "arm-dotprod"
    if "asimd" in features:
        return "arm"
    return "generic"


def theoretical_peak(features: frozenset[str] | set[str] | None = None, family: str | None = None,
                     megahertz: float | None = None, cores: int | None = None) -> dict | None:
    """The float32 peak the processor's datasheet would give: cores x clock x FMA width.

    Two FMA pipes per core (every x86 core since Haswell and Zen, and ARM's big cores);
    a vector is 512 bits with AVX-512 (256 on AMD Zen 4, family 25, which splits AVX-512
    into two halves), 256 with AVX2, 128 with NEON. The clock is the one /proc/cpuinfo
    reports, the nominal one: boost is not counted, and a GEMM can run above this "peak"
    (on an AMD EPYC here, ONNX Runtime's 2048 matmul reached 473 GFLOP/s against 332).
    None where the clock is unknown. Every argument defaults to this machine's.
    """
    features = cpu_features() if features is None else features
    family = _cpuinfo_field("cpu family") if family is None else family
    megahertz = megahertz or _cpuinfo_field("cpu MHz")
    if megahertz is None:
        return None
    if "avx512f" in features:
        bits = 256 if family == "25" else 512
    elif "avx2" in features:
        bits = 256
    else:
        bits = 128
    flops_per_cycle = 2 * 2 * bits // 32  # two pipes x (multiply + add) x float32 lanes
    cores, gigahertz = cores or os.cpu_count() or 1, float(megahertz) / 1000
    return {"gflops": cores * gigahertz * flops_per_cycle, "cores": cores, "ghz": gigahertz,
            "flops_per_cycle": flops_per_cycle, "vector_bits": bits}


def commit() -> str | None:
    """The source checkout's commit (``+dirty`` with uncommitted changes), or None outside one."""
    source = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance() -> dict:
    """The code and the machine, as they are when a measurement starts."""
    from hybreid import __version__

    return {"hybreid": __version__, "commit": commit(), "cpu": cpu_model_name(), "cpu_isa": cpu_isa(),
            "cores": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
