"""Best-shot thumbnails: chosen on the box (the tallest, sharpest crop), sent with a
tracklet's final message only when the site file asks, checked by decoding at the matcher
(size, format, dimensions), stored with the sighting, served by the console and purged with
the sighting."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from support import Subscriber, feature, with_thumbnail

from hybreid import protocol
from hybreid.cli import main
from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig
from hybreid.edge_runtime.thumbnails import BestShots
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.protocol import ProtocolError


def jpeg(height: int, width: int, seed: int = 0) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_a_thumbnail_travels_with_its_message_and_decodes():
    shot = jpeg(96, 40)
    message = protocol.decode_feature(with_thumbnail(feature(), base64.b64encode(shot).decode())[1])
    assert message.thumbnail == shot
    assert protocol.decode_feature(feature()[1]).thumbnail is None  # optional


def _header_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims another size (a decompression bomb's trick)."""
    data = bytearray(jpeg(16, 16))
    start = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[start + 5:start + 7], data[start + 7:start + 9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("thumbnail, problem", [
    (base64.b64encode(cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes()).decode(), "not a JPEG"),
    (base64.b64encode(b"\xff\xd8\xff" + bytes(300)).decode(), "JPEG"),
    (base64.b64encode(jpeg(300, 40)).decode(), "at most 256 a side"),
    (base64.b64encode(_header_claiming(65000, 65000)).decode(), "65000x65000"),
    (base64.b64encode(jpeg(4, 4)).decode(), "at least 8"),
    ("not base64!", "base64"),
])
def test_a_bad_thumbnail_refuses_its_message_with_one_reason(thumbnail, problem):
    with pytest.raises(ProtocolError) as refused:
        protocol.decode_feature(with_thumbnail(feature(), thumbnail)[1])
    assert refused.value.reason == "thumbnail" and problem in str(refused.value)


def test_an_oversized_thumbnail_is_refused_before_it_is_decoded():
    big = base64.b64encode(b"\xff\xd8\xff" + bytes(17_000)).decode()  # 17 kB: the payload itself is in bounds
    topic, payload = with_thumbnail(feature(), big)
    assert len(payload) < protocol.MAX_PAYLOAD_BYTES
    with pytest.raises(ProtocolError) as refused:
        protocol.decode_feature(payload)
    assert refused.value.reason == "schema" and "thumbnail" in str(refused.value)


def test_the_best_shot_is_the_tallest_sharpest_crop_within_the_protocols_limits():
    shots = BestShots()
    rng = np.random.default_rng(1)
    sharp = rng.integers(0, 255, (200, 80, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (31, 31), 10)
    small = sharp[:60, :30]
    for crop in (blurred, small, sharp, blurred):
        shots.offer("cam1", 7, crop)
    chosen = cv2.imdecode(np.frombuffer(shots.take("cam1", 7), np.uint8), cv2.IMREAD_COLOR)
    assert chosen.shape[:2] == (96, 38)  # the 200-pixel crop, scaled to 96 high
    expected = cv2.resize(cv2.cvtColor(sharp, cv2.COLOR_RGB2BGR), (38, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(chosen.astype(int) - expected.astype(int)).mean() < 25  # the sharp one, not the blurred
    assert shots.take("cam1", 7) is None  # taken once


def test_the_matcher_stores_the_thumbnail_serves_it_and_purges_it_with_the_sighting(tmp_path, capsys):
    shot = jpeg(96, 40)
    gallery = Gallery(tmp_path / "gallery.sqlite")
    matcher = Matcher(gallery, MatchPolicy.checked())
    events = matcher.handle_batch([with_thumbnail(feature(seq=0), base64.b64encode(shot).decode()), feature(seq=1),
                                   with_thumbnail(feature(seq=2), "AAAA")])
    assert events[2] is None and matcher.rejected == {"thumbnail": 1}
    assert gallery.store.thumbnail("lab", "cam1", 0) == shot and gallery.store.thumbnail("lab", "cam1", 1) is None
    identity = events[0]["identity"]
    gallery.close()

    from hybreid.console.reads import ConsoleReads

    reads = ConsoleReads(tmp_path / "gallery.sqlite")
    assert reads.identity(identity)["thumbnails"] == {"cam1": "/thumbnails/lab/cam1/0.jpg"}
    assert reads.thumbnail("lab", "cam1", 0) == shot
    reads.close()
    assert main(["matcher", "purge", "--db", str(tmp_path / "gallery.sqlite"), "--identity", str(identity)]) == 0
    reads = ConsoleReads(tmp_path / "gallery.sqlite")
    assert reads.thumbnail("lab", "cam1", 0) is None
    reads.close()


@pytest.mark.slow
def test_the_edge_sends_best_shots_only_when_the_site_file_asks(tmp_path, scenes, tiny_onnx, mosquitto):
    scenes_dir, _ = scenes
    counts = {}
    for asked in (False, True):
        subscriber = Subscriber(mosquitto, client_id=f"thumbnails-{asked}")
        runtime = EdgeRuntime(SiteConfig.from_dict({
            "site": "lab", "cameras": [{"id": "cam1", "source": str(scenes_dir / "cam1.mp4"), "modality": "visible"}],
            "model": {"path": str(tiny_onnx)}, "broker": {"url": mosquitto.url},
            "outbox": {"path": str(tmp_path / f"outbox-{asked}.sqlite")}, "publish": {"thumbnails": asked}}))
        summary = runtime.run()
        assert summary["flushed"]
        features = subscriber.features()
        subscriber.close()
        finals = [f for f in features if f.final]
        with_shots = [f for f in features if f.thumbnail is not None]
        assert finals and all(f.final for f in with_shots)  # only a tracklet's final message carries one
        counts[asked] = (len(with_shots), len(finals))
        for message in with_shots:  # decoded by the protocol already; a person-shaped crop
            height, width = cv2.imdecode(np.frombuffer(message.thumbnail, np.uint8), cv2.IMREAD_COLOR).shape[:2]
            assert height <= 96 and width < height
    assert counts[False][0] == 0 and counts[True][0] == counts[True][1]
