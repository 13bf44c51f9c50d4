"""The matcher as an attacker and a careless operator meet it: a hostile corpus through a real
Mosquitto, events that survive kills, two sites with the same camera ids, thresholds, purges."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from collections import Counter

import numpy as np
import paho.mqtt.client as mqtt
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
from hybreid.cli import main
from hybreid.errors import UserError
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.matcher.service import MatcherService
from hybreid.mqtt import BrokerConfig

TOPIC = protocol.features_topic("lab", "cam1")


def _payload(n: int = 0, **changes) -> dict:
    """The n-th valid feature of cam1 (seq n, its own person), with ``changes`` applied."""
    payload = json.loads(feature("cam1", n, 1, unit(n), ts=1000.0 + n)[1])
    payload.update(changes)
    return payload


def _raw(n: int = 0, **changes) -> bytes:
    return json.dumps(_payload(n, **changes)).encode()


def _embedding(values, dtype="<f4") -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


def _without(key: str) -> bytes:
    payload = _payload()
    payload.pop(key)
    return json.dumps(payload).encode()


def hostile_corpus() -> dict[str, tuple[str, bytes, str]]:
    """name -> (topic, payload, the reason the matcher must count it under)."""
    big = np.full(DIM, 3e38, np.float32)  # finite float32 values whose float32 norm is infinite
    cases: dict[str, tuple[bytes, str]] = {
        "empty payload": (b"", "invalid_json"),
        "truncated JSON": (_raw()[:60], "invalid_json"),
        "not UTF-8": (b"\xff\xfe\x00garbage", "not_utf8"),
        "UTF-16 JSON": (_raw().decode().encode("utf-16"), "not_utf8"),
        "JSON array": (b"[1, 2, 3]", "schema"),
        "JSON string": (b'"hello"', "schema"),
        "JSON null": (b"null", "schema"),
        "JSON number": (b"42", "schema"),
        "deep nesting under the size limit": (b'{"v": 1, "x": ' + b"[" * 20000 + b"]" * 20000 + b"}",
                                              "invalid_json"),
        "deep nesting in a field": (json.dumps(_payload()).encode()[:-1] + b', "extra": ' + b"[" * 5000
                                    + b"]" * 5000 + b"}", "invalid_json"),
        "oversized": (b"{" + b" " * (protocol.MAX_PAYLOAD_BYTES + 10) + b"}", "too_large"),
        "version 2": (_raw(v=2), "version"),
        "version as string": (_raw(v="1"), "version"),
        "version missing": (_without("v"), "version"),
        "version true": (_raw(v=True), "version"),
        "version 1.0": (_raw(v=1.0), "version"),
        "unknown field": (_raw(admin=True), "schema"),
        "site missing": (_without("site"), "schema"),
        "site with a slash": (_raw(site="lab/x"), "schema"),
        "site with a wildcard": (_raw(site="+"), "schema"),
        "site too long": (_raw(site="s" * 65), "schema"),
        "camera id with a space": (_raw(camera_id="cam 1"), "schema"),
        "camera id empty": (_raw(camera_id=""), "schema"),
        "camera id a number": (_raw(camera_id=1), "schema"),
        "modality thermal": (_raw(modality="thermal"), "schema"),
        "modality null": (_raw(modality=None), "schema"),
        "ts a string": (_raw(ts="1000"), "schema"),
        "ts a bool": (_raw(ts=True), "schema"),
        "ts negative": (_raw(ts=-5.0), "out_of_range"),
        "ts in the year 3000": (_raw(ts=32503680000.0), "out_of_range"),
        "ts next year": (_raw(ts=time.time() + 366 * 86400), "clock_skew"),
        "ts infinite": (_raw().replace(b'"ts": 1000.0', b'"ts": 1e999'), "non_finite"),
        "ts NaN": (_raw().replace(b'"ts": 1000.0', b'"ts": NaN'), "non_finite"),
        "seq a string": (_raw(seq="42"), "schema"),
        "seq a float": (_raw(seq=1.5), "schema"),
        "seq a bool": (_raw(seq=True), "schema"),
        "seq negative": (_raw(seq=-1), "out_of_range"),
        "seq beyond 64 bits": (_raw(seq=2**64), "out_of_range"),
        "seq 2**63": (_raw(seq=2**63), "out_of_range"),
        "track_id beyond 64 bits": (_raw(track_id=10**30), "out_of_range"),
        "track_id a list": (_raw(track_id=[1]), "schema"),
        "box three numbers": (_raw(box=[1, 2, 3]), "schema"),
        "box five numbers": (_raw(box=[1, 2, 3, 4, 5]), "schema"),
        "box with a string": (_raw(box=[1, 2, "3", 4]), "schema"),
        "box with NaN": (_raw().replace(b'"box": [1.0', b'"box": [NaN'), "non_finite"),
        "box huge": (_raw(box=[1, 2, 3, 1e300]), "out_of_range"),
        "box an object": (_raw(box={"x": 1}), "schema"),
        "score infinite": (_raw().replace(b'"score": 0.9', b'"score": -Infinity'), "non_finite"),
        "quality above 1": (_raw(quality=7.0), "out_of_range"),
        "frames NaN": (_raw().replace(b'"frames": 1', b'"frames": NaN'), "schema"),
        "frames zero": (_raw(frames=0), "out_of_range"),
        "frames a float": (_raw(frames=2.5), "schema"),
        "first_ts NaN": (_raw().replace(b'"first_ts": 998.0', b'"first_ts": NaN'), "non_finite"),
        "first_ts after ts": (_raw(first_ts=5000.0), "out_of_range"),
        "final a string": (_raw(final="yes"), "schema"),
        "model a string": (_raw(model="m@h1"), "schema"),
        "model without hash": (_raw(model={"name": "m"}), "schema"),
        "model with an extra key": (_raw(model={"name": "m", "hash": "h1", "x": 1}), "schema"),
        "model name with a newline": (_raw(model={"name": "m\nDROP", "hash": "h1"}), "schema"),
        "other model": (_raw(model={"name": "m", "hash": "h2"}), "model_mismatch"),
        "dim zero": (_raw(dim=0), "dimension"),
        "dim huge": (_raw(dim=10**9), "dimension"),
        "dim beside the bytes": (_raw(dim=DIM + 1), "dimension"),
        "dim a string": (_raw(dim="16"), "schema"),
        "dtype float64": (_raw(dtype="float64"), "schema"),
        "embedding not base64": (_raw(embedding="not base64!"), "schema"),
        "embedding a list": (_raw(embedding=[0.1] * DIM), "schema"),
        "embedding of NaN": (_raw(embedding=_embedding([np.nan] * DIM)), "non_finite"),
        "embedding of infinities": (_raw(embedding=_embedding([np.inf] * DIM)), "non_finite"),
        "embedding of zeros": (_raw(embedding=_embedding(np.zeros(DIM))), "non_finite"),
        "embedding float16 NaN": (_raw(dtype="float16", embedding=_embedding([np.nan] * DIM, "<f2")), "non_finite"),
        "other dimension, same model": (_raw(dim=8, embedding=_embedding(np.ones(8))), "dimension_mismatch"),
        "camera id reserved": (json.dumps(_payload(camera_id="events")).encode(), "schema"),
    }
    corpus = {name: (TOPIC, payload, reason) for name, (payload, reason) in cases.items()}
    corpus["camera id reserved"] = (protocol.features_topic("lab", "events"), cases["camera id reserved"][0],
                                    "schema")
    corpus["spoofed topic"] = (protocol.features_topic("lab", "cam9"), _raw(), "topic_mismatch")
    corpus["other site's topic"] = (protocol.features_topic("other", "cam1"), _raw(), "topic_mismatch")
    corpus["huge finite embedding"] = (TOPIC, _raw(7, embedding=_embedding(big)), "")  # valid: stored
    return corpus


def test_hostile_corpus_through_mosquitto_names_every_rejection(tmp_path, mosquitto):
    corpus = hostile_corpus()
    assert len(corpus) >= 60
    gallery = Gallery(tmp_path / "g.sqlite")
    service = MatcherService(Matcher(gallery, MatchPolicy()), BrokerConfig(url=mosquitto.url, client_id="matcher"))
    service.start()
    assert service.subscribed.wait(10)
    valid = [(TOPIC, _raw(seq)) for seq in range(1, 6)]
    stream = [valid[0]]  # binds the gallery to model m@h1, dimension 16
    for index, (topic, payload, _) in enumerate(corpus.values()):
        stream.append((topic, payload))
        if index % 15 == 0:
            stream.append(valid[1 + (index // 15) % 4])  # valid ones, some of them twice, among the rest
    stream += valid[1:]
    stored = {seq for seq in range(1, 6)} | {7}
    publish_all(mosquitto.port, stream)
    expected = Counter(reason for _, _, reason in corpus.values() if reason)
    assert wait_until(lambda: gallery.stats()["sightings"] == len(stored)
                      and sum(gallery.rejections().values()) == sum(expected.values()), 30), gallery.stats()
    service.stop()
    assert gallery.rejections() == dict(expected)
    assert service.internal_errors == 0 and "internal_error" not in gallery.rejections()
    with gallery.lock:
        seqs = [row[0] for row in gallery.db.execute("SELECT seq FROM sightings")]
        prototypes = np.stack(list(gallery.prototypes.values()))
    assert sorted(seqs) == sorted(stored)  # each valid message stored exactly once
    assert np.isfinite(prototypes).all() and np.allclose(np.linalg.norm(prototypes, axis=1), 1, atol=1e-5)
    print(f"{len(corpus)} kinds, rejections by reason: {dict(sorted(expected.items()))}")


def test_a_huge_topic_is_logged_cut_short(tmp_path, caplog):
    """A 60 KB topic once wrote a 120 KB log line per message."""
    import logging

    matcher = Matcher(Gallery(tmp_path / "g.sqlite"), MatchPolicy())
    topic = protocol.features_topic("lab", "cam1") + "/" + "\x1b" * 60_000
    with caplog.at_level(logging.WARNING, logger="hybreid.matcher"):
        assert matcher.handle(topic, _raw()) is None
    (record,) = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(record.getMessage()) < 1000 and "\x1b" not in record.getMessage()
    assert matcher.gallery.rejections() == {"topic_mismatch": 1}


def test_huge_finite_embeddings_keep_the_prototype_finite(tmp_path):
    matcher = Matcher(Gallery(tmp_path / "g.sqlite"), MatchPolicy())
    big = np.full(DIM, 3e38, np.float32)
    for n in range(2):
        event = matcher.handle(TOPIC, _raw(n, track_id=1, embedding=_embedding(big)))
        assert np.isfinite(event["similarity"])
        protocol.encode_event(event)  # valid JSON: no NaN
    (prototype,) = matcher.gallery.prototypes.values()
    assert np.allclose(prototype, big / np.linalg.norm(big.astype(np.float64)))


def test_the_same_camera_id_at_two_sites_stays_apart(tmp_path):
    matcher = Matcher(Gallery(tmp_path / "g.sqlite"), MatchPolicy(same_modality=0.99))
    events = []
    for site in ("north", "south"):
        for n in range(3):
            payload = _payload(n, site=site, track_id=1, embedding=_embedding(unit(100 if site == "north" else 200)))
            events.append(matcher.handle(protocol.features_topic(site, "cam1"), json.dumps(payload).encode()))
    assert all(event is not None for event in events)
    assert matcher.gallery.stats()["sightings"] == 6 and matcher.duplicates == 0
    north, south = {e["identity"] for e in events[:3]}, {e["identity"] for e in events[3:]}
    assert len(north) == len(south) == 1 and north != south  # track 1 at each site is its own person


def test_a_gallery_keyed_by_camera_only_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
CREATE TABLE sightings (camera_id TEXT NOT NULL, seq INTEGER NOT NULL, site TEXT NOT NULL, track_id INTEGER NOT NULL,
    modality TEXT NOT NULL, first_ts REAL NOT NULL, ts REAL NOT NULL, box TEXT NOT NULL, score REAL, quality REAL,
    frames INTEGER, final INTEGER, identity_id INTEGER NOT NULL, similarity REAL, embedding BLOB NOT NULL,
    PRIMARY KEY (camera_id, seq));
CREATE TABLE identities (id INTEGER PRIMARY KEY, created REAL NOT NULL, last_seen REAL NOT NULL,
    sightings INTEGER NOT NULL, modalities TEXT NOT NULL, prototype BLOB NOT NULL);
""")
    old.execute("INSERT INTO identities VALUES (1, 1, 1, 1, 'visible', ?)", (unit(1).tobytes(),))
    old.execute("INSERT INTO sightings VALUES ('cam1', 0, 'north', 1, 'visible', 1, 1, '[0,0,1,1]', 1, 1, 1, 1, 1, "
                "0, ?)", (unit(1).tobytes(),))
    old.commit()
    old.close()
    matcher = Matcher(Gallery(path), MatchPolicy())
    assert matcher.gallery.stored_decision("north", "cam1", 0) == (1, 0.0, "match")
    assert matcher.handle(protocol.features_topic("south", "cam1"), _raw(0, site="south")) is not None
    assert matcher.gallery.stats()["sightings"] == 2


