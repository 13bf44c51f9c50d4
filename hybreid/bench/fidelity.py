"""Export fidelity: ONNX FP32 parity with PyTorch, and what FP16 costs, without a GPU.

For each model: one dynamic-batch ONNX file checked against PyTorch eval output at
batches 1, 3 and 17 (cosine, max |diff|); the FP16 ONNX with the sensitive nodes kept
FP32, an all-FP16 conversion for comparison, and a PyTorch half-precision run, each as
cosine to FP32 on the same images. A GPU engine built from the FP16 ONNX computes
what this FP16 graph computes, up to kernel rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hybreid.export.onnx_export import export_onnx
from hybreid.export.precision import convert_to_fp16
from hybreid.inference.embedder import OnnxRuntimeEmbedder
from hybreid.models import build
from hybreid.tables import format_table


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def run(models: list[str], out: str | Path, fp16_batch: int = 4, seed: int = 0) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in models:
        torch.manual_seed(seed)
        model = build(name).eval()
        onnx_path = export_onnx(model, out / f"{name}.onnx", name, {})
        embedder = OnnxRuntimeEmbedder(onnx_path, providers=["CPUExecutionProvider"])
        record: dict = {"model": name, "parity": {}}
        for batch in (1, 3, 17):
            images = torch.randn(batch, 3, *model.image_size, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                reference = model(images).numpy()
            got = embedder.embed_preprocessed(images.numpy())
            record["parity"][batch] = {"min_cosine": float(_cosine(got, reference).min()),
                                       "max_abs_diff": float(np.abs(got - reference).max())}
        images = torch.randn(fp16_batch, 3, *model.image_size, generator=torch.Generator().manual_seed(99))
        reference = embedder.embed_preprocessed(images.numpy())
        for variant, keep in (("fp16_kept_fp32", True), ("fp16_all", False)):
            path = out / f"{name}.{variant}.onnx"
            kept = convert_to_fp16(onnx_path, path, keep_fp32=keep)
            got = OnnxRuntimeEmbedder(path, providers=["CPUExecutionProvider"]).embed_preprocessed(images.numpy())
            cos = _cosine(got, reference)
            record[variant] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                               "nodes_kept_fp32": len(kept)}
        with torch.no_grad():
            half = model.half()(images.half()).float().numpy()
        model.float()
        cos = _cosine(half, reference)
        record["torch_half"] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
        results.append(record)
    rows = []
    for r in results:
        parity = r["parity"]
        rows.append([r["model"], min(p["min_cosine"] for p in parity.values()),
                     max(p["max_abs_diff"] for p in parity.values()), r["fp16_kept_fp32"]["min_cosine"],
                     r["fp16_all"]["min_cosine"], r["torch_half"]["min_cosine"]])
    print(format_table(["model", "ONNX FP32 min cos (b 1/3/17)", "max |diff|", "FP16 kept-FP32 min cos",
                        "all-FP16 min cos", "torch half min cos"], rows, floatfmt=".6f"))
    (out / "fidelity.json").write_text(json.dumps(results, indent=2))
    print(f"saved {out / 'fidelity.json'}")
    return results
