"""``hybreid demo``: the whole chain on synthetic data, on one machine, with nothing to install.

1. synthetic people in the SYSU-MM01 layout (visible + infrared cameras);
2. the tiny HAResformer trained on them (the ``hybreid bench train`` recipe, fewer
   epochs), or the model of a previous demo run with the same settings;
3. ONNX export (dynamic batch) and INT8 calibration for the CPU with its report
   (FP32 vs INT8 mAP on held-out people);
4. the matcher's thresholds calibrated on held-out people;
5. synthetic visible and infrared camera videos, an MQTT broker (embedded, or
   ``--broker``), the edge runtime on both cameras and the matcher;
6. a summary table and a report folder (summary JSON, contact sheet, plots).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hybreid.tables import format_table

MODEL = "haresformer_tiny"
RECIPE = "configs/train/haresformer_synthetic.yaml"  # the benchmark's recipe, shortened by the demo's settings


@dataclass
class DemoConfig:
    out: Path = Path("demo-report")
    people: int = 10  # people walking through the site's cameras
    seconds: float = 60.0  # of video per camera
    train_ids: int = 150
    test_ids: int = 50
    images_per_camera: int = 4
    epochs: int = 8
    max_steps_per_epoch: int | None = None
    calibration_images: int = 128
    # The model the cameras run: auto is INT8 where the calibration measured it clearly faster
    # than FP32 on this CPU, FP32 elsewhere; int8 or fp32 force one.
    edge_precision: str = "auto"
    target_fmr: float = 0.01
    broker: str | None = None  # None: an embedded broker on 127.0.0.1
    retrain: bool = False
    seed: int = 0
    progress: bool = True
    timings: dict = field(default_factory=dict)

    def training_settings(self) -> dict:
        """What decides whether a previous demo's model can be reused."""
        return {"model": MODEL, "train_ids": self.train_ids, "test_ids": self.test_ids,
                "images_per_camera": self.images_per_camera, "epochs": self.epochs,
                "max_steps_per_epoch": self.max_steps_per_epoch, "seed": self.seed}


class _Step:
    """Times one step of the demo and announces it."""

    def __init__(self, config: DemoConfig, name: str):
        self.config, self.name = config, name

    def __enter__(self):
        print(f"\n== {self.name}", flush=True)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.config.timings[self.name] = time.perf_counter() - self.started


def synthetic_dataset(config: DemoConfig) -> Path:
    from hybreid.synthetic.datasets import write_once, write_sysu_mm01

    return write_once(write_sysu_mm01, config.out / "data" / "synthetic_sysu_mm01", train_ids=config.train_ids,
                      test_ids=config.test_ids, images_per_camera=config.images_per_camera, seed=config.seed)


def train(config: DemoConfig, root: Path) -> Path:
    """The trained model file; a previous run with the same settings is reused."""
    from hybreid.train.config import resolve_config
    from hybreid.train.trainer import Trainer

    run = config.out / "train"
    model_file, marker = run / "model.pt", run / "demo-settings.json"
    settings = config.training_settings()
    if not config.retrain and model_file.exists() and marker.exists() and json.loads(marker.read_text()) == settings:
        print(f"reusing the model trained by a previous demo: {model_file} (--retrain trains again)")
        return model_file
    shutil.rmtree(run, ignore_errors=True)
    trainer_config = resolve_config(RECIPE, {
        "model": MODEL, "dataset": {"name": "sysu_mm01", "root": str(root)}, "output": str(run),
        "optim": {"epochs": config.epochs}, "eval": {"every": config.epochs},
        "max_steps_per_epoch": config.max_steps_per_epoch, "seed": config.seed,
    })
    Trainer(trainer_config, progress=config.progress).fit()
    marker.write_text(json.dumps(settings))
    return model_file


def export(config: DemoConfig, model_file: Path) -> Path:
    from hybreid.export.onnx_export import export_onnx
    from hybreid.models.checkpoint import load_model

    model, payload = load_model(model_file)
    path = export_onnx(model, config.out / "model" / f"{MODEL}.onnx", payload["model"], payload["options"])
    print(f"wrote {path}")
    return path


def calibrate_int8(config: DemoConfig, onnx_path: Path, root: Path, dataset) -> dict:
    """INT8 for the CPU, calibrated on training images, scored on the held-out people."""
    from hybreid.calibration.report import run_int8

    return run_int8(onnx_path, config.out / "int8", target="cpu", methods=("minmax",),
                    source=f"dataset:sysu_mm01:{root}", count=config.calibration_images,
                    eval_dataset=dataset, compare_attention=False, repeats=5)


