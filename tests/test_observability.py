"""Prometheus metrics, health checks and JSON logs of the long-running services, scraped over
HTTP from the real commands against a real Mosquitto."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import feature, publish_all, wait_for_line, wait_until

from hybreid.cli import main


def fetch(url: str) -> tuple[int, str]:
    try:
        with urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except HTTPError as exc:
        return exc.code, exc.read().decode()


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
