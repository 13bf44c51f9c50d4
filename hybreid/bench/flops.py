"""Parameters and FLOPs, counted the papers' way and in full, with a per-module breakdown.

Two counts, because they answer different questions:

- **paper count** -- thop on the eval-mode model, multiply-accumulates per image, as
  the FusionReID authors counted (their ``flops_para.py``). thop sees only registered
  leaf modules that run: classifiers, unused heads, position/class/camera embeddings,
  GeM's ``p`` and the attention matmuls are left out. This is the count comparable to
  the papers' tables ("GFLOPs" there are GMACs).
- **full count** -- every parameter of the model, and fvcore's MACs with the attention
  matmuls included (fused attention switched off so the matmuls are visible): the
  real cost a device pays.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from hybreid.models import REGISTRY, build, model_config

# FusionReID Table III: one HTM layer of each structure (params M, GFLOPs), HTM only.
HTM_TABLE_III: dict[str, tuple[float, float]] = {
    "seu_mfu": (21.3, 2.9),
    "seu": (7.1, 2.5),
    "mfu_seu": (21.3, 2.9),
    "mfu": (14.2, 0.5),
}

# Which submodules make up each row of the breakdown, per model family.
MODULE_GROUPS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "fusionreid": [
        ("CNN backbone (DFE)", ("cnn",)),
        ("ViT (DFE)", ("vit",)),
        ("LRU + GeM (DMF)", ("dmf.lru_cnn", "dmf.lru_vit", "dmf.pool_cnn", "dmf.pool_vit")),
        ("HTM (DMF)", ("dmf.htms",)),
        ("heads (BNNeck + classifiers)", ("heads",)),
    ],
    "haresformer": [
        ("CNN backbone (RE)", ("re",)),
        ("TE", ("te",)),
        ("CFFM", ("cffm",)),
        ("HGAE", ("hgae",)),
        ("heads (pooling, BNNecks, classifier)", ("pool", "neck")),
    ],
}


@dataclass
class ComplexityRow:
    module: str
    paper_params_m: float
    paper_gmacs: float
    all_params_m: float
    full_gmacs: float


@dataclass
class ComplexityReport:
    model: str
    image_size: tuple[int, int]
    paper_params_m: float
    paper_gmacs: float
    all_params_m: float
    full_gmacs: float
    rows: list[ComplexityRow] = field(default_factory=list)
    reference: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _in_group(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _thop_counts(model: nn.Module, images: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per leaf module that ran: (MACs, params), thop's rules (plus timm's LayerNorm)."""
    import timm.layers
    from thop import profile
    from thop.vision.basic_hooks import count_normalization

    # timm's LayerNorm subclasses nn.LayerNorm, but thop matches exact types; the
    # authors' ViT used nn.LayerNorm, which thop counts.
    custom_ops = {timm.layers.LayerNorm: count_normalization}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # thop's PReLU rule calls one of its own deprecated helpers
        _, _, tree = profile(model, inputs=(images,), custom_ops=custom_ops, verbose=False, ret_layer_info=True)
    flat: dict[str, tuple[float, float]] = {}

    def walk(prefix: str, node: dict) -> None:
        for child, (macs, params, children) in node.items():
            name = f"{prefix}.{child}" if prefix else child
            if children:
                walk(name, children)
            else:
                flat[name] = (macs, params)

    walk("", tree)
    return flat


def full_gmacs(model: nn.Module, image_size: tuple[int, int]) -> float:
    """Every multiply-accumulate of one image through ``model``, attention matmuls included."""
    return _fvcore_counts(model.eval(), torch.randn(1, 3, *image_size))[""] / 1e9


