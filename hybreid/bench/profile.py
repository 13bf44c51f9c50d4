"""Where an ONNX model's CPU time goes: ONNX Runtime's own per-node profile, grouped by
operator type and by matrix-multiply shape, with the rate each GEMM-like node reaches.

The roofline ratio of ``bench latency`` says how far a model is from this machine's
matrix-multiply rate; this says which block keeps it there (slow small matmuls,
memory-bound elementwise operators, layout reorders). Each shape gets its own roofline,
against the same reference as ``bench latency`` (the fastest 2048 GEMM, :mod:`.gemm`);
beside it stand torch's rate and what ONNX Runtime's own kernel reaches on that square
matmul, times weights (packed once, as in every linear layer) and times another
activation (packed on every call, as in the attention scores).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybreid.bench.gemm import ALL_KINDS, GemmRates, reference_rate
from hybreid.tables import format_table

MATMULS = ("MatMul", "FusedMatMul", "Gemm", "FusedGemm")
CONVOLUTIONS = ("Conv", "FusedConv")


def node_flops(op: str, inputs: list[list[int]], outputs: list[list[int]], weight: list[int] | None,
               attributes: dict) -> int:
    """Multiply-add FLOPs (2 per MAC) of one executed node, 0 for operators without a GEMM."""
    if op in MATMULS:
        transposed = attributes.get("transA", 0)
        inner = inputs[0][-2] if transposed else inputs[0][-1]
        return 2 * int(np.prod(outputs[0])) * int(inner)
    if op in CONVOLUTIONS and weight is not None:
        return 2 * int(np.prod(outputs[0])) * int(np.prod(weight[1:]))
    return 0


def _shapes(described: list[dict]) -> list[list[int]]:
    return [next(iter(item.values())) for item in described]


def run(onnx_path: str | Path, out: str | Path, batch: int = 8, threads: int = 2, runs: int = 3,
        top: int = 12) -> dict:
    """Profile ``runs`` timed runs (after one warm-up) of ``onnx_path`` at ``batch``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gemm = GemmRates(threads, ALL_KINDS)
    before = gemm.measure(repeats=5)
    events, graph = _profiled_runs(onnx_path, batch, threads, runs)
    after = gemm.measure(repeats=5)
    by_op, by_shape = _time_and_flops(events, graph)
    # The machine's rate drifts within minutes (other tenants): of the rates measured on both
    # sides of the runs, the higher is what this machine can reach, and no shape is flattered.
    references = {kind: max(speed, after[kind]) for kind, speed in before.items()}
    summary = _summary(onnx_path, batch, threads, runs, by_op, by_shape, references)
    _print_tables(summary, onnx_path, top)
    (out / "profile.json").write_text(json.dumps(summary, indent=2))
    _plot(summary["operators"][:top], out / "profile.png", summary)
    print(f"saved {out / 'profile.json'} and {out / 'profile.png'}")
    return summary


def _profiled_runs(onnx_path: str | Path, batch: int, threads: int, runs: int) -> tuple[list[dict], object]:
    """ONNX Runtime's profiling events of a warm-up and ``runs`` runs, and the optimised graph
    they ran (its names for the weights of fused convolutions, which the profile lacks)."""
    import onnx
    import onnxruntime as ort

    from hybreid.inference.embedder import onnxruntime_session

    with tempfile.TemporaryDirectory() as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        options.optimized_model_filepath = str(optimized)
        session = onnxruntime_session(onnx_path, ["CPUExecutionProvider"], threads, options=options)
        feed_info = session.get_inputs()[0]
        shape = [batch, *feed_info.shape[1:]]
        rng = np.random.default_rng(0)
        feed = (rng.integers(0, 256, shape).astype(np.uint8) if "uint8" in feed_info.type
                else rng.standard_normal(shape).astype(np.float32))
        for _ in tqdm(range(1 + runs), desc=f"profile batch {batch}"):
            session.run(None, {feed_info.name: feed})
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(str(optimized), load_external_data=False).graph
    return events, graph


def _time_and_flops(events: list[dict], graph) -> tuple[dict, dict]:
    """Microseconds and FLOPs by operator and by (operator, shapes, right operand), the
    warm-up run left out."""
    import onnx

    initializers = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # microseconds, FLOPs
    by_shape: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    seen: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        seen[name] += 1
        if seen[name] == 1:  # the warm-up run
            continue
        args, node = event["args"], nodes.get(name)
        op = args["op_name"]
        inputs, outputs = _shapes(args.get("input_type_shape", [])), _shapes(args.get("output_type_shape", []))
        weights = [initializers[i] for i in node.input if i in initializers] if node is not None else []
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} if node is not None else {}
        flops = node_flops(op, inputs, outputs, weights[0] if weights else None, attributes)
        by_op[op][0] += event["dur"]
        by_op[op][1] += flops
        if flops:
            right_is_weight = op in CONVOLUTIONS or (node is not None and node.input[1] in initializers)
            key = (op, tuple(inputs[0]), tuple(outputs[0]), "weights" if right_is_weight else "activations")
            by_shape[key][0] += event["dur"]
            by_shape[key][1] += flops
    return by_op, by_shape


