"""Bad CLI inputs as a careless operator or an attacker gives them: files, archives, configs,
URLs, models. Each must end in one sentence and exit status 2, write nothing outside its
target, and an edge box whose embedder dies must stop with one sentence instead of hanging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hybreid.cli import main


def _contract_graph(path: Path, reshape_to_batch_one: bool = False, output_dim: int = 3,
                    **metadata_changes) -> Path:
    """A small ONNX graph with a hybreid contract: images [N, 3, 16, 8] -> the per-channel mean
    [N, 3]. ``reshape_to_batch_one`` hard-codes batch 1 (the classic export bug): batch 1
    runs, batch 2 fails inside ONNX Runtime."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0)]
    initializers = []
    if reshape_to_batch_one:
        initializers.append(numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "one_by_three"))
        nodes.append(helper.make_node("Reshape", ["pooled", "one_by_three"], ["embeddings"]))
    else:
        nodes.append(helper.make_node("Identity", ["pooled"], ["embeddings"]))
    graph = helper.make_graph(nodes, "contract", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                ["batch", 3, 16, 8])],
                              [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    metadata = {"hybreid.model": "probe", "hybreid.weights_sha256": "00112233", "hybreid.embedding_dim":
                str(output_dim), "hybreid.input_name": "images", "hybreid.output_name": "embeddings",
                "hybreid.input_layout": "NCHW", "hybreid.input_height": "16", "hybreid.input_width": "8",
                "hybreid.mean": "[0.5, 0.5, 0.5]", "hybreid.std": "[0.5, 0.5, 0.5]",
                "hybreid.preprocess_in_graph": "0", **metadata_changes}
    helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, scenes):
    """A valid site next to its model and video, and the files the bad inputs start from."""
    folder = tmp_path_factory.mktemp("hostile_cli")
    scenes_dir, truth = scenes
    video = scenes_dir / truth["cameras"][0]["video"]
    model = _contract_graph(folder / "model.onnx")
    site = {"site": "lobby", "box_id": "box-01", "cameras": [{"id": "cam-01", "source": str(video)}],
            "model": {"path": str(model)}, "broker": {"url": "mqtt://127.0.0.1:9"},
            "outbox": {"path": str(folder / "outbox.sqlite")}}
    (folder / "garbage.onnx").write_bytes(os.urandom(2000))
    (folder / "not-a-db.sqlite").write_text("this is not SQLite " * 100)
    (folder / "image.png").write_bytes(b"\x89PNG not really")
    import onnx
    from onnx import TensorProto, helper

    foreign = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                                [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]), ir_version=8,
        opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(foreign, str(folder / "foreign.onnx"))
    _contract_graph(folder / "damaged-contract.onnx", **{"hybreid.mean": "7"})
    _contract_graph(folder / "huge-contract.onnx", **{"hybreid.input_height": "100000000"})
    gallery = folder / "gallery.sqlite"
    from hybreid.matcher.gallery import Gallery

    Gallery(gallery).close()
    return folder, site, gallery


def _site_variant(folder: Path, site: dict, name: str, change) -> str:
    data = json.loads(json.dumps(site))
    change(data)
    path = folder / f"site-{name}.yaml"
    path.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return str(path)


def _set(*path_and_value):
    *path, value = path_and_value

    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _drop(key):
    return lambda data: data.pop(key)


