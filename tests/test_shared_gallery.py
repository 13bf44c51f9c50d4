"""Several matcher instances over one PostgreSQL gallery, on a real PostgreSQL and Mosquitto:
races between instances, an instance killed mid-stream, and a database that goes away."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from support import connected_publisher, feature, unit, wait_for_line, wait_until

from hybreid.matcher.assignment import Matcher
from hybreid.matcher.database import StoreUnavailable
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.matcher.service import MatcherService
from hybreid.mqtt import BrokerConfig

POLICY = MatchPolicy(same_modality=0.8, cross_modality=0.5)


def two_instances(url: str) -> tuple[Matcher, Matcher]:
    return Matcher(Gallery(url), POLICY), Matcher(Gallery(url), POLICY)


def at_once(first, second):
    """Run two calls in two threads released together; returns their results."""
    barrier, results = threading.Barrier(2), [None, None]

    def run(index, call):
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def identities(gallery: Gallery) -> dict[tuple[str, int], set[int]]:
    """Each camera track's identities."""
    rows = gallery.db.execute("SELECT camera_id, track_id, identity_id FROM sightings").fetchall()
    tracks: dict[tuple[str, int], set[int]] = {}
    for camera, track, identity in rows:
        tracks.setdefault((camera, track), set()).add(identity)
    return tracks


def test_updates_of_one_new_track_at_two_instances_at_once_make_one_identity(postgres):
    a, b = two_instances(postgres.new_database())
    for track in range(1, 6):
        person = unit(100 + track)
        first, second = at_once(
            lambda t=track, p=person: a.handle(*feature("cam1", 2 * t, t, p, ts=100.0 * t)),
            lambda t=track, p=person: b.handle(*feature("cam1", 2 * t + 1, t, unit(t, 0.05, base=100 + t),
                                                        ts=100.0 * t + 1)))
        assert first["identity"] == second["identity"], track
        assert sorted([first["type"], second["type"]]) == ["new", "update"]
    assert {frozenset(ids) for ids in identities(a.gallery).values()} == \
        {frozenset([i]) for i in range(1, 6)}  # five tracks, five identities, none split


def test_one_person_reaching_two_instances_at_once_is_not_created_twice(postgres):
    """Two cameras, one person, a minute apart, decided at the same moment by two instances:
    the second decides after the first's commit, with its identity."""
    a, b = two_instances(postgres.new_database())
    person = unit(7)
    first, second = at_once(lambda: a.handle(*feature("cam1", 0, 1, person, ts=100.0)),
                            lambda: b.handle(*feature("cam2", 0, 1, unit(8, 0.05, base=7), ts=160.0)))
    assert first["identity"] == second["identity"]
    assert sorted([first["type"], second["type"]]) == ["match", "new"]


def test_each_instance_follows_the_others_identities_and_purges(postgres):
    a, b = two_instances(postgres.new_database())
    created = a.handle(*feature("cam1", 0, 1, unit(3), ts=100.0))
    seen_by_b = b.handle(*feature("cam2", 0, 1, unit(4, 0.05, base=3), ts=200.0))
    assert seen_by_b["type"] == "match" and seen_by_b["identity"] == created["identity"]
    a.gallery.purge(identity=created["identity"])
    after = b.handle(*feature("cam3", 0, 1, unit(5, 0.05, base=3), ts=300.0))
    assert after["type"] == "new" and after["identity"] != created["identity"]
    assert created["identity"] not in b.gallery.prototypes


@contextmanager
def committing_between(late: Matcher, early: Matcher, early_batch: list[tuple[str, bytes]]):
    """While inside: ``early`` commits ``early_batch`` after ``late`` has decided its next batch
    tentatively and before ``late``'s transaction holds the store's lock, the interleaving
    two instances meet when they decide at once. Counts the messages ``late`` decides again
    under the lock."""
    original, settle, decide = late.gallery.transaction, late._settle, late._decide
    decided_again, settling = [], []

    @contextmanager
    def transaction():
        events.extend(early.handle_batch(early_batch))
        with original():
            yield

    def settled(*args):
        settling.append(True)
        try:
            return settle(*args)
        finally:
            settling.clear()

    def counted(*args, **kwargs):
        if settling:
            decided_again.append(args[0].seq)
        return decide(*args, **kwargs)

    events: list[dict | None] = []
    late.gallery.transaction, late._settle, late._decide = transaction, settled, counted
    try:
        yield events, decided_again
    finally:
        del late.gallery.transaction, late._settle, late._decide


