"""The matcher's events on MQTT, at least once: a feature is acknowledged to the broker only
after its event's PUBACK, and re-association's events, stored with the change they announce,
leave the store only when the broker acknowledged them (sent again after an outage or a
crash)."""

from __future__ import annotations

import queue
import threading

import paho.mqtt.client as mqtt

from hybreid import protocol
from hybreid.matcher.database import StoreUnavailable
from hybreid.matcher.gallery import Gallery
from hybreid.mqtt.delivery import Deliveries


class EventPublisher:
    def __init__(self, client: mqtt.Client, gallery: Gallery):
        self.client, self.gallery = client, gallery
        # event mid -> what its PUBACK settles: ("feature", the feature's mid), ("stored", a stored
        # event's id), or None
        self._deliveries = Deliveries(self._settle)
        self._stored_in_flight: set[int] = set()  # stored events sent, their PUBACK not come yet
        self._delivered: queue.Queue = queue.Queue()  # stored events the broker acknowledged
        # Guards _stored_in_flight; never held while calling paho, which holds its own locks
        # when it calls on_publish.
        self._lock = threading.Lock()

    def on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        self._deliveries.acknowledged(mid, reason_code)

    def disconnected(self) -> None:
        with self._lock:
            self._stored_in_flight.clear()  # sent again once connected: the events stay stored

    def awaiting(self) -> int:
        """Events sent whose PUBACK has not come."""
        return len(self._deliveries)

    def _settle(self, settles: tuple[str, int], refused: bool, reason_code=None) -> None:
        """An event's PUBACK came: acknowledge its feature, or mark its stored copy delivered (a
        refused one stays stored, sent again later). Never a database call here: this may run
        in paho's network thread."""
        kind, key = settles
        if kind == "feature":
            self.client.ack(key, 1)
            return
        with self._lock:
            self._stored_in_flight.discard(key)
        if not refused:
            self._delivered.put(key)

    def publish(self, event: dict, feature=None, stored_id: int | None = None) -> None:
        """Publish an event (QoS 1); ``feature``'s message is acknowledged, or the stored event
        ``stored_id`` marked delivered, when the event's PUBACK comes. Should the connection be
        gone, the feature stays unacknowledged (the broker delivers it again after the
        reconnect, and its event goes out then), and a stored event stays stored."""
        info = self.client.publish(protocol.events_topic(event["site"]), protocol.encode_event(event), qos=1)
        # Recorded even when the connection is gone: paho may still send the event after the
        # reconnect, and its PUBACK must then find its mid (an unclaimed one would wait for the
        # mid's reuse and settle another record early).
        sent = info.rc == mqtt.MQTT_ERR_SUCCESS
        settles = (("feature", feature.mid) if feature is not None else ("stored", stored_id)
                   if stored_id is not None else None) if sent else None
        if stored_id is not None and not sent:
            with self._lock:
                self._stored_in_flight.discard(stored_id)  # sent again on the next round
        self._deliveries.sent(info.mid, settles)

    def publish_stored(self) -> int:
        """Send the stored events nobody has had acknowledged yet (after a crash, a broker outage,
        or just now); returns how many went out."""
        with self._lock:
            in_flight = set(self._stored_in_flight)
        pending = [(key, event) for key, event in self.gallery.pending_events() if key not in in_flight]
        for key, event in pending:
            with self._lock:
                self._stored_in_flight.add(key)
            self.publish(event, stored_id=key)
        return len(pending)

    def forget_delivered(self) -> None:
        """Delete the stored events the broker acknowledged (kept for the next round while the
        database is away: meanwhile they may go out once more)."""
        delivered = []
        while not self._delivered.empty():
            delivered.append(self._delivered.get())
        try:
            self.gallery.events_delivered(delivered)
        except StoreUnavailable:
            for key in delivered:
                self._delivered.put(key)