def calibrate_threshold(config: DemoConfig, model_path: Path, dataset) -> dict:
    from hybreid.calibration.threshold import calibrate_on_dataset, format_thresholds
    from hybreid.inference import load_embedder

    result = calibrate_on_dataset(load_embedder(model_path), dataset, "test", config.target_fmr,
                                  config.out / "thresholds.json")
    print(format_thresholds(result["thresholds"], config.target_fmr))
    return result


def run_cameras(config: DemoConfig, model_path: Path, thresholds: Path) -> dict:
    from hybreid.bench.identities import run_site, score_site
    from hybreid.lab.embedded_broker import EmbeddedBroker
    from hybreid.matcher.policy import MatchPolicy
    from hybreid.synthetic.scenes import tracklet_ground_truth
    from hybreid.synthetic.site import default_spec, render_site

    scenes = config.out / "scenes"
    # A small version of the default site: four cameras (visible, infrared, visible, day/night).
    truth = render_site(scenes, default_spec(site="demo", people=config.people, seconds=config.seconds,
                                             seed=config.seed), progress=config.progress)
    work = config.out / "site"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    policy = MatchPolicy.from_thresholds_file(thresholds)
    if config.broker:
        site = run_site(model_path, scenes, truth, config.broker, policy, work, site="demo", progress=config.progress)
    else:
        with EmbeddedBroker() as broker:
            print(f"embedded MQTT 3.1.1 broker on {broker.url}")
            site = run_site(model_path, scenes, truth, broker.url, policy, work, site="demo",
                            progress=config.progress, mqtt_protocol="3.1.1")
    tracklets = tracklet_ground_truth(site["runtime"].track_log, truth)
    labels = {key: value["pid"] for key, value in tracklets.items()}
    by_method = score_site(site, truth)
    site["scores"], site["scores_online"] = by_method["re-associated"], by_method["online"]
    site["truth"], site["labels"], site["scenes"] = truth, labels, scenes
    return site


def edge_precision(config: DemoConfig, int8_report: dict) -> str:
    """The precision the cameras run, saying why when the calibration's advice decides it."""
    if config.edge_precision != "auto":
        return config.edge_precision
    advice = int8_report["recommendation"]
    print(f"the cameras run {advice['precision'].upper()}: {advice['why']}")
    return advice["precision"]


def summarize(config: DemoConfig, site: dict, int8_report: dict, threshold_result: dict, precision: str) -> dict:
    edge, matcher, scores = site["edge"], site["matcher"], site["scores"]
    int8_run = int8_report["runs"][0]
    published = edge["tracklets_published"]
    stored = matcher["sightings"]
    return {
        "model": int8_report["model"],
        "edge_precision": precision,
        "edge_precision_why": int8_report["recommendation"]["why"] if config.edge_precision == "auto" else "asked for",
        "people": len({passage["pid"] for camera in site["truth"]["cameras"] for passage in camera["passages"]}),
        "people_seen": scores["people"],  # people with at least one sighting at the matcher
        "identities": scores["identities"],
        "identities_online": site["scores_online"]["identities"],
        "idf1": scores["mtmc"]["idf1"],
        "idf1_online": site["scores_online"]["mtmc"]["idf1"],
        "merges": sum(event["type"] == "merge" for event in site["events"]),
        "purity": scores["purity"],
        "pairwise_f1": scores["pairwise"]["f1"],
        "cross_modality_links": {"true": scores["cross_modality"]["true_links"],
                                 "predicted": scores["cross_modality"]["predicted_links"],
                                 "precision": scores["cross_modality"]["precision"],
                                 "recall": scores["cross_modality"]["recall"]},
        "messages": {"sent": published, "acknowledged": edge["mqtt_acknowledged"], "stored": stored,
                     "lost": published - stored, "rejected": matcher["rejections"]},
        "edge": {"fps": edge["fps"], "frames": edge["frames"], "detect_ms_per_frame": edge["detect_ms_per_frame"],
                 "track_ms_per_frame": edge["track_ms_per_frame"], "embed_ms_per_crop": edge["embed_ms_per_crop"],
                 "crops": edge["crops"]},
        "accuracy": {"fp32_mAP": int8_report["fp32"]["mAP"], "int8_mAP": int8_run["fused"]["mAP"],
                     "fp32_rank1": int8_report["fp32"]["rank1"], "int8_rank1": int8_run["fused"]["rank1"],
                     "int8_cosine_mean": int8_run["fused_cosine_mean"], "int8_speedup": int8_run["speedup"]},
        "thresholds": {kind: t.threshold for kind, t in threshold_result["thresholds"].items()},
        "seconds": dict(config.timings),
    }


