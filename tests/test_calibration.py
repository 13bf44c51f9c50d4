"""INT8 Q/DQ placement, the TensorRT calibration cache, and threshold calibration."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from support import requires_openvino

from hybreid.calibration.int8 import (
    QuantizationConfig,
    activation_scales,
    attention_matmuls,
    output_layers,
    quantize,
    read_calibration_cache,
    split_concatenated_inputs,
    write_calibration_cache,
)
from hybreid.calibration.threshold import (
    TRACKLETS_PER_CAMERA,
    calibrate_thresholds,
    choose_threshold,
    save_thresholds,
    tracklet_means,
)
from hybreid.errors import UserError
from hybreid.export.onnx_export import export_onnx
from hybreid.inference import OnnxRuntimeEmbedder, load_embedder
from hybreid.models import build
from hybreid.thresholds import ThresholdsFile


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    path = export_onnx(build("fusionreid_tiny", image_size=(64, 32)).eval(), folder / "m.onnx", "fusionreid_tiny", {})
    calibration = np.random.default_rng(0).standard_normal((16, 3, 64, 32)).astype(np.float32)
    # The cpu and openvino targets for two instruction sets, named (not this machine's): AVX2
    # alone, and VNNI.
    runs = {("tensorrt", False): {}, ("cpu", False): {"cpu_isa": "avx2"}, ("tensorrt", True): {},
            ("cpu-vnni", False): {"cpu_isa": "avx512-vnni"}, ("openvino", False): {"cpu_isa": "avx2"},
            ("openvino-vnni", False): {"cpu_isa": "avx512-vnni"}}
    results = {
        (target, attention): quantize(path, folder / f"{target}-{attention}.onnx", calibration,
                                      QuantizationConfig(target=target.split("-")[0], quantize_attention=attention,
                                                         **options),
                                      cache_dir=folder / "cache")
        for (target, attention), options in runs.items()
    }
    return path, calibration, results


def _graph_maps(model):
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {i.name: i for i in model.graph.initializer}
    return producers, initializers


def _dequantized_inputs(node, producers) -> list[bool]:
    return [name in producers and producers[name].op_type == "DequantizeLinear" for name in node.input]


@pytest.mark.slow
def test_default_placement_keeps_attention_core_in_float(fp32_model):
    path, _, results = fp32_model
    original = onnx.load(str(path))
    attention = set(attention_matmuls(original))
    assert len(attention) == 2 * 10  # scores and values MatMul of every attention block
    last = set(output_layers(original, ("Conv", "MatMul", "Gemm")))
    assert "/model/dmf/lru_cnn/pointwise/pointwise.0/Conv" in last  # LRU -> BN -> GeM -> embedding
    assert not any("/vit/blocks" in name for name in last)  # the residual stream ends in a LayerNorm
    model = onnx.load(str(results[("tensorrt", False)].path))
    producers, _ = _graph_maps(model)
    for node in model.graph.node:
        fed = _dequantized_inputs(node, producers)
        if node.op_type in ("Softmax", "LayerNormalization", "Erf"):
            assert not any(fed), f"{node.name} ({node.op_type}) is quantised"
        elif node.name in attention:
            assert not any(fed[:2]), f"{node.name} (attention MatMul) is quantised"
        elif node.name in last:
            assert not any(fed[:2]), f"{node.name} (writes the embedding) is quantised"
        elif node.op_type == "Conv" or (node.op_type == "MatMul" and node.name not in attention):
            assert all(fed[:2]), f"{node.name} ({node.op_type}) is left in float"
    assert set(results[("tensorrt", False)].unquantized) >= attention


def test_attention_comparison_run_quantises_the_attention_matmuls(fp32_model):
    path, _, results = fp32_model
    attention = set(attention_matmuls(onnx.load(str(path))))
    model = onnx.load(str(results[("tensorrt", True)].path))
    producers, _ = _graph_maps(model)
    quantised = [n for n in model.graph.node if n.name in attention and all(_dequantized_inputs(n, producers)[:2])]
    assert len(quantised) == len(attention)


def test_tensorrt_target_is_symmetric_int8_with_per_channel_weights(fp32_model):
    _, _, results = fp32_model
    model = onnx.load(str(results[("tensorrt", False)].path))
    _, initializers = _graph_maps(model)
    per_channel = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = numpy_helper.to_array(initializers[node.input[2]])
            assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
            per_channel += numpy_helper.to_array(initializers[node.input[1]]).size > 1
    assert per_channel > 10  # weight scales per output channel


def _activation_dtypes_and_largest_weight(path) -> tuple[set, int]:
    model = onnx.load(str(path))
    _, initializers = _graph_maps(model)
    dtypes = {numpy_helper.to_array(initializers[n.input[2]]).dtype for n in model.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] not in initializers}
    weights = [initializers[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    largest = max(int(np.abs(numpy_helper.to_array(w).astype(int)).max()) for w in weights
                  if w.data_type == onnx.TensorProto.INT8 and len(w.dims) > 1)  # weights, not zero points
    return dtypes, largest


def test_cpu_target_for_avx2_uses_uint8_activations_and_seven_bit_weights(fp32_model):
    """vpmaddubsw adds two uint8 x int8 products in int16: 255 x 127 x 2 overflows it, 255 x 64 x 2 does not."""
    _, _, results = fp32_model
    dtypes, largest = _activation_dtypes_and_largest_weight(results[("cpu", False)].path)
    assert dtypes == {np.dtype(np.uint8)} and largest <= 64


def test_cpu_target_for_vnni_uses_uint8_activations_at_full_range(fp32_model):
    """vpdpbusd accumulates uint8 x int8 in int32: no saturation, so the whole int8 range."""
    _, _, results = fp32_model
    dtypes, largest = _activation_dtypes_and_largest_weight(results[("cpu-vnni", False)].path)
    assert dtypes == {np.dtype(np.uint8)} and largest == 127
    assert OnnxRuntimeEmbedder(results[("cpu-vnni", False)].path).contract.cpu_isa == "avx512-vnni"
    assert OnnxRuntimeEmbedder(results[("tensorrt", False)].path).contract.cpu_isa == ""


def test_openvino_target_is_symmetric_int8_with_the_attention_quantised(fp32_model):
    """No activation zero point for OpenVINO to subtract in float; Q K^T and attention x V
    quantised (its int8 attention kernel); the patch embedding beside the class token float."""
    path, _, results = fp32_model
    result = results[("openvino", False)]
    model = onnx.load(str(result.path))
    producers, initializers = _graph_maps(model)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = numpy_helper.to_array(initializers[node.input[2]])
            assert zero_point.dtype in (np.int8, np.int32) and not zero_point.any(), node.name  # int32: biases
    dtypes, _ = _activation_dtypes_and_largest_weight(result.path)
    assert dtypes == {np.dtype(np.int8)}
    attention = set(attention_matmuls(onnx.load(str(path))))
    assert all(all(_dequantized_inputs(n, producers)[:2]) for n in model.graph.node if n.name in attention)
    assert not attention & set(result.unquantized)
    assert result.unquantized["/model/vit/embed/proj/Conv"].startswith("writes tokens concatenated")
    contract = OnnxRuntimeEmbedder(result.path).contract
    assert contract.precision == "int8-openvino-minmax" and contract.cpu_isa == "avx2"
    with pytest.raises(UserError, match="instruction set applies to the cpu and openvino targets only"):
        QuantizationConfig(target="tensorrt", cpu_isa="avx2")


def test_openvino_target_weights_are_seven_bit_without_vnni_and_full_range_with_it(fp32_model):
    """Without VNNI, OpenVINO shifts int8 activations to uint8 for vpmaddubsw, whose int16 sum
    of two products overflows at 255 x 127 x 2 and not at 255 x 64 x 2."""
    _, _, results = fp32_model
    for key, widest in ((("openvino", False), 64), (("openvino-vnni", False), 127)):
        dtypes, largest = _activation_dtypes_and_largest_weight(results[key].path)
        assert dtypes == {np.dtype(np.int8)}, key
        assert largest == widest if widest == 127 else largest <= widest, (key, largest)


@pytest.mark.slow
def test_int8_embeddings_stay_close_to_fp32(fp32_model):
    path, calibration, results = fp32_model
    reference = OnnxRuntimeEmbedder(path).embed_preprocessed(calibration)
    for key in (("tensorrt", False), ("cpu", False), ("cpu-vnni", False), ("openvino", False)):
        for exact in (False, True):
            embedder = OnnxRuntimeEmbedder(results[key].path, disable_qdq_fusion=exact)
            cos = (embedder.embed_preprocessed(calibration) * reference).sum(1)
            assert cos.min() >= 0.99, (key, exact, cos.min())
    assert OnnxRuntimeEmbedder(results[("cpu", False)].path).contract.model == "fusionreid_tiny"


@pytest.mark.slow
@requires_openvino
def test_openvino_runs_the_cpu_int8_model_close_to_fp32(fp32_model):
    """OpenVINO runs the same Q/DQ file with its own INT8 kernels (an x86-64 box).

    The copies are the ones made for AVX2 alone, the weakest x86-64 instruction set supported:
    their 7-bit weights cannot saturate AVX2's int16 sums, and nothing saturates with VNNI, so
    the bound holds on every x86-64 CPU. A copy made for VNNI (full-range weights) does not
    hold it on a CPU without VNNI: worst cosine 0.9898 on an AMD EPYC Zen 3, and the embedder
    warns when it loads one there."""
    path, calibration, results = fp32_model
    reference = OnnxRuntimeEmbedder(path).embed_preprocessed(calibration)
    for key in (("cpu", False), ("openvino", False)):
        openvino = load_embedder(results[key].path, providers=["openvino"])
        assert openvino.backend == "openvino:CPU-f32"
        cos = (openvino.embed_preprocessed(calibration) * reference).sum(1)
        assert cos.min() >= 0.99, (key, cos.min())


@pytest.mark.slow
@pytest.mark.parametrize("providers", [None, pytest.param(["openvino"], marks=requires_openvino)],
                         ids=["cpu", "openvino"])
def test_cpu_int8_model_of_real_looking_crops_runs_faithfully(fp32_model, tmp_path, providers):
    from hybreid.calibration.report import calibration_crops
    from hybreid.contract import preprocess

    path, _, _ = fp32_model
    fp32 = OnnxRuntimeEmbedder(path)
    crops = preprocess(calibration_crops("synthetic", 32, seed=3), fp32.contract)
    result = quantize(path, tmp_path / "cpu.onnx", crops[:16], QuantizationConfig(target="cpu"))
    # Quantised, the ViT's patch embedding read by the class-token Concat gave OpenVINO a
    # cosine of 0.97 (0.90 on the paper model) where ONNX Runtime's CPU kernels gave 0.999.
    assert result.unquantized["/model/vit/embed/proj/Conv"].startswith("writes tokens concatenated")
    reference = fp32.embed_preprocessed(crops[16:])
    embedder = load_embedder(result.path, providers=providers)
    cos = (embedder.embed_preprocessed(crops[16:]) * reference).sum(1)
    assert cos.min() >= 0.99, (providers, cos.min())


def test_calibration_cache_round_trips(fp32_model, tmp_path):
    _, _, results = fp32_model
    scales = activation_scales(onnx.load(str(results[("tensorrt", False)].path)))
    assert len(scales) > 20 and all(s > 0 for s in scales.values())
    path = write_calibration_cache(scales, tmp_path / "calibration.cache")
    assert path.read_text().splitlines()[0].startswith("TRT-")
    back = read_calibration_cache(path)
    assert back.keys() == scales.keys()
    assert all(np.float32(back[k]) == np.float32(scales[k]) for k in scales)
    (tmp_path / "bad.cache").write_text("hello\n")
    with pytest.raises(UserError, match="not a TensorRT calibration cache"):
        read_calibration_cache(tmp_path / "bad.cache")


class TestThresholds:
    def test_threshold_for_a_known_impostor_distribution(self):
        # 100 impostor scores 0.00, 0.01, ..., 0.99; 1% FMR lets exactly one through:
        # the threshold sits just above 0.98, where genuine scores 0.95..0.99 pass 1 of 5.
        impostor = np.arange(100) / 100
        genuine = np.array([0.95, 0.96, 0.97, 0.98, 0.99])
        t = choose_threshold(genuine, impostor, 0.01)
        assert 0.98 < t.threshold <= 0.99
        assert t.false_match_rate == pytest.approx(0.01)
        assert t.true_match_rate == pytest.approx(0.2)
        assert choose_threshold(genuine, impostor, 0.05).true_match_rate == pytest.approx(1.0)

    def test_same_and_cross_modality_thresholds_are_separate(self, tmp_path):
        # Two identities seen in both modalities. Same-modality genuine pairs are
        # identical vectors (cos 1); cross-modality genuine pairs are at 60 degrees
        # (cos 0.5); impostors are orthogonal (cos 0).
        def unit(angle):
            return np.array([np.cos(angle), np.sin(angle), 0.0, 0.0])
        a_vis, a_ir = unit(0), unit(np.pi / 3)
        b_vis = np.array([0.0, 0.0, 1.0, 0.0])
        b_ir = np.array([0.0, 0.0, 0.5, np.sqrt(0.75)])
        embeddings = np.stack([a_vis, a_vis, a_ir, a_ir, b_vis, b_vis, b_ir, b_ir])
        pids = np.array([1, 1, 1, 1, 2, 2, 2, 2])
        modalities = np.array(["visible", "visible", "infrared", "infrared"] * 2)
        thresholds = calibrate_thresholds(embeddings, pids, modalities, target_fmr=0.0)
        same, cross = thresholds["same_modality"], thresholds["cross_modality"]
        assert 0 < same.threshold < 1e-6 and same.true_match_rate == 1.0
        assert 0 < cross.threshold < 1e-6 and cross.true_match_rate == 1.0
        assert (same.genuine_pairs, cross.genuine_pairs) == (4, 8)
        saved = ThresholdsFile.load(save_thresholds(thresholds, tmp_path / "t.json", "m@h", 0.0))
        assert saved.cross_modality.threshold == cross.threshold and saved.model == "m@h"
        assert saved.cross_modality.genuine_pairs == 8  # the statistics ride along
        (tmp_path / "bad.json").write_text("{}")
        with pytest.raises(UserError, match="not a valid thresholds file"):
            ThresholdsFile.load(tmp_path / "bad.json")
        with pytest.raises(UserError, match="calibrated thresholds cannot be used"):
            save_thresholds(thresholds, tmp_path / "t.json", "no identity", 0.0)


def test_tracklets_of_several_crops_call_for_a_higher_threshold_at_the_same_false_match_rate(tmp_path):
    # 40 people on 2 cameras, 8 crops each: a crop is its person's direction plus noise as
    # large as the person's own, so averaging crops brings two people's tracklets closer.
    rng = np.random.default_rng(0)
    people = rng.normal(size=(40, 32))
    pids = np.repeat(np.arange(40), 16)
    camids = np.tile(np.repeat([1, 2], 8), 40)
    crops = people[pids] + 1.5 * rng.normal(size=(len(pids), 32)) + 3.0  # a shared offset, as models have
    crops /= np.linalg.norm(crops, axis=1, keepdims=True)
    modalities = np.array(["visible"] * len(pids))
    means, mean_pids, mean_modalities = tracklet_means(crops, pids, camids, modalities, 4)
    assert means.shape == (40 * 2 * TRACKLETS_PER_CAMERA, 32)
    assert np.allclose(np.linalg.norm(means, axis=1), 1.0) and set(mean_modalities) == {"visible"}
    crop_threshold = calibrate_thresholds(crops, pids, modalities, 0.01)["same_modality"]
    tracklet_threshold = calibrate_thresholds(means, mean_pids, mean_modalities, 0.01)["same_modality"]
    assert tracklet_threshold.threshold > crop_threshold.threshold + 0.01
    assert tracklet_threshold.true_match_rate > crop_threshold.true_match_rate
    saved = ThresholdsFile.load(save_thresholds({"same_modality": tracklet_threshold}, tmp_path / "t.json", "m@h",
                                                0.01, tracklet_crops=4))
    assert saved.same_modality.model_extra["tracklet_crops"] == 4  # the file says what it was calibrated for
    with pytest.raises(UserError, match="give a smaller --tracklet-crops"):
        tracklet_means(crops, pids, camids, modalities, 9)


@pytest.mark.slow
def test_concatenation_readers_are_split_into_exact_per_part_ops(tmp_path):
    """HAResformer's CFFM convolutions and HGAE read concatenations: each becomes one op per
    part, summed, which computes the same embedding and lets every part have its own scale."""
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.manual_seed(0)
    path = export_onnx(build("haresformer_tiny", image_size=(64, 32)).eval(), tmp_path / "h.onnx",
                       "haresformer_tiny", {})
    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    split = split_concatenated_inputs(model)
    assert sorted(split) == sorted([f"/model/cffm.{i}/pointwise/Conv" for i in range(4)] + ["/model/hgae/fc/Gemm"])
    assert not any(n.op_type == "Concat" and "cffm" in n.name for n in model.graph.node)
    onnx.checker.check_model(model)
    images = np.random.default_rng(0).standard_normal((3, 3, 64, 32)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"images": images})[0]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"images": images})[0]
    np.testing.assert_allclose(after, before, atol=1e-5)

    calibration = np.random.default_rng(0).standard_normal((8, 3, 64, 32)).astype(np.float32)
    result = quantize(path, tmp_path / "h.int8.onnx", calibration, QuantizationConfig(target="tensorrt"))
    quantized = onnx.load(str(result.path))
    producers, _ = _graph_maps(quantized)
    parts = [n for n in quantized.graph.node if "/cffm.1/pointwise/Conv__part" in n.name]
    assert len(parts) == 2 and all(all(_dequantized_inputs(n, producers)[:2]) for n in parts)
    scales = [producers[n.input[0]].input[1] for n in parts]  # each part has its own activation scale
    assert scales[0] != scales[1]
    as_is = quantize(path, tmp_path / "as_is.onnx", calibration,
                     QuantizationConfig(target="tensorrt", quantize_concat_inputs=True))
    assert not any("__part" in n.name for n in onnx.load(str(as_is.path)).graph.node)


@pytest.mark.slow
def test_layers_that_write_the_embedding_stay_float(tmp_path):
    """The last quantisable layer on every path to the output is kept float; the layers
    before them are quantised."""
    torch.manual_seed(0)
    path = export_onnx(build("haresformer_tiny", image_size=(64, 32)).eval(), tmp_path / "h.onnx",
                       "haresformer_tiny", {})
    original = onnx.load(str(path))
    last = set(output_layers(original, ("Conv", "MatMul", "Gemm")))
    # ResNet stage 4: the second conv of both blocks and the shortcut conv feed the output
    # through Add/ReLU/GeM/BN only; so do the CFFM 4 conv and the HGAE projection.
    assert {n for n in last if "/stages.3/" in n} == {
        "/model/stages.3/stages.3.0/conv2/Conv", "/model/stages.3/stages.3.0/downsample/downsample.0/Conv",
        "/model/stages.3/stages.3.1/conv2/Conv"}
    assert "/model/cffm.3/pointwise/Conv" in last and "/model/hgae/fc/Gemm" in last
    assert "/model/stages.3/stages.3.1/conv1/Conv" not in last
    calibration = np.random.default_rng(0).standard_normal((8, 3, 64, 32)).astype(np.float32)
    result = quantize(path, tmp_path / "h.int8.onnx", calibration, QuantizationConfig(target="cpu"))
    model = onnx.load(str(result.path))
    producers, _ = _graph_maps(model)
    by_name = {n.name: n for n in model.graph.node}
    for name in last:  # the CFFM 4 and HGAE ops are split into parts (see the test above); all stay float
        for node in [by_name[name]] if name in by_name else [n for n in model.graph.node if n.name.startswith(name)]:
            assert not any(_dequantized_inputs(node, producers)[:2]), f"{node.name} is quantised"
    assert all(_dequantized_inputs(by_name["/model/stages.3/stages.3.1/conv1/Conv"], producers)[:2])


def _activation_scales(path) -> dict[str, float]:
    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    return {node.input[0]: float(numpy_helper.to_array(initializers[node.input[1]]).ravel()[0])
            for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[1] in initializers}


@pytest.mark.slow
def test_entropy_calibration_clips_where_minmax_does_not(tmp_path):
    """Entropy searches 2048-bin histograms for the best 128-bin range: narrower than
    MinMax where a few outliers stretch the range (a small network keeps the KL search,
    which runs per tensor, quick)."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                  torch.nn.Flatten(), torch.nn.Linear(8 * 12 * 12, 16)).eval()
    path = tmp_path / "small.onnx"
    torch.onnx.export(network, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, input_names=["images"],
                      dynamic_axes={"images": {0: "batch"}})
    calibration = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    calibration[0, :, 0, 0] = 40.0  # a few outliers
    scales = {method: _activation_scales(quantize(path, tmp_path / f"{method}.onnx", calibration,
                                                  QuantizationConfig(target="tensorrt", method=method)).path)
              for method in ("minmax", "entropy")}
    assert scales["minmax"].keys() == scales["entropy"].keys() and len(scales["minmax"]) >= 3
    assert scales["entropy"]["images"] < 0.5 * scales["minmax"]["images"]  # the outliers are clipped


