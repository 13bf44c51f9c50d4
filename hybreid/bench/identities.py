"""End-to-end identity benchmark: synthetic visible + infrared videos -> edge runtime ->
Mosquitto -> matcher, scored against the scenes' ground truth: multi-camera IDF1 (every
tracked box with the identity its tracklet got, py-motmetrics), purity, pairwise F1 and
the visible/infrared links, for the online decisions and after re-association.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

from hybreid.bench.recording import RecordingMatcher
from hybreid.edge_runtime.prometheus_metrics import EdgeMetrics
from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig
from hybreid.lab.mosquitto import Mosquitto
from hybreid.lab.scoring import score_identities
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.camera_graph import CameraGraph
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.matcher.prometheus_metrics import MatcherMetrics
from hybreid.matcher.query import by_camera
from hybreid.matcher.service import MatcherService
from hybreid.mqtt import BrokerConfig
from hybreid.observability import MetricsServer
from hybreid.synthetic.scenes import render_scenes, tracklet_ground_truth
from hybreid.tables import format_table


def run_site(model: str | Path, scenes: Path, truth: dict, broker_url: str, policy: MatchPolicy, work: Path,
             site: str = "bench", progress: bool = False, graph: CameraGraph | None = None,
             mqtt_protocol: str = "5", split_below: float | None = None, scrape_metrics: bool = False,
             whole_people: bool = False, record: bool = False) -> dict:
    """The edge runtime on every camera video of ``truth`` and a matcher, through the
    broker at ``broker_url`` (speaking ``mqtt_protocol``, "5" or "3.1.1"); waits until the
    matcher has every published tracklet. ``split_below``: the edge splits a track whose
    crops change person (``embed.split_below`` of the site file); ``whole_people``: the background
    detector grows regions that are the top of a person (its ``whole_people``). ``scrape_metrics``: both
    services serve their Prometheus metrics on free loopback ports, scraped once the
    edge is done and once the matcher has re-associated (``scraped`` in the result).
    ``record``: the matcher keeps every batch it received (``received`` in the result, for
    :func:`hybreid.bench.recording.save`).

    Returns the edge summary, the gallery's sightings, the matcher's status and the
    runtime (its ``track_log`` ties sightings to ground truth).
    """
    gallery = Gallery(work / "gallery.sqlite")
    matcher = RecordingMatcher(gallery, policy) if record else Matcher(gallery, policy)
    service = MatcherService(matcher, BrokerConfig(url=broker_url, client_id="hybreid-matcher"))
    if graph is not None:
        service.use_camera_graph(graph)
    service.start()
    service.wait_until_subscribed()
    config = SiteConfig.from_dict({
        "site": site,
        "cameras": [{"id": c["id"], "source": str(scenes / c["video"]), "modality": c["modality"]}
                    for c in truth["cameras"]],
        "model": {"path": str(model)}, "broker": {"url": broker_url, "protocol": mqtt_protocol},
        "outbox": {"path": str(work / "outbox.sqlite")}, "metrics": {"record_tracks": True},
        "publish": {"interval_s": 0}, "embed": {"split_below": split_below},
        "detector": {"kind": "background", "whole_people": whole_people},
    })
    runtime = EdgeRuntime(config)
    servers = _metrics_servers(runtime, service) if scrape_metrics else {}
    total = truth["frames"] * len(truth["cameras"])
    outcome: dict = {}

    def run_edge() -> None:
        try:
            outcome["summary"] = runtime.run()
        except BaseException as exc:  # re-raised below, in the caller's thread
            outcome["error"] = exc

    with tqdm(total=total, desc="edge runtime", unit="frame", disable=not progress) as bar:
        worker = threading.Thread(target=run_edge, name="edge-runtime", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            bar.update(runtime.metrics.frames - bar.n)
    scraped = {"edge": _scrape(servers["edge"])} if servers else {}
    if "error" in outcome:
        service.stop()
        gallery.close()
        raise outcome["error"]
    summary = outcome["summary"]
    deadline = time.monotonic() + 30
    while service.matcher.accepted < summary["tracklets_published"] and time.monotonic() < deadline:
        time.sleep(0.05)
    online = by_camera(gallery, None, None, None)["sightings"]
    events = service.reassociate()
    status = service.status()
    if servers:
        scraped["matcher"] = _scrape(servers["matcher"])
        for server in servers.values():
            server.stop()
    service.stop()
    sightings = by_camera(gallery, None, None, None)["sightings"]
    gallery.close()
    return {"edge": summary, "sightings_online": online, "sightings": sightings, "events": events,
            "matcher": status, "runtime": runtime, "scraped": scraped,
            **({"received": matcher.received} if record else {})}


def _metrics_servers(runtime: EdgeRuntime, service: MatcherService) -> dict[str, MetricsServer]:
    servers = {}
    for name, metrics in (("edge", EdgeMetrics(runtime)), ("matcher", MatcherMetrics(service))):
        servers[name] = MetricsServer(metrics.registry, "127.0.0.1", 0, metrics.alive, metrics.ready).start()
    return servers


def _scrape(server: MetricsServer) -> dict[str, float]:
    """Every sample of the server's /metrics, fetched over HTTP as Prometheus would, by name
    (labelled samples summed over their labels)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://{server.host}:{server.port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def identity_boxes(track_log, sightings: list[dict]) -> dict[str, list]:
    """Every tracked box with the identity the matcher gave its tracklet, per camera, as
    MOTChallenge rows (frames from 1); boxes of tracklets that never reached the matcher
    are left out, as a camera's own tracker output without identity."""
    identity = {(s["camera_id"], s["track_id"]): s["identity_id"] for s in sightings}
    rows: dict[str, list] = {}
    for camera, frame, track, box in track_log:
        if (camera, track) in identity:
            rows.setdefault(camera, []).append((frame + 1, identity[camera, track], tuple(box)))
    return rows


