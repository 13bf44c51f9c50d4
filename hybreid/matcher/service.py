"""The matcher service: MQTT ingest -> validate -> gallery -> identity -> event.

Every message is validated (protocol v1 schema, size, dimension, finite values, camera
id equal to the topic's, model identity equal to the gallery's); a rejected message is
counted under its reason, logged and acknowledged — the matcher never crashes on input.

Identity assignment for an accepted tracklet:

1. an update of a ``(camera, track)`` already seen stays on that track's identity;
2. otherwise the top-k identity prototypes are compared by cosine; a candidate is
   accepted at or above the same-modality threshold, or the cross-modality threshold when
   the identity has never been seen in the message's modality; a candidate seen by
   another camera during this tracklet's time span is skipped (one person is not in two
   places at once);
3. otherwise a new identity.

Prototypes move towards each new sighting at a bounded rate (``1/n``, at most
``prototype_rate``). Decisions go out on ``hybreid/v1/{site}/events``, at least once: a
feature is acknowledged to the broker only after its event's PUBACK, and a feature
delivered again (after a crash) re-emits the decision stored with it. Consumers
de-duplicate events on ``(site, camera_id, seq)``. Re-association's ``reassign`` and
``merge`` events are stored in the gallery with the change they announce and leave it only
when the broker acknowledges them (sent again after a broker outage or a crash; consumers
de-duplicate them on their content).

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

Instances sharing a gallery commit one batch at a time (the store's write transaction is
exclusive), and each commits what one instance alone would have decided after the
batches committed before it. To keep that exclusive part short, a batch is decided
tentatively before its transaction, against what the instance knew then; once the
transaction holds the lock, only the messages another instance's commit could have
changed are decided again: one whose camera track or ``(site, camera, seq)`` another
instance stored meanwhile, one that weighed (or chose) an identity another instance
changed, or one that a changed identity now matches. A message decided again differently
makes the identities it chose before and now changed for the messages after it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import paho.mqtt.client as mqtt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from hybreid import protocol
from hybreid.errors import UserError, validation_problem
from hybreid.files import MIB, read_regular_file
from hybreid.matcher.database import StoreUnavailable
from hybreid.matcher.gallery import Gallery, Write
from hybreid.matcher.reassociate import Transit, cluster, guard, plan
from hybreid.mqtt import BrokerConfig, make_client
from hybreid.protocol import FeatureMessage, ProtocolError

log = logging.getLogger("hybreid.matcher")


# A match threshold is a cosine in [0, 1]: NaN or a negative one would merge everyone.
Cosine = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class MatchPolicy(BaseModel):
    """The assignment's thresholds and search depth."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    same_modality: Cosine = 0.6
    cross_modality: Cosine = 0.45
    top_k: Annotated[int, Field(ge=1, le=1000)] = 5
    prototype_rate: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.2
    window_s: Annotated[float, Field(ge=0.0, le=30 * 86400.0, allow_inf_nan=False)] = 600.0  # re-association
    # Added to the cosine of two sightings whose gap fits the camera graph's walking time
    # between their cameras (re-association, with a camera graph).
    transit_bonus: Annotated[float, Field(ge=0.0, le=0.5, allow_inf_nan=False)] = 0.03

    @classmethod
    def from_thresholds_file(cls, path: str | Path, **overrides) -> MatchPolicy:
        """The thresholds written by ``hybreid calibrate threshold``, validated here."""
        return cls.from_thresholds(ThresholdsFile.load(path), **overrides)

    @classmethod
    def from_thresholds(cls, thresholds: ThresholdsFile, **overrides) -> MatchPolicy:
        same = thresholds.same_modality.threshold
        cross = thresholds.cross_modality.threshold if thresholds.cross_modality else same
        return cls.checked(same_modality=same, cross_modality=cross, **overrides)

    @classmethod
    def checked(cls, **values) -> MatchPolicy:
        """A policy from user-given values; a bad one is one clear error."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise UserError(f"match policy: {validation_problem(exc, cls)}") from exc


class _Threshold(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # the calibration's statistics ride along
    threshold: Cosine


# A model's identity as the contract forms it (name@weights hash): the gallery is bound to one.
MODEL_IDENTITY_PATTERN = r"^[A-Za-z0-9_.+-]{1,128}@[A-Za-z0-9_.+-]{1,128}$"
ModelIdentityText = Annotated[str, StringConstraints(pattern=MODEL_IDENTITY_PATTERN)]


class ThresholdsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: ModelIdentityText | None = None  # the model they were calibrated for
    target_false_match_rate: Annotated[float, Field(gt=0, lt=1)] | None = None
    same_modality: _Threshold
    cross_modality: _Threshold | None = None

    @classmethod
    def load(cls, path: str | Path) -> ThresholdsFile:
        path = Path(path)
        try:
            return cls.model_validate_json(read_regular_file(path, "thresholds file", MIB))
        except ValidationError as exc:
            raise UserError(f"{path} is not a valid thresholds file from `hybreid calibrate threshold` "
                            f"({validation_problem(exc, ThresholdsFile)})") from exc


@dataclass(eq=False)
class _Decision:
    """One message's decision, with what it rested on (to tell, under the store's lock,
    whether another instance's commit changed it)."""

    message: FeatureMessage
    searched: list[int] | None  # the identities the batch's index search found for it
    track_identity: int | None  # its camera track's identity when it was decided
    identity: int
    similarity: float
    decision: str
    weighed: set[int]  # identities whose prototype, modalities or sightings it compared
    write: Write | None = None  # None for a redelivery: nothing stored

    @property
    def key(self) -> tuple[str, str, int]:
        return self.message.site, self.message.camera_id, self.message.seq

    @property
    def track(self) -> tuple[str, str, int]:
        return self.message.site, self.message.camera_id, self.message.track_id