def _rate(us: float, flops: float) -> float | None:
    return flops / us / 1e3 if flops else None  # FLOP per microsecond / 1e3 = GFLOP/s


def _summary(onnx_path, batch: int, threads: int, runs: int, by_op: dict, by_shape: dict,
             references: dict[str, float]) -> dict:
    total_us = sum(us for us, _ in by_op.values())
    reference = reference_rate(references)
    operators = [{"op": op, "share": us / total_us, "ms_per_run": us / runs / 1e3, "gflops_per_s": _rate(us, fl)}
                 for op, (us, fl) in sorted(by_op.items(), key=lambda item: -item[1][0])]
    shapes = [{"op": op, "input": list(inp), "output": list(outp), "right_operand": operand, "share": us / total_us,
               "gflops_per_s": _rate(us, fl), "roofline": _rate(us, fl) / reference}
              for (op, inp, outp, operand), (us, fl) in sorted(by_shape.items(), key=lambda item: -item[1][0])]
    gemm_us = sum(by_op[op][0] for op in MATMULS + CONVOLUTIONS if op in by_op)
    gemm_flops = sum(by_op[op][1] for op in MATMULS + CONVOLUTIONS if op in by_op)
    return {"model": str(onnx_path), "batch": batch, "threads": threads, "runs": runs,
            "ms_per_run": total_us / runs / 1e3, "gemm_share": gemm_us / total_us,
            "gemm_gflop_per_image": gemm_flops / runs / batch / 1e9, "gemm_gflops_per_s": _rate(gemm_us, gemm_flops),
            "matmul_2048_gflops_per_s": references, "reference_gflops_per_s": reference, "operators": operators,
            "shapes": shapes}


def _print_tables(summary: dict, onnx_path, top: int) -> None:
    references, operators, shapes = summary["matmul_2048_gflops_per_s"], summary["operators"], summary["shapes"]
    print(format_table(["operator", "time %", "ms / run", "GFLOP/s"],
                       [[o["op"], 100 * o["share"], o["ms_per_run"], o["gflops_per_s"] or ""]
                        for o in operators[:top]], floatfmt=".1f",
                       title=f"{Path(onnx_path).name}, batch {summary['batch']}, {summary['threads']} threads: "
                             f"{summary['ms_per_run']:.0f} ms of operator time per run, "
                             f"{100 * summary['gemm_share']:.0f} % in matmuls and convolutions "
                             f"at {summary['gemm_gflops_per_s'] or 0:.0f} GFLOP/s"))
    print(format_table(["operator", "input", "output", "times", "time %", "GFLOP/s", "roofline"],
                       [[s["op"], "x".join(map(str, s["input"])), "x".join(map(str, s["output"])),
                         s["right_operand"], 100 * s["share"], s["gflops_per_s"], s["roofline"]]
                        for s in shapes[:top]], floatfmt=("", "", "", "", ".1f", ".1f", ".2f"),
                       title="slowest matrix multiplies and convolutions (share of all operator time); "
                             f"2048 matmul GFLOP/s: torch {references['torch']:.0f}, ONNX Runtime "
                             f"{references['onnxruntime_weights']:.0f} times weights, "
                             f"{references['onnxruntime_activations']:.0f} times activations; the roofline "
                             f"against the fastest reference ({summary['reference_gflops_per_s']:.0f})"))


def _plot(operators: list[dict], path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(operators) + 1.2))
    names = [o["op"] for o in operators][::-1]
    shares = [100 * o["share"] for o in operators][::-1]
    bars = ax.barh(names, shares, color=["tab:blue" if o["gflops_per_s"] else "tab:orange"
                                         for o in operators][::-1])
    for bar, operator in zip(bars, operators[::-1], strict=True):
        if operator["gflops_per_s"]:
            ax.annotate(f" {operator['gflops_per_s']:.0f} GFLOP/s", (bar.get_width(), bar.get_y()), fontsize=8)
    ax.set(xlabel="share of operator time (%)",
           title=f"{Path(summary['model']).name}, batch {summary['batch']}: "
                 f"{summary['ms_per_run']:.0f} ms per run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
