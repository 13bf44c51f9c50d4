"""Training benchmark: the tiny models on synthetic people, trained vs untrained mAP.

``hybreid bench train`` writes synthetic Market1501- and SYSU-MM01-layout data (held-out
test identities), evaluates each tiny model untrained, trains it with the settings
below and evaluates it again with the dataset's protocol (SYSU-MM01 all-search,
cross-modality, for HAResformer). Results: a table, a JSON file and each run's
loss/mAP curves.

The recipes are ``configs/train/*_synthetic.yaml``, not the papers' (120-180 epochs from
ImageNet weights on a GPU): these models start from random weights and must learn in
minutes on two CPU cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hybreid.data.datasets import load_dataset
from hybreid.eval.evaluate import evaluate
from hybreid.models import build
from hybreid.synthetic.datasets import write_market1501, write_once, write_sysu_mm01
from hybreid.tables import format_table
from hybreid.train.config import resolve_config
from hybreid.train.trainer import Trainer

# The training recipe of each model is a shipped config (``configs/train/*_synthetic.yaml``),
# the same one ``hybreid train --config`` and the demo use; here only the data it is written for.
BENCHMARKS = {
    "fusionreid_tiny": {"dataset": "market1501", "writer": write_market1501,
                        "recipe": "configs/train/fusionreid_synthetic.yaml"},
    "haresformer_tiny": {"dataset": "sysu_mm01", "writer": write_sysu_mm01,
                         "recipe": "configs/train/haresformer_synthetic.yaml",
                         # As many images per identity and camera as the real SYSU-MM01 has
                         # (about 20: 22,258 visible and 11,909 infrared training images of
                         # 395 identities).
                         "synthetic": {"images_per_camera": 20}},
}
SYNTHETIC = {"train_ids": 150, "test_ids": 100, "images_per_camera": 4, "seed": 0}


def synthetic_root(workdir: Path, name: str) -> Path:
    """Synthetic data of benchmark ``name``, written once per workdir."""
    spec = BENCHMARKS[name]
    settings = {**SYNTHETIC, **spec.get("synthetic", {})}
    return write_once(spec["writer"], workdir / f"synthetic_{spec['dataset']}", **settings)


def run_one(name: str, out: Path, workdir: Path) -> dict:
    spec = BENCHMARKS[name]
    root = synthetic_root(workdir, name)
    run_options = {"model": name, "dataset": {"name": spec["dataset"], "root": str(root)}, "output": str(out / name)}
    config = resolve_config(spec["recipe"], run_options)
    dataset = load_dataset(spec["dataset"], root)
    torch.manual_seed(config.seed)
    untrained = build(name, num_classes=dataset.num_train_pids, **config.model_options)
    use_camids = name.startswith("fusionreid") and config.eval.use_camids
    before = evaluate(untrained, dataset, use_camids=False, trials=config.eval.trials)
    started = time.perf_counter()
    history = Trainer(config).fit()
    wall_seconds = time.perf_counter() - started
    after = history[-1]["eval"]
    return {
        "model": name,
        "dataset": f"synthetic {spec['dataset']}",
        "train_identities": dataset.num_train_pids,
        "test_identities": len({s.pid for s in dataset.query}),
        "epochs": config.optim.epochs,
        # Training steps only; the wall time adds the evaluations that draw the curves.
        "train_seconds": sum(record["seconds"] for record in history),
        "wall_seconds": wall_seconds,
        "untrained": before,
        "trained": after,
        "camera_ids_at_eval": use_camids,
        "run": str(out / name),
    }


def run(out: str | Path, models: list[str], workdir: str | Path | None = None) -> list[dict]:
    out = Path(out)
    workdir = Path(workdir) if workdir else out
    out.mkdir(parents=True, exist_ok=True)
    results = [run_one(name, out, workdir) for name in models]
    rows = [[r["model"], r["dataset"], r["epochs"], r["train_seconds"] / 60, r["wall_seconds"] / 60,
             100 * r["untrained"]["mAP"], 100 * r["trained"]["mAP"], 100 * r["trained"]["rank1"],
             r["trained"]["mAP"] / max(r["untrained"]["mAP"], 1e-9)]
            for r in results]
    print(format_table(["model", "data (held-out ids)", "epochs", "train min", "with evaluations min",
                        "mAP untrained %", "mAP trained %", "Rank-1 trained %", "x untrained"], rows, floatfmt=".2f"))
    (out / "training.json").write_text(json.dumps(results, indent=2))
    print(f"saved {out / 'training.json'}; curves in {', '.join(r['run'] + '/curves.png' for r in results)}")
    return results