@pytest.mark.parametrize(("content", "problem"), [
    ('{"same_modality": {"threshold": NaN}}', "same_modality.threshold"),
    ('{"same_modality": {"threshold": -0.2}}', "greater than or equal to 0"),
    ('{"same_modality": {"threshold": 1.5}}', "less than or equal to 1"),
    ('{"same_modality": {"threshold": "0.6"}}', "valid number"),
    ('{"same_modality": {"threshold": [0.6]}}', "valid number"),
    ('{"same_modality": {"threshold": 0.6}, "cross_modality": {"threshold": null}}', "cross_modality.threshold"),
    ('{"same_modality": 0.6}', "same_modality"),
    ("[0.6]", "top level"),
    ("not json", "top level"),
    ("", "top level"),
])
def test_bad_thresholds_are_refused(tmp_path, content, problem):
    path = tmp_path / "thresholds.json"
    path.write_text(content)
    with pytest.raises(UserError, match="not a valid thresholds file") as error:
        MatchPolicy.from_thresholds_file(path)
    assert problem in str(error.value)


def test_bad_policy_values_are_one_clear_error():
    for values in ({"same_modality": float("nan")}, {"cross_modality": -1.0}, {"top_k": 0},
                   {"prototype_rate": 0.0}, {"same_modality": "0.6"}):
        with pytest.raises(UserError, match="match policy"):
            MatchPolicy.checked(**values)


