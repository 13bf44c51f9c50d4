"""The synthetic site: its spec, the plan of who walks where, the rendered videos and ground
truth, and the site benchmark end to end through Mosquitto."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import cv2
import numpy as np
import pytest

from hybreid.cli import main
from hybreid.errors import UserError
from hybreid.eval.mtmc import read_mot
from hybreid.matcher.camera_graph import CameraGraph
from hybreid.matcher.policy import MatchPolicy
from hybreid.synthetic.site import SiteSpec, default_spec, plan_site
from hybreid.thresholds import ThresholdsFile

SMALL = {"seconds": 24.0, "people": 6, "size": [192, 108], "pairs": 0.4, "one_camera": 0.3, "returning": 0.3,
         "cameras": [{"id": "day", "modality": "visible"}, {"id": "night", "modality": "infrared"},
                     {"id": "both", "modality": "day_night", "switch_at_s": 12.0}],
         "graph": [{"cameras": ["day", "night"], "min_s": 2, "max_s": 4},
                   {"cameras": ["night", "both"], "min_s": 2, "max_s": 4}]}


def test_the_default_site_is_what_the_issue_asks_for():
    spec = default_spec()
    assert len(spec.cameras) >= 4 and spec.people >= 30 and spec.seconds >= 180
    assert {c.modality for c in spec.cameras} == {"visible", "infrared", "day_night"}
    plans = plan_site(spec)
    cameras_of = defaultdict(set)
    for camera, passage in plans:
        cameras_of[passage.pid].add(camera)
    assert len(cameras_of) == spec.people
    assert any(len(c) == 1 for c in cameras_of.values()) and any(len(c) >= 3 for c in cameras_of.values())
    visits = defaultdict(list)
    for camera, passage in plans:
        visits[passage.pid, camera].append(passage.start_frame)
    assert any(len(starts) > 1 for starts in visits.values())  # someone comes back to a camera
    # Consecutive visits of one person along the graph respect its walking times.
    least = {frozenset(link.cameras): link.min_s for link in spec.graph}
    by_person = defaultdict(list)
    for camera, passage in plans:
        by_person[passage.pid].append((passage.start_frame, camera, passage.frames))
    for trips in by_person.values():
        trips.sort()
        for (start, camera, frames), (next_start, next_camera, _) in zip(trips, trips[1:], strict=False):
            pair = frozenset((camera, next_camera))
            if pair in least and next_start - (start + frames) < 30 * spec.fps:  # the same trip
                assert next_start - (start + frames) >= least[pair] * spec.fps


@pytest.mark.parametrize(("change", "problem"), [
    ({"peopel": 3}, "did you mean 'people'"),
    ({"cameras": [{"id": "a", "modality": "thermal"}]}, "cameras.0.modality"),
    ({"graph": [{"cameras": ["cam1", "cam9"], "min_s": 1, "max_s": 2}]}, "unknown camera"),
    ({"graph": [{"cameras": ["cam1", "cam2"], "min_s": 9, "max_s": 2}]}, "max_s is below min_s"),
    ({"cameras": [{"id": "a b", "modality": "visible"}]}, "cameras.0.id"),
    ({"seconds": -1}, "seconds"),
])
def test_bad_site_specs_are_one_clear_error(tmp_path, change, problem):
    import yaml

    data = default_spec().model_dump()
    data.update(change)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=problem):
        SiteSpec.load(path)


@pytest.fixture(scope="module")
def small_site(tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("site")
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SMALL))
    assert main(["edge", "scenes", "--site", str(spec_path), "--out", str(folder / "scenes")]) == 0
    return folder, spec_path, json.loads((folder / "scenes" / "ground_truth.json").read_text())


@pytest.mark.slow
def test_rendered_site_has_videos_mot_ground_truth_and_a_day_night_switch(small_site):
    folder, _, truth = small_site
    assert truth["frames"] == 240 and [c["id"] for c in truth["cameras"]] == ["day", "night", "both"]
    assert truth["graph"][0]["cameras"] == ["day", "night"]

    graph = CameraGraph.load(folder / "scenes" / "camera_graph.yaml")  # what `matcher run --camera-graph` reads
    assert graph.transit(truth["site"], "night", "day") == (truth["graph"][0]["min_s"], truth["graph"][0]["max_s"])
    for camera in truth["cameras"]:
        video = cv2.VideoCapture(str(folder / "scenes" / camera["video"]))
        frames = []
        while True:
            ok, frame = video.read()
            if not ok:
                break
            frames.append(frame)
        assert len(frames) == 240 and frames[0].shape == (108, 192, 3)
        rows = read_mot(folder / "scenes" / "gt" / f"{camera['id']}.txt")
        assert len(rows) == len(camera["boxes"]) and all(frame >= 1 for frame, _, _ in rows)
        colour = [float(np.ptp(frame.astype(int), axis=2).mean()) for frame in (frames[10], frames[200])]
        if camera["id"] == "both":  # colour by day, grey after the switch at 12 s
            assert camera["modality"] == "auto" and camera["switch_frame"] == 120
            assert colour[0] > 5 > colour[1]
        elif camera["id"] == "night":
            assert max(colour) < 5
    people = {box["pid"] for camera in truth["cameras"] for box in camera["boxes"]}
    assert people <= set(range(1, 7)) and len(people) >= 4


@pytest.mark.slow
def test_site_benchmark_scores_online_and_reassociated_with_a_timeline(small_site, tiny_onnx, tmp_path):
    folder, spec_path, truth = small_site
    out = tmp_path / "bench"
    assert main(["bench", "site", "--artifact", str(tiny_onnx), "--spec", str(spec_path), "--scenes",
                 str(folder / "scenes"), "--out", str(out), "--scrape-metrics"]) == 0
    (result,) = json.loads((out / "site.json").read_text())
    # What Prometheus would have scraped from the two services is what the benchmark counted.
    scraped = {row["figure"]: row for row in result["scraped"]}
    assert set(scraped) == {"tracklets published", "frames", "messages ingested", "identities"}
    for row in scraped.values():
        assert row["benchmark"] > 0 and row["scraped"] == pytest.approx(row["benchmark"], rel=0.01)
    true_boxes = sum(len(camera["boxes"]) for camera in truth["cameras"])
    for method in ("online", "re-associated"):
        mtmc = result[method]["mtmc"]
        assert mtmc["cameras"] == 3 and mtmc["idtp"] + mtmc["idfn"] == true_boxes
        assert 0 <= mtmc["idf1"] <= 1 and mtmc["idtp"] + mtmc["idfp"] > 0
    # Every tracklet given its true person: the ceiling detection and tracking leave to association.
    ceiling = result["true identities"]
    assert ceiling["purity"] == 1.0 and ceiling["pairwise"]["precision"] in (0.0, 1.0)
    assert ceiling["mtmc"]["idf1"] >= max(result[m]["mtmc"]["idf1"] for m in ("online", "re-associated"))
    assert result["edge"]["frames"] == 3 * 240
    assert (out / "timeline_haresformer_tiny.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def seed_runs(small_site, tiny_onnx, tmp_path_factory):
    """``bench site`` on two seeds of the small spec, each run recorded; and what it printed."""
    import contextlib
    import io

    _, spec_path, _ = small_site
    folder = tmp_path_factory.mktemp("seeds")
    cache, out = folder / "cache", folder / "bench"
    argv = ["bench", "site", "--artifact", str(tiny_onnx), "--spec", str(spec_path),
            "--seed", "3", "--seed", "4", "--seed", "4",  # a seed given twice is one rendering
            "--site-cache", str(cache), "--transit-bonus", "0.05", "--record", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return argv, cache, out, printed.getvalue()


@pytest.mark.slow
def test_site_benchmark_renders_each_seed_once_and_reports_mean_and_minimum(small_site, seed_runs, tmp_path,
                                                                            monkeypatch):
    import hybreid.bench.site as bench_site

    _, spec_path, _ = small_site
    argv, cache, out, table = seed_runs
    renderings = sorted(path.name for path in cache.iterdir())
    assert len(renderings) == 2 and renderings[0].startswith("synthetic-seed3-")
    truths = [json.loads((cache / name / "ground_truth.json").read_text()) for name in renderings]
    assert truths[0]["cameras"][0]["boxes"] != truths[1]["cameras"][0]["boxes"]  # two different sites
    records = json.loads((out / "site.json").read_text())
    assert [r["seed"] for r in records] == [3, 4] and {r["transit_bonus"] for r in records} == {0.05}
    for record in records:
        for method in ("online", "re-associated", "true identities"):
            assert 0 <= record[method]["hota"]["hota"] <= 1 and 0 < record[method]["hota"]["deta"] <= 1
    (summary,) = json.loads((out / "summary.json").read_text())
    idf1 = [r["re-associated"]["mtmc"]["idf1"] for r in records]
    assert summary["mean"]["IDF1 re-associated"] == pytest.approx(sum(idf1) / 2)
    assert summary["min"]["IDF1 re-associated"] == pytest.approx(min(idf1))
    assert "seed 3" in table and "seed 4" in table and "| min" in table
    assert (out / "timeline_haresformer_tiny_seed4.png").is_file()

    # the second run takes both renderings from the cache
    monkeypatch.setattr(bench_site, "render_site", lambda *args, **kwargs: pytest.fail("rendered again"))
    assert bench_site.rendered_site(SiteSpec.load(spec_path).model_copy(update={"seed": 3}), cache)[1] == truths[0]
    assert main(argv[:-1] + [str(tmp_path / "again"), "--scenes", str(cache / renderings[0])]) == 2


@pytest.mark.slow
def test_a_recorded_run_replays_to_the_scores_the_run_had(seed_runs, tiny_onnx):
    from hybreid.bench.recording import load, replay

    _, _, out, _ = seed_runs
    for record in json.loads((out / "site.json").read_text()):
        recording = load(out / "recordings" / f"{tiny_onnx.stem}_seed{record['seed']}")
        assert recording.info.seed == record["seed"] and recording.info.model == record["model"]
        policy = MatchPolicy.checked(same_modality=recording.info.same_modality,
                                     cross_modality=recording.info.cross_modality,
                                     transit_bonus=recording.info.transit_bonus)
        replayed = replay(recording, policy)
        for method in ("online", "re-associated", "true identities"):
            assert replayed[method]["mtmc"]["idf1"] == pytest.approx(record[method]["mtmc"]["idf1"])
            assert replayed[method]["identities"] == record[method]["identities"]


@pytest.mark.slow
def test_thresholds_are_chosen_on_tuning_recordings_and_checked_on_held_out_ones(seed_runs, tiny_onnx, tmp_path,
                                                                                  capsys):
    from hybreid.bench.recording import load

    _, _, runs, _ = seed_runs
    recordings = [runs / "recordings" / f"{tiny_onnx.stem}_seed{seed}" for seed in (3, 4)]
    out = tmp_path / "policy"
    argv = ["bench", "policy", "--recording", str(recordings[0]), "--recording", str(recordings[1]),
            "--tune-seed", "3", "--same", "0.5", "--same", "0.99", "--cross", "0.45",
            "--transit-bonus", "0", "--transit-bonus", "0.05", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "policy.json").read_text())
    assert result["held_out_seeds"] == [4] and len(result["candidates"]) == 4
    # The chosen candidate is the one whose tuning rows score best (mean of online and re-associated IDF1).
    scores = {(entry["same_modality"], entry["transit_bonus"]):
              np.mean([(row["IDF1 online"] + row["IDF1 re-associated"]) / 2 for row in entry["rows"].values()])
              for entry in result["candidates"]}
    chosen = result["chosen"]
    assert (chosen["same_modality"], chosen["transit_bonus"]) == max(scores, key=scores.get)
    # At 0.99 nearly every tracklet stays apart, so the candidates cannot score alike.
    assert scores[0.5, 0.0] != scores[0.99, 0.0]
    thresholds = ThresholdsFile.load(out / "thresholds.json")
    assert thresholds.same_modality.threshold == result["chosen"]["same_modality"]
    assert thresholds.model == load(recordings[0]).info.model
    assert set(result["checked"]) == {"recorded", "chosen"} and set(result["checked"]["chosen"]) == {"3", "4"}
    assert (out / "policy.png").read_bytes()[:4] == b"\x89PNG"
    assert "held out" in capsys.readouterr().out

    # What is not a recording, or not a fit set of them, is one sentence and exit status 2.
    broken = tmp_path / "broken"
    shutil.copytree(recordings[1], broken)
    lines = (broken / "messages.jsonl").read_text().splitlines()
    (broken / "messages.jsonl").write_text("\n".join(lines[-1:] + lines[:-1]))  # the last batch first
    no_walks = tmp_path / "no_walks"
    shutil.copytree(recordings[1], no_walks)
    info = json.loads((no_walks / "recording.json").read_text())
    info["graph"] = [{"cameras": ["day"], "min_s": -1}]
    (no_walks / "recording.json").write_text(json.dumps(info))
    for recording, tune, problem in ((broken, "4", "out of batch order"),
                                     (no_walks, "4", "is not one `hybreid bench site --record` wrote"),
                                     (tmp_path / "nowhere", "4", "is not a folder"),
                                     (recordings[1], "3", "no recording of tuning seed"),
                                     (out, "4", "recording.json does not exist")):
        capsys.readouterr()
        assert main(["bench", "policy", "--recording", str(recording), "--tune-seed", tune,
                     "--out", str(tmp_path / "refused")]) == 2
        assert problem in capsys.readouterr().err
    assert main(argv[:2] + ["--recording", str(recordings[0]), "--recording", str(recordings[0]),
                            "--tune-seed", "3", "--out", str(tmp_path / "twice")]) == 2
    assert "both seed 3" in capsys.readouterr().err
    assert main(argv[:2] + ["--recording", str(recordings[0]), "--tune-seed", "3", "--same", "nan",
                            "--out", str(tmp_path / "nan")]) == 2
    assert "same_modality" in capsys.readouterr().err


def test_tracker_benchmark_scores_a_swap_as_a_person_would():
    """Two people, ten frames, each detected exactly; two tracks that swap them after six
    frames. Worked by hand: recall and precision 1, a perfect tracker's IDF1 1; each track
    keeps its majority person for 6 of its 10 boxes, so IDF1 12 / 20 and 8 of 20 boxes swapped."""
    from hybreid.bench.tracks import score
    from hybreid.edge_runtime.stages import Detection

    first, second = (10.0, 10.0, 20.0, 60.0), (100.0, 10.0, 20.0, 60.0)
    truth = {"cameras": [{"id": "cam", "boxes": [{"frame": f, "pid": pid, "box": list(box)}
                                                 for f in range(10) for pid, box in ((1, first), (2, second))]}]}
    detections = {"cam": [[Detection(first, 0.9), Detection(second, 0.9)] for _ in range(10)]}
    log = [("cam", f, 7, first if f < 6 else second) for f in range(10)] + \
          [("cam", f, 8, second if f < 6 else first) for f in range(10)]
    scores = score(truth, detections, log)
    assert scores["detection recall"] == 1 and scores["detection precision"] == 1
    assert scores["IDF1 detector ceiling"] == pytest.approx(1.0)
    assert scores["IDF1 tracker ceiling"] == pytest.approx(0.6)
    assert scores["swapped boxes"] == pytest.approx(0.4) and scores["tracks"] == 2


@pytest.mark.slow
def test_tracker_benchmark_runs_the_edge_detector_and_tracker_on_each_seed(tmp_path, capsys):
    import yaml

    spec_path = tmp_path / "spec.yaml"  # the default site's views and walks, shorter and with fewer people
    spec_path.write_text(yaml.safe_dump({**default_spec().model_dump(), "seconds": 40.0, "people": 8}))
    out = tmp_path / "tracks"
    assert main(["bench", "tracks", "--spec", str(spec_path), "--seed", "3", "--seed", "4",
                 "--site-cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    result = json.loads((out / "tracks.json").read_text())
    assert [row["seed"] for row in result["seeds"]] == [3, 4]
    # 40 s is short for the background model to learn the views: recall 0.78 / 0.85, ceiling 0.80 / 0.83
    # and 4 % / 11 % of tracked boxes swapped (three people crossing on seed 4) when written
    for row in result["seeds"]:
        assert row["detection recall"] > 0.7 and row["IDF1 tracker ceiling"] > 0.7 and row["swapped boxes"] < 0.2
    assert "| min" in capsys.readouterr().out
