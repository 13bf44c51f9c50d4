"""``hybreid calibrate int8``: quantise with each method and report what INT8 costs.

Per method: mean and worst cosine of INT8 to FP32 embeddings, mAP and Rank-1 of FP32 and
INT8 on an evaluation split, ONNX Runtime CPU throughput FP32 vs INT8, the nodes left in
float, and which precision the boxes should run (INT8 only where it is clearly faster
than FP32 on the kind of CPU it is made for). The Q/DQ model is also run with ONNX
Runtime's Q/DQ fusion disabled (exact fake-quantisation, the numerics a GPU engine
computes), so the accuracy figure holds beyond this CPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybreid.calibration.int8 import (
    QuantizationConfig,
    activation_scales,
    quantize,
    write_calibration_cache,
)
from hybreid.contract import preprocess, read_rgb
from hybreid.data.datasets import ReIDDataset, load_dataset
from hybreid.errors import UserError
from hybreid.eval.protocols import score
from hybreid.inference.embedder import OnnxRuntimeEmbedder
from hybreid.inference.loader import load_embedder
from hybreid.machine import CPU_INT8_FORMATS
from hybreid.tables import format_table

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def calibration_crops(source: str, count: int = 256, seed: int = 0) -> list[np.ndarray]:
    """RGB crops from ``synthetic``, ``folder:PATH`` (e.g. crops the cameras captured) or
    ``dataset:NAME:ROOT`` (its training split)."""
    rng = np.random.default_rng(seed)
    if source == "synthetic":
        from hybreid.synthetic.people import CameraSet, make_identity, render_crop

        cameras = CameraSet.make(["visible", "visible", "infrared"], seed).cameras
        return [render_crop(make_identity(int(rng.integers(1 << 20)), seed), cameras[i % 3], rng) for i in range(count)]
    if source.startswith("folder:"):
        folder = Path(source.split(":", 1)[1])
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise UserError(f"calibration folder {folder} holds no images")
    elif source.startswith("dataset:"):
        _, name, root = source.split(":", 2)
        paths = [s.path for s in load_dataset(name, root).train]
    else:
        raise UserError(f"calibration source must be synthetic, folder:PATH or dataset:NAME:ROOT, got {source!r}")
    chosen = rng.choice(len(paths), size=min(count, len(paths)), replace=False)
    return [read_rgb(paths[i]) for i in sorted(chosen)]


def embed_images(embedder: OnnxRuntimeEmbedder, paths: list[str], batch: int = 32) -> np.ndarray:
    out = []
    for i in tqdm(range(0, len(paths), batch), desc="embedding images", unit="batch", leave=False,
                  disable=len(paths) <= batch):
        out.append(embedder.embed([read_rgb(p) for p in paths[i : i + batch]]))
    return np.concatenate(out)


# INT8 is worth its accuracy cost only where it is clearly faster: a gain under this is within
# what two cores shared with other work spread between runs of one model (up to 25 % here).
INT8_MIN_SPEEDUP = 1.1


def _interleaved_throughputs(embedders: list, batch: np.ndarray, repeats: int) -> list[float]:
    """Images/s of each embedder, timed in turn round by round so that a machine busier at
    one moment than another weighs on all of them alike (medians of ``repeats`` rounds)."""
    for embedder in embedders:
        embedder.run(batch)
    times: list[list[float]] = [[] for _ in embedders]
    for _ in range(repeats):
        for embedder, spent in zip(embedders, times, strict=True):
            start = time.perf_counter()
            embedder.run(batch)
            spent.append(time.perf_counter() - start)
    return [len(batch) / float(np.median(spent)) for spent in times]


def recommendation(report: dict) -> dict:
    """Which precision the boxes should run: INT8 only where it was measured clearly faster than
    FP32 on the kind of CPU it is made for. A TensorRT copy's CPU speed says nothing of a GPU."""
    runs = [run for run in report["runs"] if "failed" not in run and not run.get("comparison")]
    if not runs:
        return {"precision": "fp32", "why": "no INT8 copy was made"}
    best = max(runs, key=lambda run: run["speedup"])
    cpu = report.get("cpu")
    if cpu is None:
        return {"precision": "int8", "path": best["path"],
                "why": "the tensorrt form's speed is the GPU's: measure it with `hybreid bench latency` on the "
                       "device"}
    if CPU_INT8_FORMATS[cpu["measured_on"]] != CPU_INT8_FORMATS[cpu["isa"]]:
        return {"precision": "int8", "path": best["path"], "speedup": best["speedup"],
                "why": f"made for {cpu['isa']} but measured on {cpu['measured_on']}: its speed-up is not known "
                       "until it is measured on such a box"}
    if best["speedup"] < INT8_MIN_SPEEDUP:
        return {"precision": "fp32", "speedup": best["speedup"],
                "why": f"INT8 runs at {best['speedup']:.2f}x FP32 on this {cpu['measured_on']} CPU (below "
                       f"{INT8_MIN_SPEEDUP}x): its accuracy cost buys no speed here; run the FP32 model"}
    return {"precision": "int8", "path": best["path"], "speedup": best["speedup"],
            "why": f"INT8 runs at {best['speedup']:.2f}x FP32 on this {cpu['measured_on']} CPU"}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)  # both L2-normalised


