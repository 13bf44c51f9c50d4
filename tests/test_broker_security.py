"""Broker isolation from the site files, against a real Mosquitto: each box writes only its own
cameras, the matcher alone writes events; refused publishes stay in the outbox; every camera
has its own last will."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from hybreid import protocol
from hybreid.cli import main
from hybreid.edge_runtime.outbox import Outbox
from hybreid.edge_runtime.publish import Publisher
from hybreid.mqtt import BrokerConfig
from hybreid.mqtt.mosquitto import Mosquitto


def _site_file(folder: Path, name: str, site: str, cameras: list[str], **extra) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"site": site, "box_id": name, "model": {"path": "model.onnx"},
                                    "cameras": [{"id": c, "source": 0} for c in cameras], **extra}))
    return path


@pytest.fixture
def secured(tmp_path):
    """Two boxes at the lobby (two cameras and one), one at the garage, a matcher and a dashboard."""
    sites = [_site_file(tmp_path, "box-a", "lobby", ["cam-01", "cam-02"]),
             _site_file(tmp_path, "box-b", "lobby", ["cam-03"]),
             _site_file(tmp_path, "box-g", "garage", ["cam-01"], broker={"username": "garage-box"})]
    out = tmp_path / "broker-files"
    assert main(["site", "broker-acl", *map(str, sites), "--out", str(out), "--reader", "dashboard"]) == 0
    broker = Mosquitto(tmp_path / "mosquitto", security=out / "mosquitto.conf")
    broker.start()
    passwords = {p.name: p.read_text().strip() for p in (out / "passwords").iterdir()}
    yield broker, passwords, out
    broker.stop()


class Client:
    """An MQTT 5 client that records what it receives and each publish's reason code."""

    def __init__(self, broker: Mosquitto, user: str, password: str, subscribe: str | None = None):
        self.received: list[tuple[str, bytes]] = []
        self.reasons: dict[int, object] = {}
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.on_message = lambda c, u, message: self.received.append((message.topic, message.payload))
        self.client.on_publish = lambda c, u, mid, reason, props: self.reasons.__setitem__(mid, reason)
        self.client.on_subscribe = lambda *args: self.subscribed.set()

        def connected(client, userdata, flags, reason, properties):
            self.reason = reason
            if not reason.is_failure:
                self.connected.set()
                if subscribe:
                    client.subscribe(subscribe, qos=1)
        self.client.on_connect = connected
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes = b"{}"):
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        deadline = time.monotonic() + 5
        while info.mid not in self.reasons and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.reasons[info.mid]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_each_box_writes_only_its_own_cameras_and_the_matcher_alone_writes_events(secured):
    broker, passwords, out = secured
    acl = (out / "acl").read_text()
    assert "%u" not in acl and "hybreid/v1/+/" not in acl.split("user matcher")[0]
    matcher = Client(broker, "matcher", passwords["matcher"], subscribe="hybreid/v1/+/+/features")
    dashboard = Client(broker, "dashboard", passwords["dashboard"], subscribe="hybreid/v1/+/events")
    box_a = Client(broker, "box-a", passwords["box-a"])
    garage = Client(broker, "garage-box", passwords["garage-box"])
    for client in (matcher, dashboard, box_a, garage):
        assert client.connected.wait(5)
    assert matcher.subscribed.wait(5) and dashboard.subscribed.wait(5)
    allowed = [(box_a, protocol.features_topic("lobby", "cam-01")), (box_a, protocol.features_topic("lobby", "cam-02")),
               (box_a, protocol.status_topic("lobby", "cam-02")), (garage, protocol.features_topic("garage", "cam-01"))]
    refused = [(box_a, protocol.features_topic("lobby", "cam-03")),   # another box's camera
               (box_a, protocol.features_topic("garage", "cam-01")),  # its camera id, another site
               (box_a, protocol.features_topic("lobby", "cam-09")),   # a camera nobody has
               (box_a, protocol.events_topic("lobby")),                # events are the matcher's
               (garage, protocol.events_topic("garage")),
               (dashboard, protocol.events_topic("lobby")),
               (dashboard, protocol.features_topic("lobby", "cam-01"))]
    for client, topic in allowed:
        assert not client.publish(topic).is_failure, topic
    for client, topic in refused:
        reason = client.publish(topic)
        assert reason.is_failure and reason.value == 0x87, (topic, reason)  # Not authorized
    assert not matcher.publish(protocol.events_topic("lobby"), b'{"v":1}').is_failure
    time.sleep(0.5)
    assert sorted(topic for topic, _ in matcher.received) == sorted(
        topic for _, topic in allowed if topic.endswith("/features"))
    assert [topic for topic, _ in dashboard.received] == [protocol.events_topic("lobby")]
    intruder = Client(broker, "box-a", "wrong password")
    assert not intruder.connected.wait(2) and intruder.reason.is_failure
    anonymous = Client(broker, "", "")
    assert not anonymous.connected.wait(2)
    for client in (matcher, dashboard, box_a, garage, intruder, anonymous):
        client.close()