def test_a_purge_beside_a_running_matcher_reaches_its_index(tmp_path, mosquitto):
    db = tmp_path / "g.sqlite"
    service = MatcherService(Matcher(Gallery(db), MatchPolicy()), BrokerConfig(url=mosquitto.url, client_id="m"))
    service.start()
    assert service.subscribed.wait(10)
    people = [unit(300 + person) for person in range(3)]
    publish_all(mosquitto.port, [feature("cam1", seq, seq, people[seq % 3], ts=1000 + seq) for seq in range(3)])
    assert wait_until(lambda: service.matcher.accepted == 3)
    assert main(["matcher", "purge", "--db", str(db), "--camera", "cam1", "--until", "1002"]) == 0  # another process
    # Later sightings of the purged people are new identities, not errors.
    publish_all(mosquitto.port, [feature("cam2", seq, seq, people[seq % 3], ts=2000 + seq) for seq in range(9)])
    assert wait_until(lambda: service.matcher.accepted == 12)
    service.stop()
    gallery = Gallery(db)
    assert service.internal_errors == 0 and gallery.rejections() == {}
    assert gallery.stats()["identities"] == 3 and gallery.stats()["sightings"] == 10


class EventLog:
    """A persistent-session subscriber to the site's events."""

    def __init__(self, port: int):
        self.events: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="event-log", clean_session=False)
        self.client.on_message = lambda c, u, message: self.events.append(json.loads(message.payload))
        subscribed = []
        self.client.on_connect = lambda client, *args: client.subscribe(protocol.events_topic("lab"), qos=1)
        self.client.on_subscribe = lambda *args: subscribed.append(True)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert wait_until(lambda: subscribed, 10)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow
