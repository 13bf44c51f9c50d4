"""Latency benchmark: backends x precisions x batch sizes, against this machine's roofline.

For each model the benchmark exports the ONNX files it needs, then runs every
(backend, batch) cell in its own subprocess, so each cell's peak memory is its own:
torch eager, ONNX Runtime FP32, ONNX Runtime INT8 (a Q/DQ model from ``hybreid calibrate
int8``, when given), each of those two also on OpenVINO's runtime (when asked for: its
float ops in f32, and in bfloat16 where the CPU has AVX512-BF16 or AMX), and TensorRT
engines (when given). Every exported-model cell also embeds a fixed batch of synthetic
crops, and its cosine to ONNX Runtime FP32 is printed beside its speed.

The roofline ratio is the model's FLOPs (every FLOP, attention matmuls included: 2 x
fvcore's MACs) times images/s, divided by the float32 matrix-multiply rate of this
machine (the fastest of torch's and ONNX Runtime's 2048x2048 GEMMs, :mod:`.gemm`).
Each timed run is paired with the rates measured right before and right after it (their
mean), and a cell's ratio is the median over its runs, so a shared machine that speeds
up or slows down moves both sides of the ratio alike.
With ``references`` (timm names;
``--reference`` gives :data:`REFERENCE_MODELS`) plain timm models run beside them at
224x224, so a model's ratio can be read against what a plain CNN and a plain ViT reach
on the same machine in the same run.
Results: a table, JSON and a PNG.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybreid.bench.gemm import INT8_KINDS, REFERENCE_KINDS, GemmRates, reference_rate
from hybreid.contract import read_onnx_contract
from hybreid.machine import theoretical_peak
from hybreid.tables import format_table


@dataclass
class Cell:
    model: str
    backend: str
    batch: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    peak_rss_mib: float
    gflops_per_image: float
    matmul_gflops: float  # the machine's float32 GEMM rate around this cell's runs (median)
    roofline: float  # median over the cell's runs of each run's ratio (an INT8 cell: to the int8 rate)
    cosine_mean: float | None = None  # to ONNX Runtime FP32, on the same synthetic crops
    cosine_worst: float | None = None
    int8_matmul_gops: float | None = None  # an INT8 cell's reference: the int8 GEMM rate around its runs


READY = "ready"  # a cell's line to the parent: idle now, measure the GEMM rate


def _wait_for_parent() -> None:
    """Tell the parent this cell is idle, and wait while it measures the GEMM rate."""
    print(READY, flush=True)
    sys.stdin.readline()


def _time(fn, warmup: int, repeats: int) -> list[float]:
    """Time ``repeats`` runs of ``fn``, the parent measuring the GEMM rate before each and after the last."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _wait_for_parent()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    _wait_for_parent()
    return times


REFERENCE_MODELS = ("resnet50", "vit_base_patch16_224")  # a plain CNN and a plain ViT
REFERENCE_PREFIX = "timm/"  # how reference models are named in cells and the JSON
REFERENCE_SIZE = (224, 224)
CPU = ["CPUExecutionProvider"]
FIDELITY_CROPS = 8  # synthetic crops every exported-model cell embeds for its cosine to FP32


def _build_for_timing(spec: dict):
    if spec["model"].startswith(REFERENCE_PREFIX):
        import timm

        return timm.create_model(spec["model"][len(REFERENCE_PREFIX):], pretrained=False).eval(), REFERENCE_SIZE
    from hybreid.models import build

    model = build(spec["model"], **spec.get("options", {})).eval()
    return model, model.image_size


def measure_cell(spec: dict) -> dict:
    """One (backend, batch) measurement; runs inside a fresh subprocess."""
    threads, batch = spec["threads"], spec["batch"]
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if spec["backend"] == "torch":
        import torch

        torch.set_num_threads(threads)
        model, size = _build_for_timing(spec)
        images = torch.randn(batch, 3, *size)

        def run():
            with torch.inference_mode():
                model(images)
    elif spec["model"].startswith(REFERENCE_PREFIX):
        from hybreid.inference.embedder import onnxruntime_session

        session = onnxruntime_session(spec["artifact"], spec["providers"], threads)
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
            (batch, 3, *REFERENCE_SIZE)).astype(np.float32)}

        def run():
            session.run(None, feed)
    else:  # an exported model: an ONNX file, or a TensorRT engine built from one
        from hybreid.inference import load_embedder

        embedder = load_embedder(spec["artifact"], threads=threads, providers=spec["providers"])
        contract = embedder.contract
        rng = np.random.default_rng(0)
        images = (rng.integers(0, 256, (batch, contract.height, contract.width, 3), dtype=np.uint8)
                  if contract.preprocess_in_graph
                  else rng.standard_normal((batch, 3, contract.height, contract.width)).astype(np.float32))

        def run():
            embedder.run(images)

    times = _time(run, spec["warmup"], spec["repeats"])
    result = {"times": times, "peak_rss_mib": peak_rss_mib()}
    if spec["backend"] == "onnxruntime" and not spec["model"].startswith(REFERENCE_PREFIX):
        result["embeddings"] = _fidelity_embeddings(embedder).tolist()
    return result