def test_broker_acl_refuses_unsafe_site_sets(tmp_path, capsys):
    cases = {
        "same user twice": [_site_file(tmp_path, "x1", "lobby", ["c1"], broker={"username": "same"}),
                            _site_file(tmp_path, "x2", "lobby", ["c2"], broker={"username": "same"})],
        "one camera, two boxes": [_site_file(tmp_path, "y1", "lobby", ["c1"]), _site_file(tmp_path, "y2", "lobby",
                                                                                          ["c1"])],
        "user named events": [_site_file(tmp_path, "z1", "lobby", ["c1"], broker={"username": "events"})],
        "user with a space": [_site_file(tmp_path, "z2", "lobby", ["c1"], broker={"username": "a b"})],
        "camera named events": [_site_file(tmp_path, "z3", "lobby", ["events"])],
        "box named like the matcher": [_site_file(tmp_path, "matcher", "lobby", ["c1"])],
    }
    for name, sites in cases.items():
        capsys.readouterr()
        assert main(["site", "broker-acl", *map(str, sites), "--out", str(tmp_path / name)]) == 2, name
        assert capsys.readouterr().err.count("\n") == 1
        assert not (tmp_path / name / "acl").exists()


def test_a_refused_record_stays_in_the_outbox_under_mqtt5(secured, tmp_path):
    """box-b may write cam-03 only: a second camera the ACL does not know is refused, kept and counted."""
    broker, passwords, _ = secured
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for camera in ("cam-03", "cam-04"):
        for _ in range(3):
            outbox.add(camera, protocol.features_topic("lobby", camera), lambda seq: b'{"v":1}')
    config = BrokerConfig(url=broker.url, client_id="box-b", username="box-b", password=passwords["box-b"],
                          protocol="5")
    publisher = Publisher(outbox, config, "lobby", ["cam-03", "cam-04"], retry_refused_s=3600)
    publisher.start()
    deadline = time.monotonic() + 10
    while (publisher.acknowledged < 3 or publisher.refused < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    publisher.stop()
    assert publisher.acknowledged == 3 and publisher.refused == 3
    assert sorted(row[:2] for row in outbox.pending(10)) == [("cam-04", 0), ("cam-04", 1), ("cam-04", 2)]


BOX = """
import sys, time
from hybreid.edge_runtime.outbox import Outbox
from hybreid.edge_runtime.publish import Publisher
from hybreid.mqtt import BrokerConfig
config = BrokerConfig(url=sys.argv[1], client_id="box-a", username="box-a", password=sys.argv[2], protocol="5")
publisher = Publisher(Outbox(sys.argv[3]), config, "lobby", ["cam-01", "cam-02"])
publisher.start()
while not all(status.connected.is_set() for status in publisher.statuses):
    time.sleep(0.05)
print("online", flush=True)
time.sleep(60)
"""


def test_every_camera_of_a_killed_box_goes_offline(secured, tmp_path):
    broker, passwords, _ = secured
    box = subprocess.Popen([sys.executable, "-c", BOX, broker.url, passwords["box-a"], str(tmp_path / "o.sqlite")],
                           stdout=subprocess.PIPE, text=True)
    assert box.stdout.readline().strip() == "online"
    box.send_signal(signal.SIGKILL)
    box.wait()
    time.sleep(1.0)
    watcher = Client(broker, "dashboard", passwords["dashboard"], subscribe="hybreid/v1/+/+/status")
    assert watcher.subscribed.wait(5)
    deadline = time.monotonic() + 5
    while len(watcher.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    watcher.close()
    states = {topic: json.loads(payload)["state"] for topic, payload in watcher.received}
    assert states == {protocol.status_topic("lobby", "cam-01"): "offline",
                      protocol.status_topic("lobby", "cam-02"): "offline"}


def test_a_broker_nobody_answers_is_reported(tmp_path, caplog):
    from hybreid.mqtt.mosquitto import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.add("cam-01", protocol.features_topic("lobby", "cam-01"), lambda seq: b"{}")
    publisher = Publisher(outbox, BrokerConfig(url=url, protocol="5"), "lobby", ["cam-01"], report_unreachable_s=0.3)
    with caplog.at_level("WARNING", logger="hybreid.edge.publish"):
        publisher.start()
        deadline = time.monotonic() + 5
        while "no connection to the broker" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        publisher.stop()
    assert f"no connection to the broker at {url}" in caplog.text and "1 records wait in the outbox" in caplog.text
    assert outbox.depth() == 1