def crowd(seed: int, count: int) -> list[tuple[str, bytes]]:
    """Six people walking past four cameras, visible and infrared, tracks of one to three updates."""
    rng = np.random.default_rng(seed)
    messages, seq, ts = [], 0, 100.0
    while len(messages) < count:
        person, camera = int(rng.integers(6)), f"cam{int(rng.integers(4))}"
        modality = "infrared" if camera == "cam3" else "visible"
        for _ in range(int(rng.integers(1, 4))):
            ts += float(rng.uniform(1, 30))
            messages.append(feature(camera, seq, 1000 + seq // 3 if rng.random() < 0.2 else seq // 3,
                                    unit(10_000 + seq, 0.35, base=person), modality=modality, ts=ts))
            seq += 1
    return messages[:count]


def decisions(events: list[dict | None]) -> list[tuple]:
    return [(e["identity"], e["type"], round(e["similarity"], 5)) for e in events]


@pytest.mark.slow
def test_a_batch_settled_after_another_instances_commit_decides_as_one_instance_would(postgres):
    """One instance decides a batch, another commits its own in between, the first commits:
    the same events and prototypes as one instance deciding the second batch, then the first."""
    again = kept = 0
    for seed in range(5):
        messages = crowd(seed, 70)
        rng = np.random.default_rng(seed)
        to_early = rng.random(50) < 0.5
        early_batch = [m for m, e in zip(messages[20:], to_early, strict=True) if e]
        late_batch = [m for m, e in zip(messages[20:], to_early, strict=True) if not e]
        late, early = two_instances(postgres.new_database())
        alone = Matcher(Gallery(postgres.new_database()), POLICY)
        late.handle_batch(messages[:20])
        alone.handle_batch(messages[:20])
        with committing_between(late, early, early_batch) as (early_events, decided_again):
            late_events = late.handle_batch(late_batch)
        assert decisions(early_events) == decisions(alone.handle_batch(early_batch)), seed
        assert decisions(late_events) == decisions(alone.handle_batch(late_batch)), seed
        late.gallery.refresh()
        assert late.gallery.prototypes.keys() == alone.gallery.prototypes.keys()
        for identity, prototype in alone.gallery.prototypes.items():
            np.testing.assert_allclose(late.gallery.prototypes[identity], prototype, atol=1e-6)
        again += len(decided_again)
        kept += len(late_batch) - len(decided_again)
    assert again > 0 and kept > 0  # both paths ran: decided again under the lock, and kept as decided


def test_decisions_another_instance_did_not_touch_are_not_made_again_under_the_lock(postgres):
    late, early = two_instances(postgres.new_database())
    late.handle_batch([feature("cam1", seq, seq, unit(seq), ts=100.0 + seq) for seq in range(2)])
    batch = [feature("cam2", seq, seq, unit(seq if seq < 12 else 50 + seq, 0.1, base=seq % 2 if seq < 12 else None),
                     ts=200.0 + seq) for seq in range(2, 30)]
    stranger = [feature("cam3", 0, 1, unit(999), ts=150.0)]  # someone new, like nobody in the batch
    with committing_between(late, early, stranger) as (_, decided_again):
        events = late.handle_batch(batch)
    assert decided_again == []
    assert {e["type"] for e in events} == {"match", "new"}