def test_events_survive_matcher_kills(tmp_path, mosquitto):
    """Killed three times mid-stream, the matcher still sends an event for every feature."""
    messages = [feature(f"cam{seq % 3}", seq, seq // 3, unit(seq % 11, 0.05, base=seq % 11), ts=1000 + 5 * seq)
                for seq in range(240)]
    events = EventLog(mosquitto.port)
    db = tmp_path / "g.sqlite"
    command = matcher_command(mosquitto.url, db)
    matcher = start_matcher(mosquitto.url, db)
    publisher = connected_publisher(mosquitto.port, "stream")
    gallery = Gallery(db)

    def stored():
        with gallery.lock:
            return gallery.db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0]
    for burst in range(4):
        sent = [publisher.publish(topic, payload, qos=1) for topic, payload in messages[60 * burst:60 * (burst + 1)]]
        for info in sent:
            info.wait_for_publish(5)
        if burst < 3:  # killed while it works through the burst: features stored, events on their way
            wait_until(lambda burst=burst: stored() >= 60 * burst + 30, 10)
            matcher.send_signal(signal.SIGKILL)
            matcher.wait()
            matcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    publisher.disconnect()
    publisher.loop_stop()
    assert wait_until(lambda: stored() == 240 and len({e["seq"] for e in events.events}) == 240, 60), (
        stored(), len({e["seq"] for e in events.events}))
    matcher.send_signal(signal.SIGTERM)
    matcher.wait(timeout=20)
    events.close()
    decisions = {(e["camera_id"], e["seq"]): e["identity"] for e in events.events}
    with gallery.lock:
        rows = gallery.db.execute("SELECT camera_id, seq, identity_id FROM sightings").fetchall()
    assert len(rows) == 240 and {(c, s): i for c, s, i in rows} == decisions  # every event agrees with the store


