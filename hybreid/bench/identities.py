"""End-to-end identity benchmark: synthetic visible + infrared videos -> edge runtime ->
Mosquitto -> matcher, scored against the scenes' ground truth (purity, pairwise ID-F1,
cross-modality links separately). Torch-free.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from hybreid.bench.broker import Mosquitto
from hybreid.edge_runtime.publish import BrokerConfig
from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig
from hybreid.edge_runtime.scenes import render_scenes, tracklet_ground_truth
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.query import by_camera
from hybreid.matcher.scoring import score_identities
from hybreid.matcher.service import Matcher, MatcherService, MatchPolicy
from hybreid.tables import format_table


def run(model: str | Path, out: str | Path, people: int = 6, policy: MatchPolicy | None = None,
        seed: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    policy = policy or MatchPolicy()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        truth = render_scenes(work / "scenes", num_people=people, seed=seed)
        with Mosquitto(work / "broker") as broker:
            gallery = Gallery(work / "gallery.sqlite")
            service = MatcherService(Matcher(gallery, policy), BrokerConfig(url=broker.url, client_id="matcher"))
            service.start()
            service.connected.wait(10)
            config = SiteConfig.from_dict({
                "site": "bench",
                "cameras": [{"id": c["id"], "source": str(work / "scenes" / c["video"]), "modality": c["modality"]}
                            for c in truth["cameras"]],
                "model": {"path": str(model)}, "broker": {"url": broker.url},
                "outbox": {"path": str(work / "outbox.sqlite")}, "metrics": {"record_tracks": True},
                "publish": {"interval_s": 0},
            })
            runtime = EdgeRuntime(config)
            summary = runtime.run()
            deadline = time.monotonic() + 30
            while service.matcher.accepted < summary["tracklets_published"] and time.monotonic() < deadline:
                time.sleep(0.05)
            service.stop()
            sightings = by_camera(gallery, None, None, None)["sightings"]
            gallery.close()
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
