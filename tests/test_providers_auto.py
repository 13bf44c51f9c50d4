"""``model.providers: auto``: the fastest CPU backend for a model on this box, measured once
and remembered beside the model; a damaged or foreign cache is measured again."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from hybreid.inference import load_embedder
from hybreid.inference import providers as auto

BACKENDS = {"openvino": "openvino:CPU-f32", "CPUExecutionProvider": "onnxruntime:CPUExecutionProvider"}


@pytest.fixture
def model(tiny_onnx, tmp_path):
    copy = tmp_path / "model.onnx"
    shutil.copy(tiny_onnx, copy)
    return copy


@pytest.mark.slow
def test_auto_measures_the_candidates_once_and_remembers_the_fastest(model, monkeypatch):
    embedder = load_embedder(model, threads=2, providers="auto")
    cache = json.loads(auto.cache_path(model).read_text())
    assert set(cache["images_per_s"]) == set(auto.candidates())  # OpenVINO only where it runs
    assert cache["chosen"] == max(cache["images_per_s"], key=cache["images_per_s"].get)
    assert embedder.backend == BACKENDS[cache["chosen"]]

    def no_second_measurement(*args):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(auto, "measure", no_second_measurement)
    assert load_embedder(model, threads=2, providers="auto").backend == embedder.backend


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["not json", '{"key": 1}', '["a list"]'])
def test_a_damaged_cache_is_measured_again(model, cache, caplog):
    auto.cache_path(model).write_text(cache)
    with caplog.at_level(logging.WARNING, logger="hybreid.inference"):
        load_embedder(model, threads=2, providers="auto")
    assert "measuring the providers again" in caplog.text or cache == '{"key": 1}'
    assert json.loads(auto.cache_path(model).read_text())["chosen"] in ("CPUExecutionProvider", "openvino")


@pytest.mark.slow
def test_a_cache_for_another_box_or_a_hostile_choice_is_not_trusted(model):
    load_embedder(model, threads=2, providers="auto")
    entry = json.loads(auto.cache_path(model).read_text())
    auto.cache_path(model).write_text(json.dumps({**entry, "chosen": "TensorrtExecutionProvider"}))
    remeasured = load_embedder(model, threads=2, providers="auto").backend  # measured again: timing may differ
    assert remeasured == BACKENDS[json.loads(auto.cache_path(model).read_text())["chosen"]]
    load_embedder(model, threads=1, providers="auto")  # another thread count: measured for it
    assert json.loads(auto.cache_path(model).read_text())["key"] != entry["key"]


def test_the_site_file_takes_auto_and_refuses_other_words():
    from hybreid.edge_runtime.site import validate_site
    from hybreid.errors import UserError

    site = {"site": "s", "box_id": "b", "cameras": [{"id": "c1", "source": "0"}], "broker": {"url": "mqtt://h:1883"},
            "model": {"path": "m.onnx", "providers": "auto"}}
    assert validate_site(site, "site file").model.providers == "auto"
    with pytest.raises(UserError, match="providers"):
        validate_site({**site, "model": {"path": "m.onnx", "providers": "fastest"}}, "site file")
