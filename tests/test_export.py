"""ONNX export, the torch-free Embedder, FP16 graphs, TensorRT decisions and bundles."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import onnx
import pytest
import torch
from support import WITHOUT_TORCH, requires_openvino

from hybreid.contract import read_onnx_contract
from hybreid.errors import UserError
from hybreid.export.bundle import create_bundle, install_bundle, verify_bundle
from hybreid.export.onnx_export import PreprocessingWrapper, export_onnx, weights_hash
from hybreid.export.precision import convert_to_fp16, fp32_nodes
from hybreid.export.tensorrt_build import plan_engine
from hybreid.inference import OnnxRuntimeEmbedder, load_embedder
from hybreid.inference.engine_cache import (
    BuildOptions,
    DeviceInfo,
    cache_key,
    check_compatible,
    profile_shapes,
    read_sidecar,
    write_sidecar,
)
from hybreid.models import build

TINY = ["fusionreid_tiny", "haresformer_tiny"]
# Attention blocks per tiny model: FusionReID = 2 ViT blocks + 2 HTMs x (shared SEU on
# both branches + 2 MFUs); HAResformer = 4 stages x 1 TE layer.
ATTENTION_BLOCKS = {"fusionreid_tiny": 2 + 2 * (2 + 2), "haresformer_tiny": 4}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name in TINY:
        torch.manual_seed(0)
        model = build(name).eval()
        out[name] = (model, export_onnx(model, folder / f"{name}.onnx", name, {"note": "test"}),
                     export_onnx(model, folder / f"{name}.nhwc.onnx", name, {}, preprocess_in_graph=True))
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_parity_with_pytorch_at_batches_1_3_17(exported, name):
    model, path, _ = exported[name]
    embedder = OnnxRuntimeEmbedder(path)
    for batch in (1, 3, 17):
        images = torch.randn(batch, 3, *model.image_size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            reference = model(images).numpy()
        got = embedder.embed_preprocessed(images.numpy())
        assert got.shape == reference.shape
        assert cosine(got, reference).min() >= 0.9999
        print(f"{name} batch {batch}: max |diff| {np.abs(got - reference).max():.2e}")


@pytest.mark.slow
@requires_openvino
@pytest.mark.parametrize("name", TINY)
def test_openvino_provider_matches_pytorch_at_batches_1_3_17(exported, name):
    """x86-64 CPU boxes: OpenVINO's runtime, pinned to f32, on the same file."""
    model, path, nhwc = exported[name]
    embedder = load_embedder(path, providers=["openvino"], threads=1)
    assert embedder.backend == "openvino:CPU-f32"
    for batch in (1, 3, 17):
        images = torch.randn(batch, 3, *model.image_size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            reference = model(images).numpy()
        got = embedder.embed_preprocessed(images.numpy())
        assert cosine(got, reference).min() >= 0.9999
        # f32 arithmetic: bfloat16, OpenVINO's default on CPUs with AVX512-BF16, is off by ~1e-3.
        assert np.abs(got - reference / np.linalg.norm(reference, axis=1, keepdims=True)).max() < 1e-5
    crops = [np.random.default_rng(i).integers(0, 256, (90 + 7 * i, 40, 3), dtype=np.uint8) for i in range(3)]
    in_graph = load_embedder(nhwc, providers=["openvino"], threads=1).embed(crops)
    assert cosine(in_graph, OnnxRuntimeEmbedder(nhwc, providers=["CPUExecutionProvider"]).embed(crops)).min() >= 0.9999


def test_missing_openvino_is_one_clear_error(exported, tmp_path):
    script = tmp_path / "no_openvino.py"
    script.write_text(f"""
import sys
sys.modules['openvino'] = None  # as on a box without hybreid[openvino]
from hybreid.errors import UserError
from hybreid.inference import load_embedder
try:
    load_embedder({str(exported["fusionreid_tiny"][1])!r}, providers=["openvino"])
except UserError as exc:
    print(exc)
""")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "the openvino package is not installed" in result.stdout
    assert "hybreid[openvino]" in result.stdout


def test_a_provider_onnx_runtime_does_not_have_is_refused_not_swapped_for_the_cpu(exported):
    """ONNX Runtime itself falls back to its CPU provider with a printed warning; a site that
    asked for another provider would then run on the CPU without knowing it."""
    with pytest.raises(UserError, match="offers .*CPUExecutionProvider.*; NoSuchExecutionProvider is not"):
        OnnxRuntimeEmbedder(exported["fusionreid_tiny"][1], providers=["NoSuchExecutionProvider"])


@pytest.mark.parametrize("name", TINY)
def test_preprocessing_in_the_graph_takes_uint8_crops(exported, name):
    model, _, nhwc = exported[name]
    embedder = load_embedder(nhwc)
    assert embedder.contract.layout == "NHWC" and embedder.contract.preprocess_in_graph
    crops = np.random.default_rng(0).integers(0, 256, (5, *model.image_size, 3), dtype=np.uint8)
    with torch.no_grad():
        reference = PreprocessingWrapper(model).eval()(torch.from_numpy(crops)).numpy()
    assert cosine(embedder.embed(list(crops)), reference).min() >= 0.9999


@pytest.mark.parametrize("name", TINY)
def test_embed_resizes_crops_of_any_size_and_normalises(exported, name):
    embedder = OnnxRuntimeEmbedder(exported[name][1])
    crops = [np.full((h, w, 3), 90, np.uint8) for h, w in ((200, 70), (57, 31), (128, 64))]
    out = embedder.embed(crops)
    assert out.shape == (3, embedder.dim) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert np.allclose(out[0], out[1], atol=1e-3)  # the same flat colour at any size


@pytest.mark.parametrize("name", TINY)
def test_graph_has_no_fixed_batch_and_explicit_attention(exported, name):
    graph = onnx.load(str(exported[name][1])).graph
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    # Exported with a batch of 2: no reshape/expand may carry a literal leading 2.
    for node in graph.node:
        if node.op_type in ("Reshape", "Expand") and node.input[1] in constants:
            shape = constants[node.input[1]].tolist()
            assert shape[0] != 2, f"{node.name} has a fixed batch in its shape {shape}"
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == ATTENTION_BLOCKS[name]
    for softmax in softmaxes:
        scores = producers[softmax.input[0]]
        assert scores.op_type == "MatMul", softmax.name
        assert any(c.op_type == "MatMul" for c in consumers[softmax.output[0]]), softmax.name
        # The 1/sqrt(d) scale is a Mul on the query side before the scores MatMul.
        query = producers[scores.input[0]]
        while query.op_type in ("Transpose", "Reshape"):
            query = producers[query.input[0]]
        assert query.op_type == "Mul", f"{softmax.name}: scale not folded onto Q ({query.op_type})"


def test_contract_and_identity_in_the_metadata(exported):
    model, path, nhwc = exported["fusionreid_tiny"]
    meta, meta_nhwc = read_onnx_contract(path).to_metadata(), read_onnx_contract(nhwc).to_metadata()
    assert meta["hybreid.model"] == "fusionreid_tiny"
    assert int(meta["hybreid.embedding_dim"]) == model.embedding_dim
    assert (meta["hybreid.input_layout"], meta["hybreid.input_dtype"]) == ("NCHW", "float32")
    assert (meta_nhwc["hybreid.input_layout"], meta_nhwc["hybreid.input_dtype"]) == ("NHWC", "uint8")
    assert meta["hybreid.weights_sha256"] == meta_nhwc["hybreid.weights_sha256"] == weights_hash(model)
    assert '"note": "test"' in meta["hybreid.config"]
    other = build("fusionreid_tiny")
    assert weights_hash(other) != weights_hash(model)


@pytest.mark.slow
def test_damaged_onnx_files_give_one_clear_error(exported, tmp_path):
    path = exported["haresformer_tiny"][1]
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(UserError, match="damaged or not an ONNX model"):
        OnnxRuntimeEmbedder(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01not onnx at all" * 100)
    with pytest.raises(UserError, match="export it again"):
        OnnxRuntimeEmbedder(garbage)
    with pytest.raises(UserError, match="does not exist"):
        OnnxRuntimeEmbedder(tmp_path / "missing.onnx")
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(UserError, match="no hybreid contract"):
        OnnxRuntimeEmbedder(foreign)


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_fp16_graph_keeps_sensitive_nodes_fp32_and_stays_faithful(exported, name, tmp_path):
    _, path, _ = exported[name]
    keep = fp32_nodes(onnx.load(str(path)))
    reasons = set(keep.values())
    assert {"LayerNorm", "Softmax", "attention scores (Q K^T)", "attention-weighted values"} <= reasons
    assert sum(r == "Softmax" for r in keep.values()) == ATTENTION_BLOCKS[name]
    fp16 = tmp_path / "model.fp16.onnx"
    convert_to_fp16(path, fp16)
    converted = onnx.load(str(fp16))
    kept_nodes = [n for n in converted.graph.node if n.name in keep]
    assert len(kept_nodes) == len(keep)
    weights16 = [i for i in converted.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(weights16) > len(converted.graph.initializer) // 2
    images = np.random.default_rng(1).standard_normal((4, 3, 128, 64)).astype(np.float32)
    reference = OnnxRuntimeEmbedder(path).embed_preprocessed(images)
    assert cosine(OnnxRuntimeEmbedder(fp16).embed_preprocessed(images), reference).min() >= 0.9995


class TestTensorRTDecisions:
    """What the TensorRT path decides, checked without a GPU."""

    device = DeviceInfo("10.3.0", "Orin", "8.7")

    def test_cache_key_changes_with_everything_that_shapes_the_plan(self):
        options = BuildOptions("fp16", 1, 8, 32)
        base = cache_key("abc", self.device, options)
        assert cache_key("abc", self.device, options) == base
        assert cache_key("abd", self.device, options) != base
        assert cache_key("abc", DeviceInfo("10.13.0", "Orin", "8.7"), options) != base
        assert cache_key("abc", DeviceInfo("10.3.0", "RTX 4090", "8.9"), options) != base
        assert cache_key("abc", self.device, BuildOptions("int8", 1, 8, 32)) != base
        assert cache_key("abc", self.device, BuildOptions("fp16", 1, 16, 32)) != base

    def test_profile_shapes_follow_the_input_layout(self):
        options = BuildOptions("fp16", 1, 8, 32)
        assert profile_shapes("NCHW", 256, 128, options) == ((1, 3, 256, 128), (8, 3, 256, 128), (32, 3, 256, 128))
        assert profile_shapes("NHWC", 256, 128, options)[2] == (32, 256, 128, 3)
        with pytest.raises(UserError, match="min <= opt <= max"):
            BuildOptions("fp16", 4, 2, 8)

    def test_engine_from_another_version_or_gpu_is_refused(self, tmp_path):
        check_compatible(self.device, self.device, "e.engine")
        with pytest.raises(UserError, match="TensorRT 10.3.0 .* rebuild it on this device"):
            check_compatible(self.device, DeviceInfo("10.13.0", "Orin", "8.7"), "e.engine")
        with pytest.raises(UserError, match="GPU Orin sm 8.7"):
            check_compatible(self.device, DeviceInfo("10.3.0", "RTX 4090", "8.9"), "e.engine")

    def test_sidecar_round_trip_and_damage(self, tmp_path):
        engine = tmp_path / "m.engine"
        engine.write_bytes(b"plan")
        options = BuildOptions("fp16")
        write_sidecar(engine, "k", "sha", self.device, options, {"hybreid.model": "x"})
        data = read_sidecar(engine)
        assert data["device"] == self.device and data["build"] == options
        engine.with_suffix(".json").write_text("{not json")
        with pytest.raises(UserError, match="damaged"):
            read_sidecar(engine)
        with pytest.raises(UserError, match="no other.json beside it"):
            read_sidecar(tmp_path / "other.engine")

    @pytest.mark.slow
    def test_precision_plan_per_tensorrt_generation(self, exported, tmp_path):
        _, path, _ = exported["haresformer_tiny"]
        fp16 = tmp_path / "h.fp16.onnx"
        convert_to_fp16(path, fp16)
        orin = {"gpu_name": "Orin", "compute_capability": "8.7"}
        jetpack6, jetpack7 = DeviceInfo("10.3.0", **orin), DeviceInfo("11.4.1", **orin)
        plan = plan_engine(path, BuildOptions("fp16"), jetpack6)
        assert plan.flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and not plan.strongly_typed
        softmax_and_norms = {n.name for n in onnx.load(str(path)).graph.node
                             if n.op_type in ("Softmax", "LayerNormalization")}
        assert softmax_and_norms and softmax_and_norms <= set(plan.fp32_layers)
        assert plan_engine(path, BuildOptions("int8"), jetpack6).calibration_cache
        typed = plan_engine(fp16, BuildOptions("fp16"), jetpack7)
        assert typed.strongly_typed and typed.flags == () and not typed.fp32_layers
        assert typed.cache_key != plan_engine(fp16, BuildOptions("fp16"), jetpack6).cache_key
        with pytest.raises(UserError, match="Q/DQ ONNX"):
            plan_engine(path, BuildOptions("int8"), jetpack7)
        with pytest.raises(UserError, match="is FP32: export it with `hybreid export onnx --fp16`"):
            plan_engine(path, BuildOptions("fp16"), jetpack7)
        with pytest.raises(UserError, match="h.fp16.onnx is not FP32"):
            plan_engine(fp16, BuildOptions("fp32"), jetpack7)
        with pytest.raises(UserError, match="does not exist"):
            plan_engine(tmp_path / "none.onnx", BuildOptions("fp16"), jetpack6)
        with pytest.raises(UserError, match="must look like 10.3.0, got 'ten'"):
            plan_engine(path, BuildOptions("fp16"), DeviceInfo("ten", **orin))

    def test_missing_tensorrt_is_one_clear_error(self, tmp_path, exported):
        engine = tmp_path / "m.engine"
        engine.write_bytes(b"plan")
        contract = read_onnx_contract(exported["fusionreid_tiny"][1]).to_metadata()
        write_sidecar(engine, "k", "sha", self.device, BuildOptions("fp16"), contract)
        with pytest.raises(UserError, match="TensorRT is not installed"):
            load_embedder(engine)
        # A site config written for the ONNX file (threads, providers) still loads an engine.
        with pytest.raises(UserError, match="TensorRT is not installed"):
            load_embedder(engine, threads=2, providers=["CPUExecutionProvider"])


class TestBundles:
    @pytest.mark.slow
    def test_create_verify_install(self, exported, tmp_path):
        _, path, _ = exported["haresformer_tiny"]
        fp16 = tmp_path / "m.fp16.onnx"
        convert_to_fp16(path, fp16)
        bundle = create_bundle(tmp_path / "b.tar.gz", path, fp16=fp16)
        manifest = verify_bundle(bundle).manifest
        assert manifest.model == "haresformer_tiny" and manifest.build.precision == "fp16"
        assert set(manifest.files) == {"onnx", "fp16"}
        folder = install_bundle(bundle, tmp_path / "device")
        assert (folder / "model.onnx").read_bytes() == path.read_bytes()
        assert OnnxRuntimeEmbedder(folder / "model.fp16.onnx").contract.model == "haresformer_tiny"

    @pytest.mark.slow
    def test_altered_and_truncated_bundles_are_refused(self, exported, tmp_path):
        _, path, _ = exported["haresformer_tiny"]
        bundle = create_bundle(tmp_path / "b.tar.gz", path)
        altered = tmp_path / "altered.tar.gz"
        with tarfile.open(bundle) as source, tarfile.open(altered, "w:gz") as target:
            for member in source.getmembers():
                data = source.extractfile(member).read()
                if member.name == "model.onnx":
                    data = data[:-10] + b"0123456789"
                member.size = len(data)
                import io

                target.addfile(member, io.BytesIO(data))
        with pytest.raises(UserError, match="does not match its hash"):
            verify_bundle(altered)
        truncated = tmp_path / "truncated.tar.gz"
        truncated.write_bytes(bundle.read_bytes()[:2000])
        with pytest.raises(UserError, match="damaged"):
            verify_bundle(truncated)


@pytest.mark.slow
def test_inference_runs_without_torch_or_timm(exported, tmp_path):
    """A camera box has no torch: block both imports in a fresh interpreter."""
    _, path, nhwc = exported["fusionreid_tiny"]
    script = tmp_path / "edge.py"
    script.write_text(WITHOUT_TORCH + f"""
import numpy as np
from hybreid.inference import load_embedder
for path in ({str(path)!r}, {str(nhwc)!r}):
    out = load_embedder(path).embed([np.zeros((100, 40, 3), np.uint8)])
    print(out.shape)
assert 'torch' not in sys.modules
""")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(1,", "1088)", "(1,", "1088)"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_engine_dry_run_explains_jetpack_6_and_7_without_a_gpu(exported, name, tmp_path):
    """`export engine --dry-run` on a CPU machine, for both paper models and both generations."""
    _, path, _ = exported[name]
    fp16 = tmp_path / f"{name}.fp16.onnx"
    convert_to_fp16(path, fp16)

    def dry_run(artifact, version):
        return subprocess.run([sys.executable, "-m", "hybreid", "export", "engine", "--artifact", str(artifact),
                               "--precision", "fp16", "--dry-run", "--tensorrt-version", version],
                              capture_output=True, text=True)

    jetpack6 = dry_run(path, "10.3.0")
    assert jetpack6.returncode == 0, jetpack6.stderr
    assert "FP16, OBEY_PRECISION_CONSTRAINTS" in jetpack6.stdout and "weakly typed" in jetpack6.stdout
    assert "LayerNorm" in jetpack6.stdout and "nothing was built" in jetpack6.stdout
    jetpack7 = dry_run(fp16, "11.4.1")
    assert jetpack7.returncode == 0, jetpack7.stderr
    assert "strongly typed" in jetpack7.stdout and "| builder flags          | none" in jetpack7.stdout
    refused = dry_run(path, "11.4.1")
    assert refused.returncode == 2 and "TensorRT 11 takes the precision from the ONNX" in refused.stderr
