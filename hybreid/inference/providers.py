"""``model.providers: auto``: the fastest CPU backend for this model on this box, measured
at first start and remembered.

The candidates are ONNX Runtime's CPU provider and, where it is installed and offers this
CPU, OpenVINO's runtime with its float ops in f32 (``openvino-bf16`` is another precision,
asked for by name only), for FP32 and Q/DQ INT8 files alike. An FP32 file gives the same
embeddings on both; an INT8 one may not (OpenVINO's int8 kernels cost the trained tiny
FusionReID 1.2 mAP points where ONNX Runtime's cost 0.12). Each
embeds a batch of blank crops a few times; the fastest wins. The choice is cached beside
the model (``<model>.providers.json``), keyed by the model's identity and precision, the
processor and the thread count, so a box measures once per model, not at every start. A
cache that cannot be read or written is measured again (and said so), never trusted.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from hybreid.contract import read_onnx_contract
from hybreid.inference.loader import load_embedder
from hybreid.inference.openvino_backend import openvino_unavailable_reason
from hybreid.machine import cpu_model_name

log = logging.getLogger("hybreid.inference")

CPU = "CPUExecutionProvider"
CANDIDATES = (CPU, "openvino")  # what auto chooses from; a cached choice outside them is not trusted
TIMED_RUNS = 3
BATCH = 8


def cache_path(model: str | Path) -> Path:
    model = Path(model)
    return model.with_name(model.name + ".providers.json")


def _cache_key(model: Path, threads: int | None) -> str:
    contract = read_onnx_contract(model)
    return json.dumps([contract.identity, contract.precision, cpu_model_name(), threads])


def _cached(model: Path, key: str) -> str | None:
    path = cache_path(model)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        chosen = entry["chosen"] if entry.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s cannot be read; measuring the providers again", path)
        return None
    return chosen if chosen in CANDIDATES else None


def candidates() -> list[str]:
    reason = openvino_unavailable_reason()
    if reason:
        log.info("providers auto: %s", reason)
    return [CPU] if reason else list(CANDIDATES)


def measure(model: Path, threads: int | None, names: list[str]) -> dict[str, float]:
    """Images per second of each provider on a batch of blank crops."""
    rates = {}
    for name in names:
        embedder = load_embedder(model, threads, [name])
        crops = [np.zeros((embedder.contract.height, embedder.contract.width, 3), np.uint8)] * BATCH
        embedder.embed(crops)  # warm-up: graph optimisation, thread pool
        start = time.perf_counter()
        for _ in range(TIMED_RUNS):
            embedder.embed(crops)
        rates[name] = BATCH * TIMED_RUNS / (time.perf_counter() - start)
    return rates


def fastest_provider(model: str | Path, threads: int | None = None) -> str:
    """The provider ``auto`` stands for on this box: cached, or measured now and cached."""
    model = Path(model)
    key = _cache_key(model, threads)
    chosen = _cached(model, key)
    if chosen is not None:
        return chosen
    rates = measure(model, threads, candidates())
    chosen = max(rates, key=rates.get)
    log.info("providers auto for %s: %s; %s is the fastest", model.name,
             ", ".join(f"{name} {rate:.1f} img/s" for name, rate in rates.items()), chosen)
    try:
        cache_path(model).write_text(json.dumps({"key": key, "chosen": chosen, "images_per_s": rates}, indent=2))
    except OSError as exc:
        log.warning("cannot remember the choice in %s (%s); it is measured again at the next start",
                    cache_path(model), exc.strerror)
    return chosen