def _fidelity_embeddings(embedder) -> np.ndarray:
    """The embeddings of a fixed batch of synthetic crops: calibration-like images, where an
    INT8 copy is as faithful as on real ones (random noise understates it)."""
    from hybreid.calibration.report import calibration_crops

    return embedder.embed(calibration_crops("synthetic", FIDELITY_CROPS, seed=12345))


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss
    over ``exec`` from the forking parent, VmHWM starts afresh with the new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run_in_subprocess(spec: dict, gemm: GemmRates) -> dict:
    """Run one cell in a fresh process, measuring this machine's GEMM rate before each
    timed run and after the last, while the cell waits.

    A shared machine's speed drifts by tens of percent within seconds; pairing every run
    with the rates measured right around it keeps both sides of the roofline ratio in
    the same state of the machine. Measuring in the parent keeps the GEMM library out of
    the cell's memory.
    """
    code = "import json,sys; from hybreid.bench.latency import measure_cell; " \
           "print(json.dumps(measure_cell(json.loads(sys.argv[1]))))"
    # stderr goes to a file: a full pipe nobody reads would block the cell mid-run.
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=stderr, text=True)
        rates, last = [], ""
        for line in child.stdout:
            last = line.strip()
            if last == READY:
                rates.append(gemm.measure())
                child.stdin.write("go\n")
                child.stdin.flush()
        if child.wait() != 0:
            stderr.seek(0)
            raise RuntimeError(f"latency cell {spec['backend']} batch {spec['batch']} failed:\n"
                               f"{stderr.read()[-2000:]}")
    return {**json.loads(last), "rates": rates}


def _int8_form(contract) -> str:
    """``tensorrt``, ``openvino``, or the instruction set a ``cpu`` copy was made for."""
    return contract.cpu_isa or contract.precision.split("-")[1]


def _export_reference(model, path: Path) -> None:
    """A plain timm model as ONNX with a dynamic batch (opset 17, as our exports)."""
    import torch

    torch.onnx.export(model, torch.randn(1, 3, *REFERENCE_SIZE), str(path), input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}}, opset_version=17,
                      dynamo=False)


def run(models: list[str], batches: list[int], out: str | Path, threads: int = 2, repeats: int = 10,
        warmup: int = 2, int8: dict[str, list[str]] | None = None, options: dict | None = None,
        rounds: int = 1, references: tuple[str, ...] = (), openvino: bool = False,
        engines: dict[str, str] | None = None) -> list[Cell]:
    """Benchmark ``models`` (registry names, untrained weights: speed does not depend on them).

    ``openvino`` adds ONNX Runtime with the OpenVINO execution provider (FP32, and INT8
    for the ``int8`` models) beside its default CPU provider; ``engines`` maps a model to
    a TensorRT engine built from its ONNX file (``hybreid export engine``), timed on the GPU.

    With ``rounds > 1`` every cell is measured in each round, cells interleaved: slow
    drifts of a shared machine then hit every backend alike instead of whichever cell
    ran during them.
    """
    if engines:
        from hybreid.inference.tensorrt_backend import import_tensorrt

        import_tensorrt()  # one clear error before any cell runs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan_cells(models, references, out, options or {}, int8 or {}, engines or {},
                       _openvino_providers() if openvino else [])
    timing = {"options": options or {}, "threads": threads, "repeats": repeats, "warmup": warmup}
    specs = [(backend, {"backend": "torch" if backend == "torch" else "onnxruntime", "artifact": artifact,
                        "providers": providers, "model": name, "batch": batch, **timing,
                        "int8": "-int8" in backend})  # its roofline: against int8 GEMMs
             for name, backend, artifact, providers in plan.backends for batch in batches]
    measured = _measure(specs, GemmRates(threads, REFERENCE_KINDS + (INT8_KINDS if int8 else ())), rounds)
    cells = _cells(specs, measured, plan)
    _report(cells, measured, threads, rounds, out)
    return cells


@dataclass
class _Plan:
    backends: list[tuple[str, str, str | None, list[str] | None]]  # (model, backend, artifact, providers)
    gflops: dict[str, float]
    foreign: set[str]  # INT8 copies of other weights than the FP32 file timed beside them