SITE_CASES = {
    "unknown top-level key": _set("sitee", "x"),
    "typo in a section": _set("tracker", {"max_ag": 3}),
    "site with a slash": _set("site", "lobby/x"),
    "site with a wildcard": _set("site", "#"),
    "camera id with a space": _set("cameras", [{"id": "cam 01", "source": 0}]),
    "camera id events": _set("cameras", [{"id": "events", "source": 0}]),
    "two cameras, one id": _set("cameras", [{"id": "c", "source": 0}, {"id": "c", "source": 1}]),
    "no cameras": _set("cameras", []),
    "cameras a mapping": _set("cameras", {"id": "c"}),
    "outbox size a word": _set("outbox", {"max_messages": "lots"}),
    "outbox size negative": _set("outbox", {"max_messages": -5}),
    "outbox policy unknown": _set("outbox", {"when_full": "drop_all"}),
    "modality thermal": _set("cameras", [{"id": "c", "source": 0, "modality": "thermal"}]),
    "detector kind unknown": _set("detector", {"kind": "ssd"}),
    "yolo without a path": _set("detector", {"kind": "yolo"}),
    "detector option typo": _set("detector", {"kind": "background", "histroy": 3}),
    "video file missing": _set("cameras", [{"id": "c", "source": "/nonexistent/video.avi"}]),
    "broker url http": _set("broker", {"url": "http://127.0.0.1:1883"}),
    "broker url without host": _set("broker", {"url": "mqtt://"}),
    "broker protocol an integer": _set("broker", {"protocol": 5}),
    "broker password file missing": _set("broker", {"password_file": "/nonexistent/password"}),
    "model missing": _drop("model"),
    "model file missing": _set("model", {"path": "/nonexistent/model.onnx"}),
    "model file garbage": lambda data: data["model"].update(path=data["model"]["path"].replace("model.onnx",
                                                                                               "garbage.onnx")),
    "model without a contract": lambda data: data["model"].update(
        path=data["model"]["path"].replace("model.onnx", "foreign.onnx")),
    "model with a damaged contract": lambda data: data["model"].update(
        path=data["model"]["path"].replace("model.onnx", "damaged-contract.onnx")),
    "model with a huge input": lambda data: data["model"].update(
        path=data["model"]["path"].replace("model.onnx", "huge-contract.onnx")),
    "threads a word": _set("model", "threads", "two"),
    "metrics interval zero": _set("metrics", {"interval_s": 0}),
    "tracker iou above one": _set("tracker", {"iou_threshold": 3}),
}


