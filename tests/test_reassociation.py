"""Re-association revisits online decisions: merges, cannot-links, the visible/infrared gap,
merge events through Mosquitto and `matcher query` following merges."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from hybreid import protocol
from hybreid.cli import main
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.matcher.reassociate import Tracklet, cannot_link, cluster, plausible_transit
from hybreid.matcher.service import MatcherService
from hybreid.mqtt import BrokerConfig
from hybreid.protocol import FeatureMessage, encode_feature

POLICY = MatchPolicy(same_modality=0.6, cross_modality=0.45, window_s=3600)


def vectors_with_cosines(gram: list[list[float]], dim: int = 16) -> list[np.ndarray]:
    """Unit vectors whose pairwise cosines are exactly ``gram`` (a Cholesky factor's rows)."""
    factor = np.linalg.cholesky(np.array(gram, dtype=np.float64))
    padded = np.zeros((len(gram), dim))
    padded[:, :len(gram)] = factor
    return [row.astype(np.float32) for row in padded]


# Q, and three sightings of P: P's first (p1) is nearer Q (0.5) than any identity may be
# joined at (0.6), and p1 and p2 are too unlike (0.5) to join online; p3 links both (0.76,
# 0.74). Online: Q -> 1, p1 -> 2, p2 -> 3, p3 -> 2. Average linkage: {p1, p3} first, then
# p2 at (0.5 + 0.74) / 2 = 0.62 >= 0.6; Q stays apart at (0.5 + 0.2 + 0.2) / 3.
GRAM = [[1.0, 0.5, 0.2, 0.2],
        [0.5, 1.0, 0.5, 0.76],
        [0.2, 0.5, 1.0, 0.74],
        [0.2, 0.76, 0.74, 1.0]]
Q, P1, P2, P3 = vectors_with_cosines(GRAM)


def sighting(camera: str, seq: int, embedding: np.ndarray, start: float, modality: str = "visible",
             site: str = "lab") -> tuple[str, bytes]:
    message = FeatureMessage(site=site, camera_id=camera, modality=modality, ts=start + 10, seq=seq, track_id=1,
                             box=(1, 2, 30, 80), score=0.9, model_name="m", model_hash="h1", embedding=embedding,
                             first_ts=start)
    return message.topic, encode_feature(message)


STREAM = [sighting("cam1", 0, Q, 1000), sighting("cam2", 0, P1, 1100), sighting("cam3", 0, P2, 1200),
          sighting("cam4", 0, P3, 1300)]


def test_online_decisions_are_revisited_and_merged(store):
    matcher = Matcher(Gallery(store), POLICY)
    online = [matcher.handle(*message)["identity"] for message in STREAM]
    assert online == [1, 2, 3, 2]  # P split over identities 2 and 3
    events = matcher.reassociate()
    assert {"type": "merge", "site": "lab", "from": 3, "into": 2, "ts": 1310.0} in events
    assert [(e["camera_id"], e["from"], e["identity"]) for e in events if e["type"] == "reassign"] == [
        ("cam3", 3, 2)]
    gallery = matcher.gallery
    assert gallery.resolve(3) == 2 and gallery.resolve(1) == 1 and gallery.stats()["identities"] == 2
    assert matcher.reassociate() == []  # nothing left to change
    # A later sighting of P's track on cam3 stays with the surviving identity.
    assert matcher.handle(*sighting("cam3", 1, P2, 1400))["identity"] == 2


def test_a_cannot_link_keeps_people_apart_however_alike(tmp_path):
    # p2 seen on cam3 while p1 is on cam2: two places at once, so never one person.
    stream = [STREAM[0], STREAM[1], sighting("cam3", 0, P2, 1105), STREAM[3]]
    matcher = Matcher(Gallery(tmp_path / "g.sqlite"), POLICY)
    for message in stream:
        matcher.handle(*message)
    assert [e for e in matcher.reassociate() if e["type"] == "merge"] == []
    assert matcher.gallery.stats()["identities"] == 3


def walks(*links: tuple[str, str, float, float | None]):
    """The walks of a camera graph of site "lab" with these (camera, camera, min_s, max_s) links."""
    from hybreid.matcher.camera_graph import CameraGraph

    return CameraGraph.model_validate({"sites": {"lab": [{"cameras": [a, b], "min_s": least, "max_s": most}
                                                         for a, b, least, most in links]}}).walks()


def test_the_camera_graph_forbids_a_walk_faster_than_its_minimum():
    a = Tracklet(("lab", "cam1", 1), 1, "visible", 0.0, 10.0, np.ones(2) / np.sqrt(2))
    b = Tracklet(("lab", "cam2", 1), 2, "visible", 15.0, 20.0, np.ones(2) / np.sqrt(2))
    assert not cannot_link(a, b)
    assert cannot_link(a, b, walks(("cam1", "cam2", 30.0, None)))  # 5 s apart, the walk takes at least 30 s
    assert not cannot_link(a, b, walks(("cam1", "cam2", 3.0, None)))
    # no link between them, but a way through cam3 that takes 40 s at least
    assert cannot_link(a, b, walks(("cam1", "cam3", 20.0, None), ("cam3", "cam2", 20.0, None)))
    assert cluster([a, b], 0.6, 0.45, walks(("cam1", "cam2", 30.0, None))) == [[0], [1]]
    assert cluster([a, b], 0.6, 0.45) == [[0, 1]]


def test_a_plausible_transit_is_evidence_a_doubtful_one_is_not():
    """Two sightings at cosine 0.57, below the 0.6 threshold: on connected cameras with a gap
    inside the walking time (5 s, the walk takes 3 to 8 s) the transit bonus links them;
    a gap beyond the longest walk, unconnected cameras, or no bonus leave them apart."""
    vector_a, vector_b = vectors_with_cosines([[1.0, 0.57], [0.57, 1.0]])
    a = Tracklet(("lab", "cam1", 1), 1, "visible", 0.0, 10.0, vector_a)
    b = Tracklet(("lab", "cam2", 1), 2, "visible", 15.0, 20.0, vector_b)
    linked = walks(("cam1", "cam2", 3.0, 8.0))
    assert plausible_transit(a, b, linked) and plausible_transit(b, a, linked)
    assert cluster([a, b], 0.6, 0.45, linked, transit_bonus=0.05) == [[0, 1]]
    assert cluster([a, b], 0.6, 0.45, linked, transit_bonus=0.0) == [[0], [1]]
    assert cluster([a, b], 0.6, 0.45, walks(("cam1", "cam2", 3.0, 4.0)), transit_bonus=0.05) == [[0], [1]]
    assert cluster([a, b], 0.6, 0.45, walks(("cam1", "cam2", 3.0, None)), transit_bonus=0.05) == [[0, 1]]
    far = Tracklet(("lab", "cam3", 1), 3, "visible", 15.0, 20.0, vector_b)
    assert not plausible_transit(a, far, linked)
    assert cluster([a, far], 0.6, 0.45, linked, transit_bonus=0.05) == [[0], [1]]


def test_cross_modality_links_need_mutual_nearest_neighbours():
    # Two visible people (v1, v2) and two infrared sightings: ir is v1's nearest (0.62), ir2
    # resembles v1 above the cross threshold too (0.5 >= 0.45) but v1 is nearer ir: an
    # absolute threshold would give v1 both, the mutual criterion gives it ir only.
    v1, v2, ir, ir2 = vectors_with_cosines([[1.0, 0.1, 0.62, 0.5], [0.1, 1.0, 0.1, 0.2],
                                            [0.62, 0.1, 1.0, 0.1], [0.5, 0.2, 0.1, 1.0]])
    tracklets = [Tracklet(("lab", f"cam{i}", 1), i, modality, 100.0 * i, 100.0 * i + 10, vector)
                 for i, (modality, vector) in enumerate((("visible", v1), ("visible", v2), ("infrared", ir),
                                                         ("infrared", ir2)))]
    assert cluster(tracklets, 0.6, 0.45) == [[0, 2], [1], [3]]
    assert cluster(tracklets, 0.6, 0.7) == [[0], [1], [2], [3]]  # nothing reaches a stricter threshold


def event_listener(port: int) -> tuple[mqtt.Client, list[dict]]:
    """A client that records the lab's events, once subscribed."""
    received: list[dict] = []
    subscribed = threading.Event()
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="events")
    listener.on_message = lambda c, u, message: received.append(json.loads(message.payload))
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.on_connect = lambda client, *args: client.subscribe(protocol.events_topic("lab"), qos=1)
    listener.connect("127.0.0.1", port)
    listener.loop_start()
    assert subscribed.wait(10)
    return listener, received


