"""The edge runtime end to end: synthetic videos -> runtime -> real Mosquitto -> subscriber."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from support import WITHOUT_TORCH, Subscriber, requires_openvino

from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig
from hybreid.synthetic.scenes import tracklet_ground_truth, tracklet_purity


def contiguous(seqs: list[int]) -> bool:
    """A camera's sequence numbers with none missing: one after another from its first (a new
    outbox starts them at the clock, not at 0)."""
    return bool(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def site(folder: Path, scenes_dir: Path, model: Path, broker_url: str, **extra) -> dict:
    config = {
        "site": "lab", "box_id": "box1",
        "cameras": [{"id": "cam1", "source": str(scenes_dir / "cam1.mp4"), "modality": "visible"},
                    {"id": "cam2", "source": str(scenes_dir / "cam2.mp4"), "modality": "auto"}],
        "model": {"path": str(model)},
        "broker": {"url": broker_url},
        "outbox": {"path": str(folder / "outbox.sqlite")},
        "metrics": {"record_tracks": True},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.slow
def test_videos_to_broker_every_message_valid_and_tracklets_pure(tmp_path, scenes, tiny_onnx, mosquitto):
    scenes_dir, truth = scenes
    subscriber = Subscriber(mosquitto)
    runtime = EdgeRuntime(SiteConfig.from_dict(site(tmp_path, scenes_dir, tiny_onnx, mosquitto.url)))
    summary = runtime.run()
    assert summary["flushed"] and summary["outbox_depth"] == 0
    assert wait_for(lambda: len(subscriber.features()) >= summary["tracklets_published"])
    subscriber.close()
    features = subscriber.features()  # decode_feature validates every field against protocol v1
    assert len(features) == summary["tracklets_published"] >= 8  # 4 people x 2 cameras, at least
    assert {f.modality for f in features if f.camera_id == "cam2"} == {"infrared"}  # decided from colour
    assert {f.model_identity for f in features} == {f"haresformer_tiny@{runtime.contract.weights_sha256}"}
    for camera in ("cam1", "cam2"):
        seqs = sorted(f.seq for f in features if f.camera_id == camera)
        assert contiguous(seqs)
    statuses = [json.loads(p) for t, p in subscriber.messages if t.endswith("/status")]
    assert {s["state"] for s in statuses} >= {"online", "offline"}
    purity = tracklet_purity(runtime.track_log, truth)
    scored = tracklet_ground_truth(runtime.track_log, truth)
    print(f"tracklet purity {purity:.3f} over {len(scored)} tracklets")
    assert purity >= 0.9
    # Every passage of every person is covered by some tracklet.
    covered = {(camera, t["pid"]) for (camera, _), t in scored.items()}
    assert covered >= {(c["id"], p["pid"]) for c in truth["cameras"] for p in c["passages"]}


def run_edge(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hybreid.cli", "edge", "run", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_broker_outage_and_killed_edge_lose_nothing(tmp_path, scenes, tiny_onnx, mosquitto):
    scenes_dir, _ = scenes
    config = site(tmp_path, scenes_dir, tiny_onnx, mosquitto.url, embed={"max_batch": 4})
    for camera in config["cameras"]:
        camera["pace"] = True  # play the files at 10 fps, like live cameras: faults land mid-run
    config_path = tmp_path / "site.yaml"
    config_path.write_text(yaml.safe_dump(config))
    subscriber = Subscriber(mosquitto, client_id="durable-subscriber")

    edge = run_edge(config_path)
    assert wait_for(lambda: len(subscriber.features()) >= 2, 60), "the edge published nothing"
    mosquitto.stop()  # the broker goes away mid-run...
    before_outage = len(subscriber.features())
    time.sleep(3)  # the outage: records wait in the outbox meanwhile
    mosquitto.start()  # ...and comes back
    assert wait_for(lambda: len(subscriber.features()) > before_outage, 60), "nothing came after the outage"
    edge.send_signal(signal.SIGKILL)  # the edge box loses power
    edge.wait()
    edge = run_edge(config_path)  # and boots again: same outbox, same counters
    out, err = edge.communicate(timeout=120)
    assert edge.returncode == 0, err[-2000:]
    summary = json.loads(out[out.index("{"):])
    assert summary["flushed"] and summary["outbox_depth"] == 0

    def complete() -> bool:
        features = subscriber.features()
        return all(contiguous(sorted({f.seq for f in features if f.camera_id == c})) for c in ("cam1", "cam2")) \
            and len(features) > 0
    assert wait_for(complete, 20)
    subscriber.close()
    features = subscriber.features()
    counts = Counter((f.camera_id, f.seq) for f in features)
    for camera in ("cam1", "cam2"):
        seqs = sorted(seq for cam, seq in counts if cam == camera)
        assert contiguous(seqs) and len(seqs) >= 4, (camera, seqs)  # zero missing
    duplicates = sum(n - 1 for n in counts.values())
    print(f"{len(counts)} distinct records, {duplicates} duplicates delivered")


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["CPUExecutionProvider", pytest.param("openvino", marks=requires_openvino)])
def test_edge_runtime_runs_without_torch_or_timm(tmp_path, scenes, tiny_onnx, mosquitto, provider):
    """A camera box has no torch; it embeds with ONNX Runtime's CPU provider, or OpenVINO's runtime."""
    scenes_dir, _ = scenes
    config_path = tmp_path / "site.yaml"
    config = site(tmp_path, scenes_dir, tiny_onnx, mosquitto.url)
    config["model"].update(providers=[provider], threads=1)
    config_path.write_text(yaml.safe_dump(config))
    script = tmp_path / "edge_without_torch.py"
    script.write_text(WITHOUT_TORCH + f"""
