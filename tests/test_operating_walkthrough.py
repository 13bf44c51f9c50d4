"""docs/operating.md's walkthrough, copied from the page and run as it is in a fresh folder:
a model, its thresholds, a signed bundle installed where the site file looks, a broker, a
matcher and an edge box, then the console over what they decided."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.request import urlopen

import pytest
from support import wait_for_line, wait_until

PAGE = Path(__file__).resolve().parent.parent / "docs" / "operating.md"
PORTS = (18883, 9464, 9465, 8080)


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    if not shutil.which("mosquitto", path=f"{os.environ['PATH']}{os.pathsep}/usr/sbin"):
        pytest.skip("mosquitto is not installed (make test installs it as root)")
    if taken := [port for port in PORTS if port_taken(port)]:
        pytest.skip(f"the walkthrough's ports {taken} are in use on this machine")
    walkthrough, console_block = bash_blocks()[:2]
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
                                         f"{os.pathsep}/usr/sbin"}
    result = subprocess.run(["bash", "-e", "-c", walkthrough], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # The infrared camera's sightings, as `matcher query` printed them, are the gallery's.
    answer = json.loads(result.stdout[result.stdout.index('{\n  "camera": "cam2"'):])
    with sqlite3.connect(tmp_path / "state" / "gallery.sqlite") as gallery:
        stored = gallery.execute("SELECT COUNT(*) FROM sightings WHERE camera_id = 'cam2'").fetchone()[0]
        cameras = {row[0] for row in gallery.execute("SELECT DISTINCT camera_id FROM sightings")}
    assert stored > 0 and len(answer["sightings"]) == stored and cameras == {"cam1", "cam2"}
    assert (tmp_path / "models" / "haresformer_tiny").is_symlink()
    assert all((tmp_path / "annotated" / f"cam{i}.mp4").stat().st_size > 0 for i in (1, 2))

    (command,) = [line for line in console_block.splitlines() if line.startswith("hybreid console")]
    console = subprocess.Popen(command.split(), cwd=tmp_path, env=environment, stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for_line(console.stdout, "console on http://127.0.0.1:8080/")

        def counts() -> dict | None:
            try:
                with urlopen("http://127.0.0.1:8080/api/counts?camera=cam2", timeout=5) as response:
                    return json.loads(response.read())
            except OSError:
                return None
        assert wait_until(lambda: counts() is not None)
        assert counts()["sightings"] == stored
    finally:
        console.terminate()
        console.wait(30)