def test_merge_events_go_out_and_query_follows_the_merge(store, mosquitto, capsys):
    db = store
    service = MatcherService(Matcher(Gallery(db), POLICY), BrokerConfig(url=mosquitto.url, client_id="m"))
    listener, received = event_listener(mosquitto.port)
    service.start()
    assert service.subscribed.wait(10)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    for topic, payload in STREAM:
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 10
    while service.matcher.accepted < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    service.reassociate()
    deadline = time.monotonic() + 10
    while not any(e["type"] == "merge" for e in received) and time.monotonic() < deadline:
        time.sleep(0.05)
    for client in (publisher, listener):
        client.disconnect()
        client.loop_stop()
    service.stop()
    merges = [e for e in received if e["type"] == "merge"]
    assert merges == [{"v": 1, "type": "merge", "site": "lab", "from": 3, "into": 2, "ts": 1310.0}]
    capsys.readouterr()
    assert main(["matcher", "query", "--db", str(db), "--identity", "3"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["identity"] == 2 and answer["asked"] == 3 and answer["merged_from"] == [3]
    assert sorted(s["camera_id"] for s in answer["sightings"]) == ["cam2", "cam3", "cam4"]


@pytest.mark.slow
@pytest.mark.parametrize("reassociate_every", [0.3])
def test_the_running_matcher_reassociates_by_itself(tmp_path, mosquitto, reassociate_every):
    service = MatcherService(Matcher(Gallery(tmp_path / "g.sqlite"), POLICY),
                             BrokerConfig(url=mosquitto.url, client_id="m"))
    runner = threading.Thread(target=service.run_forever, kwargs={"report_every": 60,
                                                                  "reassociate_every": reassociate_every})
    runner.start()
    try:
        assert service.subscribed.wait(10)
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edge")
        publisher.connect("127.0.0.1", mosquitto.port)
        publisher.loop_start()
        for topic, payload in STREAM:
            publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()
        deadline = time.monotonic() + 10
        while service.matcher.gallery.resolve(3) != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        service.request_stop()
        runner.join(10)
    assert Gallery(tmp_path / "g.sqlite").resolve(3) == 2 and service.internal_errors == 0


def test_camera_graph_file(tmp_path):
    from hybreid.errors import UserError
    from hybreid.matcher.camera_graph import CameraGraph

    path = tmp_path / "graph.yaml"
    path.write_text("sites:\n  lab:\n    - {cameras: [cam1, cam2], min_s: 30, max_s: 300}\n")
    graph = CameraGraph.load(path)
    assert graph.transit("lab", "cam2", "cam1") == (30, 300) and graph.transit("lab", "cam1", "cam3") is None
    a = Tracklet(("lab", "cam1", 1), 1, "visible", 0.0, 10.0, np.ones(2) / np.sqrt(2))
    b = Tracklet(("lab", "cam2", 1), 2, "visible", 15.0, 20.0, np.ones(2) / np.sqrt(2))
    assert cannot_link(a, b, graph.walks())
    for text, problem in (("sites:\n  lab:\n    - {cameras: [cam1, cam2], min_sec: 3}\n", "did you mean 'min_s'"),
                          ("sites:\n  lab:\n    - {cameras: [cam1, cam1]}\n", "two different cameras"),
                          ("sites:\n  lab:\n    - {cameras: [cam1, cam2], min_s: 9, max_s: 3}\n", "below min_s"),
                          ("sites:\n  la/b: []\n", "sites.la/b")):
        path.write_text(text)
        with pytest.raises(UserError, match=problem):
            CameraGraph.load(path)


def test_a_site_spec_given_as_camera_graph_names_the_file_to_give(tmp_path):
    """The matcher does not read the synthetic world's spec; its renderer writes the graph."""
    from hybreid.errors import UserError
    from hybreid.matcher.camera_graph import CameraGraph

    path = tmp_path / "site.yaml"
    path.write_text("site: mall\ncameras: [{id: gate, modality: visible}, {id: hall, modality: infrared}]\n"
                    "graph: [{cameras: [gate, hall], min_s: 12, max_s: 40}]\n")
    with pytest.raises(UserError, match="is a synthetic site's spec, not a camera graph: give the camera_graph.yaml"):
        CameraGraph.load(path)


def test_an_online_merge_the_camera_graph_forbids_is_split(tmp_path):
    """Online, two look-alikes 2 s apart on cameras a 30 s walk apart became one identity;
    re-association with the camera graph gives the second its own."""
    a, b = vectors_with_cosines([[1.0, 0.9], [0.9, 1.0]])
    matcher = Matcher(Gallery(tmp_path / "g.sqlite"), POLICY)
    first = matcher.handle(*sighting("cam1", 0, a, 1000))
    second = matcher.handle(*sighting("cam2", 0, b, 1012))  # cam1 ends at 1010, cam2 starts at 1012
    assert second["identity"] == first["identity"]
    assert matcher.reassociate() == []  # without the graph nothing is wrong
    matcher.walks = walks(("cam1", "cam2", 30.0, None))
    events = matcher.reassociate()
    (moved,) = [e for e in events if e["type"] == "reassign"]
    assert moved["camera_id"] == "cam2" and moved["from"] == first["identity"] != moved["identity"]
    assert matcher.gallery.stats()["identities"] == 2
    assert matcher.gallery.resolve(moved["identity"]) == moved["identity"]


@pytest.mark.slow
def test_merges_made_while_the_broker_is_away_are_announced_after_a_kill(tmp_path, mosquitto):
    """3 merges committed with the broker down, then a SIGKILL: 0 merge events were ever
    published. Re-association's events are stored with the change and sent once they can be."""
    import signal
    import subprocess
    import sys

    db = tmp_path / "g.sqlite"
    matcher = Matcher(Gallery(db), POLICY)
    assert [matcher.handle(*message)["identity"] for message in STREAM] == [1, 2, 3, 2]
    matcher.gallery.close()
    thresholds = tmp_path / "t.json"
    thresholds.write_text(json.dumps({"model": "m@h1", "same_modality": {"threshold": 0.6},
                                      "cross_modality": {"threshold": 0.45}}))
    command = [sys.executable, "-m", "hybreid.cli", "matcher", "run", "--db", str(db), "--broker", mosquitto.url,
               "--client-id", "durable", "--thresholds", str(thresholds), "--report-every", "0"]
    mosquitto.stop()
    first = subprocess.Popen([*command, "--reassociate-every", "0.3"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    gallery = Gallery(db)
    try:
        deadline = time.monotonic() + 30
        while not gallery.pending_events() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    stored = [event for _, event in gallery.pending_events()]
    assert {"type": "merge", "site": "lab", "from": 3, "into": 2, "ts": 1310.0} in stored
    mosquitto.start()
    listener, received = event_listener(mosquitto.port)
    second = subprocess.Popen([*command, "--reassociate-every", "0"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while (gallery.pending_events() or not received) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        second.terminate()
        second.wait(20)
        listener.disconnect()
        listener.loop_stop()
    assert {"v": 1, "type": "merge", "site": "lab", "from": 3, "into": 2, "ts": 1310.0} in received
    assert all({"v": 1, **event} in received for event in stored)  # every stored event, reassigns too
    assert gallery.pending_events() == []  # acknowledged, so no longer stored


def test_partition_score_weighs_each_pair_against_its_modalitys_threshold_and_cannot_links():
    """Three tracklets: two visible ones at cosine 0.7 (same-modality threshold 0.6: +0.1),
    an infrared one at 0.5 to the first (cross threshold 0.45: +0.05) and 0.3 to the
    second (-0.15), overlapping the second in time (two places at once: -2)."""
    from hybreid.matcher.reassociate import online_clusters, partition_score

    v1, v2, ir = vectors_with_cosines([[1.0, 0.7, 0.5], [0.7, 1.0, 0.3], [0.5, 0.3, 1.0]])
    tracklets = [Tracklet(("s", "cam1", 1), 1, "visible", 0, 10, v1),
                 Tracklet(("s", "cam2", 1), 1, "visible", 100, 110, v2),
                 Tracklet(("s", "cam3", 1), 2, "infrared", 105, 115, ir)]
    score = lambda clusters: partition_score(tracklets, clusters, 0.6, 0.45)  # noqa: E731
    assert online_clusters(tracklets) == [[0, 1], [2]]
    assert score([[0, 1], [2]]) == pytest.approx(0.1)
    assert score([[0, 2], [1]]) == pytest.approx(0.05)
    assert score([[0], [1], [2]]) == 0.0
    assert score([[0, 1, 2]]) == pytest.approx(0.1 + 0.05 - 2.0)


def test_the_guard_keeps_the_online_identities_only_where_the_clusters_explain_worse():
    """Two groups. In the first the clusters join two tracklets the online decisions kept
    apart (cosine 0.9 >= 0.6: better); in the second they part two the online decisions
    joined (cosine 0.7: joining earned 0.1): that group keeps its online identity."""
    from hybreid.matcher.reassociate import guard

    a1, a2, b1, b2 = vectors_with_cosines([[1.0, 0.9, 0.0, 0.0], [0.9, 1.0, 0.0, 0.0],
                                           [0.0, 0.0, 1.0, 0.7], [0.0, 0.0, 0.7, 1.0]])
    tracklets = [Tracklet(("s", "cam1", 1), 1, "visible", 0, 10, a1),
                 Tracklet(("s", "cam2", 1), 2, "visible", 50, 60, a2),
                 Tracklet(("s", "cam3", 1), 3, "visible", 100, 110, b1),
                 Tracklet(("s", "cam4", 1), 3, "visible", 150, 160, b2)]
    assert guard(tracklets, [[0, 1], [2], [3]], 0.6, 0.45) == ([[0, 1], [2, 3]], 1)
    assert guard(tracklets, [[0, 1], [2, 3]], 0.6, 0.45) == ([[0, 1], [2, 3]], 0)
