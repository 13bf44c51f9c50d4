"""The console: its read API over a real gallery, its guard (token, headers, hostile input), and
its pages in Debian's Chromium over a real matcher fed through Mosquitto."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from support import (
    feature,
    http_get,
    publish_all,
    start_matcher,
    unit,
    wait_for_line,
    wait_until,
    with_thumbnail,
)

from hybreid import protocol
from hybreid.cli import main
from hybreid.lab.mosquitto import free_port
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.protocol import FeatureMessage, encode_feature

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE = '<script>window.hostile = 1</script><img src="x" onerror="window.hostile = 2">'
TOKEN = "a-console-token-for-the-tests"


def get_json(url: str, headers: dict | None = None):
    status, _, body = http_get(url, headers)
    return status, json.loads(body)


@pytest.fixture
def gallery_file(tmp_path) -> Path:
    """Two cameras that saw the same three people (identities 1-3), and a merge of 3 into 1."""
    path = tmp_path / "gallery.sqlite"
    gallery = Gallery(path)
    matcher = Matcher(gallery, MatchPolicy.checked())
    matcher.handle_batch([feature(camera="cam1", seq=i, track=i, ts=1_765_000_000.0 + 10 * i) for i in range(3)]
                         + [feature(camera="cam2", seq=i, track=20 + i, ts=1_765_000_100.0 + 10 * i)
                            for i in range(3)])
    gallery.store.begin()
    gallery.store.record_merge(3, 1, 1_765_000_200.0)
    gallery.store.commit()
    gallery.close()
    return path


class Console:
    """`hybreid console` as a process on a free loopback port."""

    def __init__(self, db: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "hybreid.cli", "console", "--db", str(db),
                                         "--port", str(self.port), *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_for_line(self.process.stdout, "console on"), self.process.stderr.read()
        assert wait_until(self._answers), "the console did not answer"

    def _answers(self) -> bool:
        try:
            http_get(self.url + "/static/console.css")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture
def console(gallery_file):
    running = Console(gallery_file)
    yield running
    running.stop()


def test_the_read_api_answers_identities_sightings_merges_and_counts_in_iso_8601(console):
    status, listing = get_json(console.url + "/api/identities")
    assert status == 200 and listing["total"] == 3 and {i["id"] for i in listing["identities"]} == {1, 2, 3}
    assert all(i["cameras"] == {"cam1": 1, "cam2": 1} for i in listing["identities"])

    status, merged = get_json(console.url + "/api/identities/3")  # merged away: answered by its survivor
    assert status == 200 and merged["id"] == 1 and merged["asked"] == 3 and merged["merged_into"] == 1
    status, survivor = get_json(console.url + "/api/identities/1")
    assert survivor["merged_from"] == [3] and [s["camera_id"] for s in survivor["sightings"]] == ["cam1", "cam2"]
    assert survivor["sightings"][0]["last_seen"] == "2025-12-06T05:46:40.000Z"  # 1765000000 in UTC

    # "How many people did cam2 see" in a window given in ISO 8601, with and without a zone.
    status, counts = get_json(console.url + "/api/counts?camera=cam2&since=2025-12-06T05:48:30Z"
                                            "&until=2025-12-06T05:49:00")
    assert status == 200 and (counts["people"], counts["sightings"]) == (2, 2)
    assert counts["since"] == "2025-12-06T05:48:30.000Z"
    status, found = get_json(console.url + "/api/sightings?camera=cam1&since=2025-12-06T05:46:45%2B00:00")
    assert [s["seq"] for s in found["sightings"]] == [2, 1]  # newest first
    status, merges = get_json(console.url + "/api/merges")
    assert merges == {"merges": [{"from": 3, "into": 1, "at": "2025-12-06T05:50:00.000Z"}]}


@pytest.mark.parametrize("path, status, error", [
    ("/api/sightings?since=yesterday", 400, "since must be an ISO 8601 time"),
    ("/api/identities?page=-1", 400, "page must be a whole number"),
    ("/api/identities?page=99999999999999999999999", 400, "page must be a whole number"),
    ("/api/identities/99999999999999999999999", 404, "no such identity"),
    ("/api/identities/%C2%B2", 404, "no such identity"),
    ("/api/identities/" + "9" * 5000, 404, "no such identity"),
    ("/api/identities?page=" + "9" * 5000, 400, "page must be a whole number"),
    ("/identities/42", 404, "no such identity"),
])
def test_bad_requests_are_one_clear_answer_and_the_console_keeps_serving(console, path, status, error):
    answer, body = get_json(console.url + path)
    assert answer == status and error in body["error"]
    assert http_get(console.url + "/api/overview")[0] == 200


def test_every_answer_carries_a_strict_content_security_policy(console):
    for path in ("/", "/identities", "/identities/1", "/api/overview", "/static/console.js", "/missing"):
        _, headers, _ = http_get(console.url + path)
        policy = headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
        assert headers["x-content-type-options"] == "nosniff"


def test_a_token_is_required_when_given_and_beyond_loopback(gallery_file, tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    guarded = Console(gallery_file, "--token-file", str(token_file))
    try:
        assert http_get(guarded.url + "/api/overview")[0] == 401
        assert http_get(guarded.url + "/api/overview", {"Authorization": "Bearer not-the-token-at-all"})[0] == 401
        assert http_get(guarded.url + "/api/overview", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert http_get(guarded.url + "/api/overview", {"Cookie": f"hybreid_console={TOKEN}"})[0] == 200
    finally:
        guarded.stop()
    # Listening beyond this machine without a token, or with a short one, is refused before it starts.
    assert main(["console", "--db", str(gallery_file), "--host", "0.0.0.0"]) == 2
    assert "give it a token" in capsys.readouterr().err
    token_file.write_text("short")
    assert main(["console", "--db", str(gallery_file), "--token-file", str(token_file)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["console", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no gallery at" in capsys.readouterr().err


def test_the_console_benchmark_times_every_page_on_a_filled_gallery(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "console", "--identities", "300", "--sightings", "400", "--repeats", "2",
                 "--out", str(out)]) == 0
    result = json.loads((out / "console.json").read_text())
    assert result["identities"] == 300 and result["sightings"] == 700
    assert len(result["pages"]) == 11 and {page["status"] for page in result["pages"]} == {200}
    assert all(0 < page["p50_ms"] <= page["p95_ms"] for page in result["pages"])
    overview = next(page for page in result["pages"] if page["path"] == "/api/overview")
    assert overview["bytes"] > 1000  # eight cameras' rows and the latest sightings


def test_a_site_benchmarks_figures_are_shown_escaped_and_a_wrong_file_refused(gallery_file, tmp_path, capsys):
    repo = Path(__file__).resolve().parent.parent
    records = json.loads((repo / "benchmarks" / "site_seeds" / "split_0.8" / "site.json").read_text())
    records[0]["model"] = HOSTILE
    figures = tmp_path / "site.json"
    figures.write_text(json.dumps(records))
    console = Console(gallery_file, "--figures", str(figures))
    try:
        status, _, body = http_get(console.url + "/figures")
        page = body.decode()
        assert status == 200 and HOSTILE not in page and "&lt;script&gt;window.hostile" in page
        idf1 = [float(cell) for cell in re.findall(r'<td class="idf1">([\d.]+)</td>', page)]
        expected = [round(r[method]["mtmc"]["idf1"], 3) for r in records
                    for method in ("online", "re-associated", "true identities")]
        assert idf1 == expected and len(idf1) == 3 * len(records)
    finally:
        console.stop()
    (tmp_path / "wrong.json").write_text(json.dumps({"identities": 3}))
    assert main(["console", "--db", str(gallery_file), "--figures", str(tmp_path / "wrong.json")]) == 2
    assert "is not a `hybreid bench site` result" in capsys.readouterr().err


@pytest.mark.slow
def test_the_identities_are_searched_by_a_picture_embedded_by_the_gallerys_model(tiny_onnx, tmp_path):
    from hybreid.inference import load_embedder

    embedder = load_embedder(tiny_onnx)
    pictures = [np.random.default_rng(seed).integers(0, 255, (128, 64, 3), dtype=np.uint8) for seed in range(3)]
    gallery = Gallery(tmp_path / "gallery.sqlite")
    matcher = Matcher(gallery, MatchPolicy.checked(same_modality=0.999, cross_modality=0.999))
    messages = [FeatureMessage(site="lab", camera_id="cam1", modality="visible", ts=100.0 + i, seq=i, track_id=i,
                               box=(0, 0, 64, 128), score=0.9, model_name=embedder.contract.model,
                               model_hash=embedder.contract.weights_sha256, embedding=vector)
                for i, vector in enumerate(embedder.embed(pictures))]
    events = matcher.handle_batch([(m.topic, encode_feature(m)) for m in messages])
    gallery.close()
    console = Console(tmp_path / "gallery.sqlite", "--artifact", str(tiny_onnx))
    try:
        def search(body: bytes, kind: str = "image/png") -> tuple[int, dict]:
            request = Request(console.url + "/api/search?top_k=2", data=body, method="POST",
                              headers={"Content-Type": kind})
            try:
                with urlopen(request, timeout=30) as response:
                    return response.status, json.loads(response.read())
            except HTTPError as exc:
                return exc.code, json.loads(exc.read())

        for picture, event in zip(pictures, events, strict=True):
            status, answer = search(cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))[1].tobytes())
            best = answer["matches"][0]
            assert status == 200 and len(answer["matches"]) == 2
            assert best["identity"] == event["identity"] and best["similarity"] > 0.999
        bomb = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
        bomb[16:24] = (100_000).to_bytes(4, "big") * 2  # declares 100,000 x 100,000 pixels
        assert search(bytes(bomb)) == (400, {"error": "the picture is 100000x100000 pixels; at most 4096 a side"})
        assert search(b"GIF89a" + bytes(100), "image/png")[0] == 400
        assert search(b"{}", "application/json")[0] == 400
        assert search(bytes(5 * 1024 * 1024), "image/jpeg")[1]["error"].startswith("the picture is over 4 MiB")
        assert http_get(console.url + "/api/overview")[0] == 200  # still serving

        # The same search from the identities page, as a person would: a file chosen in the browser.
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        picture_file = tmp_path / "person.png"
        cv2.imwrite(str(picture_file), cv2.cvtColor(pictures[1], cv2.COLOR_RGB2BGR))
        browser = _browser()
        try:
            browser.get(console.url + "/identities")
            browser.find_element(By.ID, "search-file").send_keys(str(picture_file))
            WebDriverWait(browser, 15).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#search-results li"))
            first = browser.find_element(By.CSS_SELECTOR, "#search-results li a")
            assert first.text == f"identity {events[1]['identity']}"
            assert first.get_attribute("href").endswith(f"/identities/{events[1]['identity']}")
        finally:
            browser.quit()
    finally:
        console.stop()


def test_the_event_stream_starts_after_the_last_event_a_page_showed(gallery_file, mosquitto):
    console = Console(gallery_file, "--broker", mosquitto.url, "--site", "lab")
    try:
        assert wait_until(lambda: get_json(console.url + "/api/overview")[1]["broker"]["connected"])
        decisions = [protocol.encode_event(protocol.event(
            type="new", identity=identity, site="lab", camera_id="cam1", seq=identity, track_id=identity,
            modality="visible", ts=1_765_000_000.0, similarity=0.0)) for identity in (11, 12, 13)]
        publish_all(mosquitto.port, [(protocol.events_topic("lab"), payload) for payload in decisions])
        # Published before the stream opened: a page that showed event 1 still gets 2 and 3.
        with urlopen(console.url + "/api/events?after=1", timeout=10) as stream:
            received = []
            while len(received) < 2:
                line = stream.readline().decode()
                if line.startswith("id: "):
                    received.append(int(line[4:]))
                elif line.startswith("data: "):
                    assert json.loads(line[6:])["identity"] == 10 + received[-1]
        assert received == [2, 3]
    finally:
        console.stop()


# -- in a real browser ----------------------------------------------------------------------------

def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def _retained_status(port: int, camera: str, state: str) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"status-{camera}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(protocol.status_topic("lab", camera), protocol.encode_status(state, camera, 1_765_000_000.0),
                   qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.mark.slow
def test_the_console_in_chromium_over_a_matcher_fed_through_mosquitto(mosquitto, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    db = tmp_path / "gallery.sqlite"
    matcher = start_matcher(mosquitto.url, db)
    browser = console = None
    try:
        ts = 1_765_000_000.0
        publish_all(mosquitto.port, [_with_best_shot(feature(camera="cam1", seq=i, track=i, ts=ts + 10 * i))
                                     for i in range(3)]
                    + [feature(camera="cam2", seq=i, track=20 + i, ts=ts + 100 + 10 * i) for i in range(3)])
        for camera, state in (("cam1", "online"), ("cam2", "no_frames")):
            _retained_status(mosquitto.port, camera, state)
        # Hostile payloads on the console's topics: refused by the protocol's schemas, never shown.
        publish_all(mosquitto.port, [(protocol.status_topic("lab", "cam3"),
                                      json.dumps({"v": 1, "camera_id": HOSTILE, "state": "online", "ts": ts}).encode()),
                                     (protocol.events_topic("lab"),
                                      json.dumps({"v": 1, "type": HOSTILE, "site": "lab", "ts": ts}).encode())])
        # A thumbnail that is a PNG, and one over the protocol's 16 kB: both messages refused.
        png = base64.b64encode(cv2.imencode(".png", np.zeros((96, 40, 3), np.uint8))[1].tobytes()).decode()
        oversized = base64.b64encode(b"\xff\xd8\xff" + bytes(17_000)).decode()
        publish_all(mosquitto.port, [with_thumbnail(feature(camera="cam1", seq=7, track=7, ts=ts + 70), png),
                                     with_thumbnail(feature(camera="cam1", seq=8, track=8, ts=ts + 80), oversized)])
        assert wait_until(lambda: _rejections(db) == {"thumbnail": 1, "schema": 1})
        assert wait_until(lambda: _sightings(db) == 6)
        # A sighting written into the gallery by another program, its camera id a script.
        with sqlite3.connect(db) as raw:
            raw.execute("UPDATE sightings SET camera_id = ? WHERE camera_id = 'cam2' AND seq = 2", (HOSTILE,))
        console = Console(db, "--broker", mosquitto.url, "--site", "lab")
        assert wait_until(lambda: get_json(console.url + "/api/overview")[1]["broker"]["connected"])
        publish_all(mosquitto.port, [(protocol.status_topic("lab", "cam3"), json.dumps(
            {"v": 1, "camera_id": HOSTILE, "state": "online", "ts": ts}).encode())])  # while the console listens
        assert wait_until(lambda: get_json(console.url + "/api/overview")[1]["broker"]["refused"] == {"schema": 1})
        browser = _browser()
        wait = WebDriverWait(browser, 15)

        browser.get(console.url + "/")
        wait.until(lambda b: "cam1" in b.find_element(By.ID, "cameras").text)
        rows = {row.find_elements(By.TAG_NAME, "td")[1].text: row.find_elements(By.TAG_NAME, "td")[2].text
                for row in browser.find_elements(By.CSS_SELECTOR, "#cameras tbody tr")}
        assert rows["cam1"] == "online" and rows["cam2"] == "no_frames" and HOSTILE in rows  # shown as text
        assert browser.find_element(By.ID, "identities-count").text == "3"
        # A decision made while the page is open arrives through the event stream.
        before = len(browser.find_elements(By.CSS_SELECTOR, "#events li"))
        publish_all(mosquitto.port, [feature(camera="cam1", seq=9, track=9, ts=ts + 300,
                                             embedding=unit(7, base=7))])
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#events li")) > before)
        assert browser.find_elements(By.CSS_SELECTOR, "#events li")[0].text.startswith("new · identity 4 · cam1")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "console-site.png"))

        browser.get(console.url + "/identities")
        listed = [row.find_element(By.TAG_NAME, "a").text for row in
                  browser.find_elements(By.CSS_SELECTOR, "#identities tbody tr")]
        assert sorted(listed) == ["1", "2", "3", "4"]

        browser.get(console.url + "/identities/3")
        assert browser.find_element(By.ID, "identity-id").text == "3"
        bars = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.bar")
        lanes = [lane.text for lane in browser.find_elements(By.CSS_SELECTOR, "#timeline text.lane")]
        assert len(bars) == 2 and lanes == [f"lab/{HOSTILE}", "lab/cam1"]
        cameras = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#identity-sightings td.camera")]
        assert cameras == ["cam1", HOSTILE]
        (shot,) = browser.find_elements(By.CSS_SELECTOR, "#best-shots img")  # cam1's, served and shown
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalHeight", shot) == 96
        browser.save_screenshot(str(ARTIFACTS / "console-identity.png"))
        assert browser.execute_script("return window.hostile === undefined")  # no script of theirs ran
    finally:
        if browser is not None:
            browser.quit()
        if console is not None:
            console.stop()
        matcher.terminate()
        matcher.wait(30)


def _with_best_shot(topic_payload: tuple[str, bytes]) -> tuple[str, bytes]:
    image = np.full((96, 40, 3), (40, 120, 200), np.uint8)
    return with_thumbnail(topic_payload, base64.b64encode(cv2.imencode(".jpg", image)[1].tobytes()).decode())


def _rejections(db: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(db) as raw:
            return dict(raw.execute("SELECT reason, count FROM rejections").fetchall())
    except sqlite3.Error:
        return {}


def _sightings(db: Path) -> int:
    try:
        with sqlite3.connect(db) as raw:
            return raw.execute("SELECT COUNT(*) FROM sightings").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_browser_without_the_token_sees_nothing_but_the_way_in(gallery_file, tmp_path):
    from selenium.webdriver.common.by import By

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    console = Console(gallery_file, "--token-file", str(token_file))
    browser = _browser()
    try:
        browser.get(console.url + "/identities")
        assert "needs its token" in browser.find_element(By.TAG_NAME, "body").text
        browser.get(console.url + "/login?token=wrong-token-of-enough-length")
        assert "needs its token" in browser.find_element(By.TAG_NAME, "body").text
        browser.get(console.url + f"/login?token={TOKEN}")
        browser.get(console.url + "/identities")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#identities tbody tr")) == 3
    finally:
        browser.quit()
        console.stop()
