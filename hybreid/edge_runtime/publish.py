"""Publishing: the outbox drained to an MQTT broker with QoS 1 (paho-mqtt 2.x).

A record leaves the outbox only when the broker's PUBACK for it arrives and says the
broker took it. While the broker is away nothing is published; after reconnecting,
every record still in the outbox is sent again (the matcher de-duplicates on
``(site, camera_id, seq)``).

A publish the broker refuses (its ACL, a quota) is answered under MQTT 5 by a PUBACK
whose reason code says so ("Not authorized", 0x87): the record stays in the outbox, is
counted (``mqtt_refused``) and logged, and is tried again after ``retry_refused_s``.
Under MQTT 3.1.1 the broker answers a refused publish with a plain PUBACK, so the
refusal cannot be known here: the record is deleted as if delivered. Use MQTT 5.

Every camera has its own retained status on ``hybreid/v1/{site}/{camera}/status`` and
its own last will: a small status connection per camera (client id
``<client_id>-<camera>``, user ``<username>.<camera>`` with the box's password, as
``hybreid site broker-acl`` sets the broker up; ``broker.camera_logins: false`` keeps the
box's user), because MQTT allows one will per connection and a box's cameras must each go
``offline`` when the box vanishes. TLS and username/password are supported.
"""

from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt

from hybreid import protocol
from hybreid.edge_runtime.outbox import Outbox
from hybreid.mqtt.client import BrokerConfig, make_client
from hybreid.mqtt.delivery import Deliveries

log = logging.getLogger("hybreid.edge.publish")


class CameraStatus:
    """One camera's retained status and last will, on a connection of its own.

    The state follows the frames, not the connection: ``no_frames`` until the camera delivers
    one and whenever it stops delivering (a dead stream, a missing device), ``online`` while
    frames arrive, ``offline`` when the box stops (or, as the last will, vanishes).
    """

    def __init__(self, broker: BrokerConfig, site: str, camera: str, camera_logins: bool):
        self.topic, self.camera = protocol.status_topic(site, camera), camera
        own = {"username": protocol.status_login(broker.username, camera)} if broker.username and camera_logins else {}
        config = BrokerConfig(**{**broker.__dict__, "client_id": f"{broker.client_id}-{camera}", **own})
        self.client = make_client(config, (self.topic, protocol.encode_status("offline", camera, time.time())))
        self.client.on_connect = self._on_connect
        self.connected = threading.Event()
        self.broker = config
        self.state = "no_frames"

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.warning("broker refused camera %s's status connection: %s", self.camera, reason_code)
            return
        client.publish(self.topic, protocol.encode_status(self.state, self.camera, time.time()), qos=1, retain=True)
        self.connected.set()

    def report(self, state: str) -> None:
        """Publish ``state`` if it changed (and again on every reconnect)."""
        if state == self.state:
            return
        self.state = state
        if self.client.is_connected():
            self.client.publish(self.topic, protocol.encode_status(state, self.camera, time.time()), qos=1,
                                retain=True)

    def start(self) -> None:
        host, port, _ = self.broker.endpoint()
        self.client.connect_async(host, port, keepalive=self.broker.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        try:
            if self.client.is_connected():
                self.client.publish(self.topic, protocol.encode_status("offline", self.camera, time.time()), qos=1,
                                    retain=True).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass  # the broker went away during shutdown; the last will says offline
        self.client.disconnect()
        self.client.loop_stop()


class Publisher(threading.Thread):
    def __init__(self, outbox: Outbox, broker: BrokerConfig, site: str, cameras: list[str], *, camera_logins: bool,
                 max_in_flight: int = 200, retry_refused_s: float = 60.0, report_unreachable_s: float = 10.0):
        super().__init__(name="publisher", daemon=True)
        self.outbox, self.broker, self.site, self.cameras = outbox, broker, site, cameras
        self.max_in_flight, self.retry_refused_s = max_in_flight, retry_refused_s
        self.report_unreachable_s = report_unreachable_s
        self.client = make_client(broker)
        self.statuses = [CameraStatus(broker, site, camera, camera_logins) for camera in cameras]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._deliveries = Deliveries(self._settle)  # mid -> (camera_id, seq)
        # Never held while calling into paho: paho calls _on_publish holding its own lock.
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, int], float] = {}  # record -> when to try it again
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self.published = self.acknowledged = self.refused = self.disconnects = 0
        if str(broker.protocol) != "5":
            log.warning("MQTT 3.1.1 cannot tell a refused publish from a delivered one: a record the broker's "
                        "ACL refuses is lost; set broker.protocol: \"5\"")

    # paho callbacks (VERSION2 signatures) ------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self._connected.set()
        log.info("connected to %s", self.broker.url)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self._connected.clear()
        self._deliveries.forget()  # whatever was in flight is resent from the outbox after reconnecting
        if not self._stopping.is_set():
            self.disconnects += 1
            log.warning("disconnected from the broker (%s); records wait in the outbox", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        self._deliveries.acknowledged(mid, reason_code)

    def _settle(self, record: tuple[str, int], refused: bool, reason_code=None) -> None:
        if not refused:
            self.outbox.ack(*record)
            self.acknowledged += 1
            return
        with self._lock:
            self._refused[record] = time.monotonic() + self.retry_refused_s
        self.refused += 1
        log.warning("the broker refused record %s/%d (%s); it stays in the outbox, tried again in %.0f s",
                    record[0], record[1], reason_code, self.retry_refused_s)

    # ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def in_flight(self) -> int:
        return len(self._deliveries)

    def run(self) -> None:
        host, port, _ = self.broker.endpoint()
        for status in self.statuses:
            status.start()
        self.client.connect_async(host, port, keepalive=self.broker.keepalive)
        self.client.loop_start()
        waiting_since, reported = time.monotonic(), 0.0
        while not self._stopping.is_set():
            if not self._connected.wait(0.2):
                waited = time.monotonic() - waiting_since
                if waited >= max(self.report_unreachable_s, 6 * reported):
                    reported = waited
                    log.warning("no connection to the broker at %s for %.0f s; %d records wait in the outbox",
                                self.broker.url, waited, self.outbox.depth())
                continue
            waiting_since, reported = time.monotonic(), 0.0
            now = time.monotonic()
            with self._lock:
                for record in [r for r, retry_at in self._refused.items() if retry_at <= now]:
                    del self._refused[record]
                busy = set(self._deliveries.records()) | set(self._refused)
            room = self.max_in_flight - len(busy)
            rows = self.outbox.pending(limit=room, exclude=busy) if room > 0 else []
            for camera_id, seq, topic, payload in rows:
                if not self._connected.is_set():
                    break
                info = self.client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    continue
                self.published += 1
                self._deliveries.sent(info.mid, (camera_id, seq))
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
        for status in self.statuses:
            status.stop()
        self.client.disconnect()
        self.client.loop_stop()
