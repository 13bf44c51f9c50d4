"""The import contracts of `make lint` (setup.cfg, [importlinter]) hold, and they catch a
break: the same contracts over a copy of the package with one forbidden import fail."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "setup.cfg"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def test_the_package_keeps_its_import_contracts():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_an_upward_import_and_torch_on_the_edge_break_them(tmp_path):
    shutil.copytree(REPO / "hybreid", tmp_path / "hybreid", ignore=shutil.ignore_patterns("__pycache__"))
    protocol = tmp_path / "hybreid" / "protocol.py"
    protocol.write_text(protocol.read_text() + "\n\ndef _late():\n    import torch  # noqa: F401\n")
    gallery = tmp_path / "hybreid" / "matcher" / "gallery.py"
    upward = "\n\ndef _upward():\n    from hybreid.edge_runtime import publish  # noqa: F401\n"
    gallery.write_text(gallery.read_text() + upward)
    graph = tmp_path / "hybreid" / "matcher" / "camera_graph.py"
    test_world = "\n\ndef _test_world():\n    from hybreid.synthetic import site  # noqa: F401\n"
    graph.write_text(graph.read_text() + test_world)
    publish = tmp_path / "hybreid" / "edge_runtime" / "publish.py"
    publish.write_text(publish.read_text() + "\n\ndef _lab():\n    from hybreid.lab import mosquitto  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "hybreid.matcher is not allowed to import hybreid.edge_runtime" in result.stdout
    assert "hybreid.protocol -> torch" in result.stdout
    assert "hybreid.matcher.camera_graph -> hybreid.synthetic.site" in result.stdout
    assert "hybreid.edge_runtime.publish -> hybreid.lab.mosquitto" in result.stdout
