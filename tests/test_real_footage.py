"""The edge runtime on real recorded pedestrians: OpenCV's vtest.avi (Debian's opencv-doc,
extracted by `make test` into .cache/), through a real Mosquitto."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from support import Subscriber

from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig

VTEST = Path(__file__).resolve().parents[1] / ".cache" / "vtest.avi"


@pytest.mark.slow
@pytest.mark.skipif(not VTEST.is_file(), reason="needs .cache/vtest.avi, which `make test` extracts from Debian's "
                                                 "opencv-doc (apt-get as root)")
def test_real_pedestrian_video_publishes_valid_tracklets(tmp_path, tiny_onnx, mosquitto):
    subscriber = Subscriber(mosquitto)
    config = SiteConfig.from_dict({
        "site": "street", "box_id": "box1",
        "cameras": [{"id": "vtest", "source": str(VTEST), "modality": "visible"}],
        "model": {"path": str(tiny_onnx), "threads": 2},
        "broker": {"url": mosquitto.url},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
    })
    summary = EdgeRuntime(config).run()
    assert summary["frames"] == 795  # every frame of the file, none dropped
    assert summary["flushed"] and summary["outbox_depth"] == 0
    assert summary["mqtt_acknowledged"] == summary["tracklets_published"] >= 10
    import time

    deadline = time.monotonic() + 10
    while len(subscriber.messages) < summary["tracklets_published"] and time.monotonic() < deadline:
        time.sleep(0.05)
    subscriber.close()
    features = subscriber.features()  # decodes and validates every message; one invalid one raises
    seqs = sorted(Counter(f.seq for f in features))
    assert seqs == list(range(seqs[0], seqs[0] + summary["tracklets_published"]))
    assert {(f.site, f.camera_id, f.model_name) for f in features} == {("street", "vtest", "haresformer_tiny")}
    print(f"vtest.avi: {summary['tracklets_published']} tracklets, {summary['fps']:.1f} frames/s, "
          f"{len({f.track_id for f in features})} tracks")
