"""Shared fixtures: a real Mosquitto broker on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A Mosquitto process that a test can stop and start again (same port, persistent state)."""

    def __init__(self, folder: Path):
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.fail("mosquitto is not installed: `make test` installs it (apt-get install mosquitto)")
        self.binary, self.folder, self.port = binary, folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        # Run as root, Mosquitto drops to user 'mosquitto' unless told otherwise, and then
        # cannot write its persistence file here.
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nuser root\nmax_queued_messages 100000\n"
        )
        self.process: subprocess.Popen | None = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


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
    from hybreid.edge_runtime.scenes import render_scenes

    folder = tmp_path_factory.mktemp("scenes")
    return folder, render_scenes(folder, num_people=4)


class Subscriber:
    """A plain MQTT client that records everything under hybreid/v1/, with a persistent
    session so nothing is lost while the broker restarts."""

    def __init__(self, broker: Mosquitto, client_id: str = "test-subscriber"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_message = lambda client, userdata, message: self.messages.append(
            (message.topic, message.payload))
        self.client.on_connect = lambda client, *args: client.subscribe("hybreid/v1/#", qos=1)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def features(self):
        from hybreid.protocol import decode_feature

        return [decode_feature(payload, topic) for topic, payload in self.messages if topic.endswith("/features")]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