def test_a_person_another_instance_created_meanwhile_takes_over_the_batchs_tentative_identity(postgres):
    """The batch saw a new person twice (a new identity, then a match of it); another instance
    committed the same person in between: both of the batch's sightings join its identity."""
    late, early = two_instances(postgres.new_database())
    batch = [feature("cam1", 0, 1, unit(1, 0.05, base=77), ts=100.0),
             feature("cam2", 0, 5, unit(2, 0.05, base=77), ts=160.0),
             feature("cam1", 1, 2, unit(3), ts=170.0)]
    with committing_between(late, early, [feature("cam3", 0, 9, unit(4, 0.05, base=77), ts=40.0)]) as (
            early_events, decided_again):
        first, second, other = late.handle_batch(batch)
    (created,) = early_events
    assert created["type"] == "new"
    assert (first["type"], first["identity"]) == ("match", created["identity"])
    assert (second["type"], second["identity"]) == ("match", created["identity"])
    assert other["type"] == "new" and decided_again == [0, 0]  # the stranger kept its decision
    assert late.gallery.stats()["identities"] == 2


def test_a_decision_made_again_makes_the_ones_that_relied_on_it_again(postgres):
    """Three sightings 36 degrees apart on one arc: the batch made the middle one a new identity
    and matched the far one to it; another instance meanwhile committed the near end. The
    middle one joins that identity, so the far one, which the committed identity never
    resembled (cosine 0.31), must be decided again: the tentative identity it matched is gone."""
    along, across = unit(21), unit(22)
    across = across - (across @ along) * along
    across /= np.linalg.norm(across)

    def at(degrees: float) -> np.ndarray:
        return (np.cos(np.radians(degrees)) * along + np.sin(np.radians(degrees)) * across).astype(np.float32)

    late, early = two_instances(postgres.new_database())
    batch = [feature("cam1", 0, 1, at(36), ts=100.0), feature("cam2", 0, 5, at(72), ts=160.0)]
    with committing_between(late, early, [feature("cam3", 0, 9, at(0), ts=40.0)]) as (early_events, decided_again):
        middle, far = late.handle_batch(batch)
    (near,) = early_events
    assert (middle["type"], middle["identity"]) == ("match", near["identity"])
    assert far["type"] == "new" and far["identity"] not in (near["identity"], middle["identity"])
    assert decided_again == [0, 0]
    assert late.gallery.prototypes.keys() == {near["identity"], far["identity"]}
    stored = {row[0] for row in late.gallery.db.execute("SELECT identity_id FROM sightings").fetchall()}
    assert stored == {near["identity"], far["identity"]}


@pytest.mark.parametrize(("visible_at", "infrared_at", "infrared_first"),
                         [(0, 63, False), (0, 63, True), (36, 70, False)],
                         ids=["the other's move reaches it", "before the visible match", "both moves reach it"])
def test_a_prototype_another_instance_moved_is_scored_as_committed_not_as_the_batch_moved_it(
        postgres, visible_at, infrared_at, infrared_first):
    """The batch moved a known identity's prototype (a visible match), and another instance
    moved it too, towards where an infrared sighting of the batch lies: that sighting, new
    against the batch's own prototype, is decided again and matches across the gap, as one
    instance deciding the other's commit first would; whether the other's move alone brings
    the prototype near it or only both moves do, and before or after the visible match."""
    along, across = unit(31), unit(32)
    across = across - (across @ along) * along
    across /= np.linalg.norm(across)

    def at(degrees: float) -> np.ndarray:
        return (np.cos(np.radians(degrees)) * along + np.sin(np.radians(degrees)) * across).astype(np.float32)

    first = [feature("cam1", 0, 1, at(0), ts=10.0)]
    other = [feature("cam3", 0, 9, at(36), ts=40.0)]
    batch = [feature("cam1", 1, 2, at(visible_at), ts=100.0),
             feature("cam2", 0, 5, at(infrared_at), modality="infrared", ts=200.0)]
    if infrared_first:
        batch.reverse()
    late, early = two_instances(postgres.new_database())
    alone = Matcher(Gallery(postgres.new_database()), POLICY)
    late.handle_batch(first)
    alone.handle_batch(first)
    with committing_between(late, early, other):
        events = late.handle_batch(batch)
    alone.handle_batch(other)
    expected = alone.handle_batch(batch)
    assert expected[0 if infrared_first else 1]["type"] == "cross_modality_match"  # the case this test is about
    assert decisions(events) == decisions(expected)


