"""``hybreid demo`` at reduced size: every step runs, the summary's fields hold together,
and a second run reuses the trained model."""

from __future__ import annotations

import json

import cv2
import pytest

from hybreid.demo.pipeline import DemoConfig, format_summary, run_demo


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig(out=out, people=3, seconds=30.0, train_ids=12, test_ids=8, images_per_camera=2, epochs=1,
                        max_steps_per_epoch=2, calibration_images=16, progress=False)
    return out, run_demo(config)


@pytest.mark.slow
def test_summary_accounts_for_every_message_and_person(small_demo):
    out, summary = small_demo
    messages = summary["messages"]
    assert messages["sent"] > 0
    assert messages["lost"] == 0 and messages["stored"] == messages["sent"]
    assert messages["rejected"] == {}
    assert summary["people"] == 3
    assert summary["people_seen"] == 3  # every person in the videos was tracked and published
    assert 1 <= summary["identities"] <= messages["stored"]
    assert 0 < summary["purity"] <= 1
    assert summary["edge"]["frames"] > 0 and summary["edge"]["crops"] > 0
    links = summary["cross_modality_links"]
    assert links["true"] > 0  # each person walks past the visible and the infrared camera
    assert 0 <= links["precision"] <= 1 and 0 <= links["recall"] <= 1
    assert json.loads((out / "summary.json").read_text())["identities"] == summary["identities"]


def test_summary_reports_int8_against_fp32_and_the_thresholds(small_demo):
    out, summary = small_demo
    accuracy = summary["accuracy"]
    assert 0 <= accuracy["int8_mAP"] <= 1 and 0 <= accuracy["fp32_mAP"] <= 1
    assert accuracy["int8_cosine_mean"] > 0.9
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert summary["thresholds"]["same_modality"] == thresholds["same_modality"]["threshold"]
    assert summary["model"].startswith("haresformer_tiny@")
    # the cameras run what the calibration advised for this CPU (FP32 where INT8 is not clearly faster)
    report = json.loads((out / "int8" / "quantization_report.json").read_text())
    assert summary["edge_precision"] == report["recommendation"]["precision"]
    assert summary["edge_precision_why"] == report["recommendation"]["why"]
    table = format_summary(summary)
    assert "identities found" in table and "messages sent / stored / lost" in table


def test_report_folder_holds_the_contact_sheet_and_plots(small_demo):
    out, summary = small_demo
    sheet = cv2.imread(summary["report"]["contact_sheet"])
    assert sheet is not None and sheet.shape[0] >= summary["identities"] * 96  # one row per identity
    for name in ("thresholds.png", "training_curves.png", "int8/quantization_report.json"):
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_second_run_reuses_the_trained_model(small_demo, capsys):
    out, summary = small_demo
    model = out / "train" / "model.pt"
    before = model.stat().st_mtime_ns
    config = DemoConfig(out=out, people=3, seconds=30.0, train_ids=12, test_ids=8, images_per_camera=2, epochs=1,
                        max_steps_per_epoch=2, calibration_images=16, progress=False)
    again = run_demo(config)
    assert model.stat().st_mtime_ns == before
    assert "reusing the model trained by a previous demo" in capsys.readouterr().out
    assert again["model"] == summary["model"]  # same weights, same content hash
