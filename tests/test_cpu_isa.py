"""The CPU's instruction set, the INT8 form chosen for it, and the warning when a copy made
for one instruction set is loaded on another. Feature lists are given: no hardware needed."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from hybreid.calibration.int8 import QuantizationConfig, cpu_int8_format
from hybreid.errors import UserError
from hybreid.inference.embedder import other_cpu_warning
from hybreid.machine import CPU_ISAS, cpu_features, cpu_isa

# /proc/cpuinfo flags of real processors (abridged to what matters, plus some that do not)
ZEN4 = {"fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni"}
SKYLAKE = {"fma", "avx2", "avx512f", "avx512bw"}  # AVX-512 without VNNI: the AVX2 kernels' form
HASWELL = {"fma", "avx2", "bmi2"}
ALDER_LAKE = {"fma", "avx2", "avx_vnni"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"}
ORIN = {"fp", "asimd", "asimddp", "asimdhp", "sve"}  # Jetson Orin's Cortex-A78AE
PI3 = {"fp", "asimd", "crc32"}  # Cortex-A53: NEON without the dot product


@pytest.mark.parametrize(("features", "expected"), [
    (ZEN4, "avx512-vnni"), (SKYLAKE, "avx2"), (HASWELL, "avx2"), (ALDER_LAKE, "avx-vnni"),
    (SAPPHIRE_RAPIDS, "amx"), (ORIN, "arm-dotprod"), (PI3, "arm"), (set(), "generic"),
])
def test_the_instruction_set_of_each_processor(features, expected):
    assert cpu_isa(features) == expected


@pytest.mark.parametrize(("isa", "activations", "reduce_range"), [
    ("avx2", "uint8", True),  # vpmaddubsw's int16 sums saturate at full range
    ("generic", "uint8", True),  # unknown kernels: the form that cannot saturate
    ("avx512-vnni", "uint8", False), ("avx-vnni", "uint8", False), ("amx", "uint8", False),  # int32 accumulation
    ("arm-dotprod", "int8", False), ("arm", "uint8", False),
])
def test_the_int8_form_of_each_instruction_set(isa, activations, reduce_range):
    form = cpu_int8_format(isa)
    assert (form.activations, form.reduce_range) == (activations, reduce_range) and form.why


def test_every_instruction_set_has_a_form_and_this_machine_has_one():
    assert {cpu_int8_format(isa) is not None for isa in CPU_ISAS} == {True}
    assert cpu_isa() in CPU_ISAS
    assert cpu_features()  # Linux names its flags in /proc/cpuinfo


def test_the_cpu_target_defaults_to_this_machine_and_refuses_an_unknown_one():
    assert QuantizationConfig(target="cpu").cpu_isa == cpu_isa()
    assert QuantizationConfig(target="cpu", cpu_isa="avx2").cpu_format.reduce_range
    with pytest.raises(UserError, match="instruction set must be one of"):
        QuantizationConfig(target="cpu", cpu_isa="avx1024")
    with pytest.raises(UserError, match="cpu and openvino targets only"):
        QuantizationConfig(target="tensorrt", cpu_isa="avx2")
    assert QuantizationConfig(target="openvino").cpu_isa == cpu_isa()
    openvino_avx2 = QuantizationConfig(target="openvino", cpu_isa="avx2").cpu_format
    assert (openvino_avx2.activations, openvino_avx2.reduce_range) == ("int8", True)


@pytest.fixture(scope="module")
def contract(tiny_onnx):
    from hybreid.contract import read_onnx_contract

    return read_onnx_contract(tiny_onnx)


def test_a_copy_for_another_form_warns_and_one_for_the_same_form_does_not(contract):
    vnni = dataclasses.replace(contract, cpu_isa="avx512-vnni")
    warning = other_cpu_warning(vnni, "m.int8.onnx", machine_isa="avx2")
    assert "calibrated for the avx512-vnni" in warning and "--cpu-isa avx2" in warning
    assert other_cpu_warning(dataclasses.replace(contract, cpu_isa="avx2"), "m", machine_isa="avx512-vnni")
    assert other_cpu_warning(vnni, "m", machine_isa="avx-vnni") is None  # same form: nothing to say
    assert other_cpu_warning(contract, "m", machine_isa="avx2") is None  # FP32 and TensorRT copies name none
    openvino = dataclasses.replace(contract, cpu_isa="avx512-vnni", precision="int8-openvino-minmax")
    assert "--target openvino --cpu-isa avx2" in other_cpu_warning(openvino, "m", machine_isa="avx2")


def test_a_hostile_instruction_set_name_is_cut_short(contract):
    hostile = dataclasses.replace(contract, cpu_isa="\x1b[2J" + "x" * 10_000)
    warning = other_cpu_warning(hostile, "m", machine_isa="avx2")
    assert len(warning) < 400 and "\x1b" not in warning


@pytest.mark.slow
def test_loading_a_copy_made_for_another_instruction_set_warns(tiny_onnx, tmp_path, caplog):
    """A real quantised copy, made for a form other than this machine's, loaded here."""
    import numpy as np

    from hybreid.calibration.int8 import quantize
    from hybreid.contract import preprocess
    from hybreid.inference import OnnxRuntimeEmbedder

    here = cpu_int8_format(cpu_isa())
    other = next(isa for isa in ("avx2", "avx512-vnni") if cpu_int8_format(isa) != here)
    fp32 = OnnxRuntimeEmbedder(tiny_onnx)
    crops = preprocess([(255 * np.random.default_rng(1).random((96, 48, 3))).astype(np.uint8)] * 4, fp32.contract)
    result = quantize(tiny_onnx, tmp_path / "other.onnx", crops, QuantizationConfig(target="cpu", cpu_isa=other))
    with caplog.at_level(logging.WARNING, logger="hybreid.inference"):
        OnnxRuntimeEmbedder(result.path)
    assert any(f"calibrated for the {other}" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(("features", "family", "per_cycle"), [
    (ZEN4, "25", 32),  # Zen 4 runs AVX-512 as two 256-bit halves
    (ZEN4 | {"avx512vp2intersect"}, "26", 64),  # Zen 5: a full 512-bit datapath
    (SAPPHIRE_RAPIDS, "6", 64), (HASWELL, "6", 32), (ORIN, None, 16),
])
def test_the_theoretical_peak_is_cores_clock_and_fma_width(features, family, per_cycle):
    from hybreid.machine import theoretical_peak

    peak = theoretical_peak(features, family=family or "", megahertz=2500.0, cores=4)
    assert peak["flops_per_cycle"] == per_cycle and peak["gflops"] == pytest.approx(4 * 2.5 * per_cycle)
