"""Results never land on earlier ones by accident, long steps show progress, plots are
scaled to their data, and an interrupted training run says how to continue it."""

import json
import subprocess
import sys

import numpy as np
import pytest

from hybreid.calibration.threshold import score_bins
from hybreid.cli import main
from hybreid.errors import UserError


def test_histogram_bins_follow_the_scores_not_the_cosine_range():
    genuine, impostor = np.array([0.985, 0.99, 0.999]), np.array([0.971, 0.975])
    bins = score_bins(genuine, impostor, 0.98)
    assert 0.96 < bins[0] < 0.971 and 0.999 < bins[-1] < 1.01
    assert len(bins) == 81 and np.all(np.diff(bins) > 0)
    assert score_bins(np.array([0.5]))[0] < 0.5 < score_bins(np.array([0.5]))[-1]  # one score: still a range


def test_a_training_run_refuses_the_folder_of_an_earlier_run(tmp_path):
    from hybreid.train.config import resolve_config
    from hybreid.train.trainer import Trainer

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: fusionreid_tiny\n")
    config = resolve_config("configs/train/fusionreid_synthetic.yaml", {"output": str(tmp_path / "run")})
    with pytest.raises(UserError, match="holds an earlier run.*resume=auto.*overwrite=true"):
        Trainer(config)


def test_an_interrupted_training_run_says_how_to_continue(monkeypatch, tmp_path, capsys):
    import hybreid.train.trainer as trainer_module

    class Interrupted:
        def __init__(self, config):
            self.output = tmp_path / "run"

        def fit(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "Trainer", Interrupted)
    code = main(["train", "--config", "configs/train/fusionreid_synthetic.yaml", "optim.epochs=2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "hybreid train --config configs/train/fusionreid_synthetic.yaml optim.epochs=2 resume=auto" in err


@pytest.mark.slow
def test_calibration_shows_progress_and_no_library_chatter(tmp_path, tiny_onnx):
    # A process of its own: pytest's log capture would swallow the chatter this looks for.
    result = subprocess.run([sys.executable, "-m", "hybreid.cli", "calibrate", "int8", "--artifact", str(tiny_onnx),
                             "--count", "8", "--method", "minmax", "--no-attention-comparison",
                             "--out", str(tmp_path / "int8")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "calibrating and measuring INT8" in result.stderr  # tqdm's bar
    assert "Created a copy of bias input" not in result.stdout + result.stderr  # ONNX Runtime's quantizer, INFO
    assert json.loads((tmp_path / "int8" / "provenance.json").read_text())["command"][:3] == [
        "hybreid", "calibrate", "int8"]
