"""The ``hybreid`` command: output, files and one-sentence errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybreid.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_models_lists_every_registry_entry():
    from hybreid.models import REGISTRY

    result = run("models")
    assert result.returncode == 0
    for name in REGISTRY:
        assert name in result.stdout


@pytest.mark.slow
def test_bench_flops_prints_a_table_and_saves_json(tmp_path):
    out = tmp_path / "flops"
    result = run("bench", "flops", "--model", "haresformer_tiny", "--out", str(out), "hgae=false")
    assert result.returncode == 0, result.stderr
    assert "| CFFM" in result.stdout and "| total" in result.stdout
    saved = json.loads((out / "flops.json").read_text())
    (model,) = saved["models"]
    assert model["model"] == "haresformer_tiny"
    hgae_row = next(r for r in model["rows"] if r["module"] == "HGAE")
    assert hgae_row["all_params_m"] == 0  # the override switched HGAE off


@pytest.mark.slow
def test_results_never_overwrite_earlier_ones_unless_asked(tmp_path):
    out = tmp_path / "flops"
    assert run("bench", "flops", "--model", "haresformer_tiny", "--out", str(out)).returncode == 0
    first = (out / "flops.json").read_text()
    again = run("bench", "flops", "--model", "fusionreid_tiny", "--out", str(out))
    assert again.returncode == 2 and "holds earlier results" in again.stderr and "Traceback" not in again.stderr
    assert (out / "flops.json").read_text() == first
    assert run("bench", "flops", "--model", "fusionreid_tiny", "--out", str(out), "--overwrite").returncode == 0
    assert json.loads((out / "flops.json").read_text())["models"][0]["model"] == "fusionreid_tiny"
    # Without --out, each run gets a folder of its own under runs/.
    for _ in range(2):
        assert run("bench", "flops", "--model", "haresformer_tiny", cwd=tmp_path).returncode == 0
    assert len(list((tmp_path / "runs" / "bench-flops").glob("*/flops.json"))) == 2


@pytest.mark.slow
def test_unknown_model_is_one_clear_sentence():
    result = run("bench", "flops", "--model", "no_such_model")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown model 'no_such_model'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_malformed_override_is_one_clear_sentence():
    result = run("bench", "flops", "--model", "fusionreid_tiny", "depth")
    assert result.returncode == 2
    assert "key=value" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_deployment_commands_chain_through_the_cli(tmp_path, capsys):
    """data synth -> export onnx -> calibrate threshold -> bundle create/verify, and the
    matcher's query and purge on the gallery, as the README shows them (in-process)."""
    from hybreid.cli import main

    data, onnx_path = tmp_path / "sysu", tmp_path / "model.onnx"
    assert main(["data", "synth", "--layout", "sysu_mm01", "--out", str(data), "--train-ids", "2", "--test-ids", "3",
                 "--images-per-camera", "1"]) == 0
    assert (data / "exp" / "test_id.txt").exists()
    assert main(["export", "onnx", "--model", "haresformer_tiny", "--out", str(onnx_path)]) == 0
    thresholds = tmp_path / "thresholds.json"
    assert main(["calibrate", "threshold", "--artifact", str(onnx_path), "--dataset", "sysu_mm01", "--root", str(data),
                 "--fmr", "0.1", "--out", str(thresholds)]) == 0
    saved = json.loads(thresholds.read_text())
    assert -1 <= saved["cross_modality"]["threshold"] <= 1 and saved["target_false_match_rate"] == 0.1
    # One image a person and camera makes no tracklet of two crops; none makes no tracklet at all.
    for crops, problem in (("2", "give a smaller --tracklet-crops"), ("0", "at least one crop")):
        capsys.readouterr()
        assert main(["calibrate", "threshold", "--artifact", str(onnx_path), "--dataset", "sysu_mm01", "--root",
                     str(data), "--tracklet-crops", crops, "--out", str(tmp_path / "tracklets.json")]) == 2
        assert problem in capsys.readouterr().err
    bundle = tmp_path / "site.tar.gz"
    assert main(["bundle", "create", "--artifact", str(onnx_path), "--out", str(bundle)]) == 0
    assert main(["bundle", "verify", str(bundle)]) == 0
    db = tmp_path / "gallery.sqlite"
    # Only `matcher run` creates a gallery: a mistyped --db is an error, not an empty answer.
    assert main(["matcher", "query", "--db", str(db), "--camera", "cam-01"]) == 2
    assert not db.exists()
    from hybreid.matcher.gallery import Gallery

    Gallery(db).close()
    capsys.readouterr()
    assert main(["matcher", "query", "--db", str(db), "--camera", "cam-01", "--since", "0"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["camera"] == "cam-01" and answer["sightings"] == []
    assert main(["matcher", "purge", "--db", str(db), "--older-than-days", "30"]) == 0


@pytest.mark.slow
def test_an_untrained_export_is_seeded_and_says_so(tmp_path, capsys):
    """Without a checkpoint the weights are random: the same command must give the same model
    (one content hash, so one gallery), and the output must say the weights are untrained."""
    from hybreid.cli import main
    from hybreid.contract import read_onnx_contract

    hashes = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(["export", "onnx", "--model", "haresformer_tiny", "--out", str(tmp_path / f"{name}.onnx"),
                     "--seed", seed]) == 0
        assert "UNTRAINED weights (random, seed" in capsys.readouterr().out
        hashes.append(read_onnx_contract(tmp_path / f"{name}.onnx").weights_sha256)
    assert hashes[0] == hashes[1] != hashes[2]


@pytest.mark.slow
def test_edge_scenes_writes_videos_and_ground_truth(tmp_path):
    result = run("edge", "scenes", "--out", str(tmp_path), "--people", "1", "--fps", "5")
    assert result.returncode == 0, result.stderr
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    assert {c["modality"] for c in truth["cameras"]} == {"visible", "infrared"}
    assert all((tmp_path / c["video"]).stat().st_size > 0 for c in truth["cameras"])


@pytest.mark.slow
def test_calibrate_int8_placement_options_reach_the_quantiser(tmp_path):
    from hybreid.cli import main

    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "onnx", "--model", "haresformer_tiny", "--out", str(onnx_path)]) == 0
    reasons = {}
    for label, flags in (("default", []), ("all", ["--quantize-concat-inputs", "--quantize-output-layers",
                                                   "--exclude", "/model/stem/stem.0/Conv"])):
        out = tmp_path / label
        assert main(["calibrate", "int8", "--artifact", str(onnx_path), "--target", "tensorrt", "--method", "minmax",
                     "--count", "8", "--no-attention-comparison", "--out", str(out), *flags]) == 0
        (run,) = json.loads((out / "quantization_report.json").read_text())["runs"]
        reasons[label] = run["unquantized_nodes"]
    # By default the CFFM 4 conv is split per part and its parts, writing the embedding, stay float.
    assert any("__part" in name and "writes the embedding" in reason for name, reason in reasons["default"].items())
    assert not any("__part" in name or "writes the embedding" in reason for name, reason in reasons["all"].items())
    assert reasons["all"]["/model/stem/stem.0/Conv"] == "excluded by name"