def cli_cases(folder: Path, site: dict, gallery: Path) -> dict[str, list[str]]:
    cases = {f"edge run: {name}": ["edge", "run", "--config", _site_variant(folder, site, str(i), change)]
             for i, (name, change) in enumerate(SITE_CASES.items())}
    (folder / "list.yaml").write_text("- just\n- a list\n")
    (folder / "broken.yaml").write_text("site: [unclosed\n")
    (folder / "thresholds-nan.json").write_text('{"same_modality": {"threshold": NaN}}')
    cases.update({
        "edge run: missing site file": ["edge", "run", "--config", str(folder / "nope.yaml")],
        "edge run: site file a list": ["edge", "run", "--config", str(folder / "list.yaml")],
        "edge run: site file not YAML": ["edge", "run", "--config", str(folder / "broken.yaml")],
        "edge run: site file a directory": ["edge", "run", "--config", str(folder)],
        "matcher query: missing gallery": ["matcher", "query", "--db", str(folder / "typo.sqlite"), "--identity", "1"],
        "matcher purge: missing gallery": ["matcher", "purge", "--db", str(folder / "typo.sqlite"), "--camera", "c"],
        "matcher purge: no criterion": ["matcher", "purge", "--db", str(gallery)],
        "matcher query: not SQLite": ["matcher", "query", "--db", str(folder / "not-a-db.sqlite"), "--identity", "1"],
        "matcher query: image without model": ["matcher", "query", "--db", str(gallery), "--image",
                                               str(folder / "image.png")],
        "matcher query: image not an image": ["matcher", "query", "--db", str(gallery), "--image",
                                              str(folder / "image.png"), "--artifact", str(folder / "model.onnx")],
        "matcher query: foreign ONNX": ["matcher", "query", "--db", str(gallery), "--image", str(folder / "image.png"),
                                        "--artifact", str(folder / "foreign.onnx")],
        "matcher run: thresholds missing": ["matcher", "run", "--db", str(gallery), "--thresholds",
                                            str(folder / "nope.json")],
        "matcher run: thresholds NaN": ["matcher", "run", "--db", str(gallery), "--thresholds",
                                        str(folder / "thresholds-nan.json")],
        "matcher run: broker url http": ["matcher", "run", "--db", str(gallery), "--broker", "http://x:1"],
        "matcher run: transit bonus NaN": ["matcher", "run", "--db", str(gallery), "--transit-bonus", "nan"],
        "matcher run: no search threads": ["matcher", "run", "--db", str(gallery), "--threads", "0"],
        "matcher run: password file missing": ["matcher", "run", "--db", str(gallery), "--password-file",
                                               str(folder / "nope")],
        "matcher run: gallery not SQLite": ["matcher", "run", "--db", str(folder / "not-a-db.sqlite")],
        "bundle create: missing ONNX": ["bundle", "create", "--artifact", str(folder / "nope.onnx"), "--out",
                                        str(folder / "out" / "b.tar.gz")],
        "bundle create: foreign ONNX": ["bundle", "create", "--artifact", str(folder / "foreign.onnx"), "--out",
                                        str(folder / "out" / "b.tar.gz")],
        "bundle create: garbage ONNX": ["bundle", "create", "--artifact", str(folder / "garbage.onnx"), "--out",
                                        str(folder / "out" / "b.tar.gz")],
        "bundle create: batches out of order": ["bundle", "create", "--artifact", str(folder / "model.onnx"),
                                                "--min-batch", "8", "--max-batch", "2", "--out",
                                                str(folder / "out" / "b.tar.gz")],
        "bundle verify: garbage archive": ["bundle", "verify", str(folder / "garbage.onnx")],
        "bundle install: trust key missing": ["bundle", "install", str(folder / "garbage.onnx"), "--dir",
                                              str(folder / "out"), "--trust", str(folder / "nope.pub")],
        "calibrate threshold: missing ONNX": ["calibrate", "threshold", "--artifact", str(folder / "nope.onnx"),
                                              "--dataset", "market1501", "--root", str(folder)],
        "calibrate int8: garbage ONNX": ["calibrate", "int8", "--artifact", str(folder / "garbage.onnx"), "--out",
                                         str(folder / "out" / "int8")],
        "export onnx: unknown model": ["export", "onnx", "--model", "resnet9000", "--out",
                                       str(folder / "out" / "m.onnx")],
        "eval: missing checkpoint": ["eval", "--checkpoint", str(folder / "nope.pt"), "--dataset", "market1501",
                                     "--root", str(folder)],
        "train: missing config": ["train", "--config", str(folder / "nope.yaml")],
    })
    return cases


@pytest.mark.slow
def test_bad_cli_inputs_end_in_one_sentence_and_status_2(world, capsys):
    folder, site, gallery = world
    cases = cli_cases(folder, site, gallery)
    assert len(cases) >= 50
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    failures = []
    for name, argv in cases.items():
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if code != 2 or not last.startswith("hybreid: error: ") or "Traceback" in err:
            failures.append((name, code, err[-300:]))
    assert not failures, failures
    after = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    changed = {p for p in after if before.get(p) != after[p]} - {p for p in after if p.name.startswith("site-")}
    assert not changed, changed  # no gallery, outbox or model touched, nothing written under out/
    assert not (folder / "out").exists() and not (folder / "typo.sqlite").exists()


def test_the_probe_refuses_a_model_that_breaks_its_contract(world, capsys):
    folder, site, _ = world
    wrong_dim = _contract_graph(folder / "wrong-dim.onnx", output_dim=5)
    config = _site_variant(folder, site, "wrong-dim", lambda data: data["model"].update(path=str(wrong_dim)))
    assert main(["edge", "run", "--config", config]) == 2
    assert "its contract says 5" in capsys.readouterr().err


