"""Prometheus metrics, health checks and JSON logs of the long-running services, scraped over
HTTP from the real commands against a real Mosquitto."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.request import urlopen

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import feature, http_get, publish_all, wait_for_line, wait_until

from hybreid.cli import main


def fetch(url: str) -> tuple[int, str]:
    status, _, body = http_get(url)
    return status, body.decode()


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    status, text = fetch(base + "/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metrics_address(stderr) -> str:
    """The address `--metrics-port 0` chose, from the service's JSON log line that names it."""
    for line in stderr:
        entry = json.loads(line)  # every line is one JSON object with --log-format json
        assert {"time", "level", "logger", "message"} <= set(entry)
        found = re.search(r"http://([\d.]+:\d+)/metrics", entry["message"])
        if found:
            return f"http://{found.group(1)}"
    raise AssertionError("the service never said where its metrics are")


def test_the_matchers_metrics_count_what_it_decided_and_readiness_follows_the_broker(mosquitto, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "hybreid.cli", "--log-format", "json", "matcher", "run",
                                "--broker", mosquitto.url, "--db", str(tmp_path / "gallery.sqlite"),
                                "--reassociate-every", "0", "--report-every", "0", "--metrics-port", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = metrics_address(process.stderr)
        assert wait_for_line(process.stderr, "subscribed to")
        assert fetch(base + "/readyz") == (200, '{"status": "ok"}')
        publish_all(mosquitto.port, [feature(seq=0), feature(seq=1, track=2), (feature(seq=2)[0], b"\xff\xfe"),
                                     feature(seq=3, model_hash="another")])
        assert wait_until(lambda: scrape(base).get(("hybreid_matcher_messages_accepted_total", ())) == 2)
        samples = scrape(base)
        assert samples[("hybreid_matcher_messages_rejected_total", (("reason", "model_mismatch"),))] == 1
        assert samples[("hybreid_matcher_messages_rejected_total", (("reason", "not_utf8"),))] == 1
        assert samples[("hybreid_matcher_identities", ())] == 2
        assert samples[("hybreid_matcher_broker_connected", ())] == 1
        assert samples[("hybreid_matcher_store_up", ())] == 1
        # every message decided went through a timed batch, rejected ones too
        assert samples[("hybreid_matcher_assignment_duration_seconds_count", ())] == 4
        assert 1 <= samples[("hybreid_matcher_batch_duration_seconds_count", ())] <= 4
        assert samples[("hybreid_matcher_batch_duration_seconds_sum", ())] > 0

        mosquitto.stop()
        assert wait_until(lambda: fetch(base + "/readyz")[0] == 503)
        status, body = fetch(base + "/readyz")
        assert json.loads(body) == {"status": "failing", "reason": f"no connection to the broker at {mosquitto.url}"}
        assert fetch(base + "/healthz") == (200, '{"status": "ok"}')  # alive: a supervisor must not restart it
        assert scrape(base)[("hybreid_matcher_broker_connected", ())] == 0
        assert fetch(base + "/nothing-here")[0] == 404
    finally:
        process.terminate()
        assert process.wait(30) == 0


@pytest.mark.parametrize("port, problem", [("70000", "a port is 0-65535"), ("http", "not a port number")])
def test_a_bad_metrics_port_is_one_clear_error(port, problem, capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["matcher", "run", "--db", str(tmp_path / "g.sqlite"), "--metrics-port", port])
    assert exited.value.code == 2 and problem in capsys.readouterr().err
    assert not (tmp_path / "g.sqlite").exists()


def test_a_metrics_port_in_use_is_one_clear_error(mosquitto, tmp_path, capsys):
    taken = str(mosquitto.port)  # the broker listens there on 127.0.0.1
    assert main(["matcher", "run", "--broker", mosquitto.url, "--db", str(tmp_path / "g.sqlite"),
                 "--metrics-port", taken]) == 2
    assert f"cannot serve metrics on 127.0.0.1:{taken}" in capsys.readouterr().err


def test_the_edge_serves_its_metrics_and_health_while_it_runs(mosquitto, scenes, tiny_onnx, tmp_path):
    import yaml

    folder, _ = scenes
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({
        "site": "lab", "box_id": "box1",
        "cameras": [{"id": "cam1", "source": str(folder / "cam1.mp4"), "modality": "visible", "pace": True}],
        "model": {"path": str(tiny_onnx)}, "broker": {"url": mosquitto.url},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}}))
    annotated = tmp_path / "annotated"
    process = subprocess.Popen([sys.executable, "-m", "hybreid.cli", "--log-format", "json", "edge", "run",
                                "--config", str(site_file), "--metrics-port", "0", "--preview",
                                "--save-annotated", str(annotated)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = metrics_address(process.stderr)
        assert wait_until(lambda: scrape(base).get(("hybreid_edge_frames_total", (("camera", "cam1"),)), 0) >= 20)
        samples = scrape(base)
        assert samples[("hybreid_edge_camera_up", (("camera", "cam1"),))] == 1
        assert samples[("hybreid_edge_frames_processed_total", ())] > 0
        assert wait_until(lambda: fetch(base + "/readyz")[0] == 200)  # connected to the broker
        assert scrape(base)[("hybreid_edge_broker_connected", ())] == 1
        assert fetch(base + "/healthz") == (200, '{"status": "ok"}')
        assert samples[("hybreid_edge_outbox_oldest_age_seconds", ())] >= 0
        # The commissioning view: a page of the cameras' latest annotated frames, and the frames.
        status, page = fetch(base + "/preview")
        assert status == 200 and '<img src="/preview/cam1.jpg"' in page
        with urlopen(base + "/preview/cam1.jpg", timeout=10) as response:
            jpeg = np.frombuffer(response.read(), np.uint8)
        first = cv2.VideoCapture(str(folder / "cam1.mp4")).read()[1]
        assert cv2.imdecode(jpeg, cv2.IMREAD_COLOR).shape == first.shape
        assert fetch(base + "/preview/cam9.jpg")[0] == 404
    finally:
        process.terminate()
        process.wait(60)
    # The annotated video holds every processed frame, with something drawn on it.
    processed = int(samples[("hybreid_edge_frames_processed_total", ())])
    written, source = cv2.VideoCapture(str(annotated / "cam1.mp4")), cv2.VideoCapture(str(folder / "cam1.mp4"))
    differences = []
    while True:
        ok, frame = written.read()
        if not ok:
            break
        original = source.read()[1]
        label = (slice(4, 20), slice(4, 160))  # where the camera's name and frame number are written
        differences.append((float(np.abs(frame[label].astype(int) - original[label].astype(int)).mean()),
                            float(np.abs(frame[30:].astype(int) - original[30:].astype(int)).mean())))
    assert len(differences) >= processed
    assert min(label for label, _ in differences) > 10 > max(rest for _, rest in differences)  # drawn, not noise


def test_the_dashboard_and_alerts_use_only_metrics_the_services_serve(mosquitto, scenes, tiny_onnx, tmp_path):
    """The names in the shipped Grafana dashboard and Prometheus rules exist (histograms and
    counters by the names Prometheus gives their series)."""
    from prometheus_client import generate_latest

    from hybreid.edge_runtime.prometheus_metrics import EdgeMetrics
    from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig
    from hybreid.matcher.assignment import Matcher
    from hybreid.matcher.gallery import Gallery
    from hybreid.matcher.policy import MatchPolicy
    from hybreid.matcher.prometheus_metrics import MatcherMetrics
    from hybreid.matcher.service import MatcherService
    from hybreid.mqtt import BrokerConfig

    runtime = EdgeRuntime(SiteConfig.from_dict({
        "site": "lab", "cameras": [{"id": "cam1", "source": str(scenes[0] / "cam1.mp4"), "modality": "visible"}],
        "model": {"path": str(tiny_onnx)}, "broker": {"url": mosquitto.url},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}}))
    service = MatcherService(Matcher(Gallery(tmp_path / "g.sqlite"), MatchPolicy.checked()),
                             BrokerConfig(url=mosquitto.url))
    served = set()
    for registry in (EdgeMetrics(runtime).registry, MatcherMetrics(service).registry):
        served |= {family.name + suffix for family in text_string_to_metric_families(generate_latest(registry).decode())
                   for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    used = set()
    for path in (deploy / "grafana" / "hybreid-dashboard.json", deploy / "prometheus" / "hybreid-alerts.yml"):
        used |= set(re.findall(r"hybreid_(?:edge|matcher)_[a-z_]+", path.read_text()))
    assert len(used) >= 10 and not used - served, f"not served: {sorted(used - served)}"
    runtime.outbox.close()