def run_int8(onnx_path: str | Path, out_dir: str | Path, target: str = "tensorrt",
             methods: tuple[str, ...] = ("minmax", "entropy", "percentile"), source: str = "synthetic",
             count: int = 256, eval_dataset: ReIDDataset | None = None, compare_attention: bool = True,
             throughput_batch: int = 8, repeats: int = 5, threads: int | None = None,
             placement: dict | None = None, cpu_isa: str = "") -> dict:
    """Quantise ``onnx_path`` with each method and report what INT8 costs.

    ``placement``: extra :class:`QuantizationConfig` fields (``exclude_nodes``,
    ``quantize_concat_inputs``, ``quantize_output_layers``, ``quantize_token_writers``) for
    every run. ``cpu_isa``: the instruction set the ``cpu`` target is made for (default:
    this CPU's). The ``openvino`` target's copies are measured on OpenVINO's runtime.
    """
    from hybreid.machine import cpu_features
    from hybreid.machine import cpu_isa as this_cpu_isa

    resolved = QuantizationConfig(target=target, cpu_isa=cpu_isa)  # the cpu target's instruction set and form
    cpu_isa, cpu_format = resolved.cpu_isa, resolved.cpu_format
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    fp32 = OnnxRuntimeEmbedder(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the model is known to load
    calibration = preprocess(calibration_crops(source, count), fp32.contract)
    if eval_dataset is not None:
        paths = [s.path for s in eval_dataset.query] + [s.path for s in eval_dataset.gallery]
        split = len(eval_dataset.query)
    else:
        paths, split = [], 0
    probe = preprocess(calibration_crops("synthetic", 64, seed=12345), fp32.contract)
    reference_probe = fp32.embed_preprocessed(probe)
    reference = embed_images(fp32, paths) if paths else None
    speed_batch = probe[:throughput_batch]
    report: dict = {"model": fp32.contract.identity, "target": target, "calibration_source": source,
                    "cpu": {"isa": cpu_isa, "features": sorted(cpu_features()), "measured_on": this_cpu_isa(),
                            **(dataclasses.asdict(cpu_format) if cpu_format else {})} if cpu_isa else None,
                    "calibration_images": len(calibration), "fp32": {}}
    if reference is not None:
        report["fp32"].update(_metrics(eval_dataset, reference, split))
    runs = [(method, False) for method in methods]
    if compare_attention and not resolved.attention_quantized:
        runs.append((methods[0], True))
    report["runs"] = []
    measure = _Measure(fp32, probe, reference_probe, paths, reference, eval_dataset, split, speed_batch, repeats,
                       threads)
    for method, attention in tqdm(runs, desc="calibrating and measuring INT8", unit="model"):
        config = QuantizationConfig(target=target, method=method, quantize_attention=attention, cpu_isa=cpu_isa,
                                    **(placement or {}))
        suffix = f"{method}{'-attention' if attention else ''}"
        try:
            result = quantize(onnx_path, out_dir / f"{onnx_path.stem}.int8.{target}.{suffix}.onnx", calibration,
                              config, cache_dir=out_dir / "calibration-cache")
        except UserError as exc:  # one method that cannot calibrate this model; the report holds the others
            if len(runs) == 1:
                raise
            tqdm.write(f"skipped: {exc}")
            report["runs"].append({"method": method, "quantize_attention": attention, "comparison": attention,
                                   "failed": str(exc)})
            continue
        report["runs"].append({"method": method, "quantize_attention": config.attention_quantized,
                               "comparison": attention, **measure.copy(result, target)})
    report["recommendation"] = recommendation(report)
    (out_dir / "quantization_report.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"{'run INT8' if report['recommendation']['precision'] == 'int8' else 'keep FP32'}: "
          f"{report['recommendation']['why']}")
    print(f"saved {out_dir / 'quantization_report.json'}")
    return report


@dataclasses.dataclass
class _Measure:
    """What every INT8 copy is measured against: the FP32 model's speed and embeddings."""

    fp32: OnnxRuntimeEmbedder
    probe: np.ndarray
    reference_probe: np.ndarray
    paths: list[str]
    reference: np.ndarray | None
    dataset: ReIDDataset | None
    split: int
    speed_batch: np.ndarray
    repeats: int
    threads: int | None

    def copy(self, result, target: str) -> dict:
        """One INT8 copy's speed against FP32 (interleaved), its cosines to FP32 as it runs
        (fused) and exactly (Q/DQ fusion off), its accuracy where a dataset is given, and for
        TensorRT its calibration cache."""
        int8 = load_embedder(result.path, self.threads,
                             ["openvino" if target == "openvino" else "CPUExecutionProvider"])
        exact = OnnxRuntimeEmbedder(result.path, providers=["CPUExecutionProvider"], threads=self.threads,
                                    disable_qdq_fusion=True)
        fp32_rate, int8_rate = _interleaved_throughputs([self.fp32, int8], self.speed_batch, self.repeats)
        row: dict = {"path": str(result.path), "unquantized_nodes": result.unquantized, "images_per_s": int8_rate,
                     "fp32_images_per_s": fp32_rate, "speedup": int8_rate / fp32_rate}
        for label, embedder in (("fused", int8), ("fake_quant", exact)):
            cos = _cosines(embedder.embed_preprocessed(self.probe), self.reference_probe)
            row[f"{label}_cosine_mean"], row[f"{label}_cosine_worst"] = float(cos.mean()), float(cos.min())
            if self.reference is not None:
                row[label] = _metrics(self.dataset, embed_images(embedder, self.paths), self.split)
        if target == "tensorrt":
            import onnx

            scales = activation_scales(onnx.load(str(result.path)))
            row["calibration_cache"] = str(write_calibration_cache(scales, result.path.with_suffix(".cache")))
        return row


def _metrics(dataset: ReIDDataset, feats: np.ndarray, split: int) -> dict:
    result = score(dataset, feats[:split], feats[split:], trials=3)
    return {"mAP": result["mAP"], "rank1": result["rank1"]}


def format_report(report: dict) -> str:
    accuracy = "fake_quant" if report["target"] == "tensorrt" else "fused"
    header = ["method", "attention quantised", "cos mean", "cos worst", "fake-quant cos worst", "mAP FP32",
              "mAP INT8", "R1 FP32", "R1 INT8", "img/s FP32", "img/s INT8", "speed-up", "float nodes"]
    rows = []
    for run in report["runs"]:
        metrics, base = run.get(accuracy, {}), report["fp32"]
        if "failed" in run:
            rows.append([f"{run['method']} (failed, see the JSON)", "yes" if run["quantize_attention"] else "no",
                         *[float("nan")] * (len(header) - 2)])
            continue
        rows.append([run["method"], "yes" if run["quantize_attention"] else "no", run["fused_cosine_mean"],
                     run["fused_cosine_worst"], run["fake_quant_cosine_worst"],
                     100 * base.get("mAP", float("nan")), 100 * metrics.get("mAP", float("nan")),
                     100 * base.get("rank1", float("nan")), 100 * metrics.get("rank1", float("nan")),
                     run["fp32_images_per_s"], run["images_per_s"], run["speedup"], len(run["unquantized_nodes"])])
    cpu = report.get("cpu")
    form = (f" for {cpu['isa']}: { {'uint8': 'U8', 'int8': 'S8'}[cpu['activations']]}S8"
            f"{' with reduce_range' if cpu['reduce_range'] else ''}, measured on {cpu['measured_on']}"
            if cpu else "")
    title = (f"INT8 ({report['target']} target{form}) of {report['model']}, calibrated on "
             f"{report['calibration_images']} {report['calibration_source']} crops; accuracy measured with "
             f"{accuracy.replace('_', ' ')} numerics")
    return format_table(header, rows, title=title, floatfmt=".4f")
