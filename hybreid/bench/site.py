"""The site benchmark: a synthetic site (:mod:`hybreid.synthetic.site`) through the
edge runtime, Mosquitto and the matcher, for each model; identities scored online and
re-associated (multi-camera IDF1, visible/infrared links, pairwise F1); a table, JSON and
a PNG timeline per model (one row per true person, each sighting coloured by the identity
the matcher gave it). Torch-free.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hybreid.bench.identities import format_scores, run_site, score_site
from hybreid.errors import UserError
from hybreid.matcher.camera_graph import CameraGraph
from hybreid.matcher.service import MatchPolicy
from hybreid.mqtt.mosquitto import Mosquitto
from hybreid.synthetic.scenes import tracklet_ground_truth
from hybreid.synthetic.site import SiteSpec, default_spec, render_site


def run(models: list[str], out: str | Path, policies: list[MatchPolicy], spec: SiteSpec | None = None,
        scenes: str | Path | None = None) -> list[dict]:
    """``scenes``: a folder already rendered from ``spec`` (rendered into a temporary one otherwise)."""
    if len(policies) != len(models):
        raise UserError("give one thresholds file per model, or none")
    spec = spec or default_spec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        folder = Path(scenes) if scenes else work / "scenes"
        truth = (json.loads((folder / "ground_truth.json").read_text()) if (folder / "ground_truth.json").is_file()
                 else render_site(folder, spec))
        graph = CameraGraph.model_validate({"sites": {spec.site: truth["graph"]}}) if truth["graph"] else None
        for model, policy in zip(models, policies, strict=True):
            run_dir = work / Path(model).stem
            run_dir.mkdir()
            with Mosquitto(run_dir / "broker") as broker:
                site = run_site(model, folder, truth, broker.url, policy, run_dir, site=spec.site, progress=True,
                                transit=graph.transit if graph else None)
            scores = score_site(site, truth)
            name = site["runtime"].contract.identity
            print(format_scores(scores, f"{name} on {len(truth['cameras'])} cameras, {truth['frames']} frames each, "
                                        f"{scores['online']['people']} people seen"))
            timeline = _timeline(site, truth, out / f"timeline_{Path(model).stem}.png", name)
            results.append({"model": name, "thresholds": [policy.same_modality, policy.cross_modality],
                            "edge": {k: site["edge"][k] for k in ("frames", "fps", "tracklets_published")},
                            "events": len(site["events"]), "timeline": str(timeline), **scores})
    (out / "site.json").write_text(json.dumps(results, indent=2))
    print(f"saved {out / 'site.json'} and the timelines")
    return results


def _timeline(site: dict, truth: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = tracklet_ground_truth(site["runtime"].track_log, truth)
    spans: dict[tuple[str, int], list[int]] = {}
    for camera, frame, track, _ in site["runtime"].track_log:
        span = spans.setdefault((camera, track), [frame, frame])
        span[0], span[1] = min(span[0], frame), max(span[1], frame)
    people = sorted({value["pid"] for value in labels.values() if value["pid"] >= 0})
    row = {pid: index for index, pid in enumerate(people)}
    fps = truth["fps"]
    fig, axes = plt.subplots(1, 2, figsize=(14, max(3.0, 0.28 * len(people) + 1.5)), sharey=True)
    colours = plt.get_cmap("tab20")
    for axis, (method, key) in zip(axes, (("online", "sightings_online"), ("re-associated", "sightings")),
                                   strict=True):
        identity = {(s["camera_id"], s["track_id"]): s["identity_id"] for s in site[key]}
        for (camera, track), (first, last) in spans.items():
            pid = labels.get((camera, track), {}).get("pid", -1)
            if pid < 0 or (camera, track) not in identity:
                continue
            given = identity[camera, track]
            axis.barh(row[pid], (last - first + 1) / fps, left=first / fps, height=0.7,
                      color=colours(given % 20), edgecolor="black", linewidth=0.3)
            axis.text((first + last) / 2 / fps, row[pid], str(given), ha="center", va="center", fontsize=6)
        axis.set(title=f"{method}: {len(set(identity.values()))} identities", xlabel="seconds",
                 xlim=(0, truth["frames"] / fps))
    axes[0].set(yticks=range(len(people)), yticklabels=[f"person {pid}" for pid in people],
                ylim=(len(people) - 0.5, -0.5))
    axes[0].tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{title}: each sighting coloured and labelled by the identity the matcher gave it")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
