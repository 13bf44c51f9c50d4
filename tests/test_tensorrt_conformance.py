"""The TensorRT build and embedder, call by call, against NVIDIA's own bindings of TensorRT
10.3 and 11.4 and cuda-python 12.9 and 13.5.

No GPU exists here. The bindings' real API (classes, enums, pybind11 / Cython signatures)
is read from the real wheels by the set-up (``tests/support/nvidia_bindings.py``); the
stand-ins built from it check every call, and a simulated GPU — a fake, for hardware that
cannot exist here — answers them (``tests/support/simulated_gpu.py``). The transcripts are
golden files under ``tests/golden/tensorrt/``; ``HYBREID_UPDATE_GOLDEN=1`` rewrites them.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.bindings_standin import ConformanceError, MissingInBindings
from support.nvidia_bindings import PAIRS, TENSORRT, api_path, missing_reason
from support.simulated_gpu import SimulatedGpu

from hybreid.contract import ModelContract, set_metadata
from hybreid.errors import UserError
from hybreid.export import tensorrt_build
from hybreid.export.tensorrt_build import build_engine
from hybreid.inference.embedder import OnnxRuntimeEmbedder
from hybreid.inference.engine_cache import BuildOptions, read_sidecar

BINDINGS = Path(__file__).resolve().parents[1] / ".cache" / "nvidia-bindings"
GOLDEN = Path(__file__).resolve().parent / "golden" / "tensorrt"
MISSING = missing_reason(BINDINGS)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# The layers a transformer must keep FP32 in FP16, by construction of the model below.
ATTENTION_AND_NORMS = {"norm", "attn_scores", "attn_softmax", "attn_values", "l2"}
OPTIONS = {"min_batch": 1, "opt_batch": 4, "max_batch": 8, "workspace_mib": 512}


def small_embedder_onnx(path: Path, qdq: bool = False) -> Path:
    """A 10-node stand-in for a ReID model: pooled image -> projection -> LayerNorm ->
    attention-shaped MatMul/Softmax/MatMul -> L2 normalisation, with a hybreid contract."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = []
    projected_input = "flat"
    if qdq:
        nodes += [helper.make_node("QuantizeLinear", ["flat", "q_scale", "q_zero"], ["flat_q"], name="quantize"),
                  helper.make_node("DequantizeLinear", ["flat_q", "q_scale", "q_zero"], ["flat_dq"], name="dequantize")]
        projected_input = "flat_dq"
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"), *nodes,
             helper.make_node("MatMul", [projected_input, "w_proj"], ["projected"], name="proj"),
             helper.make_node("LayerNormalization", ["projected", "ln_scale", "ln_bias"], ["normed"], name="norm"),
             helper.make_node("MatMul", ["normed", "w_scores"], ["scores"], name="attn_scores"),
             helper.make_node("Softmax", ["scores"], ["weights"], name="attn_softmax", axis=-1),
             helper.make_node("MatMul", ["weights", "w_values"], ["values"], name="attn_values"),
             helper.make_node("ReduceL2", ["values"], ["length"], name="l2", axes=[1], keepdims=1),
             helper.make_node("Div", ["values", "length"], ["embedding"], name="normalise")]
    initializers = [weight("w_proj", 3, 8), weight("w_scores", 8, 8), weight("w_values", 8, 8),
                    numpy_helper.from_array(np.ones(8, np.float32), "ln_scale"),
                    numpy_helper.from_array(np.zeros(8, np.float32), "ln_bias")]
    if qdq:
        initializers += [numpy_helper.from_array(np.array(0.02, np.float32), "q_scale"),
                         numpy_helper.from_array(np.array(0, np.int8), "q_zero")]
    graph = helper.make_graph(
        nodes, "small_embedder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 16, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13 if qdq else 17)],
                              producer_name="hybreid-tests")
    if qdq:
        model.opset_import[0].version = 17
    contract = ModelContract(
        model="small_embedder", weights_sha256="0123456789abcdef", embedding_dim=8, input_name="images",
        output_name="embedding", layout="NCHW", height=16, width=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        preprocess_in_graph=False, config={}, precision="int8-tensorrt-minmax" if qdq else "fp32", opset=17,
        version="test")
    set_metadata(model, contract)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from hybreid.export.precision import convert_to_fp16

    folder = tmp_path_factory.mktemp("small_embedder")
    fp32 = small_embedder_onnx(folder / "model.onnx")
    fp16 = folder / "model.fp16.onnx"
    convert_to_fp16(fp32, fp16)
    cache = folder / "calibration.cache"
    cache.write_bytes(b"TRT-1003-EntropyCalibration2\nimages: 3c23d70a\n")
    return {"fp32": fp32, "fp16": fp16, "qdq": small_embedder_onnx(folder / "model.qdq.onnx", qdq=True),
            "cache": cache}