def format_summary(summary: dict) -> str:
    messages, edge, accuracy, links = summary["messages"], summary["edge"], summary["accuracy"], \
        summary["cross_modality_links"]
    rows = [
        ["people in the videos / seen by the matcher", f"{summary['people']} / {summary['people_seen']}"],
        ["identities found (online -> re-associated)",
         f"{summary['identities_online']} -> {summary['identities']} ({summary['merges']} merges)"],
        ["multi-camera IDF1 (online -> re-associated)", f"{summary['idf1_online']:.3f} -> {summary['idf1']:.3f}"],
        ["identity purity", f"{summary['purity']:.3f}"],
        ["pairwise ID-F1", f"{summary['pairwise_f1']:.3f}"],
        ["cross-modality links (correct / true)",
         f"{round(links['precision'] * links['predicted'])} / {links['true']}"],
        ["messages sent / stored / lost", f"{messages['sent']} / {messages['stored']} / {messages['lost']}"],
        ["edge frames/s (all cameras)", f"{edge['fps']:.1f}"],
        ["detect / track ms per frame", f"{edge['detect_ms_per_frame']:.2f} / {edge['track_ms_per_frame']:.2f}"],
        ["embed ms per crop", f"{edge['embed_ms_per_crop']:.2f}"],
        ["held-out mAP FP32 / INT8 (%)", f"{100 * accuracy['fp32_mAP']:.1f} / {100 * accuracy['int8_mAP']:.1f}"],
        ["INT8 cosine to FP32, speed-up", f"{accuracy['int8_cosine_mean']:.4f}, {accuracy['int8_speedup']:.2f}x"],
        ["thresholds same / cross modality", " / ".join(f"{v:.3f}" for v in summary["thresholds"].values())],
        ["total seconds", f"{sum(summary['seconds'].values()):.0f}"],
    ]
    return format_table(["hybreid demo", "result"], rows, title=f"{summary['model']} ({summary['edge_precision']})")


def run_demo(config: DemoConfig) -> dict:
    from hybreid.data.datasets import load_dataset
    from hybreid.demo.report import contact_sheet

    config.out = Path(config.out)
    config.out.mkdir(parents=True, exist_ok=True)
    with _Step(config, "synthetic people (SYSU-MM01 layout)"):
        root = synthetic_dataset(config)
        dataset = load_dataset("sysu_mm01", root)
    with _Step(config, f"train {MODEL}"):
        model_file = train(config, root)
    with _Step(config, "export ONNX"):
        onnx_path = export(config, model_file)
    with _Step(config, "INT8 calibration (ONNX Runtime, CPU target)"):
        int8_report = calibrate_int8(config, onnx_path, root, dataset)
    precision = edge_precision(config, int8_report)
    edge_model = Path(int8_report["runs"][0]["path"]) if precision == "int8" else onnx_path
    with _Step(config, "matcher thresholds"):
        threshold_result = calibrate_threshold(config, edge_model, dataset)
    with _Step(config, "cameras -> MQTT -> matcher"):
        site = run_cameras(config, edge_model, threshold_result["path"])
    with _Step(config, "report"):
        sheet = contact_sheet(site["sightings"], site["runtime"].track_log, site["labels"], site["scenes"],
                              config.out / "contact_sheet.png", site["events"])
        curves = config.out / "train" / "curves.png"
        if curves.exists():
            shutil.copy(curves, config.out / "training_curves.png")
    summary = summarize(config, site, int8_report, threshold_result, precision)
    summary["report"] = {"contact_sheet": str(sheet), "thresholds": str(threshold_result["path"]),
                         "score_distributions": str(threshold_result["plot"]),
                         "quantization_report": str(config.out / "int8" / "quantization_report.json")}
    summary["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                           if k != "timings"}
    (config.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(format_summary(summary))
    print(f"report folder: {config.out} (summary.json, contact_sheet.png, thresholds.png, training_curves.png)")
    print(f"to look through the identities, their cameras and timelines: hybreid console --db "
          f"{config.out / 'site' / 'gallery.sqlite'}, then open http://127.0.0.1:8080/")
    return summary
