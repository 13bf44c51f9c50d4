"""End-to-end identity benchmark: synthetic visible + infrared videos -> edge runtime ->
Mosquitto -> matcher, scored against the scenes' ground truth (purity, pairwise ID-F1,
cross-modality links separately). Torch-free.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

from hybreid.bench.broker import Mosquitto
from hybreid.edge_runtime.publish import BrokerConfig
from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig
from hybreid.edge_runtime.scenes import render_scenes, tracklet_ground_truth
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.query import by_camera
from hybreid.matcher.scoring import score_identities
from hybreid.matcher.service import Matcher, MatcherService, MatchPolicy
from hybreid.tables import format_table


def run_site(model: str | Path, scenes: Path, truth: dict, broker_url: str, policy: MatchPolicy, work: Path,
             site: str = "bench", progress: bool = False) -> dict:
    """The edge runtime on every camera video of ``truth`` and a matcher, through the
    broker at ``broker_url``; waits until the matcher has every published tracklet.

    Returns the edge summary, the gallery's sightings, the matcher's status and the
    runtime (its ``track_log`` ties sightings to ground truth).
    """
    gallery = Gallery(work / "gallery.sqlite")
    service = MatcherService(Matcher(gallery, policy), BrokerConfig(url=broker_url, client_id="hybreid-matcher"))
    service.start()
    service.wait_until_subscribed()
    config = SiteConfig.from_dict({
        "site": site,
        "cameras": [{"id": c["id"], "source": str(scenes / c["video"]), "modality": c["modality"]}
                    for c in truth["cameras"]],
        "model": {"path": str(model)}, "broker": {"url": broker_url},
        "outbox": {"path": str(work / "outbox.sqlite")}, "metrics": {"record_tracks": True},
        "publish": {"interval_s": 0},
    })
    runtime = EdgeRuntime(config)
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
    if "error" in outcome:
        service.stop()
        gallery.close()
        raise outcome["error"]
    summary = outcome["summary"]
    deadline = time.monotonic() + 30
    while service.matcher.accepted < summary["tracklets_published"] and time.monotonic() < deadline:
        time.sleep(0.05)
    status = service.status()
    service.stop()
    sightings = by_camera(gallery, None, None, None)["sightings"]
    gallery.close()
    return {"edge": summary, "sightings": sightings, "matcher": status, "runtime": runtime}


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
    runtime, summary, sightings = site["runtime"], site["edge"], site["sightings"]
    labels = {key: value["pid"] for key, value in tracklet_ground_truth(runtime.track_log, truth).items()}
    scores = score_identities(sightings, labels)
    scores.update({"model": runtime.contract.identity, "thresholds": [policy.same_modality, policy.cross_modality],
                   "tracklets_published": summary["tracklets_published"]})
    rows = [["all pairs", scores["pairwise"]["precision"], scores["pairwise"]["recall"], scores["pairwise"]["f1"],
             scores["pairwise"]["true_links"]],
            ["cross-modality pairs", scores["cross_modality"]["precision"], scores["cross_modality"]["recall"],
             scores["cross_modality"]["f1"], scores["cross_modality"]["true_links"]]]
    print(format_table(["links", "precision", "recall", "F1", "true links"], rows, floatfmt=".3f",
                       title=f"{scores['model']}: {scores['sightings']} sightings of {scores['people']} people -> "
                             f"{scores['identities']} identities, purity {scores['purity']:.3f}"))
    (out / "identities.json").write_text(json.dumps(scores, indent=2))
    print(f"saved {out / 'identities.json'}")
    return scores
