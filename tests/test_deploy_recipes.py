"""The deployment recipes in deploy/: the systemd units pass `systemd-analyze verify`, every
hybreid command they and the compose file run is one the command line accepts, and what the
compose file mounts, names and configures exists."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hybreid.cli import build_parser
from hybreid.edge_runtime.site import validate_site

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALLED = "/opt/hybreid/venv/bin/hybreid"


def exec_start(unit: Path) -> list[str]:
    text = unit.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line[len("ExecStart="):])


def test_there_is_a_unit_for_each_service():
    assert [unit.name for unit in UNITS] == ["hybreid-console.service", "hybreid-edge.service",
                                             "hybreid-matcher.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_each_systemd_unit_passes_systemd_analyze_verify(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    hybreid = shutil.which("hybreid") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "hybreid")
    copy = tmp_path / unit.name  # verify checks that the command exists: this machine's hybreid
    copy.write_text(unit.read_text().replace(INSTALLED, hybreid))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    warnings = [line for line in result.stderr.splitlines() if unit.name in line]
    assert result.returncode == 0 and not warnings, result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_each_unit_restarts_and_keeps_its_state_under_var_lib(unit):
    text = unit.read_text()
    command = exec_start(unit)
    assert command[0] == INSTALLED
    build_parser().parse_args(command[1:])  # a command the command line accepts
    assert "Restart=always" in text and "User=hybreid" in text and "StateDirectory=hybreid" in text
    assert "--log-format json" in " ".join(command)
    if unit.name != "hybreid-console.service":
        assert "--metrics-port" in command
        assert any(part.startswith("/var/lib/hybreid/") or part == "/etc/hybreid/site.yaml" for part in command)


def test_the_compose_file_runs_accepted_commands_on_declared_volumes():
    compose = yaml.safe_load((DEPLOY / "container" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"broker", "scenes", "matcher", "console", "edge"}
    declared = set(compose["volumes"])
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith("./") or source in declared, f"{name} mounts an undeclared volume {source}"
        if "build" in service:  # the image's entry point is `hybreid --log-format json`
            build_parser().parse_args(["--log-format", "json", *shlex.split(service["command"])])
    assert set(services["console"]["secrets"]) <= set(compose["secrets"])
    assert "--token-file" in services["console"]["command"]  # it binds 0.0.0.0 inside its container
    # SQLite's write-ahead log needs its readers to write the index beside the gallery
    assert "matcher-data:/data" in services["console"]["volumes"]
    site = yaml.safe_load((DEPLOY / "container" / "site.yaml").read_text())
    settings = validate_site(site, "deploy/container/site.yaml")
    assert settings.outbox.path.startswith("/data/")  # the edge-data volume: the outbox persists
    assert all(camera.source.startswith("/scenes/site/") for camera in settings.cameras)
