"""Identity assignment, independent of MQTT (the service feeds it).

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
``prototype_rate``).

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

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hybreid import protocol
from hybreid.matcher.camera_graph import Walks
from hybreid.matcher.draft import BatchView, Write
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.matcher.reassociate import cluster, guard, plan
from hybreid.matcher.revisions import apply_reassociation, recent_tracklets
from hybreid.protocol import FeatureMessage, ProtocolError

log = logging.getLogger("hybreid.matcher")


@dataclass(eq=False)
class Decision:
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
        self.rejected: Counter[str] = Counter()  # by reason, as committed
        self.on_batch: Callable[[float, int], None] | None = None  # a decided batch's seconds and messages
        # How far behind the cameras the matcher is: the newest capture time it decided, against
        # the clock (None before the first sighting). Grows while messages queue at the broker.
        self.lag_s: float | None = None
        self.walks: Walks | None = None  # the camera graph's walking times, online and in re-association
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
                events = self._handle_batch(messages)
            finally:
                elapsed = time.perf_counter() - started
                self.busy_seconds += elapsed
                self.batches += 1
            if self.on_batch is not None:
                self.on_batch(elapsed, len(messages))
            return events

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
        decisions: list[Decision | None] = []
        with self.gallery.drafting(len(messages)) as batch:
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
                self._settle([d for d in decisions if d is not None], batch)
            committed = self.gallery.committed_ids
        self.rejected.update(rejected)
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
                also: list[int] = (), provisional_id: int | None = None) -> Decision:
        """Decide one message against the gallery and the draft, record it in the draft, and
        note it in ``stored`` and ``tracks`` for the messages after it. ``also``: identities to
        score besides the search's (another instance's, written since the search)."""
        key = (message.site, message.camera_id, message.seq)
        track = (message.site, message.camera_id, message.track_id)
        if key in stored:
            return Decision(message, searched, None, *stored[key], weighed=set())
        if searched is None:
            (searched,) = self.gallery.candidates(message.embedding[None], self.policy.top_k)
        found = [*searched, *also, *self.gallery.nearest_created(message.embedding, self.policy.top_k)]
        track_identity = tracks.get(track)
        identity, similarity, decision, weighed = self._assign(message, found, track_identity)
        write = self.gallery.add_sighting(message, identity, similarity, self.policy.prototype_rate, decision,
                                          provisional_id)
        stored[key] = (write.identity, similarity, decision)
        tracks[track] = write.identity
        return Decision(message, searched, track_identity, write.identity, similarity, decision, weighed, write)

    def _settle(self, decisions: list[Decision], batch: BatchView) -> None:
        """Under the store's lock: decide again the messages that what other instances committed
        since the tentative decisions could change (see the module's docstring); apply the
        others again as they were."""
        changed = self.gallery.changed_elsewhere
        if changed == []:  # nobody committed since the tentative decisions: they stand as made
            return
        stored = self.gallery.stored_decisions([d.key for d in decisions])
        tracks = self.gallery.track_identities([d.track for d in decisions])
        if changed is None:  # identities rewritten wholesale (a purge, a re-association): all again
            batch.take_back_to(0)
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
                    batch.apply_again(d.write)
                stored[d.key] = (d.identity, d.similarity, d.decision)
                tracks[d.track] = d.identity
                continue
            if not taking_back:
                batch.take_back_to(d.write.mark)
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
    def _redo(decision: Decision, again: Decision) -> None:
        for field in ("track_identity", "identity", "similarity", "decision", "weighed", "write"):
            setattr(decision, field, getattr(again, field))

    def _near(self, decisions: list[Decision], identities: list[int], lowest: float,
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
        return protocol.event(type=decision, identity=identity, site=message.site, camera_id=message.camera_id,
                              seq=message.seq, track_id=message.track_id, modality=message.modality, ts=message.ts,
                              similarity=similarity)

    def reassociate(self, durable: bool = False) -> list[dict]:
        """Cluster the recent tracklets again (:mod:`.reassociate`); returns the ``reassign``
        and ``merge`` events of what changed. ``durable``: the events are also stored with the
        change, until the broker acknowledges them (:meth:`Gallery.pending_events`)."""
        with self.lock:
            self.gallery.refresh()
            tracklets, outside = recent_tracklets(self.gallery, self.policy.window_s)
            evidence = (self.policy.same_modality, self.policy.cross_modality, self.walks, self.policy.transit_bonus)
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
                events = [protocol.event(type="reassign", site=site, camera_id=camera, track_id=track,
                                         identity=identity, ts=now, **{"from": previous[site, camera, track]})
                          for (site, camera, track), identity in sorted(moved.items())]
                for old, survivor in sorted(merged.items()):
                    sites = sorted({key[0] for key, identity in previous.items() if identity == old})
                    events += [protocol.event(type="merge", site=site, into=survivor, ts=now, **{"from": old})
                               for site in sites]
                return events
            merged, moved = apply_reassociation(self.gallery, changes, now, events_of if durable else None)
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
            if self.gallery.busy_elsewhere(identity, message.site, message.camera_id, first_ts, message.ts,
                                           self.walks):
                continue
            return identity, similarity, "cross_modality_match" if cross else "match", weighed
        return None, 0.0, "new", weighed
