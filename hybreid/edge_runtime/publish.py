"""Publishing: the outbox drained to an MQTT broker with QoS 1 (paho-mqtt 2.x).

A record leaves the outbox only when the broker's PUBACK for it arrives. While the
broker is away nothing is published; after reconnecting, every record still in the
outbox is sent again (the matcher de-duplicates on ``(camera_id, seq)``). The camera
box's status is retained on ``hybreid/v1/{site}/{camera}/status`` (``online``), with a
last will that makes the broker publish ``offline`` if the box vanishes. TLS and
username/password are supported; MQTT 3.1.1 or 5.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from hybreid import protocol
from hybreid.edge_runtime.outbox import Outbox
from hybreid.errors import UserError

log = logging.getLogger("hybreid.edge.publish")


@dataclass
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "hybreid-edge"
    username: str | None = None
    password: str | None = None
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    protocol: str = "3.1.1"  # or "5"
    keepalive: int = 30

    def endpoint(self) -> tuple[str, int, bool]:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise UserError(f"broker url must look like mqtt://host:1883 or mqtts://host:8883, got {self.url!r}")
        tls = parsed.scheme == "mqtts"
        return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


def make_client(config: BrokerConfig, will: tuple[str, bytes] | None = None,
                persistent_session: bool = False) -> mqtt.Client:
    """A paho 2.x client (VERSION2 callbacks). ``persistent_session`` keeps the broker-side
    session for MQTT 3.1.1 (clean_session=False); for MQTT 5 pass ``clean_start=False``
    and a session expiry when connecting."""
    version = mqtt.MQTTv5 if str(config.protocol) == "5" else mqtt.MQTTv311
    session = {"clean_session": not persistent_session} if version == mqtt.MQTTv311 else {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=version, **session)
    if config.username:
        client.username_pw_set(config.username, config.password)
    if config.endpoint()[2]:
        client.tls_set(ca_certs=config.ca_certs, certfile=config.certfile, keyfile=config.keyfile)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


class Publisher(threading.Thread):
    def __init__(self, outbox: Outbox, broker: BrokerConfig, site: str, cameras: list[str],
                 max_in_flight: int = 200):
        super().__init__(name="publisher", daemon=True)
        self.outbox, self.broker, self.site, self.cameras = outbox, broker, site, cameras
        self.max_in_flight = max_in_flight
        will_camera = cameras[0] if cameras else "box"
        self.client = make_client(broker, (protocol.status_topic(site, will_camera),
                                           protocol.encode_status("offline", will_camera, time.time())))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        # Never held while calling into paho: paho calls _on_publish holding its own lock.
        self._lock = threading.Lock()
        self._in_flight: dict[int, tuple[str, int]] = {}  # mid -> (camera_id, seq)
        self._early_acks: dict[int, float] = {}  # PUBACKs that beat publish()'s return: mid -> time
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self.published = self.acknowledged = self.disconnects = 0

    # paho callbacks (VERSION2 signatures) ------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        for camera in self.cameras:
            client.publish(protocol.status_topic(self.site, camera),
                           protocol.encode_status("online", camera, time.time()), qos=1, retain=True)
        self._connected.set()
        log.info("connected to %s", self.broker.url)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self._connected.clear()
        with self._lock:
            # Whatever was in flight is resent from the outbox after reconnecting.
            self._in_flight.clear()
            self._early_acks.clear()
        if not self._stopping.is_set():
            self.disconnects += 1
            log.warning("disconnected from the broker (%s); records wait in the outbox", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self._lock:
            record = self._in_flight.pop(mid, None)
            if record is None:
                self._early_acks[mid] = time.monotonic()
        if record is not None:
            self._acknowledge(record)

    def _acknowledge(self, record: tuple[str, int]) -> None:
        self.outbox.ack(*record)
        self.acknowledged += 1

    # ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def run(self) -> None:
        host, port, _ = self.broker.endpoint()
        self.client.connect_async(host, port, keepalive=self.broker.keepalive)
        self.client.loop_start()
        while not self._stopping.is_set():
            if not self._connected.wait(0.2):
                continue
            with self._lock:
                busy = set(self._in_flight.values())
            room = self.max_in_flight - len(busy)
            rows = self.outbox.pending(limit=room, exclude=busy) if room > 0 else []
            for camera_id, seq, topic, payload in rows:
                if not self._connected.is_set():
                    break
                info = self.client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    continue
                self.published += 1
                with self._lock:
                    acked_already = self._early_acks.pop(info.mid, None) is not None
                    if not acked_already:
                        self._in_flight[info.mid] = (camera_id, seq)
                    # Status messages' PUBACKs land in _early_acks too; let them age out.
                    stale = time.monotonic() - 60
                    for mid in [m for m, t in self._early_acks.items() if t < stale]:
                        del self._early_acks[mid]
                if acked_already:
                    self._acknowledge((camera_id, seq))
            if not rows:
                self._stopping.wait(0.05)

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0:
                return True
            time.sleep(0.05)
        return self.outbox.depth() == 0

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=5)
        try:
            for camera in self.cameras:
                if self._connected.is_set():
                    self.client.publish(protocol.status_topic(self.site, camera),
                                        protocol.encode_status("offline", camera, time.time()), qos=1,
                                        retain=True).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass  # the broker went away during shutdown; the last will says offline
        self.client.disconnect()
        self.client.loop_stop()