def test_the_infrared_band_choices_are_the_generators_bands():
    from hybreid.synthetic.cli import INFRARED_BANDS
    from hybreid.synthetic.people import NEAR_INFRARED, THERMAL

    assert INFRARED_BANDS == (NEAR_INFRARED, THERMAL)  # the first is the default, as in CameraSet.make
    result = run("edge", "scenes", "--out", "unused", "--infrared-band", "ultraviolet")
    assert result.returncode != 0 and "near_infrared" in result.stderr


def test_every_option_of_every_verb_has_help_and_the_vocabulary_is_one():
    import argparse

    from hybreid.cli import build_parser

    missing, model_files = [], {}

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction):
                if not action.help:
                    missing.append(" ".join([*path, *(action.option_strings or [action.dest])]))
                for option in ("--model", "--checkpoint", "--artifact", "--onnx", "--model-file"):
                    if option in action.option_strings:
                        model_files.setdefault(option, []).append(" ".join(path))

    walk(build_parser(), ["hybreid"])
    assert not missing, f"options without help: {missing}"
    assert "--onnx" not in model_files and "--model-file" not in model_files
    # --model is always a registry name: the verbs that take one build or count a model.
    assert all(verb.split()[1] in ("bench", "export") for verb in model_files["--model"])


def test_version_and_loudness_flags(tmp_path):
    from hybreid import __version__

    assert run("--version").stdout.strip() == f"hybreid {__version__}"
    assert run("-q", "-v", "models").returncode == 2  # one or the other
