"""Pipeline benchmark: the whole edge runtime on synthetic videos vs the embedder alone.

For each model: synthetic visible + infrared camera videos go through capture, detection,
tracking, batched embedding and publishing to a local Mosquitto broker; the table
reports frames/s, per-stage latency, batch fill and the end-to-end embedding rate
(crops/s over the whole run), next to the embedder alone on the same number of crops at
the same batch size. Torch-free.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig
from hybreid.inference import load_embedder
from hybreid.lab.mosquitto import Mosquitto
from hybreid.synthetic.scenes import render_scenes, tracklet_purity
from hybreid.tables import format_table


def embedder_alone(embedder, crops: int, batch: int, size=(180, 70)) -> float:
    """Crops/s of the embedder on ``crops`` random person-sized crops in batches of ``batch``."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(batch)]
    embedder.embed(images)
    start = time.perf_counter()
    for _ in range(max(1, crops // batch)):
        embedder.embed(images)
    return max(1, crops // batch) * batch / (time.perf_counter() - start)


def run(models: list[str], out: str | Path, people: int = 6, max_batch: int = 8, threads: int | None = None) -> list:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = out / "scenes"
    truth = render_scenes(scenes, num_people=people) if not (scenes / "ground_truth.json").is_file() else \
        json.loads((scenes / "ground_truth.json").read_text())
    results = []
    for model in models:
        with tempfile.TemporaryDirectory() as work, Mosquitto(Path(work) / "broker") as broker:
            config = SiteConfig.from_dict({
                "site": "bench", "box_id": "box",
                "cameras": [{"id": c["id"], "source": str(scenes / c["video"]), "modality": c["modality"]}
                            for c in truth["cameras"]],
                "model": {"path": str(model), **({"threads": threads} if threads else {})},
                "embed": {"max_batch": max_batch, "max_wait_ms": 100, "crop_interval": 1, "max_crops_per_track": 64},
                "broker": {"url": broker.url}, "outbox": {"path": str(Path(work) / "outbox.sqlite")},
                "metrics": {"record_tracks": True},
            })
            embedder = load_embedder(model, **({"threads": threads} if threads else {}))
            runtime = EdgeRuntime(config, embedder=embedder)
            summary = runtime.run()
            purity = tracklet_purity(runtime.track_log, truth)
        pipeline_rate = summary["crops"] / summary["elapsed_s"]
        alone = embedder_alone(embedder, summary["crops"], max_batch)
        results.append({"model": embedder.contract.identity, "frames": summary["frames"], "fps": summary["fps"],
                        "detect_ms": summary["detect_ms_per_frame"], "track_ms": summary["track_ms_per_frame"],
                        "embed_ms_per_crop": summary["embed_ms_per_crop"], "batch_fill": summary["embed_batch_fill"],
                        "crops": summary["crops"], "tracklets": summary["tracklets_published"],
                        "pipeline_crops_per_s": pipeline_rate, "embedder_alone_crops_per_s": alone,
                        "ratio": pipeline_rate / alone, "tracklet_purity": purity,
                        "mqtt_acknowledged": summary["mqtt_acknowledged"]})
    header = ["model", "frames", "frames/s", "detect ms", "track ms", "embed ms/crop", "batch fill", "crops",
              "tracklets", "purity", "pipeline crops/s", "embedder crops/s", "ratio"]
    rows = [[r["model"], r["frames"], r["fps"], r["detect_ms"], r["track_ms"], r["embed_ms_per_crop"],
             r["batch_fill"], r["crops"], r["tracklets"], r["tracklet_purity"], r["pipeline_crops_per_s"],
             r["embedder_alone_crops_per_s"], r["ratio"]] for r in results]
    print(format_table(header, rows, floatfmt=".2f",
                       title=f"edge pipeline on {len(truth['cameras'])} synthetic cameras, batch {max_batch}"))
    (out / "pipeline.json").write_text(json.dumps(results, indent=2))
    print(f"saved {out / 'pipeline.json'}")
    return results