from hybreid.cli import main
sys.argv = ['hybreid', 'edge', 'run', '--config', {str(config_path)!r}]
code = main()
assert 'torch' not in sys.modules
sys.exit(code)
""")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["tracklets_published"] >= 8 and summary["mqtt_acknowledged"] == summary["tracklets_published"]
    assert summary["embed_backend"] == {"openvino": "openvino:CPU-f32"}.get(provider, f"onnxruntime:{provider}")


@pytest.mark.slow
def test_a_camera_that_delivers_no_frame_says_so_and_the_matcher_hears_it(tmp_path, scenes, tiny_onnx, mosquitto):
    """A camera that never delivers (a dead stream, a missing device) once stayed `online` on its
    retained status for the whole run, and `edge run` exited 0: its status must follow its
    frames, the matcher must see it, and the box must end with one sentence."""
    from hybreid.matcher.assignment import Matcher
    from hybreid.matcher.gallery import Gallery
    from hybreid.matcher.policy import MatchPolicy
    from hybreid.matcher.service import MatcherService
    from hybreid.mqtt import BrokerConfig

    scenes_dir, _ = scenes
    config = site(tmp_path, scenes_dir, tiny_onnx, mosquitto.url, metrics={"no_frames_after_s": 1.0})
    config["cameras"][0].update(loop=True, pace=True)  # a live camera that keeps delivering
    config["cameras"][1] = {"id": "dead", "source": 63}  # /dev/video63: a device that is not there
    config_path = tmp_path / "site.yaml"
    config_path.write_text(yaml.safe_dump(config))
    matcher = MatcherService(Matcher(Gallery(tmp_path / "g.sqlite"), MatchPolicy()),
                             BrokerConfig(url=mosquitto.url, client_id="status-matcher"))
    matcher.start()
    matcher.wait_until_subscribed()
    subscriber = Subscriber(mosquitto, client_id="status-watcher")
    edge = subprocess.Popen([sys.executable, "-m", "hybreid.cli", "edge", "run", "--config", str(config_path),
                             "--max-seconds", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def states(camera: str) -> list[str]:
        return [json.loads(p)["state"] for t, p in subscriber.messages if t == f"hybreid/v1/lab/{camera}/status"]
    assert wait_for(lambda: matcher.cameras.get("lab/dead", {}).get("state") == "no_frames"
                    and matcher.cameras.get("lab/cam1", {}).get("state") == "online", 30), matcher.cameras
    _, err = edge.communicate(timeout=60)
    assert wait_for(lambda: states("dead")[-1:] == ["offline"])
    matcher.stop()
    subscriber.close()
    assert "online" not in states("dead") and states("dead")[0] == "no_frames"
    assert "online" in states("cam1")
    assert edge.returncode == 2
    assert err.strip().splitlines()[-1].startswith("hybreid: error: camera(s) dead delivered no frame")