def _openvino_providers() -> list[str]:
    from hybreid.inference.openvino_backend import PRECISIONS, openvino_unavailable_reason

    available = []
    for provider in PRECISIONS:
        missing = openvino_unavailable_reason(provider)
        if missing:
            print(f"{provider} cells left out: {missing}")
        else:
            available.append(provider)
    return available


def _plan_cells(models: list[str], references: tuple[str, ...], out: Path, options: dict, int8: dict,
                engines: dict, openvino_providers: list[str]) -> _Plan:
    """Every model's ONNX file (exported once into ``out``) and the backends each is timed on."""
    from hybreid.bench.flops import count_model, full_gmacs
    from hybreid.export.onnx_export import export_onnx
    from hybreid.models import build

    plan = _Plan([], {}, set())
    for name in list(models) + [REFERENCE_PREFIX + reference for reference in references]:
        if name.startswith(REFERENCE_PREFIX):
            import timm

            timm_name = name[len(REFERENCE_PREFIX):]
            reference_model = timm.create_model(timm_name, pretrained=False).eval()
            plan.gflops[name] = 2 * full_gmacs(reference_model, REFERENCE_SIZE)
            onnx_path = out / f"timm_{timm_name}.onnx"
            if not onnx_path.is_file():
                _export_reference(reference_model, onnx_path)
        else:
            plan.gflops[name] = 2 * count_model(name, **options).full_gmacs
            onnx_path = out / f"{name}.onnx"
            if not onnx_path.is_file():
                export_onnx(build(name, **options).eval(), onnx_path, name, options)
        backends = {"torch": (None, None), "onnxruntime-fp32": (str(onnx_path), CPU)}
        exported = not name.startswith(REFERENCE_PREFIX)  # OpenVINO cells need the model's contract
        for provider in openvino_providers if exported else ():
            backends["openvino-fp32" if provider == "openvino" else provider] = (str(onnx_path), [provider])
        copies = int8.get(name, [])
        fp32_identity = read_onnx_contract(onnx_path).identity if copies else None
        for qdq in copies:
            contract = read_onnx_contract(qdq)
            # several copies of one model are told apart by the form they were made for
            form = "" if len(copies) == 1 else f"-{_int8_form(contract)}"
            if contract.identity != fp32_identity:
                print(f"{qdq} was made from other weights than {onnx_path}: its cosine to FP32 is left out")
                plan.foreign.add(qdq)
            backends[f"onnxruntime-int8{form}"] = (qdq, CPU)
            for provider in openvino_providers:
                backends[f"{provider}-int8{form}"] = (qdq, [provider])
        if name in engines:
            backends["tensorrt"] = (engines[name], None)
        plan.backends += [(name, backend, artifact, providers) for backend, (artifact, providers) in backends.items()]
    return plan


@dataclass
class _Measured:
    times: dict[int, list[float]]
    embeddings: dict[int, np.ndarray]
    peak_rss: dict[int, float]
    around: dict[int, list[float]]  # the float32 GEMM rate around each timed run of a cell
    around_int8: dict[int, list[float]]
    rates: list[float]
    by_kind: list[dict]


def _measure(specs: list[tuple[str, dict]], gemm: GemmRates, rounds: int) -> _Measured:
    """Each cell in a subprocess of its own, ``rounds`` times, cells interleaved."""
    cells = range(len(specs))
    result = _Measured({i: [] for i in cells}, {}, dict.fromkeys(cells, 0.0), {i: [] for i in cells},
                       {i: [] for i in cells}, [], [])
    progress = tqdm(total=rounds * len(specs), desc="latency cells")
    for _ in range(rounds):
        for index, (backend, spec) in enumerate(specs):
            progress.set_postfix_str(f"{spec['model']} {backend} batch {spec['batch']}")
            measured = _run_in_subprocess(spec, gemm)
            result.by_kind += measured["rates"]
            references = [reference_rate(measured_rates) for measured_rates in measured["rates"]]
            result.rates += references
            result.times[index] += measured["times"]
            result.around[index] += [(before + after) / 2 for before, after in itertools.pairwise(references)]
            if spec["int8"]:
                int8_rates = [reference_rate(measured_rates, int8=True) for measured_rates in measured["rates"]]
                result.around_int8[index] += [(before + after) / 2 for before, after in itertools.pairwise(int8_rates)]
            result.peak_rss[index] = max(result.peak_rss[index], measured["peak_rss_mib"])
            if "embeddings" in measured:
                result.embeddings[index] = np.asarray(measured["embeddings"], np.float32)
            progress.update()
    progress.close()
    return result