def test_a_histogram_method_that_cannot_cut_a_near_constant_tensor_is_one_clear_error(tmp_path):
    """A Conv reading a tensor whose values all but coincide (1 give or take a few float32
    steps): numpy cannot cut its range into ONNX Runtime's 2048 bins; MinMax still can."""
    from onnx import TensorProto, helper

    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.full((1,), 1e-7, np.float32), "scale")
    one = numpy_helper.from_array(np.ones((1,), np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["flat"]), helper.make_node("Add", ["flat", "one"], ["near"]),
         helper.make_node("Conv", ["near", "w"], ["y"])], "near_constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])], [weights, scale, one])
    path = tmp_path / "near_constant.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    calibration = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with pytest.raises(UserError, match="percentile calibration failed.*use --method minmax"):
        quantize(path, tmp_path / "p.onnx", calibration, QuantizationConfig(target="tensorrt", method="percentile"))
    assert not (tmp_path / "p.prepared.onnx").exists()  # nothing left behind
    assert quantize(path, tmp_path / "m.onnx", calibration, QuantizationConfig(target="tensorrt")).path.is_file()


class TestInt8Recommendation:
    """INT8 is offered only where it was measured clearly faster than FP32 on the kind of CPU it is
    made for (an AVX2-only AMD EPYC ran the demo's INT8 model at 0.84x FP32)."""

    @staticmethod
    def _report(speedups, isa="avx2", measured_on="avx2", target="cpu"):
        runs = [{"method": f"m{i}", "quantize_attention": target == "openvino", "comparison": False,
                 "path": f"m{i}.onnx", "speedup": s} for i, s in enumerate(speedups)]
        cpu = {"isa": isa, "measured_on": measured_on} if target != "tensorrt" else None
        return {"target": target, "cpu": cpu, "runs": runs}

    def test_slower_int8_keeps_fp32_and_says_why(self):
        from hybreid.calibration.report import recommendation

        advice = recommendation(self._report([0.84, 0.97]))
        assert advice["precision"] == "fp32" and "0.97x FP32" in advice["why"]

    def test_clearly_faster_int8_is_chosen_with_its_path(self):
        from hybreid.calibration.report import recommendation

        advice = recommendation(self._report([1.05, 1.6]))
        assert advice == {"precision": "int8", "path": "m1.onnx", "speedup": 1.6,
                          "why": "INT8 runs at 1.60x FP32 on this avx2 CPU"}

    def test_a_gain_within_run_to_run_spread_is_not_enough(self):
        from hybreid.calibration.report import INT8_MIN_SPEEDUP, recommendation

        assert recommendation(self._report([INT8_MIN_SPEEDUP - 0.01]))["precision"] == "fp32"

    def test_measured_on_another_kind_of_cpu_says_it_is_unknown(self):
        from hybreid.calibration.report import recommendation

        advice = recommendation(self._report([0.8], isa="avx512-vnni", measured_on="avx2"))
        assert advice["precision"] == "int8" and "measured on avx2" in advice["why"]

    def test_the_openvino_form_quantises_attention_and_is_weighed_all_the_same(self):
        from hybreid.calibration.report import recommendation

        assert recommendation(self._report([0.83], target="openvino"))["why"].startswith("INT8 runs at 0.83x")
        comparison = self._report([0.5, 1.6])
        comparison["runs"][1]["comparison"] = True  # the run that also quantises attention, for comparison only
        assert recommendation(comparison)["precision"] == "fp32"

    def test_tensorrt_speed_is_the_gpus(self):
        from hybreid.calibration.report import recommendation

        advice = recommendation(self._report([0.5], target="tensorrt"))
        assert advice["precision"] == "int8" and "on the device" in advice["why"]