def test_a_negative_retention_is_refused_and_a_dry_run_deletes_nothing(tmp_path, capsys):
    """`--older-than-days -5` once reached into the future and deleted every sighting."""
    db = tmp_path / "g.sqlite"
    matcher = Matcher(Gallery(db), MatchPolicy())
    for seq in range(4):
        matcher.handle(*feature("cam1", seq, seq, unit(seq), ts=time.time() - 86400 * seq))
    matcher.gallery.close()
    for age in ("-5", "nan", "-inf"):
        assert main(["matcher", "purge", "--db", str(db), f"--older-than-days={age}"]) == 2
        assert "--older-than-days must be" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["matcher", "purge", "--db", str(db), "--older-than-days", "1.5", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["would_delete_sightings"] == 2  # 2 and 3 days old
    assert Gallery(db).stats()["sightings"] == 4
    assert main(["matcher", "purge", "--db", str(db), "--older-than-days", "1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted_sightings"] == 2
    assert Gallery(db).stats()["sightings"] == 2


@pytest.mark.slow
def test_a_broker_that_never_answers_and_a_lagging_matcher_are_said(tmp_path, mosquitto, caplog):
    """A matcher whose broker never answered said nothing; one falling behind the cameras (its
    queue at the broker growing) said nothing either."""
    import logging
    import threading

    from hybreid.lab.mosquitto import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    lonely = MatcherService(Matcher(Gallery(tmp_path / "a.sqlite"), MatchPolicy()), BrokerConfig(url=url))
    with caplog.at_level(logging.WARNING, logger="hybreid.matcher"):
        thread = threading.Thread(target=lonely.run_forever, kwargs={"report_unreachable_s": 0.5}, daemon=True)
        thread.start()
        assert wait_until(lambda: "no connection to the broker" in caplog.text, 10)
        lonely.request_stop()
        thread.join(10)
    assert f"no connection to the broker at {url}" in caplog.text
    assert lonely.status()["broker_connected"] is False
    caplog.clear()
    late = MatcherService(Matcher(Gallery(tmp_path / "b.sqlite"), MatchPolicy()),
                          BrokerConfig(url=mosquitto.url, client_id="late"))
    with caplog.at_level(logging.WARNING, logger="hybreid.matcher"):
        thread = threading.Thread(target=late.run_forever, kwargs={"lag_warning_s": 30.0}, daemon=True)
        thread.start()
        assert late.subscribed.wait(10)
        publish_all(mosquitto.port, [feature("cam1", 0, 1, unit(0), ts=time.time() - 300)])  # captured 5 min ago
        assert wait_until(lambda: "behind the cameras" in caplog.text, 10)
        late.request_stop()
        thread.join(10)
    assert 299 < late.status()["lag_s"] < 330 and late.status()["broker_connected"] is False  # stopped


def _thresholds(path, model: str | None):
    path.write_text(json.dumps({"model": model, "same_modality": {"threshold": 0.8},
                                "cross_modality": {"threshold": 0.5}}))
    return path


@pytest.mark.slow
def test_the_gallery_is_bound_to_the_thresholds_model_not_to_the_first_message(tmp_path, mosquitto, capsys):
    """Messages of an older export queued at the broker once claimed a fresh gallery, and every
    real message was then rejected as model_mismatch."""
    from support import wait_for_line

    db = tmp_path / "g.sqlite"
    thresholds = _thresholds(tmp_path / "t.json", "m@h1")
    session = subprocess.Popen([*matcher_command(mosquitto.url, db)[:-4], "--thresholds", str(thresholds)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_line(session.stderr, "subscribed to")
        session.terminate()
        session.wait(20)
        # while it is away: one message of an untrained export, then the site's real ones
        publish_all(mosquitto.port, [feature("cam1", 0, 1, unit(0), model_hash="untrained"),
                                     *[feature("cam1", seq, seq, unit(seq)) for seq in range(1, 4)]])
        session = subprocess.Popen([*matcher_command(mosquitto.url, db)[:-4], "--thresholds", str(thresholds)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: db.exists() and Gallery(db).stats()["sightings"] == 3, 20)
    finally:
        session.terminate()
        session.wait(20)
    gallery = Gallery(db)
    assert gallery.model == "m@h1" and gallery.rejections() == {"model_mismatch": 1}
    other = _thresholds(tmp_path / "other.json", "m@h2")
    for argv in (["--thresholds", str(other)],  # calibrated for another model than the gallery holds
                 ["--thresholds", str(thresholds), "--model-identity", "m@h2"],  # they disagree
                 ["--model-identity", "not an identity"]):
        capsys.readouterr()
        assert main(["matcher", "run", "--db", str(db), "--broker", mosquitto.url, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hybreid: error: ") and err.count("\n") == 1, err
    assert Gallery(db).model == "m@h1"


def test_matching_at_default_thresholds_is_said(tmp_path, caplog):
    import logging

    from hybreid.matcher.cli import _gallery_model

    class Args:
        model_identity, thresholds = None, None
    with caplog.at_level(logging.WARNING, logger="hybreid.matcher"):
        assert _gallery_model(Args(), None) is None
    assert "no --thresholds: matching at the default cosines 0.60 / 0.45" in caplog.text
    assert "the gallery takes the model of the first message" in caplog.text
