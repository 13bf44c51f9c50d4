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
from hybreid.lab.mosquitto import Mosquitto
from hybreid.mqtt import BrokerConfig


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
    assert main(["site", "broker-acl", *map(str, sites), "--out", str(out), "--reader", "dashboard",
                 "--persistence-dir", str(tmp_path / "mosquitto")]) == 0
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


@pytest.mark.slow
def test_each_box_writes_only_its_own_cameras_and_the_matcher_alone_writes_events(secured):
    broker, passwords, out = secured
    acl = (out / "acl").read_text()
    assert "%u" not in acl and "hybreid/v1/+/" not in acl.split("user matcher")[0]
    matcher = Client(broker, "matcher", passwords["matcher"], subscribe="hybreid/v1/+/+/features")
    dashboard = Client(broker, "dashboard", passwords["dashboard"], subscribe="hybreid/v1/+/events")
    box_a = Client(broker, "box-a", passwords["box-a"])
    garage = Client(broker, "garage-box", passwords["garage-box"])
    cam_02 = Client(broker, "box-a.cam-02", passwords["box-a"])  # cam-02's status login, with its box's password
    for client in (matcher, dashboard, box_a, garage, cam_02):
        assert client.connected.wait(5)
    assert matcher.subscribed.wait(5) and dashboard.subscribed.wait(5)
    allowed = [(box_a, protocol.features_topic("lobby", "cam-01")), (box_a, protocol.features_topic("lobby", "cam-02")),
               (cam_02, protocol.status_topic("lobby", "cam-02")),
               (garage, protocol.features_topic("garage", "cam-01"))]
    refused = [(box_a, protocol.features_topic("lobby", "cam-03")),   # another box's camera
               (box_a, protocol.status_topic("lobby", "cam-02")),     # statuses are the status logins'
               (cam_02, protocol.status_topic("lobby", "cam-01")),    # another camera's status
               (cam_02, protocol.features_topic("lobby", "cam-02")),  # a status login sends no features
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
    expected_features = sorted(topic for _, topic in allowed if topic.endswith("/features"))
    deadline = time.monotonic() + 5
    while (len(matcher.received) < len(expected_features) or not dashboard.received) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # nothing refused may trail in behind what was allowed
    assert sorted(topic for topic, _ in matcher.received) == expected_features
    assert [topic for topic, _ in dashboard.received] == [protocol.events_topic("lobby")]
    intruder = Client(broker, "box-a", "wrong password")
    assert not intruder.connected.wait(2) and intruder.reason.is_failure
    anonymous = Client(broker, "", "")
    assert not anonymous.connected.wait(2)
    for client in (matcher, dashboard, box_a, garage, cam_02, intruder, anonymous):
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


@pytest.mark.slow
def test_a_refused_record_stays_in_the_outbox_under_mqtt5(secured, tmp_path):
    """box-b may write cam-03 only: a second camera the ACL does not know is refused, kept and counted."""
    broker, passwords, _ = secured
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for camera in ("cam-03", "cam-04"):
        for _ in range(3):
            outbox.add(camera, protocol.features_topic("lobby", camera), lambda seq: b'{"v":1}')
    config = BrokerConfig(url=broker.url, client_id="box-b", username="box-b", password=passwords["box-b"],
                          protocol="5")
    publisher = Publisher(outbox, config, "lobby", ["cam-03", "cam-04"], camera_logins=True, retry_refused_s=3600)
    kept = sorted(row[:2] for row in outbox.pending(10) if row[0] == "cam-04")
    publisher.start()
    deadline = time.monotonic() + 10
    while (publisher.acknowledged < 3 or publisher.refused < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    publisher.stop()
    assert publisher.acknowledged == 3 and publisher.refused == 3
    assert sorted(row[:2] for row in outbox.pending(10)) == kept and len(kept) == 3


BOX = """
import sys, time
from hybreid.edge_runtime.outbox import Outbox
from hybreid.edge_runtime.publish import Publisher
from hybreid.mqtt import BrokerConfig
config = BrokerConfig(url=sys.argv[1], client_id="box-a", username="box-a", password=sys.argv[2], protocol="5")
publisher = Publisher(Outbox(sys.argv[3]), config, "lobby", ["cam-01", "cam-02"], camera_logins=True)
publisher.start()
while not all(status.connected.is_set() for status in publisher.statuses):
    time.sleep(0.05)
print("online", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_every_camera_of_a_killed_box_goes_offline(secured, tmp_path):
    broker, passwords, _ = secured
    box = subprocess.Popen([sys.executable, "-c", BOX, broker.url, passwords["box-a"], str(tmp_path / "o.sqlite")],
                           stdout=subprocess.PIPE, text=True)
    assert box.stdout.readline().strip() == "online"
    box.send_signal(signal.SIGKILL)
    box.wait()
    watcher = Client(broker, "dashboard", passwords["dashboard"], subscribe="hybreid/v1/+/+/status")
    assert watcher.subscribed.wait(5)
    def states() -> dict:
        return {topic: json.loads(payload)["state"] for topic, payload in list(watcher.received)}

    deadline = time.monotonic() + 10  # the broker publishes the wills once it sees the connections gone
    while set(states().values()) != {"offline"} and time.monotonic() < deadline:
        time.sleep(0.05)
    watcher.close()
    assert states() == {protocol.status_topic("lobby", "cam-01"): "offline",
                      protocol.status_topic("lobby", "cam-02"): "offline"}


@pytest.mark.slow
def test_a_broker_nobody_answers_is_reported(tmp_path, caplog):
    from hybreid.lab.mosquitto import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.add("cam-01", protocol.features_topic("lobby", "cam-01"), lambda seq: b"{}")
    publisher = Publisher(outbox, BrokerConfig(url=url, protocol="5"), "lobby", ["cam-01"], camera_logins=True,
                          report_unreachable_s=0.3)
    with caplog.at_level("WARNING", logger="hybreid.edge.publish"):
        publisher.start()
        deadline = time.monotonic() + 5
        while "no connection to the broker" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        publisher.stop()
    assert f"no connection to the broker at {url}" in caplog.text and "1 records wait in the outbox" in caplog.text
    assert outbox.depth() == 1


class Session:
    """A persistent MQTT 3.1.1 session that subscribes to every feature, and can go away and
    come back (the matcher's, as a plain client)."""

    def __init__(self, broker: Mosquitto, user: str, password: str, client_id: str):
        self.received: list[str] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.username_pw_set(user, password)
        self.client.on_message = lambda c, u, message: self.received.append(message.topic)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_connect = lambda client, *args: client.subscribe(protocol.features_subscription(), qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def leave(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _burst(broker: Mosquitto, user: str, password: str, topic: str, count: int) -> None:
    """``count`` QoS 1 publishes, each acknowledged by the broker."""
    box = Client(broker, user, password)
    assert box.connected.wait(5)
    infos = [box.client.publish(topic, b"{}", qos=1) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(10)
    assert all(info.is_published() for info in infos)
    box.close()


def _one_box_site(tmp_path: Path, **extra) -> tuple[Path, dict[str, str]]:
    """broker-acl's files for one box (box-a, camera cam-01 at the lobby) and their passwords."""
    site = _site_file(tmp_path, "box-a", "lobby", ["cam-01"], **extra)
    out = tmp_path / "broker-files"
    assert main(["site", "broker-acl", str(site), "--out", str(out), "--persistence-dir", str(tmp_path / "m")]) == 0
    return out / "mosquitto.conf", {p.name: p.read_text().strip() for p in (out / "passwords").iterdir()}


def _received_after_a_return(broker: Mosquitto, password: str, count: int, timeout: float) -> int:
    """How many features the matcher's session receives when it comes back."""
    matcher = Session(broker, "matcher", password, "hybreid-matcher")
    deadline = time.monotonic() + timeout
    while len(matcher.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    matcher.leave()
    return len(matcher.received)


@pytest.mark.slow
def test_the_matchers_queue_holds_every_acknowledged_record_of_a_burst(tmp_path):
    """With Mosquitto's default max_queued_messages (1,000), a burst of 5,000 features while the
    matcher was away lost about 4,000 records the box was told were delivered."""
    settings, passwords = _one_box_site(tmp_path, outbox={"max_messages": 6000})
    with Mosquitto(tmp_path / "m", security=settings) as broker:
        Session(broker, "matcher", passwords["matcher"], "hybreid-matcher").leave()
        _burst(broker, "box-a", passwords["box-a"], protocol.features_topic("lobby", "cam-01"), 5000)
        assert _received_after_a_return(broker, passwords["matcher"], 5000, 30) == 5000


def test_a_box_cannot_take_over_the_matchers_session(tmp_path):
    """A box connecting with the matcher's client id and a clean session once wiped the matcher's
    queue (10 of 20 features lost): client ids are bound to users."""
    settings, passwords = _one_box_site(tmp_path)
    topic = protocol.features_topic("lobby", "cam-01")
    with Mosquitto(tmp_path / "m", security=settings) as broker:
        Session(broker, "matcher", passwords["matcher"], "hybreid-matcher").leave()
        _burst(broker, "box-a", passwords["box-a"], topic, 10)
        for claimed in ("hybreid-matcher", "matcher"):  # the id the matcher gave, and its user's
            thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=claimed, clean_session=True)
            thief.username_pw_set("box-a", passwords["box-a"])
            connected = threading.Event()
            thief.on_connect = lambda *args, connected=connected: connected.set()
            thief.connect("127.0.0.1", broker.port)
            thief.loop_start()
            assert connected.wait(5)  # the broker lets it in, as user box-a, under box-a's id
            thief.disconnect()
            thief.loop_stop()
        _burst(broker, "box-a", passwords["box-a"], topic, 10)
        assert _received_after_a_return(broker, passwords["matcher"], 20, 10) == 20


def test_overwrite_keeps_credentials_and_makes_password_files_private(tmp_path):
    """--overwrite once left password files at 0644 and gave every user a new password when one
    box was added."""
    import os
    import stat

    first = _site_file(tmp_path, "box-a", "lobby", ["cam-01"])
    out = tmp_path / "broker-files"
    assert main(["site", "broker-acl", str(first), "--out", str(out)]) == 0
    before = {p.name: p.read_text() for p in (out / "passwords").iterdir()}
    for path in [out / "passwd", *(out / "passwords").iterdir()]:
        os.chmod(path, 0o644)
    second = _site_file(tmp_path, "box-b", "lobby", ["cam-02"])
    assert main(["site", "broker-acl", str(first), str(second), "--out", str(out), "--overwrite"]) == 0
    after = {p.name: p.read_text() for p in (out / "passwords").iterdir()}
    assert {user: after[user] for user in before} == before and after["box-b"] not in before.values()
    for path in [out / "passwd", *(out / "passwords").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert main(["site", "broker-acl", str(first), str(second), "--out", str(out), "--overwrite",
                 "--new-passwords"]) == 0
    renewed = {p.name: p.read_text() for p in (out / "passwords").iterdir()}
    assert all(renewed[user] != after[user] for user in after)
