"""Shared fixtures: a Mosquitto broker, the tiny ONNX model, synthetic scenes, a subscriber."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybreid.mqtt.mosquitto import Mosquitto

# Prepended to a script run in a fresh interpreter: a camera box has no torch or timm.
WITHOUT_TORCH = """import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'timm', 'torchvision'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def _openvino_unavailable() -> str | None:
    from hybreid.inference.openvino_backend import openvino_unavailable_reason

    return openvino_unavailable_reason()


OPENVINO_MISSING = _openvino_unavailable()
# OpenVINO's runtime runs on x86-64 CPUs; elsewhere (ARM, or without the package) the test is
# skipped with the reason, counted in the summary.
requires_openvino = pytest.mark.skipif(OPENVINO_MISSING is not None, reason=f"needs OpenVINO: {OPENVINO_MISSING}")


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
    from hybreid.matcher.postgres_server import PostgresServer, postgres_programs

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


class Subscriber:
    """A plain MQTT client that records everything under hybreid/v1/, with a persistent
    session so nothing is lost while the broker restarts."""

    def __init__(self, broker: Mosquitto, client_id: str = "test-subscriber"):
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_message = lambda client, userdata, message: self.messages.append(
            (message.topic, message.payload))
        self.client.on_connect = lambda client, *args: client.subscribe("hybreid/v1/#", qos=1)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        # Until the broker's SUBACK, what an edge publishes would not reach this first-time subscriber.
        assert subscribed.wait(10), "the test subscriber was not subscribed within 10 s"

    def features(self):
        from hybreid.protocol import decode_feature

        return [decode_feature(payload, topic) for topic, payload in self.messages if topic.endswith("/features")]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