def truth_boxes(truth: dict) -> dict[str, list]:
    return {camera["id"]: [(entry["frame"] + 1, entry["pid"], tuple(entry["box"])) for entry in camera["boxes"]]
            for camera in truth["cameras"]}


def score_site(site: dict, truth: dict, hota: bool = True) -> dict[str, dict]:
    """Online-only and re-associated identities, each scored by multi-camera IDF1 and by pairs;
    and the ceiling the detector and tracker leave: every published tracklet given its true
    person (``true identities``), so what IDF1 misses there is detection and tracking.
    ``hota``: HOTA too, where TrackEval is installed (it takes most of the scoring's time)."""
    from hybreid.eval.mtmc import hota_scores, hota_unavailable_reason, identity_scores

    with_hota = hota and hota_unavailable_reason() is None
    labels = {key: value["pid"] for key, value in tracklet_ground_truth(site["runtime"].track_log, truth).items()}
    ceiling = [{**s, "identity_id": labels.get((s["camera_id"], s["track_id"]), -1 - index)}
               for index, s in enumerate(site["sightings"])]
    scores = {}
    for method, sightings in (("online", site["sightings_online"]), ("re-associated", site["sightings"]),
                              ("true identities", ceiling)):
        scores[method] = score_identities(sightings, labels)
        predicted = identity_boxes(site["runtime"].track_log, sightings)
        scores[method]["mtmc"] = identity_scores(truth_boxes(truth), predicted)
        if with_hota:
            scores[method]["hota"] = hota_scores(truth_boxes(truth), predicted)
    return scores


def format_scores(scores: dict[str, dict], title: str) -> str:
    def hota(s: dict, key: str):
        return s["hota"][key] if "hota" in s else "-"

    rows = [[method, s["identities"], s["mtmc"]["idf1"], hota(s, "hota"), hota(s, "assa"), hota(s, "deta"),
             s["mtmc"]["idp"], s["mtmc"]["idr"], s["purity"], s["pairwise"]["f1"], s["cross_modality"]["precision"],
             s["cross_modality"]["recall"]]
            for method, s in scores.items()]
    return format_table(["identities by", "identities", "IDF1", "HOTA", "AssA", "DetA", "IDP", "IDR", "purity",
                         "pairwise F1", "vis-IR link P", "vis-IR link R"], rows, floatfmt=".3f", title=title)


def run(model: str | Path, out: str | Path, people: int = 6, policy: MatchPolicy | None = None,
        seed: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy = policy or MatchPolicy()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        truth = render_scenes(work / "scenes", num_people=people, seed=seed)
        with Mosquitto(work / "broker") as broker:
            site = run_site(model, work / "scenes", truth, broker.url, policy, work)
    runtime, summary = site["runtime"], site["edge"]
    scores = score_site(site, truth)
    people = scores["online"]["people"]
    print(format_scores(scores, f"{runtime.contract.identity}: {scores['online']['sightings']} sightings of {people} "
                                f"people, {len(truth['cameras'])} cameras; thresholds {policy.same_modality:.3f} / "
                                f"{policy.cross_modality:.3f}"))
    result = {"model": runtime.contract.identity, "thresholds": [policy.same_modality, policy.cross_modality],
              "tracklets_published": summary["tracklets_published"], "people": people,
              "reassociation_events": site["events"], **scores}
    (out / "identities.json").write_text(json.dumps(result, indent=2))
    print(f"saved {out / 'identities.json'}")
    return result