def test_a_message_another_instance_stored_meanwhile_is_stored_once_with_its_decision(postgres):
    late, early = two_instances(postgres.new_database())
    message = feature("cam1", 0, 1, unit(5), ts=100.0)
    with committing_between(late, early, [message]) as (early_events, _):
        (again,) = late.handle_batch([message])
    assert early_events == [again] and late.duplicates == 1 and late.accepted == 0
    assert late.gallery.stats()["sightings"] == 1


def matcher_process(broker_url: str, db: str, client_id: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "hybreid.cli", "matcher", "run", "--broker", broker_url, "--db", db,
         "--client-id", client_id, "--shared-group", "matchers", "--protocol", "5", "--reassociate-every", "0",
         "--report-every", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for_line(process.stderr, "subscribed to", 30), f"{client_id} did not subscribe"
    threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe from filling
    return process


def stream(count: int) -> list[tuple[str, bytes]]:
    """Tracks of three updates each over six cameras; 12 people seen again and again."""
    return [feature(f"cam{(seq // 3) % 6}", seq, seq // 3, unit(seq, 0.05, base=(seq // 3) % 12),
                    ts=100.0 + 40 * (seq // 3) + seq % 3) for seq in range(count)]


@pytest.mark.slow
def test_three_instances_one_killed_and_restarted_store_everything_once(postgres, mosquitto):
    db = postgres.new_database()
    messages = stream(240)
    processes = [matcher_process(mosquitto.url, db, f"matcher-{i}") for i in range(3)]
    publisher = connected_publisher(mosquitto.port, "camera-publisher")
    gallery = Gallery(db)

    def stored() -> int:
        return gallery.db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0]

    for index, (topic, payload) in enumerate(messages):
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        if index == 100:
            processes[1].send_signal(signal.SIGKILL)
            processes[1].wait()
        if index == 160:  # the same client id: the broker hands it the session it left
            processes[1] = matcher_process(mosquitto.url, db, "matcher-1")
        time.sleep(0.005)
    publisher.disconnect()
    publisher.loop_stop()
    assert wait_until(lambda: stored() == len(messages), 60), stored()
    for process in processes:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    keys = gallery.db.execute("SELECT camera_id, seq FROM sightings").fetchall()
    assert len(keys) == len(set(keys)) == len(messages)  # every message once, exactly
    assert set(keys) == {(f"cam{(seq // 3) % 6}", seq) for seq in range(len(messages))}
    assert all(len(ids) == 1 for ids in identities(gallery).values())  # no camera track split


@pytest.mark.slow
def test_a_database_that_goes_away_and_comes_back_loses_nothing(postgres, mosquitto, caplog):
    db = postgres.new_database()
    gallery = Gallery(db)
    service = MatcherService(Matcher(gallery, POLICY), BrokerConfig(url=mosquitto.url, client_id="matcher"))
    service.start()
    service.wait_until_subscribed()
    messages = stream(60)
    publisher = connected_publisher(mosquitto.port, "camera-publisher")
    with caplog.at_level(logging.WARNING, logger="hybreid.matcher"):
        for topic, payload in messages[:20]:
            publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        assert wait_until(lambda: service.matcher.accepted == 20, 20)
        postgres.kill()
        for topic, payload in messages[20:]:
            publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        assert wait_until(lambda: service.store_unavailable, 20)
        time.sleep(1)
        postgres.start()
        assert wait_until(lambda: service.matcher.accepted >= 60 and not service.store_unavailable, 60)
    publisher.disconnect()
    publisher.loop_stop()
    service.stop()
    down = [r.getMessage() for r in caplog.records if "wait unacknowledged" in r.getMessage()]
    assert len(down) == 1 and "PostgreSQL at" in down[0]  # said once, in one line
    assert any("database is back" in r.getMessage() for r in caplog.records)
    assert service.internal_errors == 0
    keys = gallery.db.execute("SELECT camera_id, seq FROM sightings").fetchall()
    assert sorted(keys) == sorted({(f"cam{(seq // 3) % 6}", seq) for seq in range(60)})


def test_an_unreachable_database_is_one_clear_error(capsys):
    from hybreid.cli import main
    from hybreid.lab.mosquitto import free_port

    url = f"postgresql://hybreid:secret@127.0.0.1:{free_port()}/gallery"  # nothing listens there
    assert main(["matcher", "query", "--db", url, "--identity", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "cannot be reached" in error and "secret" not in error and len(error.splitlines()) == 1


@pytest.mark.slow
def test_matcher_processes_outlive_a_database_restart(postgres, mosquitto):
    """`matcher run` reporting every second while PostgreSQL restarts for 3 s: both instances
    once exited with a traceback (the status line read the gallery). They must say so in one
    line, keep running and store every message once the database is back."""
    db = postgres.new_database()
    processes = []
    try:
        for index in range(2):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "hybreid.cli", "matcher", "run", "--broker", mosquitto.url, "--db", db,
                 "--client-id", f"reporting-{index}", "--shared-group", "matchers", "--protocol", "5",
                 "--report-every", "0.5", "--reassociate-every", "1"], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
            assert wait_for_line(processes[-1].stderr, "subscribed to", 30)
        _stream_through_a_database_restart(postgres, mosquitto, db)
        assert [process.poll() for process in processes] == [None, None]  # both still serving
        for process in processes:
            process.send_signal(signal.SIGTERM)
        errors = [process.communicate(timeout=30)[1] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert all("Traceback" not in err for err in errors), errors[0][-2000:]
    assert all(process.returncode == 0 for process in processes)


def _stream_through_a_database_restart(postgres, mosquitto, db: str) -> None:
    """60 messages, the last 30 while the database is down for 3 s; returns once all are stored."""
    messages = stream(60)
    publisher = connected_publisher(mosquitto.port, "camera-publisher")
    gallery = Gallery(db)

    def stored() -> int:
        try:
            return gallery.stats()["sightings"]
        except StoreUnavailable:  # the test's own connection went down with the server
            return -1
    for topic, payload in messages[:30]:
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
    assert wait_until(lambda: stored() == 30, 30)
    postgres.kill()
    for topic, payload in messages[30:]:
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
    time.sleep(3)
    postgres.start()
    publisher.disconnect()
    publisher.loop_stop()
    assert wait_until(lambda: stored() == 60, 60), stored()
    keys = gallery.db.execute("SELECT camera_id, seq FROM sightings").fetchall()
    assert len(keys) == len(set(keys)) == 60


@pytest.mark.slow
def test_a_dead_instances_messages_are_taken_over_by_a_drain(postgres, mosquitto):
    """Two instances in one shared group, one SIGKILLed and left dead: a third of later messages
    waited in its session. `matcher run --drain` under its client id decides them and ends the
    session, after which the broker routes nothing more to it."""
    db = postgres.new_database()
    gallery = Gallery(db)
    survivor, dead = matcher_process(mosquitto.url, db, "alive"), matcher_process(mosquitto.url, db, "gone")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    messages = stream(120)
    publisher = connected_publisher(mosquitto.port, "camera-publisher")
    try:
        for topic, payload in messages[:90]:
            publisher.publish(topic, payload, qos=1).wait_for_publish(5)

        def stored() -> int:
            return gallery.db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0]
        wait_until(lambda: stored() >= 45, 30)
        time.sleep(1)
        held = 90 - stored()
        assert held > 20, held  # waiting in the dead instance's session
        drain = subprocess.run(
            [sys.executable, "-m", "hybreid.cli", "matcher", "run", "--broker", mosquitto.url, "--db", db,
             "--client-id", "gone", "--shared-group", "matchers", "--drain", "--reassociate-every", "0",
             "--report-every", "0"], capture_output=True, text=True, timeout=120)
        assert drain.returncode == 0, drain.stderr[-2000:]
        assert "drained the session of gone" in drain.stderr
        assert wait_until(lambda: stored() == 90, 30), stored()
        for topic, payload in messages[90:]:  # the dead session is gone: all reach the survivor
            publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        assert wait_until(lambda: stored() == 120, 30), stored()
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(30)
    keys = gallery.db.execute("SELECT camera_id, seq FROM sightings").fetchall()
    assert len(keys) == len(set(keys)) == 120
