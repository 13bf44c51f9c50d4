"""Shared fixtures: a Mosquitto broker, PostgreSQL, the tiny ONNX model, synthetic scenes
(helpers the tests share are in ``support``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybreid.lab.mosquitto import Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    """A real Mosquitto broker on a free loopback port."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """One PostgreSQL server for the session (Debian's package; `make test` installs it)."""
    from hybreid.lab.postgres_server import PostgresServer, postgres_programs

    if postgres_programs() is None:
        pytest.skip("needs PostgreSQL: apt-get install postgresql (make test installs it as root)")
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> str:
    """Where a gallery lives: a SQLite file, then a database on a real PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "g.sqlite")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """The tiny HAResformer exported once per test session (random weights)."""
    import torch

    from hybreid.export.onnx_export import export_onnx
    from hybreid.models import build

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_onnx") / "haresformer_tiny.onnx"
    return export_onnx(build("haresformer_tiny").eval(), path, "haresformer_tiny", {})


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> tuple[Path, dict]:
    """Two synthetic camera videos (visible, infrared) with four people, and their ground truth."""
    from hybreid.synthetic.scenes import render_scenes

    folder = tmp_path_factory.mktemp("scenes")
    return folder, render_scenes(folder, num_people=4)


# Fixtures that export, train, calibrate or render for seconds: a test that needs one is slow
# (left out of `make test-fast`), whatever its own body costs.
HEAVY_FIXTURES = {"tiny_onnx", "scenes", "small_demo", "fp32_model", "exported", "haresformer_reports", "world",
                  "market"}


def pytest_collection_modifyitems(items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