def simulated(version: str, monkeypatch) -> SimulatedGpu:
    """NVIDIA's API of ``version`` over a simulated Orin (a fake GPU: none exists here)."""
    gpu = SimulatedGpu(json.loads(api_path(BINDINGS, "tensorrt", version).read_text()),
                       json.loads(api_path(BINDINGS, "cuda", PAIRS[version]).read_text()))
    gpu.install(monkeypatch)
    return gpu


def check_golden(name: str, lines: list[str]) -> None:
    path = GOLDEN / f"{name}.txt"
    text = "\n".join(lines) + "\n"
    if os.environ.get("HYBREID_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no golden transcript {path.name}: run with HYBREID_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"the calls differ from {path.name} (HYBREID_UPDATE_GOLDEN=1 rewrites it)"


# What each generation builds from: TensorRT 11 takes precision from the ONNX's own types.
BUILDS = {
    ("10.3.0", "fp32"): ("fp32", None), ("10.3.0", "fp16"): ("fp32", None),
    ("10.3.0", "int8"): ("qdq", None), ("10.3.0", "int8-cache"): ("fp32", "cache"),
    ("11.4.0.106", "fp32"): ("fp32", None), ("11.4.0.106", "fp16"): ("fp16", None),
    ("11.4.0.106", "int8"): ("qdq", None),
}


@pytest.mark.parametrize("version,build", sorted(BUILDS), ids=[f"{v}-{b}" for v, b in sorted(BUILDS)])
def test_engine_build_calls_match_the_real_bindings(version, build, models, tmp_path, monkeypatch):
    gpu = simulated(version, monkeypatch)
    source, cache = BUILDS[version, build]
    precision = build.split("-")[0]
    engine = build_engine(models[source], tmp_path / "engines", BuildOptions(precision, **OPTIONS),
                          calibration_cache=models[cache] if cache else None, timing_cache=tmp_path / "timing.cache")
    check_golden(f"tensorrt-{version}/build-{build}", gpu.lines)

    sidecar = read_sidecar(engine)
    assert (sidecar["device"].tensorrt_version, sidecar["device"].gpu_name,
            sidecar["device"].compute_capability) == (version, "Orin", "8.7")
    assert (tmp_path / "timing.cache").read_bytes()
    names = dict(line.split(".name -> ") for line in gpu.lines if line.startswith("ILayer#") and ".name -> " in line)
    pinned = {names[line.split(".")[0]].strip("'") for line in gpu.lines
              if line.startswith("ILayer#") and line.endswith(".precision = DataType.FLOAT")}
    if version.startswith("10") and precision != "fp32":
        assert pinned == ATTENTION_AND_NORMS
        assert "IBuilderConfig#1.set_flag(BuilderFlag.FP16)" in gpu.lines
    else:
        assert not pinned and not any("set_flag" in line for line in gpu.lines)
    strongly_typed = any("create_network(0)" not in line for line in gpu.lines if ".create_network(" in line)
    assert strongly_typed == version.startswith("11")
    read_cache = "  (TensorRT calls CacheCalibrator.read_calibration_cache() -> <46 bytes>)"
    assert (read_cache in gpu.lines) == (cache is not None)


def test_implicit_int8_is_refused_on_tensorrt_11_before_any_tensorrt_call(models, tmp_path, monkeypatch):
    gpu = simulated("11.4.0.106", monkeypatch)
    with pytest.raises(UserError, match="TensorRT 11 builds INT8 only from a Q/DQ ONNX"):
        build_engine(models["fp32"], tmp_path, BuildOptions("int8", **OPTIONS), calibration_cache=models["cache"])
    assert all(line.startswith("cudart.") for line in gpu.lines)


@pytest.mark.parametrize("version", TENSORRT)
def test_engine_runs_like_onnx_runtime_at_batches_1_3_17(version, models, tmp_path, monkeypatch):
    from hybreid.inference.tensorrt_backend import TensorRTEmbedder

    gpu = simulated(version, monkeypatch)
    engine = build_engine(models["fp32"], tmp_path, BuildOptions("fp32", **OPTIONS))
    build_calls = len(gpu.lines)
    embedder = TensorRTEmbedder(engine)
    reference = OnnxRuntimeEmbedder(models["fp32"])
    assert embedder.max_batch == OPTIONS["max_batch"] and embedder.backend == f"tensorrt:{version}"
    for batch in (1, 3, 17):  # 17 = two full batches of the profile's maximum 8, then one
        images = np.random.default_rng(batch).standard_normal((batch, 3, 16, 8)).astype(np.float32)
        np.testing.assert_allclose(embedder.embed_preprocessed(images), reference.embed_preprocessed(images),
                                   rtol=1e-5, atol=1e-6)
    embedder.close()
    check_golden(f"tensorrt-{version}/run-fp32", gpu.lines[build_calls:])
    assert all(not allocation.live for allocation in gpu.allocations) and not gpu.streams
    calls = len(gpu.lines)
    assert build_engine(models["fp32"], tmp_path, BuildOptions("fp32", **OPTIONS)) == engine  # cached
    assert all(line.startswith("cudart.") for line in gpu.lines[calls:])


@pytest.mark.parametrize("version", TENSORRT)
def test_engine_from_another_tensorrt_version_is_refused(version, models, tmp_path, monkeypatch):
    from hybreid.inference.tensorrt_backend import TensorRTEmbedder

    other = [v for v in TENSORRT if v != version][0]
    simulated(other, monkeypatch)
    engine = build_engine(models["fp32"], tmp_path, BuildOptions("fp32", **OPTIONS))
    simulated(version, monkeypatch)
    with pytest.raises(UserError, match=f"built for TensorRT {other}"):
        TensorRTEmbedder(engine)


def test_a_model_tensorrt_cannot_parse_and_a_damaged_engine_are_one_clear_sentence_each(models, tmp_path,
                                                                                       monkeypatch):
    from hybreid.inference.tensorrt_backend import TensorRTEmbedder

    gpu = simulated("10.3.0", monkeypatch)
    engine = build_engine(models["fp32"], tmp_path, BuildOptions("fp32", **OPTIONS))
    engine.write_bytes(b"not an engine")
    with pytest.raises(UserError, match="TensorRT could not load .*damaged or was built elsewhere"):
        TensorRTEmbedder(engine)
    gpu.parse_errors = ["In node 6 (attn_values): UNSUPPORTED_NODE"]
    with pytest.raises(UserError, match=r"TensorRT cannot parse .*model.onnx: In node 6 \(attn_values\)"):
        build_engine(models["fp32"], tmp_path / "other", BuildOptions("fp32", **OPTIONS))
    assert "OnnxParser#2.get_error(0) -> ParserError#1" in gpu.lines


def test_a_failed_build_a_failed_run_and_a_missing_calibration_cache_are_each_named(models, tmp_path,
                                                                                   monkeypatch):
    from hybreid.inference.tensorrt_backend import TensorRTEmbedder

    gpu = simulated("10.3.0", monkeypatch)
    with pytest.raises(UserError, match="INT8 without a Q/DQ ONNX needs --calibration-cache"):
        build_engine(models["fp32"], tmp_path / "int8", BuildOptions("int8", **OPTIONS))
    assert not (tmp_path / "int8").exists()  # refused before anything was written
    gpu.build_fails = True
    with pytest.raises(UserError, match="TensorRT failed to build an engine"):
        build_engine(models["fp32"], tmp_path / "failed", BuildOptions("fp32", **OPTIONS))
    gpu.build_fails = False
    embedder = TensorRTEmbedder(build_engine(models["fp32"], tmp_path / "ok", BuildOptions("fp32", **OPTIONS)))
    gpu.execution_fails = True
    with pytest.raises(RuntimeError, match="TensorRT execution failed"):
        embedder.embed_preprocessed(np.zeros((2, 3, 16, 8), np.float32))


def test_no_driver_no_memory_and_no_gpu_are_each_named(models, tmp_path, monkeypatch):
    from hybreid.inference.tensorrt_backend import TensorRTEmbedder, import_tensorrt

    gpu = simulated("10.3.0", monkeypatch)
    gpu.failures["cudaGetDeviceCount"] = "cudaErrorInsufficientDriver"
    with pytest.raises(UserError, match=r"CUDA cannot start \(cudaErrorInsufficientDriver: .*\): is the NVIDIA "):
        import_tensorrt()
    gpu.failures = {"cudaMalloc": "cudaErrorMemoryAllocation"}
    engine = build_engine(models["fp32"], tmp_path, BuildOptions("fp32", **OPTIONS))
    with pytest.raises(RuntimeError, match="CUDA failed with cudaErrorMemoryAllocation"):
        TensorRTEmbedder(engine)
    gc.collect()  # the half-built embedder gives back the pinned buffers it had
    assert [a.kind for a in gpu.allocations] == ["host", "host"] and not any(a.live for a in gpu.allocations)
    gpu.failures.clear()
    gpu.devices = 0
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        import_tensorrt()


class TestTheHarnessRefusesWhatTheRealBindingsRefuse:
    """Deliberately wrong calls: each would fail on a device, so each must fail here."""

    def test_a_flag_removed_in_tensorrt_11(self, monkeypatch):
        trt = simulated("11.4.0.106", monkeypatch).tensorrt
        with pytest.raises(MissingInBindings, match="tensorrt 11.4.0.106 has no BuilderFlag.FP16"):
            _ = trt.BuilderFlag.FP16
        with pytest.raises(MissingInBindings, match="has no IInt8EntropyCalibrator2"):
            _ = trt.IInt8EntropyCalibrator2
        assert getattr(trt.BuilderFlag, "INT8", None) is None  # feature tests still work

    def test_the_build_with_a_tensorrt_10_flag_on_11_fails(self, models, tmp_path, monkeypatch):
        simulated("11.4.0.106", monkeypatch)
        real_plan = tensorrt_build.plan_engine
        monkeypatch.setattr(tensorrt_build, "plan_engine",
                            lambda *args: replace(real_plan(*args), flags=("FP16",)))
        with pytest.raises(MissingInBindings, match="no BuilderFlag.FP16"):
            build_engine(models["fp16"], tmp_path, BuildOptions("fp16", **OPTIONS))

    def test_wrong_argument_types_and_counts(self, monkeypatch):
        trt = simulated("10.3.0", monkeypatch).tensorrt
        builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
        config = builder.create_builder_config()
        with pytest.raises(ConformanceError, match="flag=2 is not tensorrt.BuilderFlag"):
            config.set_flag(2)
        with pytest.raises(ConformanceError, match="pool_size='2048' is not int"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, "2048")
        with pytest.raises(ConformanceError, match="argument 'max' is missing"):
            builder.create_optimization_profile().set_shape("images", (1, 3, 16, 8), (4, 3, 16, 8))
        with pytest.raises(MissingInBindings, match="has no IBuilderConfig.max_workspace_size"):
            config.max_workspace_size = 1 << 30  # removed in TensorRT 10
        with pytest.raises(ConformanceError, match="Builder cannot be constructed|refuses this call"):
            trt.Builder()

    def test_a_calibrator_overriding_a_method_tensorrt_does_not_have(self, monkeypatch):
        trt = simulated("10.3.0", monkeypatch).tensorrt
        with pytest.raises(ConformanceError, match="read_cache overrides nothing"):
            type("Calibrator", (trt.IInt8EntropyCalibrator2,), {"read_cache": lambda self: b""})

    def test_a_copy_past_a_buffer_or_in_the_wrong_direction(self, monkeypatch):
        gpu = simulated("10.3.0", monkeypatch)
        cudart = gpu.cudart
        _, device = cudart.cudaMalloc(64)
        _, host = cudart.cudaMallocHost(32)
        _, stream = cudart.cudaStreamCreate()
        with pytest.raises(ConformanceError, match="run past its 32 bytes"):
            cudart.cudaMemcpyAsync(host, device, 64, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)
        with pytest.raises(ConformanceError, match="not in any host allocation"):
            cudart.cudaMemcpyAsync(device, device, 8, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
        with pytest.raises(ConformanceError, match="kind=1 is not cudaMemcpyKind"):
            cudart.cudaMemcpyAsync(device, host, 8, 1, stream)
        cudart.cudaFree(device)
        with pytest.raises(ConformanceError, match="freed twice"):
            cudart.cudaFree(device)
