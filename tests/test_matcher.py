"""The matcher: assignment rules, hostile input through a real broker, durability, purge and query."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from support import (
    DIM,
    connected_publisher,
    feature,
    matcher_command,
    publish_all,
    start_matcher,
    unit,
    wait_until,
)

from hybreid import protocol
from hybreid.errors import UserError
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.database import StoreUnavailable
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.matcher.query import by_camera, by_identity
from hybreid.matcher.service import MatcherService
from hybreid.mqtt import BrokerConfig


@pytest.fixture
def matcher(store):
    return Matcher(Gallery(store), MatchPolicy(same_modality=0.8, cross_modality=0.5))


class TestBatches:
    @pytest.mark.slow
    def test_a_batch_is_decided_in_order_and_stored_once(self, matcher):
        person = unit(1)
        batch = [feature(seq=0, track=7, embedding=person),  # a new track...
                 feature(seq=1, track=7, embedding=unit(2, 0.05, base=1), ts=101.0),  # ...and its update
                 feature(seq=0, track=7, embedding=person),  # a redelivery inside the same batch
                 feature(camera="cam2", seq=0, track=1, embedding=unit(50), model_hash="other")]  # wrong model
        first, update, again, foreign = matcher.handle_batch(batch)
        assert first["type"] == "new" and update["type"] == "update"
        assert update["identity"] == first["identity"] and again == first
        assert foreign is None and matcher.gallery.rejections() == {"model_mismatch": 1}
        assert matcher.accepted == 2 and matcher.duplicates == 1
        assert matcher.gallery.stats()["sightings"] == 2

    def test_a_batch_decides_as_the_same_messages_one_by_one(self, tmp_path):
        stream = [feature(f"cam{i % 3}", i, i % 11, unit(i, 0.2, base=i % 7), ts=100.0 + 40 * i) for i in range(40)]
        one_by_one = Matcher(Gallery(tmp_path / "a.sqlite"), MatchPolicy(same_modality=0.8, cross_modality=0.5))
        batched = Matcher(Gallery(tmp_path / "b.sqlite"), MatchPolicy(same_modality=0.8, cross_modality=0.5))
        single = [one_by_one.handle(*message) for message in stream[:5]]
        single += [one_by_one.handle(*message) for message in stream[5:]]
        together = batched.handle_batch(stream[:5]) + batched.handle_batch(stream[5:])  # the second searches at once
        assert [(e["identity"], e["type"]) for e in together] == [(e["identity"], e["type"]) for e in single]
        assert len({e["identity"] for e in together}) < 40 and {e["type"] for e in together} >= {"new", "match"}

    def test_a_failing_batch_stores_nothing_and_leaves_the_index_as_the_store(self, matcher, monkeypatch):
        matcher.handle(*feature(seq=0, track=1, embedding=unit(1)))
        before = {i: v.copy() for i, v in matcher.gallery.prototypes.items()}
        calls = []

        def broken_assign(message, *candidates, original=matcher._assign):
            calls.append(message.seq)
            if len(calls) == 2:
                raise RuntimeError("a bug")
            return original(message, *candidates)

        monkeypatch.setattr(matcher, "_assign", broken_assign)
        with pytest.raises(RuntimeError):
            matcher.handle_batch([feature(seq=1, track=2, embedding=unit(9)), feature(seq=2, track=3)])
        assert matcher.gallery.stats()["sightings"] == 1 and matcher.accepted == 1
        assert set(matcher.gallery.prototypes) == set(before)  # the first message's new identity is gone
        assert all(np.array_equal(matcher.gallery.prototypes[i], before[i]) for i in before)

    def test_a_commit_that_fails_after_writing_leaves_the_index_as_the_store(self, matcher, monkeypatch):
        first = matcher.handle(*feature(seq=0, track=1, embedding=unit(1)))
        before = {i: v.copy() for i, v in matcher.gallery.prototypes.items()}

        def lost_commit():
            raise StoreUnavailable("the store went away at the commit")

        monkeypatch.setattr(matcher.gallery.db, "commit", lost_commit)
        with pytest.raises(StoreUnavailable):  # an update of the first identity and a new one, both written
            matcher.handle_batch([feature(seq=1, track=1, embedding=unit(2)), feature(seq=2, track=3)])
        monkeypatch.undo()
        assert matcher.gallery.stats()["sightings"] == 1 and set(matcher.gallery.prototypes) == set(before)
        assert np.array_equal(matcher.gallery.prototypes[first["identity"]], before[first["identity"]])
        again = matcher.handle_batch([feature(seq=1, track=1, embedding=unit(2)), feature(seq=2, track=3)])
        assert [e["type"] for e in again] == ["update", "new"] and again[1]["identity"] not in before


class TestAssignment:
    def test_new_match_update_and_duplicate(self, matcher):
        person = unit(0, base=42)
        first = matcher.handle(*feature("cam1", 0, 1, person, ts=100))
        assert first["type"] == "new"
        update = matcher.handle(*feature("cam1", 1, 1, unit(5), ts=110))  # same track, unlike vector
        assert update["type"] == "update" and update["identity"] == first["identity"]
        seen = matcher.handle(*feature("cam2", 0, 9, unit(1, 0.1, base=42), ts=200))
        assert seen["type"] == "match" and seen["identity"] == first["identity"]
        stranger = matcher.handle(*feature("cam2", 1, 10, unit(7), ts=300))
        assert stranger["type"] == "new" and stranger["identity"] != first["identity"]
        # A redelivery stores nothing and repeats the stored decision (its first event may be lost).
        assert matcher.handle(*feature("cam2", 1, 10, unit(7), ts=300)) == stranger
        assert matcher.duplicates == 1 and matcher.gallery.stats()["sightings"] == 4

    def test_one_person_is_not_in_two_cameras_at_once(self, matcher):
        person = unit(0, base=42)
        first = matcher.handle(*feature("cam1", 0, 1, person, ts=100, first_ts=90))
        overlapping = matcher.handle(*feature("cam2", 0, 5, person, ts=105, first_ts=95))
        later = matcher.handle(*feature("cam3", 0, 6, person, ts=120, first_ts=110))
        assert overlapping["type"] == "new"  # as similar as can be, but seen elsewhere at the same time
        assert later["type"] == "match" and later["identity"] in {first["identity"], overlapping["identity"]}

    @pytest.mark.parametrize("one_batch", [False, True])
    def test_no_one_walks_between_cameras_faster_than_the_graph_allows(self, matcher, one_batch):
        """cam1 - cam2 - cam3, 30 s each way: cam1 to cam3 takes 60 s at least. Committed one by one,
        the store's sightings rule identities out; in one batch, the batch's own draft does."""
        from hybreid.matcher.camera_graph import CameraGraph

        graph = CameraGraph.model_validate({"sites": {"lab": [{"cameras": ["cam1", "cam2"], "min_s": 30},
                                                              {"cameras": ["cam2", "cam3"], "min_s": 30}]}})
        walks = graph.walks()
        assert walks.least("lab", "cam1", "cam3") == 60 and walks.least("lab", "cam3", "cam2") == 30
        assert walks.least("lab", "cam1", "cam9") == 0 and walks.least("elsewhere", "cam1", "cam2") == 0
        person = unit(0, base=42)
        stream = [feature("cam1", 0, 1, person, ts=100, first_ts=90),
                  feature("cam3", 0, 5, person, ts=135, first_ts=130),  # 30 s after cam1: too soon
                  feature("cam2", 0, 6, person, ts=150, first_ts=140)]  # 40 s after cam1, 5 s after cam3
        without = Matcher(matcher.gallery, matcher.policy)
        matcher.walks = walks

        def decide(decider, messages):
            return decider.handle_batch(messages) if one_batch else [decider.handle(*m) for m in messages]

        first, too_soon, reachable = decide(matcher, stream)
        assert too_soon["type"] == "new"
        assert reachable["type"] == "match" and reachable["identity"] == first["identity"]
        # the same walk where the matcher knows no graph: one identity throughout
        later = [feature("cam1", 1, 11, person, ts=1100, first_ts=1090),
                 feature("cam3", 1, 15, person, ts=1135, first_ts=1130)]
        assert len({decision["identity"] for decision in decide(without, later)}) == 1

    def test_cross_modality_threshold_applies_to_the_other_modality(self, matcher):
        person = unit(0, base=42)
        matcher.handle(*feature("cam1", 0, 1, person))
        # cosine about 0.6: below the same-modality 0.8, above the cross-modality 0.5.
        other = person + 1.35 * unit(3)
        other /= np.linalg.norm(other)
        assert 0.5 < float(other @ person) < 0.8
        visible = matcher.handle(*feature("cam2", 0, 2, other, ts=300))
        infrared = matcher.handle(*feature("cam3", 0, 3, other, modality="infrared", ts=400))
        assert visible["type"] == "new"
        assert infrared["type"] == "cross_modality_match"

    def test_prototype_moves_at_a_bounded_rate(self, matcher):
        a = unit(0, base=1)
        event = matcher.handle(*feature("cam1", 0, 1, a))
        b = a + 0.2 * unit(9)
        b /= np.linalg.norm(b)
        matcher.handle(*feature("cam2", 0, 2, b, ts=300))
        prototype = matcher.gallery.prototypes[event["identity"]]
        expected = 0.8 * a + 0.2 * b  # rate min(0.2, 1/2)
        assert np.allclose(prototype, expected / np.linalg.norm(expected), atol=1e-5)

    def test_index_is_rebuilt_from_sqlite(self, tmp_path):
        matcher = Matcher(Gallery(tmp_path / "g.sqlite"), MatchPolicy())
        for seq in range(5):
            matcher.handle(*feature("cam1", seq, seq, unit(seq), ts=100 + 50 * seq))
        before = matcher.gallery.search(unit(3), 2)
        matcher.gallery.close()
        reopened = Gallery(tmp_path / "g.sqlite")
        after = reopened.search(unit(3), 2)
        assert [i for i, _ in after] == [i for i, _ in before]
        assert [s for _, s in after] == pytest.approx([s for _, s in before])
        assert reopened.model == "m@h1"


def with_nan_embedding(seq: int) -> bytes:
    payload = json.loads(feature(seq=seq)[1])
    payload["embedding"] = base64.b64encode(np.full(DIM, np.nan, "<f4").tobytes()).decode()
    return json.dumps(payload).encode()


HOSTILE = {
    "truncated": lambda: feature(seq=90)[1][:50],
    "too_large": lambda: b"{" + b" " * (protocol.MAX_PAYLOAD_BYTES + 10) + b"}",
    "dimension": lambda: feature(seq=91)[1].replace(b'"dim":16', b'"dim":17'),
    "non_finite": lambda: with_nan_embedding(92),
    "model_mismatch": lambda: feature(seq=93, model_hash="other")[1],
    "not_utf8": lambda: b"\xff\xfe\x00garbage",
    "invalid_json": lambda: b'{"v": 1, "site": "lab", ',
}


def test_hostile_stream_through_the_broker(tmp_path, mosquitto):
    gallery = Gallery(tmp_path / "g.sqlite")
    service = MatcherService(Matcher(gallery, MatchPolicy()), BrokerConfig(url=mosquitto.url, client_id="matcher"))
    service.start()
    assert service.subscribed.wait(10)
    valid = [feature("cam1", seq, seq, unit(seq), ts=100 + 50 * seq) for seq in range(6)]
    topic = protocol.features_topic("lab", "cam1")
    stream = [valid[0]]  # binds the gallery to model m@h1
    stream += [(topic, make()) for make in HOSTILE.values()]
    stream += valid[1:4]
    stream.append((protocol.features_topic("lab", "cam9"), valid[4][1]))  # spoofed: payload says cam1
    stream += [valid[1], valid[4], valid[5]]  # a redelivered duplicate, then the rest
    publish_all(mosquitto.port, stream)
    assert wait_until(lambda: service.matcher.accepted == 6 and sum(gallery.rejections().values()) == 8)
    service.stop()
    stats = gallery.stats()
    assert stats["sightings"] == 6 and service.matcher.duplicates == 1
    assert stats["rejections"] == {"too_large": 1, "dimension": 1, "non_finite": 1, "model_mismatch": 1,
                                   "not_utf8": 1, "invalid_json": 2, "topic_mismatch": 1}
    # "truncated" is invalid JSON, hence two invalid_json.
    assert service.internal_errors == 0


@pytest.mark.slow
def test_a_message_that_breaks_its_batch_does_not_hold_the_others_back(tmp_path, mosquitto, monkeypatch, caplog):
    gallery = Gallery(tmp_path / "g.sqlite")
    matcher = Matcher(gallery, MatchPolicy())
    original = matcher._assign

    def assign(message, *candidates):
        if message.seq == 3:
            raise RuntimeError("a bug that only this message meets")
        return original(message, *candidates)

    monkeypatch.setattr(matcher, "_assign", assign)
    monkeypatch.setattr("hybreid.matcher.service.BATCH_WAIT_S", 0.5)  # the burst arrives as one batch
    service = MatcherService(matcher, BrokerConfig(url=mosquitto.url, client_id="matcher"))
    service.start()
    assert service.subscribed.wait(10)
    publish_all(mosquitto.port, [feature("cam1", seq, seq, unit(seq), ts=100 + 50 * seq) for seq in range(6)])
    assert wait_until(lambda: matcher.accepted == 5 and service.internal_errors == 1)
    service.stop()
    assert gallery.stats()["sightings"] == 5 and gallery.rejections() == {"internal_error": 1}
    assert "deciding them one by one" in caplog.text  # the batch failed as a whole first


@pytest.mark.slow
def test_killed_matcher_resumes_to_the_same_gallery(tmp_path, mosquitto):
    messages = [feature(f"cam{seq % 3}", seq, seq // 2, unit(seq % 7, 0.05, base=seq % 7), ts=100 + 30 * seq)
                for seq in range(60)]
    reference = Matcher(Gallery(tmp_path / "reference.sqlite"), MatchPolicy())
    for topic, payload in messages:
        reference.handle(topic, payload)

    db = tmp_path / "g.sqlite"
    command = matcher_command(mosquitto.url, db)
    matcher = start_matcher(mosquitto.url, db, stdout=subprocess.PIPE)
    publisher = connected_publisher(mosquitto.port, "slow-publisher")
    for index, (topic, payload) in enumerate(messages):
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        if index == 25:
            matcher.send_signal(signal.SIGKILL)
            matcher.wait()
        time.sleep(0.02)
    publisher.disconnect()
    publisher.loop_stop()
    matcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gallery = Gallery(db)

    def sightings():
        with gallery.lock:
            return gallery.db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0]
    assert wait_until(lambda: sightings() == 60, 30)
    matcher.send_signal(signal.SIGTERM)
    matcher.communicate(timeout=20)

    def partition(g: Gallery) -> set[frozenset]:
        rows = g.db.execute("SELECT identity_id, camera_id, seq FROM sightings").fetchall()
        groups: dict[int, set] = {}
        for identity, camera, seq in rows:
            groups.setdefault(identity, set()).add((camera, seq))
        return {frozenset(group) for group in groups.values()}
    assert partition(gallery) == partition(reference.gallery)


def test_purge_and_queries(store):
    matcher = Matcher(Gallery(store), MatchPolicy())
    events = [matcher.handle(*feature(f"cam{seq % 2}", seq, seq, unit(seq), ts=100 + 100 * seq)) for seq in range(6)]
    gallery = matcher.gallery
    assert [s["seq"] for s in by_camera(gallery, "cam0", 150, 550)["sightings"]] == [2, 4]  # ts 300, 500
    first = events[0]["identity"]
    assert [s["seq"] for s in by_identity(gallery, first)["sightings"]] == [0]
    assert gallery.purge(identity=first) == 1
    assert by_identity(gallery, first)["sightings"] == [] and first not in gallery.prototypes
    assert gallery.purge(until=400) == 2  # retention: everything before t=400
    assert gallery.stats()["sightings"] == 3 and len(gallery.prototypes) == 3
    with pytest.raises(UserError, match="at least one"):
        gallery.purge()


def test_identity_scores_by_hand():
    from hybreid.lab.scoring import score_identities

    # Person 1 seen visible on cam1 and infrared on cam2, person 2 visible on cam1.
    # The matcher merged person 1's visible sighting with person 2 (identity 10) and
    # gave person 1's infrared sighting its own identity (11).
    sightings = [{"camera_id": "cam1", "track_id": 1, "identity_id": 10, "modality": "visible"},
                 {"camera_id": "cam1", "track_id": 2, "identity_id": 10, "modality": "visible"},
                 {"camera_id": "cam2", "track_id": 3, "identity_id": 11, "modality": "infrared"},
                 {"camera_id": "cam2", "track_id": 4, "identity_id": 12, "modality": "infrared"}]
    truth = {("cam1", 1): 1, ("cam1", 2): 2, ("cam2", 3): 1, ("cam2", 4): -1}  # track 4 matched nobody
    scores = score_identities(sightings, truth)
    assert scores["sightings"] == 3 and scores["identities"] == 2 and scores["people"] == 2
    assert scores["purity"] == pytest.approx(2 / 3)
    # Pairs: (1,2) predicted same, truly different; (1,3) truly same, predicted different; (2,3) neither.
    assert scores["pairwise"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "true_links": 1, "predicted_links": 1}
    assert scores["cross_modality"]["true_links"] == 1 and scores["cross_modality"]["predicted_links"] == 0


@pytest.mark.slow
def test_waiting_for_a_subscription_without_a_broker_is_one_clear_error(tmp_path):
    from hybreid.lab.mosquitto import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    service = MatcherService(Matcher(Gallery(tmp_path / "g.sqlite"), MatchPolicy()), BrokerConfig(url=url))
    service.start()
    with pytest.raises(UserError, match="could not subscribe at the broker at " + url):
        service.wait_until_subscribed(timeout=1.0)


def test_matcher_threads_limit_both_of_its_compute_pools():
    """`matcher run --threads`: FAISS's OpenMP pool and NumPy's BLAS pool, both (in a process of
    its own: the limit holds for the process)."""
    code = ("from hybreid.matcher.index import limit_threads; from threadpoolctl import threadpool_info; "
            "limit_threads(1); print(sorted({(p['internal_api'], p['num_threads']) for p in threadpool_info()}))")
    pools = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "('openmp', 1)" in pools and "('openblas', 1)" in pools and ", 2)" not in pools


def test_commits_leave_the_checkpoint_to_the_stores_own_thread(tmp_path, monkeypatch):
    """SQLite's commits no longer copy the write-ahead log into the file past 1000 pages; the
    store's thread does, and stops with the store."""
    from hybreid.matcher import database

    monkeypatch.setattr(database, "CHECKPOINT_EVERY_S", 0.05)
    store = database.open_database(tmp_path / "gallery.sqlite")
    assert store.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == database.WAL_BOUND_PAGES
    blob = bytes(8192)
    for batch in range(6):  # about 1,500 pages of log: past SQLite's own default of 1000
        store.begin()
        store.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                          [(f"{batch}-{i}", blob.hex()) for i in range(60)])
        store.commit()
    main_file = tmp_path / "gallery.sqlite"
    deadline = time.monotonic() + 30
    while main_file.stat().st_size < 6 * 60 * 16384 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert main_file.stat().st_size >= 6 * 60 * 16384  # the rows reached the file, not only the log
    store.close()
    assert not store._checkpointer._thread.is_alive()
