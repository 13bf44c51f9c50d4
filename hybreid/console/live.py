"""The console's live view of a site from its broker: each camera's retained status (its last
will says ``offline``) and the matcher's events as they are published. Every payload is
decoded by the protocol's own schemas; what does not decode is counted and dropped."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque

from hybreid import protocol
from hybreid.mqtt import BrokerConfig
from hybreid.mqtt.client import make_client
from hybreid.protocol import ProtocolError

log = logging.getLogger(__name__)
KEPT_EVENTS = 200


class LiveFeed:
    def __init__(self, broker: BrokerConfig, site: str = "+"):
        self.broker, self.site = broker, site
        self.cameras: dict[str, dict] = {}  # "site/camera" -> state and since
        self.events: deque[tuple[int, dict]] = deque(maxlen=KEPT_EVENTS)  # (number, event), oldest first
        self.refused: Counter[str] = Counter()
        self.connected = threading.Event()
        self._numbered = 0
        self._changed = threading.Condition()
        self.client = make_client(broker)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_message = self._on_message

    def start(self) -> LiveFeed:
        host, port, _ = self.broker.endpoint()
        self.client.connect_async(host, port, keepalive=self.broker.keepalive)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        with self._changed:
            self._changed.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        client.subscribe([(protocol.status_subscription(self.site), 1), (protocol.events_topic(self.site), 1)])
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            if message.topic.endswith("/status"):
                status = protocol.decode_status(message.payload, message.topic)
                self.cameras[f"{status.site}/{status.camera_id}"] = {"site": status.site, "camera_id": status.camera_id,
                                                                    "state": status.state, "since": status.ts}
                return
            event = protocol.decode_event(message.payload).model_dump(by_alias=True, exclude={"v"})
        except ProtocolError as exc:
            self.refused[exc.reason] += 1
            log.debug("ignored a message on %s: %s", protocol.loggable(message.topic), protocol.loggable(str(exc)))
            return
        with self._changed:
            self._numbered += 1
            self.events.append((self._numbered, event))
            self._changed.notify_all()

    def events_after(self, number: int, timeout: float) -> list[tuple[int, dict]]:
        """The events numbered above ``number``, waiting up to ``timeout`` for one to arrive."""
        with self._changed:
            if not self.events or self.events[-1][0] <= number:
                self._changed.wait(timeout)
            return [(n, event) for n, event in self.events if n > number]

    def camera_states(self) -> list[dict]:
        return [self.cameras[key] for key in sorted(self.cameras)]