def _fvcore_counts(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """MACs per module with every matmul counted (attention included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import touches the deprecated torch.jit.script
        from fvcore.nn import FlopCountAnalysis

    fused = {}
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            fused[module] = module.fused_attn
            module.fused_attn = False
    try:
        analysis = FlopCountAnalysis(model, images)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_module = dict(analysis.by_module())
    finally:
        for module, value in fused.items():
            module.fused_attn = value
    return by_module


def count_complexity(model: nn.Module, family: str, image_size: tuple[int, int], name: str = "") -> ComplexityReport:
    """Count one eval-mode model on one image of ``image_size``."""
    model = model.eval()
    images = torch.randn(1, 3, *image_size)
    with torch.no_grad():
        leaf_counts = _thop_counts(model, images)
        fv = _fvcore_counts(model, images)
    all_params = {n: p.numel() for n, p in model.named_parameters()}

    rows = []
    for label, prefixes in MODULE_GROUPS[family]:
        macs = sum(m for n, (m, _) in leaf_counts.items() if _in_group(n, prefixes))
        params = sum(p for n, (_, p) in leaf_counts.items() if _in_group(n, prefixes))
        rows.append(ComplexityRow(
            module=label,
            paper_params_m=params / 1e6,
            paper_gmacs=macs / 1e9,
            all_params_m=sum(c for n, c in all_params.items() if _in_group(n, prefixes)) / 1e6,
            full_gmacs=sum(fv.get(p, 0) for p in prefixes) / 1e9,
        ))
    report = ComplexityReport(
        model=name,
        image_size=tuple(image_size),
        paper_params_m=sum(p for _, p in leaf_counts.values()) / 1e6,
        paper_gmacs=sum(m for m, _ in leaf_counts.values()) / 1e9,
        all_params_m=sum(all_params.values()) / 1e6,
        full_gmacs=fv[""] / 1e9,
        rows=rows,
    )
    paper = REGISTRY[name].paper if name in REGISTRY else None
    if paper is not None:
        params, gflops, source = paper.params_m, paper.gflops, paper.source
        report.reference = {"params_m": params, "gflops": gflops, "source": source,
                            "params_deviation": report.paper_params_m / params - 1,
                            "gmacs_deviation": report.paper_gmacs / gflops - 1}
    return report


def count_model(name: str, **overrides) -> ComplexityReport:
    """Count a registry configuration (optionally overridden)."""
    config = model_config(name, **overrides)
    return count_complexity(build(name, **overrides), config["family"], config["image_size"], name)


def count_htm_structures(name: str = "fusionreid_vitb16_s12") -> list[dict]:
    """FusionReID Table III: one HTM layer of each structure, HTM part only."""
    results = []
    for structure, (ref_params, ref_gflops) in HTM_TABLE_III.items():
        report = count_model(name, structure=structure, depth=1)
        htm = next(row for row in report.rows if row.module.startswith("HTM"))
        results.append({
            "structure": structure,
            "paper_params_m": htm.paper_params_m,
            "paper_gmacs": htm.paper_gmacs,
            "full_gmacs": htm.full_gmacs,
            "reference_params_m": ref_params,
            "reference_gflops": ref_gflops,
            "params_deviation": htm.paper_params_m / ref_params - 1,
            "gmacs_deviation": htm.paper_gmacs / ref_gflops - 1,
        })
    return results


def format_report(report: ComplexityReport) -> str:
    from hybreid.tables import format_table

    header = ["module", "params (M), paper count", "GMACs, paper count", "params (M), all", "GMACs, full"]
    body = [[r.module, r.paper_params_m, r.paper_gmacs, r.all_params_m, r.full_gmacs] for r in report.rows]
    body.append(["total", report.paper_params_m, report.paper_gmacs, report.all_params_m, report.full_gmacs])
    title = f"{report.model} at {report.image_size[0]}x{report.image_size[1]}"
    text = format_table(header, body, title=title)
    if report.reference:
        ref = report.reference
        text += (
            f"\npaper ({ref['source']}): {ref['params_m']} M params, {ref['gflops']} GFLOPs -> "
            f"params {ref['params_deviation']:+.2%}, MACs {ref['gmacs_deviation']:+.2%}"
        )
    return text


def format_htm_table(rows: list[dict]) -> str:
    from hybreid.tables import format_table

    header = ["HTM structure", "params (M)", "paper", "dev", "GMACs", "paper", "dev", "GMACs, full"]
    body = [[r["structure"], r["paper_params_m"], r["reference_params_m"], f"{r['params_deviation']:+.2%}",
             r["paper_gmacs"], r["reference_gflops"], f"{r['gmacs_deviation']:+.2%}", r["full_gmacs"]]
            for r in rows]
    return format_table(header, body, title="FusionReID Table III: one HTM layer (HTM part only)")


def run(names: list[str], out: str | Path, table3: bool = False, overrides: dict | None = None) -> Path:
    """Count each model, print the reports (and Table III), save ``out/flops.json``."""
    from hybreid.tables import save_json

    payload: dict = {"models": []}
    for name in names:
        report = count_model(name, **(overrides or {}))
        print(format_report(report), end="\n\n")
        payload["models"].append(report.to_dict())
    if table3:
        htm_rows = count_htm_structures()
        print(format_htm_table(htm_rows), end="\n\n")
        payload["htm_table_iii"] = htm_rows
    by_name = {m["model"]: m for m in payload["models"]}
    if "haresformer_h1l1" in by_name and "haresformer_h1l2" in by_name:
        one, two = by_name["haresformer_h1l1"], by_name["haresformer_h1l2"]
        paper_one, paper_two = REGISTRY["haresformer_h1l1"].paper, REGISTRY["haresformer_h1l2"].paper
        increase = {"params_m": two["paper_params_m"] - one["paper_params_m"],
                    "gmacs": two["paper_gmacs"] - one["paper_gmacs"],
                    "reference_params_m": round(paper_two.params_m - paper_one.params_m, 2),
                    "reference_gflops": round(paper_two.gflops - paper_one.gflops, 2)}
        payload["haresformer_l1_to_l2"] = increase
        print(f"HAResformer L=1 -> 2: +{increase['params_m']:.2f} M params, +{increase['gmacs']:.2f} GMACs "
              f"(paper: +{increase['reference_params_m']} M, +{increase['reference_gflops']} G)")
    path = save_json(payload, Path(out) / "flops.json")
    print(f"saved {path}")
    return path