@pytest.mark.slow
def test_an_embedder_that_dies_mid_run_stops_the_box_with_one_sentence(world, tmp_path):
    """Batch 1 runs (the start-up probe passes), batch 2 fails in ONNX Runtime: the box must
    stop with exit status 2 and say why, not publish nothing and exit 0, nor hang."""
    folder, site, _ = world
    batch_one = _contract_graph(tmp_path / "batch-one.onnx", reshape_to_batch_one=True)
    data = json.loads(json.dumps(site))
    data["model"]["path"] = str(batch_one)
    data["outbox"]["path"] = str(tmp_path / "outbox.sqlite")
    data["embed"] = {"max_batch": 8, "max_wait_ms": 200}
    data["detector"] = {"kind": "background", "min_area": 50}
    data["box_filter"] = {"min_height": 10, "min_aspect": 0.2, "min_score": 0.0}
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "hybreid.cli", "edge", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("hybreid: error: the embedder stopped")


@pytest.mark.slow
def test_a_live_box_stops_by_itself_when_its_embedder_died(world, tmp_path):
    folder, site, _ = world
    batch_one = _contract_graph(tmp_path / "batch-one.onnx", reshape_to_batch_one=True)
    data = json.loads(json.dumps(site))
    data["model"]["path"] = str(batch_one)
    data["outbox"]["path"] = str(tmp_path / "outbox.sqlite")
    data["cameras"][0].update(loop=True, pace=True)  # a live camera: never ends by itself
    data["embed"] = {"max_batch": 8, "max_wait_ms": 200}
    data["box_filter"] = {"min_height": 10, "min_aspect": 0.2, "min_score": 0.0}
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(data))
    box = subprocess.Popen([sys.executable, "-m", "hybreid.cli", "edge", "run", "--config", str(config)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = box.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        box.send_signal(signal.SIGTERM)
        _, err = box.communicate(timeout=30)
    assert box.returncode == 2 and "the embedder stopped" in err


def test_the_mqtt_password_is_never_a_flag(world, capsys):
    """A flag shows in every user's process list: the password comes from a file or the environment."""
    _, _, gallery = world
    with pytest.raises(SystemExit) as exit_status:
        main(["matcher", "run", "--db", str(gallery), "--password", "secret"])
    assert exit_status.value.code == 2 and "unrecognized arguments: --password" in capsys.readouterr().err


BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join('*' + chr(97 + i) for _ in range(9))}]\n" for i in range(8))


