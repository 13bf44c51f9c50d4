"""A camera box installs only `hybreid[edge]`. In a real virtual environment with only
that extra, every verb that needs more says in one sentence which extra installs it and
exits 2; the verbs a box needs work there."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# verb -> the extra its message must name; worked out from what each verb runs, by hand.
NEEDS_MORE = {
    "models": "train",
    "train": "train",
    "eval --checkpoint m.pt --dataset market1501 --root .": "train",
    "export onnx --model fusionreid_tiny --out m.onnx": "train",
    "bench flops": "train",
    "bench train": "train",
    "bench latency": "train",
    "bench profile --artifact m.onnx": "train",
    "bench fidelity": "train",
    "bench matcher": "matcher",
    "bench identities --artifact m.onnx": "matcher",
    "bench site --artifact m.onnx": "matcher",
    "viz gradcam --checkpoint m.pt --dataset market1501 --root .": "train",
    "viz distribution --checkpoint m.pt --dataset market1501 --root .": "train",
    "demo": "train",
    "matcher run --db g.sqlite": "matcher",
    "matcher query --db g.sqlite --identity 1": "matcher",
    "matcher purge --db g.sqlite --identity 1": "matcher",
}


@pytest.fixture(scope="module")
def edge_only(tmp_path_factory) -> Path:
    """A virtual environment with `pip install -c constraints.txt -e '.[edge]'`, nothing more."""
    venv = tmp_path_factory.mktemp("edge-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--progress-bar",
                              "off", "-c", str(REPO / "constraints.txt"), "-e", f"{REPO}[edge]"],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin" / "hybreid"


def hybreid(program: Path, verb: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *verb.split()], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_edge_install_has_no_torch_timm_or_faiss(edge_only):
    python = edge_only.with_name("python")
    for module in ("torch", "timm", "faiss"):
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"{module} is installed: the test would prove nothing"


@pytest.mark.slow
@pytest.mark.parametrize("verb, extra", NEEDS_MORE.items())
def test_a_verb_that_needs_more_names_its_extra(edge_only, tmp_path, verb, extra):
    result = hybreid(edge_only, verb, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybreid: error:"), result.stderr
    assert f"pip install 'hybreid[{extra}]'" in lines[0]


@pytest.mark.slow
def test_the_verbs_a_camera_box_runs_work_there(edge_only, tmp_path, tiny_onnx):
    assert hybreid(edge_only, "--version", tmp_path).stdout.startswith("hybreid ")
    scenes = hybreid(edge_only, "edge scenes --out scenes --people 1 --fps 5", tmp_path)
    assert scenes.returncode == 0 and (tmp_path / "scenes" / "cam1.mp4").is_file(), scenes.stderr
    data = hybreid(edge_only, "data synth --layout market1501 --out data --train-ids 2 --test-ids 2", tmp_path)
    assert data.returncode == 0, data.stderr
    pipeline = hybreid(edge_only, f"bench pipeline --artifact {tiny_onnx} --people 1 --out pipe", tmp_path)
    assert pipeline.returncode == 0 and (tmp_path / "pipe" / "pipeline.json").is_file(), pipeline.stderr
