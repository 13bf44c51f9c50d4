"""The site benchmark: a synthetic site (:mod:`hybreid.synthetic.site`) through the
edge runtime, Mosquitto and the matcher, for each model and each rendering (seed) of the
spec; identities scored online and re-associated (multi-camera IDF1 and HOTA, visible/
infrared links, pairwise F1) beside the tracker's ceiling; a table per run, one row per
seed with the mean and the minimum, JSON and a PNG timeline per run (one row per true
person, each sighting coloured by the identity the matcher gave it). Torch-free.

A figure tuned on one rendering says little about a user's site, which is another
rendering: ``--seed`` (repeatable) renders the spec with each seed, and each rendering
is kept in a cache folder named by the spec's hash, so the next run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hybreid.bench import recording
from hybreid.bench.identities import format_scores, run_site, score_site
from hybreid.errors import UserError
from hybreid.lab.mosquitto import Mosquitto
from hybreid.matcher.camera_graph import CameraGraph
from hybreid.matcher.policy import MatchPolicy
from hybreid.synthetic.scenes import tracklet_ground_truth
from hybreid.synthetic.site import SiteSpec, default_spec, render_site
from hybreid.tables import format_table

METHODS = ("online", "re-associated", "true identities")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hybreid" / "sites"


def rendered_site(spec: SiteSpec, cache: Path) -> tuple[Path, dict]:
    """The site ``spec`` renders, from ``cache`` where it was rendered before (the folder is
    named by the spec's hash; a rendering cut short is never taken for a finished one)."""
    key = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    folder = cache / f"{spec.site}-seed{spec.seed}-{key}"
    truth_file = folder / "ground_truth.json"
    if truth_file.is_file():
        return folder, json.loads(truth_file.read_text())
    partial = folder.with_name(folder.name + ".partial")
    for unfinished in (partial, folder):  # a folder without its ground truth was cut short
        shutil.rmtree(unfinished, ignore_errors=True)
    render_site(partial, spec)
    (partial / "spec.json").write_text(spec.model_dump_json(indent=2))
    partial.rename(folder)
    return folder, json.loads(truth_file.read_text())


def _row(record: dict) -> dict:
    """The figures a seed's row shows."""
    online, reassociated, ceiling = (record[method] for method in METHODS)
    hota = reassociated.get("hota", {})
    return {"IDF1 online": online["mtmc"]["idf1"], "IDF1 re-associated": reassociated["mtmc"]["idf1"],
            "IDF1 ceiling": ceiling["mtmc"]["idf1"], "HOTA": hota.get("hota", float("nan")),
            "AssA": hota.get("assa", float("nan")), "DetA": hota.get("deta", float("nan")),
            "HOTA ceiling": ceiling.get("hota", {}).get("hota", float("nan")),
            "vis-IR link P": reassociated["cross_modality"]["precision"],
            "vis-IR link R": reassociated["cross_modality"]["recall"],
            "re-associated - online": reassociated["mtmc"]["idf1"] - online["mtmc"]["idf1"]}


def summarise(records: list[dict], title: str) -> tuple[str, dict]:
    """One row per seed, then the mean and the minimum of every column."""
    rows = {record["seed"]: _row(record) for record in records}
    columns = list(next(iter(rows.values())))
    values = np.array([[row[column] for column in columns] for row in rows.values()], dtype=float)
    summary = {"mean": dict(zip(columns, np.nanmean(values, axis=0).tolist(), strict=True)),
               "min": dict(zip(columns, np.nanmin(values, axis=0).tolist(), strict=True))}
    table = [[f"seed {seed}", record["edge"]["tracklets_published"], *row.values()]
             for (seed, row), record in zip(rows.items(), records, strict=True)]
    if len(rows) > 1:
        table += [[name, "", *summary[name].values()] for name in ("mean", "min")]
    return format_table(["site", "tracklets", *columns], table, floatfmt=".3f", title=title), summary


def run(models: list[str], out: str | Path, policies: list[MatchPolicy], spec: SiteSpec | None = None,
        scenes: str | Path | None = None, seeds: list[int] | None = None, cache: str | Path | None = None,
        split_below: float | None = None, scrape_metrics: bool = False, whole_people: bool = False,
        record: bool = False) -> list[dict]:
    """``scenes``: a folder already rendered from ``spec``; otherwise each of ``seeds`` (the
    spec's own by default) renders the spec anew, kept in ``cache``. ``scrape_metrics``: the
    services' Prometheus metrics are scraped and set beside the benchmark's own figures.
    ``record``: each run is kept in ``out/recordings/`` for ``bench policy``
    (:mod:`hybreid.bench.recording`)."""
    if len(policies) != len(models):
        raise UserError("give one thresholds file per model, or none")
    if scenes and seeds:
        raise UserError("--scenes is one rendering; give --seed without it, and each seed renders its own")
    spec = spec or default_spec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sites: list[tuple[int, Path, dict]] = []
    if scenes:
        folder = Path(scenes)
        truth_file = folder / "ground_truth.json"
        truth = json.loads(truth_file.read_text()) if truth_file.is_file() else render_site(folder, spec)
        sites.append((spec.seed, folder, truth))
    else:
        cache = Path(cache) if cache else default_cache()
        for seed in dict.fromkeys(seeds or [spec.seed]):  # a seed given twice is one rendering
            folder, truth = rendered_site(spec.model_copy(update={"seed": seed}), cache)
            sites.append((seed, folder, truth))
    records, summaries = [], []
    for model, policy in zip(models, policies, strict=True):
        model_records = []
        for seed, folder, truth in sites:
            graph = CameraGraph.model_validate({"sites": {spec.site: truth["graph"]}}) if truth["graph"] else None
            with tempfile.TemporaryDirectory() as work:
                run_dir = Path(work)
                with Mosquitto(run_dir / "broker") as broker:
                    site = run_site(model, folder, truth, broker.url, policy, run_dir, site=spec.site,
                                    progress=True, graph=graph,
                                    split_below=split_below, scrape_metrics=scrape_metrics,
                                    whole_people=whole_people, record=record)
            scores = score_site(site, truth)
            name = site["runtime"].contract.identity
            if record:
                recording.save(out / "recordings" / f"{Path(model).stem}_seed{seed}", site["received"],
                               site["runtime"].track_log, truth, policy, name, spec.site, seed)
            print(format_scores(scores, f"{name}, seed {seed}: {len(truth['cameras'])} cameras, {truth['frames']} "
                                        f"frames each, {scores['online']['people']} people seen"))
            suffix = f"_seed{seed}" if len(sites) > 1 else ""
            timeline = _timeline(site, truth, out / f"timeline_{Path(model).stem}{suffix}.png", f"{name}, seed {seed}")
            model_records.append({"model": name, "seed": seed, "thresholds": [policy.same_modality,
                                                                              policy.cross_modality],
                                  "split_below": split_below, "whole_people": whole_people,
                                  "transit_bonus": policy.transit_bonus,
                                  "edge": {k: site["edge"][k] for k in ("frames", "fps", "tracklets_published")},
                                  "events": len(site["events"]), "timeline": str(timeline), **scores,
                                  **({"scraped": _scraped_beside(site)} if scrape_metrics else {})})
        table, summary = summarise(model_records, f"{model_records[0]['model']} on {len(sites)} rendering(s) of "
                                                  f"the spec (re-associated identities; IDF1 and HOTA)")
        print(table)
        records += model_records
        summaries.append({"model": model_records[0]["model"], "seeds": [r["seed"] for r in model_records], **summary})
    (out / "site.json").write_text(json.dumps(records, indent=2))
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))
    print(f"saved {out / 'site.json'}, {out / 'summary.json'} and the timelines")
    return records


def _scraped_beside(site: dict) -> list[dict]:
    """The figures the benchmark reports beside what the services' /metrics said of them."""
    edge, matcher = site["scraped"]["edge"], site["scraped"]["matcher"]
    rows = [{"figure": "tracklets published", "benchmark": site["edge"]["tracklets_published"],
             "scraped": edge["hybreid_edge_tracklets_published_total"]},
            {"figure": "frames", "benchmark": site["edge"]["frames"],
             "scraped": edge["hybreid_edge_frames_processed_total"]},
            {"figure": "messages ingested", "benchmark": site["matcher"]["accepted"],
             "scraped": matcher["hybreid_matcher_messages_accepted_total"]},
            {"figure": "identities", "benchmark": site["matcher"]["identities"],
             "scraped": matcher["hybreid_matcher_identities"]}]
    print(format_table(["figure", "benchmark", "scraped"], [list(row.values()) for row in rows],
                       "what the benchmark counted, and what a Prometheus scrape of the services said",
                       floatfmt=".0f"))
    return rows


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
