"""What the tests share: helpers for a camera box without torch, OpenVINO's availability, a
recording MQTT subscriber, synthetic features and a killable matcher process. Tests import
these from here, never from ``conftest`` or from one another; the stand-ins for hardware that
cannot exist on a CI machine are the submodules (``bindings_standin``, ``simulated_gpu``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from hybreid.lab.mosquitto import Mosquitto
from hybreid.protocol import FeatureMessage, encode_feature

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


DIM = 16


def unit(seed: int, noise: float = 0.0, base: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vector = np.random.default_rng(base).normal(size=DIM) if base is not None else rng.normal(size=DIM)
    vector = vector + noise * rng.normal(size=DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def feature(camera="cam1", seq=0, track=1, embedding=None, modality="visible", ts=100.0, first_ts=None,
            model_hash="h1") -> tuple[str, bytes]:
    message = FeatureMessage(site="lab", camera_id=camera, modality=modality, ts=ts, seq=seq, track_id=track,
                             box=(1, 2, 30, 80), score=0.9, model_name="m", model_hash=model_hash,
                             embedding=unit(seq) if embedding is None else embedding,
                             first_ts=ts - 2 if first_ts is None else first_ts)
    return message.topic, encode_feature(message)


def connected_publisher(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = connected_publisher(port, "hostile-publisher")
    for topic, payload in messages:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def matcher_command(broker_url: str, db) -> list[str]:
    """`hybreid matcher run` as a process the tests can kill: a fixed client id keeps its broker
    session across restarts; re-association is off so decisions compare with a plain Matcher's."""
    return [sys.executable, "-m", "hybreid.cli", "matcher", "run", "--broker", broker_url, "--db", str(db),
            "--client-id", "durable-matcher", "--report-every", "0.2", "--reassociate-every", "0"]


def start_matcher(broker_url: str, db, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """The killable matcher process, once it has subscribed: from then on the broker keeps its
    session, through a kill, for the restart."""
    process = subprocess.Popen(matcher_command(broker_url, db), stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert wait_for_line(process.stderr, "subscribed to"), "the matcher did not subscribe"
    return process


def wait_for_line(stream, marker: str, timeout: float = 15.0) -> bool:
    """Read ``stream`` line by line until one holds ``marker``; False at its end or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            return False
        if marker in line:
            return True
    return False


def wait_until(condition, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)
    return condition()


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


def with_thumbnail(topic_payload: tuple[str, bytes], thumbnail: str) -> tuple[str, bytes]:
    """A feature message (``feature``) carrying ``thumbnail`` as its payload's field, as given."""
    topic, payload = topic_payload
    return topic, json.dumps({**json.loads(payload), "thumbnail": thumbnail}).encode()


def http_get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Status, headers and body of a GET, an error status included."""
    try:
        with urlopen(Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