def _cells(specs: list[tuple[str, dict]], measured: _Measured, plan: _Plan) -> list[Cell]:
    """Each cell's timing, its roofline against the GEMM rate around it, and its cosine to FP32."""
    fp32_of = {spec["model"]: measured.embeddings.get(index) for index, (backend, spec) in enumerate(specs)
               if backend == "onnxruntime-fp32"}
    cells: list[Cell] = []
    for index, (backend, spec) in enumerate(specs):
        cell_times, batch, gflops = np.array(measured.times[index]), spec["batch"], plan.gflops[spec["model"]]
        around, around_int8 = measured.around[index], measured.around_int8[index]
        ratios = gflops * batch / cell_times / np.array(around_int8 or around)
        reference = fp32_of.get(spec["model"])
        comparable = index in measured.embeddings and reference is not None and spec["artifact"] not in plan.foreign
        cosines = (measured.embeddings[index] * reference).sum(1) if comparable else None
        cells.append(Cell(spec["model"], backend, batch, 1000 * float(np.median(cell_times)),
                          1000 * float(np.percentile(cell_times, 90)), batch / float(np.median(cell_times)),
                          measured.peak_rss[index], gflops, float(np.median(around)), float(np.median(ratios)),
                          None if cosines is None else float(cosines.mean()),
                          None if cosines is None else float(cosines.min()),
                          float(np.median(around_int8)) if around_int8 else None))
    return cells


def _report(cells: list[Cell], measured: _Measured, threads: int, rounds: int, out: Path) -> None:
    """The table, ``latency.json`` and ``latency.png``."""
    by_kind = measured.by_kind
    median_by_kind = ", ".join(f"{kind} {np.median([r[kind] for r in by_kind]):.0f}" for kind in REFERENCE_KINDS)
    int8_kinds = [kind for kind in INT8_KINDS if by_kind and kind in by_kind[0]]
    int8_text = ("; INT8 cells against the int8 matmul rate (the faster of " + ", ".join(
        f"{kind} {np.median([r[kind] for r in by_kind]):.0f}" for kind in int8_kinds) + " GOP/s)") if int8_kinds else ""
    header = ["model", "backend", "batch", "median ms", "p90 ms", "images/s", "peak RSS MiB", "GFLOPs/img",
              "matmul GFLOP/s", "roofline", "cosine mean", "cosine worst", "int8 matmul GOP/s"]
    peak = theoretical_peak()
    peak_text = (f"; the CPU's peak at its nominal clock {peak['gflops']:.0f} GFLOP/s ({peak['cores']} cores x "
                 f"{peak['ghz']:.2f} GHz x {peak['flops_per_cycle']} FLOP/cycle; boost clocks go above it)"
                 if peak else "")
    rates = measured.rates
    rows = [[*asdict(c).values()] for c in cells]
    print(format_table(header, rows, floatfmt=[".2f"] * (len(header) - 3) + [".4f", ".4f", ".0f"],
                       title=f"latency on {threads} threads; float32 matmul rate {min(rates):.0f}-{max(rates):.0f} "
                             f"GFLOP/s over the run (the faster of {median_by_kind}){int8_text}, each cell "
                             f"against the rate around it{peak_text}"))
    summary = {"matmul_gflops": float(np.median(rates)), "theoretical_peak": peak, "matmul_gflops_measured": rates,
               "matmul_gflops_by_runtime": by_kind, "threads": threads,
               "rounds": rounds, "cells": [{**asdict(cell), "run_seconds": measured.times[index], "run_matmul_gflops":
                                            measured.around[index]} for index, cell in enumerate(cells)]}
    (out / "latency.json").write_text(json.dumps(summary, indent=2))
    _plot(cells, out / "latency.png")
    print(f"saved {out / 'latency.json'} and {out / 'latency.png'}")


def _plot(cells: list[Cell], path: Path) -> None:
    """Images/s (top) and roofline ratio (bottom) per model, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({c.model for c in cells})
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 6.5), squeeze=False, sharex="col")
    for column, model in enumerate(models):
        batches = sorted({c.batch for c in cells if c.model == model})
        for backend in sorted({c.backend for c in cells if c.model == model}):
            rows = [c for c in cells if c.model == model and c.backend == backend]
            for row, value in enumerate(("images_per_s", "roofline")):
                axes[row][column].plot([c.batch for c in rows], [getattr(c, value) for c in rows], marker="o",
                                       label=backend)
        axes[0][column].set(title=model, ylabel="images / s")
        axes[1][column].set(xlabel="batch", ylabel="roofline (of the GEMM rate)", xscale="log", xticks=batches,
                            xticklabels=[str(b) for b in batches])
        axes[1][column].minorticks_off()
        axes[0][column].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
