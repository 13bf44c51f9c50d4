"""The matcher service: MQTT ingest -> validate -> gallery -> identity -> event.

Decisions go out on ``hybreid/v1/{site}/events`` at least once (:mod:`.events`): a feature
is acknowledged to the broker only after its event's PUBACK, and a feature delivered again
(after a crash) re-emits the decision stored with it. Consumers de-duplicate events on
``(site, camera_id, seq)``. Re-association's ``reassign`` and ``merge`` events are stored in
the gallery with the change they announce and leave it only when the broker acknowledges
them (sent again after a broker outage or a crash; consumers de-duplicate them on their
content).

Ingest is micro-batched: paho's network thread only queues each message; a worker takes
what has arrived (up to ``BATCH_SIZE``, waiting at most ``BATCH_WAIT_S`` for more), decides
the messages in order and stores them in one transaction, then publishes their events.
A message is acknowledged only after its batch committed and its event's PUBACK came.

Scale-out: with ``shared_group`` the matcher subscribes through an MQTT v5 shared
subscription (``$share/<group>/...``) and several matchers split the stream. The
broker spreads *messages*, not cameras, so every matcher instance must then use the
same gallery (PostgreSQL, ``--db postgresql://...``); with separate galleries, give each
instance its own cameras by site instead (``--site``).

An instance killed and left dead holds the messages the broker already routed to its
persistent session (a third of them, with three instances) until it comes back: run each
instance under a supervisor that restarts it (its session, and the messages in it, are
resumed by the same client id). For an instance that will not come back, any host takes its
session over with ``matcher run --drain`` under its client id (its user, where the broker
binds client ids to users): the messages waiting there are decided into the shared gallery,
then the session is ended, so the broker stops routing the group's messages to it. The
broker keeps an abandoned session for ``session_expiry`` (a day) and then drops it with its
messages: drain before that.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

from hybreid import protocol
from hybreid.errors import UserError
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.camera_graph import CameraGraph
from hybreid.matcher.database import StoreUnavailable
from hybreid.matcher.events import EventPublisher
from hybreid.mqtt import BrokerConfig, make_client
from hybreid.protocol import ProtocolError

log = logging.getLogger("hybreid.matcher")


BATCH_SIZE = 256
BATCH_WAIT_S = 0.005
LAG_WARNING_S = 120.0  # behind the cameras by more than this: said in the log, once a minute at most
UNREACHABLE_WARNING_S = 10.0  # no broker connection for this long: said, then at growing intervals
STORED_EVENTS_EVERY_S = 2.0  # stored events not yet acknowledged are looked for this often
DRAIN_IDLE_S = 3.0  # a drained session: nothing arrived for this long after the reconnect
STORE_RETRY_S = 2.0  # between attempts while the gallery's database is unreachable


class MatcherService:
    """The matcher on MQTT. ``drain``: take over the session of an instance that will not come
    back (its client id, or with client ids bound to users, its user): decide what waits in it,
    subscribed to nothing new, then end the session so the broker stops routing the shared
    group's messages to it (see the module's docstring)."""

    def __init__(self, matcher: Matcher, broker: BrokerConfig, site: str = "+", shared_group: str | None = None,
                 session_expiry: int = 24 * 3600, drain: bool = False):
        self.matcher, self.broker, self.site, self.shared_group = matcher, broker, site, shared_group
        self.session_expiry, self.drain = session_expiry, drain
        self.last_message_at = time.monotonic()
        # A persistent session: QoS 1 messages sent while the matcher is down wait at the
        # broker, and a message is acknowledged only after its sighting is committed.
        if shared_group:
            broker.protocol = "5"
        self.client = make_client(broker, persistent_session=True)
        # A feature is acknowledged only once its event is at the broker (the event's PUBACK):
        # a matcher killed in between gets the feature again and re-emits the stored decision.
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.events = EventPublisher(self.client, matcher.gallery)
        self.client.on_publish = self.events.on_publish
        self._inbox: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_stop = threading.Event()
        # Set on the broker's SUBACK, not on CONNACK: a message published between the two
        # would not reach a first-time subscriber.
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self.internal_errors = 0
        self.store_unavailable = False
        self.reassociations = self.identities_merged = 0
        self.reassociation_seconds = 0.0
        self.cameras: dict[str, dict] = {}  # "site/camera" -> its latest status

    def use_camera_graph(self, graph: CameraGraph) -> None:
        """Where and when people can walk: the least walks that rule identities out, online and
        in re-association, and the links whose walking time makes a transit plausible."""
        self.matcher.walks = graph.walks()

    @property
    def subscription(self) -> str:
        topic = protocol.features_subscription(self.site)
        return f"$share/{self.shared_group}/{topic}" if self.shared_group else topic

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            log.warning("broker refused the matcher: %s", reason_code)
            return
        self.connected.set()
        if self.drain:  # what the session holds arrives by itself; nothing new may join it
            self.last_message_at = time.monotonic()
            client.unsubscribe(self.subscription)
            self.subscribed.set()
            return
        # Statuses outside the shared group: every instance follows every camera.
        client.subscribe([(self.subscription, 1), (protocol.status_subscription(self.site), 1)])

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self.connected.clear()
        self.events.disconnected()
        if not self._worker_stop.is_set():
            log.warning("disconnected from the broker (%s); unacknowledged messages wait there", reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        if reason_codes[0].is_failure:
            log.warning("broker refused the matcher's subscription to %s: %s", self.subscription, reason_codes[0])
            return
        if len(reason_codes) > 1 and reason_codes[1].is_failure:
            log.warning("broker refused the cameras' statuses to the matcher: %s", reason_codes[1])
        log.info("subscribed to %s", self.subscription)
        self.subscribed.set()

    def _on_message(self, client, userdata, message):
        self.last_message_at = time.monotonic()
        if message.topic.endswith("/status"):
            self._follow_camera(message)
            client.ack(message.mid, message.qos)
            return
        self._inbox.put(message)  # decided by the worker, in batches (paho's thread must keep reading)

    def _follow_camera(self, message) -> None:
        """A camera's retained status: kept for :meth:`status`, and said when it stops delivering."""
        try:
            status = protocol.decode_status(message.payload, message.topic)
        except ProtocolError as exc:
            log.warning("ignored a status message on %s: %s", protocol.loggable(message.topic),
                        protocol.loggable(str(exc)))
            return
        key = f"{status.site}/{status.camera_id}"
        previous = self.cameras.get(key, {}).get("state")
        self.cameras[key] = {"state": status.state, "since": status.ts}
        if status.state != previous and status.state != "online":
            log.warning("camera %s is %s", key, status.state)

    def _work(self) -> None:
        while not self._worker_stop.is_set():
            try:
                batch = [self._inbox.get(timeout=0.1)]
            except queue.Empty:
                continue
            deadline = time.monotonic() + BATCH_WAIT_S
            while len(batch) < BATCH_SIZE:
                try:
                    batch.append(self._inbox.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            while not self._worker_stop.is_set():
                try:
                    self._decide(batch)
                except StoreUnavailable as exc:  # nothing acknowledged: the batch waits for the store
                    if not self.store_unavailable:
                        log.warning("%s: %d messages wait unacknowledged; retrying every %.0f s", exc, len(batch),
                                    STORE_RETRY_S)
                    self.store_unavailable = True
                    self._worker_stop.wait(STORE_RETRY_S)
                    continue
                except Exception:  # the worker must outlive anything: unacknowledged messages come again
                    self.internal_errors += 1
                    log.exception("the matcher's worker failed on a batch of %d messages", len(batch))
                if self.store_unavailable:
                    log.warning("the gallery's database is back; deciding again")
                    self.store_unavailable = False
                break

    def _decide(self, batch: list) -> None:
        try:
            events = self.matcher.handle_batch([(m.topic, m.payload) for m in batch])
        except StoreUnavailable:
            raise
        except Exception:  # a message that breaks its batch must not hold the others back: one by one
            log.exception("a batch of %d messages failed; deciding them one by one", len(batch))
            events = [self._decide_one(m) for m in batch]
        for message, event in zip(batch, events, strict=True):
            if event is None:  # rejected (counted) or failed: redelivery would change nothing
                self.client.ack(message.mid, message.qos)
                continue
            self.events.publish(event, message)

    def _decide_one(self, message) -> dict | None:
        try:
            return self.matcher.handle(message.topic, message.payload)
        except StoreUnavailable:
            raise
        except Exception:  # a bug must not take the site down: count it, keep serving
            self.internal_errors += 1
            self.matcher.gallery.count_rejection("internal_error")
            log.exception("failed to process a message on %s", protocol.loggable(message.topic))
            return None

    def start(self) -> None:
        host, port, _ = self.broker.endpoint()
        if str(self.broker.protocol) == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry
            self.client.connect_async(host, port, keepalive=self.broker.keepalive, clean_start=False,
                                      properties=properties)
        else:
            self.client.connect_async(host, port, keepalive=self.broker.keepalive)
        self.client.loop_start()
        self._worker_stop.clear()
        self._worker = threading.Thread(target=self._work, name="matcher-batches", daemon=True)
        self._worker.start()

    def stop(self, end_session: bool = False) -> None:
        """Stop deciding, then disconnect: messages still queued were never acknowledged, so the
        broker delivers them again to the next session. ``end_session``: the broker forgets the
        session (a drained one), with everything acknowledged first."""
        self._worker_stop.set()
        if self._worker is not None:
            self._worker.join()
        if end_session:
            deadline = time.monotonic() + 10
            while self.events.awaiting() and time.monotonic() < deadline:  # the last events' PUBACKs
                time.sleep(0.05)
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
            self.client.disconnect(properties=properties)
        else:
            self.client.disconnect()
        self.client.loop_stop()

    @property
    def deciding(self) -> bool:  # the thread that decides batches runs
        return self._worker is not None and self._worker.is_alive()

    def drained(self, idle_s: float) -> bool:
        """A draining service has decided and acknowledged all its session held: nothing came for
        ``idle_s`` and nothing waits."""
        return (self.subscribed.is_set() and time.monotonic() - self.last_message_at >= idle_s
                and self._inbox.empty() and not self.events.awaiting())

    def wait_until_subscribed(self, timeout: float = 10.0) -> None:
        """Block until the broker has acknowledged the subscription; stop and raise if it does not."""
        if not self.subscribed.wait(timeout):
            self.stop()
            raise UserError(f"the matcher could not subscribe at the broker at {self.broker.url}")

    def publish_stored_events(self) -> int:
        """Send the stored events the broker has not acknowledged yet; returns how many went out."""
        return self.events.publish_stored() if self.connected.is_set() else 0

    def reassociate(self) -> list[dict]:
        """Re-associate now; its events are stored with the change and then published (QoS 1):
        a merge committed while the broker is away, or just before a crash, is announced later."""
        started = time.perf_counter()
        events = self.matcher.reassociate(durable=True)
        self.reassociation_seconds += time.perf_counter() - started
        self.reassociations += 1
        self.identities_merged += len({event["from"] for event in events if event["type"] == "merge"})
        self.publish_stored_events()
        return events

    def run_forever(self, report_every: float = 60.0, reassociate_every: float = 10.0,
                    report_unreachable_s: float = UNREACHABLE_WARNING_S, lag_warning_s: float = LAG_WARNING_S) -> None:
        """Serve until asked to stop: report every ``report_every`` seconds, re-associate
        every ``reassociate_every`` (0: never); say when the broker has been out of reach for
        ``report_unreachable_s`` and when the decisions lag the cameras by ``lag_warning_s``."""
        self.start()
        next_report = next_reassociation = away_since = next_resend = time.monotonic()
        said_away = said_lag = 0.0
        try:
            while not self._stopping.wait(0.2):
                now = time.monotonic()
                if self.connected.is_set():
                    away_since, said_away = now, 0.0
                elif now - away_since >= max(report_unreachable_s, 6 * said_away):
                    said_away = now - away_since
                    log.warning("no connection to the broker at %s for %.0f s; nothing is decided meanwhile",
                                self.broker.url, said_away)
                lag = self.matcher.lag_s
                if lag is not None and lag > lag_warning_s and now - said_lag >= 60:
                    said_lag = now
                    log.warning("the matcher is %.0f s behind the cameras (the newest sighting it decided was "
                                "captured that long ago): messages are queueing at the broker", lag)
                if reassociate_every and now >= next_reassociation + reassociate_every:
                    next_reassociation = now
                    try:
                        self.reassociate()
                    except StoreUnavailable:
                        pass  # the worker says so once; re-association waits for the next round
                    except Exception:  # a bug in re-association must not stop the online matching
                        self.internal_errors += 1
                        log.exception("re-association failed")
                if now >= next_resend + STORED_EVENTS_EVERY_S:
                    next_resend = now
                    try:
                        self.events.forget_delivered()
                        self.publish_stored_events()
                    except StoreUnavailable:
                        pass  # the events stay stored; sent once the database is back
                if report_every and now >= next_report + report_every:
                    next_report = now
                    log.info("matcher: %s", json.dumps(self.status()))
                if self.drain and self.drained(DRAIN_IDLE_S):
                    log.info("drained the session of %s: %d messages decided; the session is ended",
                             self.broker.client_id, self.matcher.accepted + self.matcher.duplicates)
                    break
        finally:
            self.stop(end_session=self.drain and self.drained(DRAIN_IDLE_S))
            log.info("matcher stopped: %s", json.dumps(self.counters()))

    def request_stop(self, *_) -> None:
        self._stopping.set()

    def counters(self) -> dict:
        """What this instance did since it started (no database needed)."""
        return {"accepted": self.matcher.accepted, "duplicates": self.matcher.duplicates,
                "decided_again": self.matcher.decided_again, "batches": self.matcher.batches,
                "busy_seconds": round(self.matcher.busy_seconds, 3),
                "locked_seconds": round(self.matcher.gallery.locked_seconds, 3),
                "internal_errors": self.internal_errors, "broker_connected": self.connected.is_set(),
                "lag_s": None if self.matcher.lag_s is None else round(self.matcher.lag_s, 1),
                "inbox": self._inbox.qsize()}

    def status(self) -> dict:
        """The gallery's figures and this instance's counters; the counters alone, with the reason,
        while the gallery's database is away (a status report must not stop the service)."""
        try:
            gallery = self.matcher.gallery.stats()
        except StoreUnavailable as exc:
            gallery = {"store": f"unavailable: {exc}"}
        return {**gallery, **self.counters(), "cameras": dict(self.cameras), "time": time.time()}