def hostile_file_cases(folder: Path, site: dict) -> dict[str, list[str]]:
    """Files that once hung a command, filled its memory or ended in a traceback."""
    import cv2
    import numpy as np

    fifo = folder / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    (folder / "laughs.yaml").write_text(BILLION_LAUGHS)
    (folder / "nested.yaml").write_text("site: " + "[" * 600 + "]" * 600 + "\n")
    (folder / "huge.yaml").write_text("# padding\n" * 250_000)  # 2.5 MB
    (folder / "ca.txt").write_text("this is not a certificate\n")
    (folder / "good.yaml").write_text("cameras: [a, b]\n")
    cv2.imwrite(str(folder / "person.png"), np.full((128, 64, 3), 120, np.uint8))
    forged = _contract_graph(folder / "forged.onnx", output_dim=5)  # says 5 dimensions, gives 3
    gallery = folder / "hostile-gallery.sqlite"

    def site_with(**broker):
        return _site_variant(folder, site, "broker-" + "-".join(broker), lambda data: data["broker"].update(broker))

    matcher = ["matcher", "run", "--db", str(gallery), "--report-every", "0"]
    return {
        "edge run: billion laughs": ["edge", "run", "--config", str(folder / "laughs.yaml")],
        "edge run: 600 nested brackets": ["edge", "run", "--config", str(folder / "nested.yaml")],
        "edge run: a 2.5 MB site file": ["edge", "run", "--config", str(folder / "huge.yaml")],
        "edge run: the site file a FIFO": ["edge", "run", "--config", str(fifo)],
        "edge run: the site file /dev/zero": ["edge", "run", "--config", "/dev/zero"],
        "edge run: password file /dev/zero": ["edge", "run", "--config", site_with(password_file="/dev/zero")],
        "edge run: password file a FIFO": ["edge", "run", "--config", site_with(password_file=str(fifo))],
        "edge run: CA file a FIFO": ["edge", "run", "--config",
                                     site_with(url="mqtts://127.0.0.1:9", ca_certs=str(fifo))],
        "edge run: CA file of text": ["edge", "run", "--config",
                                      site_with(url="mqtts://127.0.0.1:9", ca_certs=str(folder / "ca.txt"))],
        "matcher run: password file /dev/zero": [*matcher, "--password-file", "/dev/zero"],
        "matcher run: password file a FIFO": [*matcher, "--password-file", str(fifo)],
        "matcher run: thresholds /dev/zero": [*matcher, "--thresholds", "/dev/zero"],
        "matcher run: thresholds a FIFO": [*matcher, "--thresholds", str(fifo)],
        "matcher run: CA file a FIFO": [*matcher, "--broker", "mqtts://127.0.0.1:9", "--ca-certs", str(fifo)],
        "matcher run: CA file of text": [*matcher, "--broker", "mqtts://127.0.0.1:9", "--ca-certs",
                                         str(folder / "ca.txt")],
        "matcher run: camera graph of laughs": [*matcher, "--camera-graph", str(folder / "laughs.yaml")],
        "matcher run: camera graph refused": [*matcher, "--camera-graph", str(folder / "good.yaml")],
        "matcher run: camera graph missing": [*matcher, "--camera-graph", str(folder / "nope.yaml")],
        "matcher query: image with a forged contract": ["matcher", "query", "--db", str(folder / "gallery.sqlite"),
                                                        "--image", str(folder / "person.png"), "--artifact",
                                                        str(forged)],
        "matcher purge: negative retention": ["matcher", "purge", "--db", str(folder / "gallery.sqlite"),
                                              "--older-than-days=-5"],
        "train: override of laughs": ["train", "--config", "configs/train/haresformer_synthetic.yaml",
                                      "x={" + BILLION_LAUGHS.replace("\n", ", ") + "}"],
        "train: override not YAML": ["train", "--config", "configs/train/haresformer_synthetic.yaml", "x=[a: b"],
    }


# The peak resident size from VmHWM: getrusage's ru_maxrss also counts the forking parent's
# size, which exec hands down (pytest itself can be over 2 GB by then).
_RUN_CASES = """
import json, re, sys, io, contextlib
from pathlib import Path
from hybreid.cli import main
cases, results = json.loads(sys.argv[1]), {}
for name, argv in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results[name] = [code, err.getvalue()[-400:]]
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"results": results, "max_rss_kib": peak}))
"""


@pytest.mark.slow
def test_hostile_files_end_in_one_sentence_without_hanging_or_filling_memory(world):
    """Billion laughs, deep nesting, an oversized file, /dev/zero, FIFOs and a text file as CA:
    each refused in one sentence with status 2, within a bounded time and under 1 GB."""
    folder, site, _ = world
    cases = hostile_file_cases(folder, site)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    result = subprocess.run([sys.executable, "-c", _RUN_CASES, json.dumps(cases)], capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    failures = {name: (code, err) for name, (code, err) in report["results"].items()
                if code != 2 or not err.strip().splitlines()[-1].startswith("hybreid: error: ") or "Traceback" in err}
    assert not failures, failures
    assert report["max_rss_kib"] < 1024 * 1024, report["max_rss_kib"]
    after = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    changed = {p for p in after if before.get(p) != after[p]} - {p for p in after if p.name.startswith("site-")}
    assert not changed, changed
    assert not (folder / "hostile-gallery.sqlite").exists()  # a refused `matcher run` creates no gallery


def test_a_malformed_postgresql_url_never_prints_its_password(capsys):
    for url in ("postgresql://u:s3cret pw@[bad/db", "postgresql://u:s3c%ZZret@127.0.0.1:1/db"):
        assert main(["matcher", "query", "--db", url, "--identity", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hybreid: error: ") and "s3c" not in err, err
