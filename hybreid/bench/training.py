"""Training benchmark: the tiny models on synthetic people, trained vs untrained mAP.

``hybreid bench train`` writes synthetic Market1501- and SYSU-MM01-layout data (held-out
test identities), evaluates each tiny model untrained, trains it with the settings
below and evaluates it again with the dataset's protocol (SYSU-MM01 all-search,
cross-modality, for HAResformer). Results: a table, a JSON file and each run's
loss/mAP curves.

The settings are not the papers' recipes (those are ``configs/train/*.yaml``, 120-180
epochs from ImageNet weights on a GPU): these models start from random weights and
must learn in minutes on two CPU cores, so they use Adam, a short schedule and 64x32
crops, and HAResformer pools by averaging.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hybreid.config import merge
from hybreid.data.datasets import load_dataset
from hybreid.eval.evaluate import evaluate
from hybreid.models import build
from hybreid.synthetic.datasets import write_market1501, write_once, write_sysu_mm01
from hybreid.tables import format_table
from hybreid.train.trainer import DEFAULTS, Trainer

_SHORT_CPU_RUN = {
    "model_options": {"image_size": [64, 32]},
    # The papers pad 10 px at 256x128 and 288x144 before the random crop; at 64x32 the
    # same shift of the person is about 2 px (10 px would move it by a third of its width).
    "data": {"cache": True, "pad": 2},
    "optim": {"name": "adam", "lr": 1.0e-3, "weight_decay": 5.0e-4, "bias_lr_factor": 1.0,
              "schedule": "warmup_cosine", "warmup_epochs": 1, "warmup_start_lr": 1.0e-4},
    "eval": {"every": 5, "trials": 3},
}

BENCHMARKS = {
    "fusionreid_tiny": {
        "dataset": "market1501", "writer": write_market1501,
        "config": merge(_SHORT_CPU_RUN, {"sampler": {"num_ids": 16, "num_instances": 4},
                                         "optim": {"epochs": 15}, "loss": {"squared_triplet": False}}),
    },
    "haresformer_tiny": {
        "dataset": "sysu_mm01", "writer": write_sysu_mm01,
        # As many images per identity and camera as the real SYSU-MM01 has (about 20:
        # 22,258 visible and 11,909 infrared training images of 395 identities). A full
        # pass over them would not fit the time, so an epoch stops after 56 steps, the
        # length of an epoch at 4 images per camera.
        "synthetic": {"images_per_camera": 20},
        # GeM pooling (the paper names none; GeM is this project's reading) learns far
        # slower from random weights than average pooling, so the short run averages.
        # The model still underfits when the run ends, so no random erasing, a learning
        # rate of 3e-3 and no warm-up epoch; the README lists the settings tried.
        "config": merge(_SHORT_CPU_RUN, {"model_options": {"pooling": "avg"},
                                         "data": {"erasing": 0.0},
                                         "sampler": {"num_ids": 8, "num_instances": 4},
                                         "optim": {"epochs": 20, "lr": 3.0e-3, "warmup_epochs": 0},
                                         "max_steps_per_epoch": 56}),
    },
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
    config = merge(merge(DEFAULTS, spec["config"]), run_options)
    dataset = load_dataset(spec["dataset"], root)
    torch.manual_seed(config["seed"])
    untrained = build(name, num_classes=dataset.num_train_pids, **config["model_options"])
    use_camids = name.startswith("fusionreid") and config["eval"]["use_camids"]
    before = evaluate(untrained, dataset, use_camids=False, trials=config["eval"]["trials"])
    started = time.perf_counter()
    history = Trainer(config).fit()
    wall_seconds = time.perf_counter() - started
    after = history[-1]["eval"]
    return {
        "model": name,
        "dataset": f"synthetic {spec['dataset']}",
        "train_identities": dataset.num_train_pids,
        "test_identities": len({s.pid for s in dataset.query}),
        "epochs": config["optim"]["epochs"],
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
