"""OpenVINO's own runtime: f32 and bfloat16 precisions, and one clear error for what it cannot run."""

from __future__ import annotations

import numpy as np
import pytest
from support import requires_openvino

from hybreid.errors import UserError
from hybreid.inference import load_embedder
from hybreid.inference.openvino_backend import bf16_unavailable_reason, openvino_unavailable_reason

BF16_MISSING = openvino_unavailable_reason("openvino-bf16")


@pytest.mark.parametrize("features, native", [
    ({"avx2", "fma"}, False),
    ({"avx512f", "avx512_vnni"}, False),  # Ice Lake: VNNI, no bfloat16
    ({"avx512f", "avx512_vnni", "avx512_bf16"}, True),  # Zen 4/5, Cooper Lake
    ({"amx_bf16", "amx_int8", "amx_tile"}, True),  # Sapphire Rapids
])
def test_bfloat16_only_where_the_cpu_computes_it(features, native):
    reason = bf16_unavailable_reason(frozenset(features))
    assert (reason is None) == native
    if reason:
        assert "neither AVX512-BF16 nor AMX" in reason and "openvino provider" in reason


def _crops(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (100 + 9 * i, 48, 3), dtype=np.uint8) for i in range(count)]


@requires_openvino
def test_bfloat16_is_close_to_fp32_but_not_fp32(tiny_onnx):
    if BF16_MISSING:
        pytest.skip(f"needs bfloat16 hardware: {BF16_MISSING}")
    reference = load_embedder(tiny_onnx).embed(_crops(5))
    embedder = load_embedder(tiny_onnx, providers=["openvino-bf16"])
    assert embedder.backend == "openvino:CPU-bf16"
    cos = (embedder.embed(_crops(5)) * reference).sum(1)
    assert 0.999 < cos.min() and np.abs(embedder.embed(_crops(5)) - reference).max() > 1e-5  # 8 mantissa bits


@requires_openvino
def test_bfloat16_on_a_cpu_without_it_is_refused_in_one_sentence(tiny_onnx, monkeypatch):
    from hybreid.inference import openvino_backend

    monkeypatch.setattr(openvino_backend, "cpu_features", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(UserError, match="neither AVX512-BF16 nor AMX"):
        load_embedder(tiny_onnx, providers=["openvino-bf16"])


@requires_openvino
def test_a_missing_or_damaged_model_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_embedder(tmp_path / "absent.onnx", providers=["openvino"])
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07garbage that is no protobuf" * 40)
    with pytest.raises(UserError, match="damaged|not a readable ONNX file"):
        load_embedder(damaged, providers=["openvino"])


@pytest.mark.slow
def test_a_copy_made_for_openvino_loaded_on_onnx_runtime_says_so(tiny_onnx, tmp_path, caplog):
    import logging

    from hybreid.calibration.int8 import QuantizationConfig, quantize
    from hybreid.calibration.report import calibration_crops
    from hybreid.contract import preprocess, read_onnx_contract

    calibration = preprocess(calibration_crops("synthetic", 8), read_onnx_contract(tiny_onnx))
    copy = quantize(tiny_onnx, tmp_path / "ov.onnx", calibration, QuantizationConfig(target="openvino")).path
    with caplog.at_level(logging.WARNING, logger="hybreid.inference"):
        load_embedder(copy)
    assert "calibrated for OpenVINO's runtime" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hybreid.inference"):
        load_embedder(tiny_onnx)
    assert not caplog.text
