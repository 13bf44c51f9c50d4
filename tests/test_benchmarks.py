"""The benchmark commands produce their tables, JSON and plots (tiny models, few repeats)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from hybreid.bench import fidelity, latency, training
from hybreid.errors import UserError


@pytest.mark.slow
def test_latency_benchmark_writes_cells_json_and_png(tmp_path):
    cells = latency.run(["haresformer_tiny"], [1, 2], tmp_path, threads=1, repeats=2, warmup=1)
    assert {(c.backend, c.batch) for c in cells} == {(b, n) for b in ("torch", "onnxruntime-fp32") for n in (1, 2)}
    saved = json.loads((tmp_path / "latency.json").read_text())
    assert saved["matmul_gflops"] > 0 and len(saved["cells"]) == 4
    # Before each of a cell's 2 timed runs and after the last, while the cell waits.
    assert len(saved["matmul_gflops_measured"]) == 4 * 3
    # The reference is the fastest runtime's GEMM (torch's is the slower one on AMD EPYC).
    assert saved["matmul_gflops_measured"] == [max(r["torch"], r["onnxruntime_weights"])
                                               for r in saved["matmul_gflops_by_runtime"]]
    for cell, record in zip(cells, saved["cells"], strict=True):
        assert cell.p90_ms >= cell.median_ms > 0
        assert cell.images_per_s == cell.batch / (cell.median_ms / 1000)
        assert 0 < cell.roofline < 1.5 and cell.peak_rss_mib > 10
        # Each run against the mean of the GEMM rates measured right before and after it.
        seconds, rates = np.array(record["run_seconds"]), np.array(record["run_matmul_gflops"])
        assert len(seconds) == len(rates) == 2
        assert cell.roofline == pytest.approx(np.median(cell.gflops_per_image * cell.batch / seconds / rates))
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_latency_benchmark_with_an_engine_and_no_tensorrt_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="TensorRT is not installed"):
        latency.run(["haresformer_tiny"], [1], tmp_path, engines={"haresformer_tiny": str(tmp_path / "m.engine")})
    assert not (tmp_path / "latency.json").exists()


@pytest.mark.slow
def test_fidelity_benchmark_reports_parity_and_fp16(tmp_path):
    (result,) = fidelity.run(["haresformer_tiny"], tmp_path, fp16_batch=2)
    assert set(result["parity"]) == {1, 3, 17}
    assert all(p["min_cosine"] >= 0.9999 for p in result["parity"].values())
    assert result["fp16_kept_fp32"]["min_cosine"] >= 0.9995
    assert result["fp16_kept_fp32"]["nodes_kept_fp32"] > 0 and result["fp16_all"]["nodes_kept_fp32"] == 0
    assert 0.9 < result["torch_half"]["min_cosine"] <= 1.0 + 1e-6


@pytest.mark.slow
def test_matcher_benchmark_measures_ingest_and_latency(tmp_path):
    from hybreid.bench import matcher

    (result,) = matcher.run([200], tmp_path, messages=60, dim=32)
    assert result["messages"] == 60 and result["ingest_per_s"] > 0
    assert 0 < result["assign_p50_ms"] <= result["assign_p99_ms"]
    assert result["structure"] == "flat" and result["recall_at_1"] == 1.0  # auto is exact at this size
    assert result["recall_at_or_above_threshold"] == 1.0
    bands = result["recall_by_band"]
    # The bands cover 0.7 to 1 with the operating threshold (the tiny HAResformer's) as an edge.
    assert bands[0]["band"][0] == 0.7 and bands[-1]["band"][1] == 1.0
    assert round(result["operating_cosine"], 3) in [band["band"][0] for band in bands]
    # A sighting far from its own prototype is more often nearer another person's.
    assert bands[-1]["own_identity_first"] > bands[0]["own_identity_first"]
    saved = json.loads((tmp_path / "matcher.json").read_text())
    assert saved["runs"][0]["identities"] == 200 and saved["geometry"]["model"].startswith("haresformer_tiny@")


@pytest.mark.slow
def test_pipeline_benchmark_compares_with_the_embedder_alone(tmp_path, tiny_onnx):
    from hybreid.bench import pipeline

    (result,) = pipeline.run([str(tiny_onnx)], tmp_path, people=2, max_batch=4)
    assert result["frames"] > 50 and result["crops"] > 10 and result["tracklets"] >= 4
    assert result["pipeline_crops_per_s"] > 0 and result["embedder_alone_crops_per_s"] > 0
    assert result["ratio"] == result["pipeline_crops_per_s"] / result["embedder_alone_crops_per_s"]
    assert result["mqtt_acknowledged"] == result["tracklets"] and result["tracklet_purity"] > 0.8


@pytest.mark.slow
def test_latency_benchmark_times_a_plain_timm_reference_and_openvino_beside_our_model(tmp_path, tiny_onnx, capsys):
    """OpenVINO cells where its runtime runs (bfloat16 ones where the CPU has it); elsewhere a
    note says why they are left out. Every cell of our model carries its cosine to FP32."""
    from hybreid.calibration.int8 import QuantizationConfig, quantize
    from hybreid.calibration.report import calibration_crops
    from hybreid.contract import preprocess, read_onnx_contract
    from hybreid.inference.openvino_backend import openvino_unavailable_reason

    shutil.copy(tiny_onnx, tmp_path / "haresformer_tiny.onnx")  # the FP32 file the benchmark times
    calibration = preprocess(calibration_crops("synthetic", 16), read_onnx_contract(tiny_onnx))
    qdq = quantize(tiny_onnx, tmp_path / "tiny.int8.onnx", calibration, QuantizationConfig(target="cpu")).path
    cells = latency.run(["haresformer_tiny"], [2], tmp_path, threads=1, repeats=2, warmup=1,
                        references=("resnet10t",), openvino=True, int8={"haresformer_tiny": [str(qdq)]})
    printed = capsys.readouterr().out
    backends, int8 = {"torch", "onnxruntime-fp32"}, {"onnxruntime-int8"}
    for provider, fp32_cell in (("openvino", "openvino-fp32"), ("openvino-bf16", "openvino-bf16")):
        missing = openvino_unavailable_reason(provider)
        if missing is None:
            backends, int8 = backends | {fp32_cell}, int8 | {f"{provider}-int8"}
        else:
            assert f"{provider} cells left out: {missing}" in printed
    assert {c.backend for c in cells if c.model == "haresformer_tiny"} == backends | int8
    ours = {c.backend: c for c in cells if c.model == "haresformer_tiny"}
    assert ours["onnxruntime-fp32"].cosine_worst > 0.99999  # itself
    assert ours["torch"].cosine_mean is None
    for backend in (backends | int8) - {"torch", "onnxruntime-fp32", "openvino-fp32"}:
        # a tiny random-weight model: INT8 and bfloat16 stay close to FP32, never equal to it
        assert 0.95 < ours[backend].cosine_worst <= ours[backend].cosine_mean < 0.999999, backend
    assert ours.get("openvino-fp32", ours["onnxruntime-fp32"]).cosine_worst > 0.99999
    # INT8 cells are measured against the int8 GEMMs, the others against the float32 ones
    assert all((cell.int8_matmul_gops is not None) == ("-int8" in backend) for backend, cell in ours.items())
    assert all(cell.int8_matmul_gops > 0 for backend, cell in ours.items() if "-int8" in backend)
    reference = [c for c in cells if c.model == "timm/resnet10t"]
    assert {c.backend for c in reference} == {"torch", "onnxruntime-fp32"}
    assert (tmp_path / "timm_resnet10t.onnx").is_file()
    # A 224x224 ResNet costs far more per image than the 128x64 tiny HAResformer.
    ours = next(c for c in cells if c.model == "haresformer_tiny")
    assert reference[0].gflops_per_image > ours.gflops_per_image > 0
    for cell in reference:
        assert 0 < cell.roofline < 1.5


def test_the_roofline_reference_is_the_fastest_gemm_of_the_precision():
    from hybreid.bench.gemm import reference_rate

    rates = {"torch": 200.0, "onnxruntime_weights": 450.0, "onnxruntime_int8": 1200.0, "openvino_int8": 1300.0}
    assert reference_rate(rates) == 450.0
    assert reference_rate(rates, int8=True) == 1300.0
    assert reference_rate({"torch": 200.0, "onnxruntime_weights": 450.0, "onnxruntime_int8": 900.0}, int8=True) == 900

@pytest.mark.slow
def test_training_benchmark_writes_each_dataset_at_its_own_image_density(tmp_path, monkeypatch):
    """SYSU-MM01 gets about as many images per identity and camera as the real one
    (20), Market1501 keeps its sparser 4: the per-benchmark setting must reach the writer."""
    monkeypatch.setattr(training, "SYNTHETIC", {"train_ids": 3, "test_ids": 2, "images_per_camera": 4, "seed": 0})
    sysu = training.synthetic_root(tmp_path, "haresformer_tiny")
    market = training.synthetic_root(tmp_path, "fusionreid_tiny")
    assert {len(list(folder.glob("*.jpg"))) for folder in sysu.glob("cam*/*")} == {20}
    per_identity_and_camera = Counter(path.name[:7] for path in (market / "bounding_box_train").glob("*.jpg"))
    assert set(per_identity_and_camera.values()) == {4}


def test_node_flops_count_multiply_adds_of_matmuls_and_convolutions():
    from hybreid.bench.profile import node_flops

    assert node_flops("MatMul", [[2, 3, 4]], [[2, 3, 5]], None, {}) == 2 * (2 * 3 * 5) * 4
    assert node_flops("Gemm", [[4, 3]], [[3, 5]], [4, 5], {"transA": 1}) == 2 * 15 * 4
    assert node_flops("FusedConv", [[1, 3, 8, 8]], [[1, 8, 4, 4]], [8, 3, 3, 3], {}) == 2 * (8 * 4 * 4) * 27
    assert node_flops("Softmax", [[2, 5]], [[2, 5]], None, {}) == 0


@pytest.mark.slow
def test_profile_accounts_for_the_models_flops_and_time(tmp_path, tiny_onnx, capsys):
    from hybreid.bench.flops import count_model
    from hybreid.cli import main

    assert main(["bench", "profile", "--artifact", str(tiny_onnx), "--batch", "2", "--threads", "1", "--runs", "1",
                 "--out", str(tmp_path)]) == 0
    assert "slowest matrix multiplies and convolutions" in capsys.readouterr().out
    summary = json.loads((tmp_path / "profile.json").read_text())
    assert sum(o["share"] for o in summary["operators"]) == pytest.approx(1.0)
    assert 0 < summary["gemm_share"] < 1 and summary["gemm_gflops_per_s"] > 0
    # What ONNX Runtime executed in matmuls and convolutions is the model's FLOP count
    # (counted independently, on the PyTorch module), give or take the elementwise rest.
    assert summary["gemm_gflop_per_image"] == pytest.approx(2 * count_model("haresformer_tiny").full_gmacs, rel=0.05)
    assert {"MatMul", "Softmax"} <= {o["op"] for o in summary["operators"]}
    assert summary["batch"] == 2
    # Linear layers and convolutions multiply by weights; the attention scores (Q K^T) and the
    # attention-weighted values multiply two activations.
    references = summary["matmul_2048_gflops_per_s"]
    assert set(references) == {"torch", "onnxruntime_weights", "onnxruntime_activations"}
    assert min(references.values()) > 0
    operands = {(s["op"], s["right_operand"]) for s in summary["shapes"]}
    assert {("Conv", "weights"), ("MatMul", "weights")} <= operands
    assert any(operand == "activations" for _, operand in operands)
    for shape in summary["shapes"]:
        fastest = max(references["torch"], references["onnxruntime_weights"])
        assert shape["roofline"] == pytest.approx(shape["gflops_per_s"] / fastest)
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_an_embedding_geometry_is_measured_back_from_sightings_drawn_with_it():
    """measure_geometry and SightingModel agree: people drawn with a known cone, spectrum and
    genuine cosines measure back as that cone, spectrum and cosines."""
    from hybreid.bench.sightings import EmbeddingGeometry, SightingModel, measure_geometry

    truth = EmbeddingGeometry(model="truth@0", measured_on="drawn", dim=256, identities=400, mean_norm=0.6,
                              spectrum_decay=1.0, genuine_quantiles=[0.80, 0.85, 0.90],
                              same_modality_threshold=0.8, cross_modality_threshold=0.8)
    draw = SightingModel(truth, 256, np.random.default_rng(3))
    prototypes = draw.prototypes(400)
    per_person = 6
    sightings = draw.sightings(np.repeat(prototypes, per_person, axis=0), draw.genuine_cosines(400 * per_person))
    pids = np.repeat(np.arange(1, 401), per_person)
    measured = measure_geometry(sightings, pids, np.array(["visible"] * len(pids)), "truth@0", "drawn")
    assert abs(measured.mean_norm - 0.6) < 0.05
    assert abs(measured.spectrum_decay - 1.0) < 0.3
    # Leave-one-out prototypes of 5 sightings sit a little farther from each sighting than the true one.
    assert 0.70 < measured.genuine_quantiles[10] < 0.90
    assert 0.0 < measured.same_modality_threshold <= 1.0
