"""The first hour from a source checkout, as the README gives it: the shipped local site
file runs the edge on the synthetic videos, and the shipped training recipes are found
from any working directory."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hybreid.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_local_site_file_runs_the_edge_on_the_synthetic_videos(tmp_path, tiny_onnx, mosquitto, capsys):
    checkout = tmp_path / "checkout"
    (checkout / "configs").mkdir(parents=True)
    site = yaml.safe_load((REPO / "configs" / "site.local.yaml").read_text())
    site["broker"]["url"] = mosquitto.url  # the file names the usual local broker, 127.0.0.1:1883
    (checkout / "configs" / "site.local.yaml").write_text(yaml.safe_dump(site))
    assert main(["edge", "scenes", "--out", str(checkout / "data" / "scenes"), "--people", "2"]) == 0
    (checkout / "models").mkdir()
    shutil.copy(tiny_onnx, checkout / "models" / "haresformer_tiny.onnx")
    capsys.readouterr()
    assert main(["edge", "run", "--config", str(checkout / "configs" / "site.local.yaml")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tracklets_published"] >= 2 and summary["outbox_depth"] == 0
    assert summary["mqtt_acknowledged"] == summary["tracklets_published"]
    assert (checkout / "runs" / "edge" / "outbox.sqlite").is_file()  # relative to the site file


def test_shipped_recipes_are_found_from_any_directory(tmp_path, monkeypatch):
    from hybreid.train.config import resolve_config

    monkeypatch.chdir(tmp_path)
    for name in ("fusionreid_synthetic", "haresformer_synthetic", "fusionreid_market1501"):
        config = resolve_config(f"configs/train/{name}.yaml", {})
        assert config.model.split("_")[0] == name.split("_")[0]


@pytest.mark.slow
def test_the_synthetic_recipe_trains_from_a_fresh_checkout_as_the_readme_says(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # configs/ is not here: the shipped recipe is found anyway
    assert main(["data", "synth", "--layout", "market1501", "--out", "data/synthetic_market1501",
                 "--train-ids", "8", "--test-ids", "6", "--images-per-camera", "2"]) == 0
    # The README's command, shortened to one short epoch for the test.
    assert main(["train", "--config", "configs/train/fusionreid_synthetic.yaml", "optim.epochs=1",
                 "max_steps_per_epoch=2", "eval.every=1", "eval.trials=1", "sampler.num_ids=4"]) == 0
    assert "finished:" in capsys.readouterr().out
    assert (tmp_path / "runs" / "fusionreid_synthetic" / "model.pt").is_file()
    # A second run into the same folder is refused, not silently written over.
    assert main(["train", "--config", "configs/train/fusionreid_synthetic.yaml", "optim.epochs=1"]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