class Matcher:
    """Validation and identity assignment, independent of MQTT (the service feeds it)."""

    def __init__(self, gallery: Gallery, policy: MatchPolicy, max_bytes: int = protocol.MAX_PAYLOAD_BYTES):
        self.gallery, self.policy, self.max_bytes = gallery, policy, max_bytes
        self.accepted = self.duplicates = 0
        self.decided_again = 0  # messages decided again under the store's lock (another instance's commit)
        self.busy_seconds = 0.0  # deciding batches
        self.batches = 0
        # How far behind the cameras the matcher is: the newest capture time it decided, against
        # the clock (None before the first sighting). Grows while messages queue at the broker.
        self.lag_s: float | None = None
        self.lock = threading.Lock()

    def _check(self, message: FeatureMessage) -> FeatureMessage:
        """What a valid message must also agree with: the gallery's model and dimension."""
        expected = self.gallery.model
        if expected is not None and message.model_identity != expected:
            raise ProtocolError("model_mismatch", f"{message.model_identity} != gallery's {expected}")
        dim = self.gallery.dim
        if dim is not None and message.embedding.size != dim:
            raise ProtocolError("dimension_mismatch", f"dim {message.embedding.size}, the gallery's is {dim}")
        return message

    def handle(self, topic: str, payload: bytes) -> dict | None:
        """Process one MQTT message; returns the event to publish, or None for a rejected one."""
        return self.handle_batch([(topic, payload)])[0]

    def handle_batch(self, messages: list[tuple[str, bytes]]) -> list[dict | None]:
        """Process messages in arrival order, stored in one transaction; returns each one's event
        (None for a rejected message).

        Each is decided as if alone, after the ones before it (a batch holding two updates of
        one new track gives them one identity). A message already stored (redelivered after
        a crash or a lost acknowledgement) returns its stored decision again, so an event
        lost with the crash goes out now. If the transaction fails, nothing of the batch is
        stored and the exception propagates: the caller acknowledges nothing of it.
        """
        with self.lock:
            started = time.perf_counter()
            try:
                return self._handle_batch(messages)
            finally:
                self.busy_seconds += time.perf_counter() - started
                self.batches += 1

    def _handle_batch(self, messages: list[tuple[str, bytes]]) -> list[dict | None]:
        self.gallery.refresh()  # what other processes committed since the last batch
        decoded: list[FeatureMessage | ProtocolError] = []
        for topic, payload in messages:
            try:
                decoded.append(protocol.decode_feature(payload, topic, self.max_bytes))
            except ProtocolError as exc:
                decoded.append(exc)
        captured = [m.ts for m in decoded if isinstance(m, FeatureMessage)]
        if captured:
            self.lag_s = max(time.time() - max(captured), 0.0)
        searched = self._batch_candidates(decoded)
        rejected: Counter[str] = Counter()
        decisions: list[_Decision | None] = []
        with self.gallery.drafting(len(messages)):
            valid = [m for m in decoded if isinstance(m, FeatureMessage)]
            stored = self.gallery.stored_decisions([(m.site, m.camera_id, m.seq) for m in valid])
            tracks = self.gallery.track_identities([(m.site, m.camera_id, m.track_id) for m in valid])
            for (topic, _), message, found in zip(messages, decoded, searched, strict=True):
                try:  # inside the batch: the model the first message binds holds for the next
                    if isinstance(message, ProtocolError):
                        raise message
                    self._check(message)
                    if self.gallery.model is None:
                        self.gallery.bind_model(message.model_identity)
                        self._check(message)  # another instance may have bound another model first
                except ProtocolError as exc:
                    rejected[exc.reason] += 1
                    log.warning("rejected a message on %s: %s", protocol.loggable(topic), protocol.loggable(str(exc)))
                    decisions.append(None)
                    continue
                decisions.append(self._decide(message, found, stored, tracks))
            with self.gallery.transaction():
                for reason, count in rejected.items():
                    self.gallery.count_rejection(reason, count)
                self._settle([d for d in decisions if d is not None])
            committed = self.gallery.committed_ids
        events: list[dict | None] = []
        for decision in decisions:
            if decision is None:
                events.append(None)
                continue
            if decision.write is None:
                self.duplicates += 1
            else:
                self.accepted += 1
            events.append(self._event(decision.message, committed.get(decision.identity, decision.identity),
                                      decision.similarity, decision.decision))
        return events

    def _decide(self, message: FeatureMessage, searched: list[int] | None, stored: dict, tracks: dict,
                also: list[int] = (), provisional_id: int | None = None) -> _Decision:
        """Decide one message against the gallery and the draft, record it in the draft, and
        note it in ``stored`` and ``tracks`` for the messages after it. ``also``: identities to
        score besides the search's (another instance's, written since the search)."""
        key = (message.site, message.camera_id, message.seq)
        track = (message.site, message.camera_id, message.track_id)
        if key in stored:
            return _Decision(message, searched, None, *stored[key], weighed=set())
        if searched is None:
            (searched,) = self.gallery.candidates(message.embedding[None], self.policy.top_k)
        found = [*searched, *also, *self.gallery.nearest_created(message.embedding, self.policy.top_k)]
        track_identity = tracks.get(track)
        identity, similarity, decision, weighed = self._assign(message, found, track_identity)
        write = self.gallery.store(message, identity, similarity, self.policy.prototype_rate, decision,
                                   provisional_id)
        stored[key] = (write.identity, similarity, decision)
        tracks[track] = write.identity
        return _Decision(message, searched, track_identity, write.identity, similarity, decision, weighed, write)

    def _settle(self, decisions: list[_Decision]) -> None:
        """Under the store's lock: decide again the messages that what other instances committed
        since the tentative decisions could change (see the module's docstring); apply the
        others again as they were."""
        changed = self.gallery.changed_elsewhere
        if changed == []:  # nobody committed since the tentative decisions: they stand as made
            return
        stored = self.gallery.stored_decisions([d.key for d in decisions])
        tracks = self.gallery.track_identities([d.track for d in decisions])
        if changed is None:  # identities rewritten wholesale (a purge, a re-association): all again
            self.gallery.draft.undo_to(0)
            for d in decisions:
                self._redo(d, self._decide(d.message, None, stored, tracks))
            self.decided_again += len(decisions)
            return
        lowest = min(self.policy.same_modality, self.policy.cross_modality)
        # Scored against the others' committed prototypes: the draft may still hold this batch's
        # tentative move of one of them, taken back below before anything relies on it.
        near_changed = self._near(decisions, changed, lowest, self.gallery.prototypes.get)
        dirty = set(changed)
        redone: list[int] = []  # identities a decision taken again moved (scored against each later message)
        taking_back = False
        for d, near in zip(decisions, near_changed, strict=True):
            if d.write is None:  # a redelivery: the decision stored with it, as settled by now
                d.identity, d.similarity, d.decision = stored[d.key]
                continue
            affected = (d.key in stored or tracks.get(d.track) != d.track_identity or bool(near)
                        or d.identity in dirty or not d.weighed.isdisjoint(dirty)
                        or bool(self._near([d], redone, lowest)[0]))
            if not affected:
                if taking_back:
                    self.gallery.draft.record(d.write)
                stored[d.key] = (d.identity, d.similarity, d.decision)
                tracks[d.track] = d.identity
                continue
            if not taking_back:
                self.gallery.draft.undo_to(d.write.mark)
                taking_back = True
            again = self._decide(d.message, d.searched, stored, tracks, near,
                                 d.identity if d.decision == "new" else None)
            self.decided_again += 1
            same = ((again.identity, again.decision) == (d.identity, d.decision) and again.write is not None
                    and np.array_equal(again.write.prototype, d.write.prototype))
            if not same:  # what the later messages saw of these identities is not what they are now
                dirty |= {d.identity, again.identity}
                redone += [d.identity, again.identity]
            self._redo(d, again)

    @staticmethod
    def _redo(decision: _Decision, again: _Decision) -> None:
        for field in ("track_identity", "identity", "similarity", "decision", "weighed", "write"):
            setattr(decision, field, getattr(again, field))

    def _near(self, decisions: list[_Decision], identities: list[int], lowest: float,
              prototype=None) -> list[list[int]]:
        """For each decision, which of ``identities`` (their ``prototype``; by default as the draft
        leaves them) its message scores at or above ``lowest``: one matrix product for the batch."""
        prototype = prototype or self.gallery.prototype
        known = [(i, p) for i in dict.fromkeys(identities) if (p := prototype(i)) is not None]
        if not known or not decisions:
            return [[] for _ in decisions]
        scores = np.stack([d.message.embedding for d in decisions]).astype(np.float32) @ \
            np.stack([p for _, p in known]).T
        return [[known[j][0] for j in np.flatnonzero(row >= lowest)] for row in scores]

    def _batch_candidates(self, decoded: list) -> list[list[int] | None]:
        """Each message's candidate identities from one index search of the whole batch (None:
        the message searches alone, as when the gallery's dimension is not yet known)."""
        dim = self.gallery.dim
        usable = [i for i, m in enumerate(decoded) if isinstance(m, FeatureMessage) and m.embedding.size == dim]
        result: list[list[int] | None] = [None] * len(decoded)
        if dim is None or len(usable) < 2:
            return result
        found = self.gallery.candidates(np.stack([decoded[i].embedding for i in usable]), self.policy.top_k)
        for i, ids in zip(usable, found, strict=True):
            result[i] = ids
        return result

    @staticmethod
    def _event(message: FeatureMessage, identity: int, similarity: float, decision: str) -> dict:
        return {"type": decision, "identity": identity, "site": message.site, "camera_id": message.camera_id,
                "seq": message.seq, "track_id": message.track_id, "modality": message.modality, "ts": message.ts,
                "similarity": similarity}

    def reassociate(self, transit: Transit | None = None, durable: bool = False) -> list[dict]:
        """Cluster the recent tracklets again (:mod:`.reassociate`); returns the ``reassign``
        and ``merge`` events of what changed. ``durable``: the events are also stored with the
        change, until the broker acknowledges them (:meth:`Gallery.pending_events`)."""
        with self.lock:
            self.gallery.refresh()
            tracklets, outside = self.gallery.recent_tracklets(self.policy.window_s)
            evidence = (self.policy.same_modality, self.policy.cross_modality, transit, self.policy.transit_bonus)
            clusters, kept = guard(tracklets, cluster(tracklets, *evidence), *evidence)
            if kept:
                log.info("re-association kept the online identities of %d group(s) its clusters explained worse",
                         kept)
            changes = plan(tracklets, clusters, outside)
            if not changes.moves and not changes.new_groups:
                return []
            now = max(t.last_ts for t in tracklets)
            previous = {t.key: t.identity for t in tracklets}

            def events_of(merged: dict[int, int], moved: dict) -> list[dict]:
                events = [{"type": "reassign", "site": site, "camera_id": camera, "track_id": track,
                           "from": previous[site, camera, track], "identity": identity, "ts": now}
                          for (site, camera, track), identity in sorted(moved.items())]
                for old, survivor in sorted(merged.items()):
                    sites = sorted({key[0] for key, identity in previous.items() if identity == old})
                    events += [{"type": "merge", "site": site, "from": old, "into": survivor, "ts": now}
                               for site in sites]
                return events
            merged, moved = self.gallery.apply_reassociation(changes, now, events_of if durable else None)
        log.info("re-association: %d tracklets moved, %d identities merged", len(moved), len(merged))
        return events_of(merged, moved)

    def _assign(self, message: FeatureMessage, candidates: list[int],
                track_identity: int | None) -> tuple[int | None, float, str, set[int]]:
        """The message's identity (None: a new one), similarity and decision, and the identities
        weighed: ``candidates`` are scored, ``track_identity`` is the identity its camera
        track already has, if any."""
        prototype = self.gallery.prototype(track_identity) if track_identity is not None else None
        if prototype is not None:
            return track_identity, float(prototype @ message.embedding), "update", {track_identity}
        first_ts = message.first_ts if message.first_ts is not None else message.ts
        ranked = self.gallery.rank(message.embedding, candidates, self.policy.top_k)
        lowest = min(self.policy.same_modality, self.policy.cross_modality)
        weighed = {identity for identity, similarity in ranked if similarity >= lowest}
        if track_identity is not None:
            weighed.add(track_identity)
        for identity, similarity in ranked:
            cross = message.modality not in self.gallery.identity_modalities(identity)
            threshold = self.policy.cross_modality if cross else self.policy.same_modality
            if similarity < threshold:
                continue
            if self.gallery.busy_elsewhere(identity, message.site, message.camera_id, first_ts, message.ts):
                continue
            return identity, similarity, "cross_modality_match" if cross else "match", weighed
        return None, 0.0, "new", weighed


