"""The ``hybreid`` command: output, files and one-sentence errors."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybreid.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_models_lists_every_registry_entry():
    from hybreid.models import REGISTRY

    result = run("models")
    assert result.returncode == 0
    for name in REGISTRY:
        assert name in result.stdout


def test_bench_flops_prints_a_table_and_saves_json(tmp_path):
    out = tmp_path / "flops.json"
    result = run("bench", "flops", "--model", "haresformer_tiny", "--out", str(out), "hgae=false")
    assert result.returncode == 0, result.stderr
    assert "| CFFM" in result.stdout and "| total" in result.stdout
    saved = json.loads(out.read_text())
    (model,) = saved["models"]
    assert model["model"] == "haresformer_tiny"
    hgae_row = next(r for r in model["rows"] if r["module"] == "HGAE")
    assert hgae_row["all_params_m"] == 0  # the override switched HGAE off


def test_unknown_model_is_one_clear_sentence():
    result = run("bench", "flops", "--model", "no_such_model")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown model 'no_such_model'" in result.stderr and "Traceback" not in result.stderr


def test_malformed_override_is_one_clear_sentence():
    result = run("bench", "flops", "--model", "fusionreid_tiny", "depth")
    assert result.returncode == 2
    assert "key=value" in result.stderr and "Traceback" not in result.stderr
