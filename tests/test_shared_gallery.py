"""Several matcher instances over one PostgreSQL gallery, on a real PostgreSQL and Mosquitto:
races between instances, an instance killed mid-stream, and a database that goes away."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_matcher import connected_publisher, feature, unit, wait_for_line, wait_until

from hybreid.matcher.gallery import Gallery
from hybreid.matcher.service import Matcher, MatcherService, MatchPolicy
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
    from hybreid.mqtt.mosquitto import free_port

    url = f"postgresql://hybreid:secret@127.0.0.1:{free_port()}/gallery"  # nothing listens there
    assert main(["matcher", "query", "--db", url, "--identity", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "cannot be reached" in error and "secret" not in error and len(error.splitlines()) == 1