BATCH_SIZE = 256
BATCH_WAIT_S = 0.005
LAG_WARNING_S = 120.0  # behind the cameras by more than this: said in the log, once a minute at most
UNREACHABLE_WARNING_S = 10.0  # no broker connection for this long: said, then at growing intervals
STORED_EVENTS_EVERY_S = 2.0  # stored events not yet acknowledged are looked for this often
DRAIN_IDLE_S = 3.0  # a drained session: nothing arrived for this long after the reconnect
STORE_RETRY_S = 2.0  # between attempts while the gallery's database is unreachable
_UNKNOWN = object()  # a PUBACK whose event mid the worker has not recorded yet


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
        self.transit: Transit | None = None  # the camera graph's walking times
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
        self.client.on_publish = self._on_publish
        # event mid -> what its PUBACK settles: ("feature", the feature's mid), ("stored", a stored
        # event's id), or None
        self._awaiting_event_ack: dict[int, tuple[str, int] | None] = {}
        # The worker publishes while paho's thread reads PUBACKs, so an event's PUBACK can come
        # before the worker has recorded its mid: it is kept here until the worker looks.
        self._early_event_acks: dict[int, bool] = {}  # mid -> refused
        self._stored_in_flight: set[int] = set()  # stored events sent, their PUBACK not come yet
        self._delivered_events: queue.Queue = queue.Queue()  # stored events the broker acknowledged
        # Guards the four above; never held while calling paho, which holds its own locks
        # when it calls on_publish (holding ours around publish() deadlocked).
        self._ack_lock = threading.Lock()
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
        self.cameras: dict[str, dict] = {}  # "site/camera" -> its latest status

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
        with self._ack_lock:
            self._stored_in_flight.clear()  # sent again once connected: the events stay stored
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

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self._ack_lock:
            settles = self._awaiting_event_ack.pop(mid, _UNKNOWN)
            if settles is _UNKNOWN:
                self._early_event_acks[mid] = reason_code is not None and reason_code.is_failure
        if settles not in (_UNKNOWN, None):
            self._settle(settles, refused=reason_code is not None and reason_code.is_failure)

    def _settle(self, settles: tuple[str, int], refused: bool) -> None:
        """An event's PUBACK came: acknowledge its feature, or mark its stored copy delivered (a
        refused one stays stored, sent again later). Never a database call here: this may run
        in paho's network thread."""
        kind, key = settles
        if kind == "feature":
            self.client.ack(key, 1)
            return
        with self._ack_lock:
            self._stored_in_flight.discard(key)
        if not refused:
            self._delivered_events.put(key)

    def _publish_event(self, event: dict, feature=None, stored_id: int | None = None) -> None:
        """Publish an event (QoS 1); ``feature``'s message is acknowledged, or the stored event
        ``stored_id`` marked delivered, when the event's PUBACK comes. Should the connection be
        gone, the feature stays unacknowledged (the broker delivers it again after the
        reconnect, and its event goes out then), and a stored event stays stored."""
        info = self.client.publish(protocol.events_topic(event["site"]), protocol.encode_event(event), qos=1)
        # Recorded even when the connection is gone: paho may still send the event after the
        # reconnect, and its PUBACK must then find its mid (an unclaimed one would wait here
        # for the mid's reuse and settle another record early).
        sent = info.rc == mqtt.MQTT_ERR_SUCCESS
        settles = (("feature", feature.mid) if feature is not None else ("stored", stored_id)
                   if stored_id is not None else None) if sent else None
        with self._ack_lock:
            if stored_id is not None and not sent:
                self._stored_in_flight.discard(stored_id)  # sent again on the next round
            early = self._early_event_acks.pop(info.mid, None)
            if early is None:
                self._awaiting_event_ack[info.mid] = settles
        if early is not None and settles is not None:
            self._settle(settles, refused=early)

    def publish_stored_events(self) -> int:
        """Send the stored events nobody has had acknowledged yet (after a crash, a broker outage,
        or just now); returns how many went out."""
        if not self.connected.is_set():
            return 0
        with self._ack_lock:
            in_flight = set(self._stored_in_flight)
        pending = [(key, event) for key, event in self.matcher.gallery.pending_events() if key not in in_flight]
        for key, event in pending:
            with self._ack_lock:
                self._stored_in_flight.add(key)
            self._publish_event(event, stored_id=key)
        return len(pending)

    def _forget_delivered_events(self) -> None:
        delivered = []
        while not self._delivered_events.empty():
            delivered.append(self._delivered_events.get())
        try:
            self.matcher.gallery.events_delivered(delivered)
        except StoreUnavailable:  # deleted next time; meanwhile they may go out once more
            for key in delivered:
                self._delivered_events.put(key)

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
            self._publish_event(event, message)

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
            while self._awaiting_event_ack and time.monotonic() < deadline:  # the last events' PUBACKs
                time.sleep(0.05)
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
            self.client.disconnect(properties=properties)
        else:
            self.client.disconnect()
        self.client.loop_stop()

    def drained(self, idle_s: float) -> bool:
        """A draining service has decided and acknowledged all its session held: nothing came for
        ``idle_s`` and nothing waits."""
        return (self.subscribed.is_set() and time.monotonic() - self.last_message_at >= idle_s
                and self._inbox.empty() and not self._awaiting_event_ack)

    def wait_until_subscribed(self, timeout: float = 10.0) -> None:
        """Block until the broker has acknowledged the subscription; stop and raise if it does not."""
        if not self.subscribed.wait(timeout):
            self.stop()
            raise UserError(f"the matcher could not subscribe at the broker at {self.broker.url}")

    def reassociate(self) -> list[dict]:
        """Re-associate now; its events are stored with the change and then published (QoS 1):
        a merge committed while the broker is away, or just before a crash, is announced later."""
        events = self.matcher.reassociate(self.transit, durable=True)
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
                        self._forget_delivered_events()
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
