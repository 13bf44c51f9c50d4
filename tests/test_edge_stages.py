"""Each edge stage alone: capture, detect, track, outbox, embed/aggregate."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from hybreid.edge_runtime.capture import CameraCapture, decide_modality
from hybreid.edge_runtime.detect import (
    BackgroundSubtractionDetector,
    BoxFilter,
    HOGDetector,
    PersonSizes,
    decode_yolo,
    letterbox,
    make_detector,
)
from hybreid.edge_runtime.embed import EmbedWorker, TrackEnd, TrackletAggregator
from hybreid.edge_runtime.outbox import Outbox
from hybreid.edge_runtime.site import (
    BackgroundDetectorSettings,
    BoxFilterSettings,
    CameraSettings,
    EmbedSettings,
    OutboxSettings,
    TrackerSettings,
    validate_detector,
)
from hybreid.edge_runtime.stages import Crop, Detection
from hybreid.edge_runtime.track import MotionTracker, iou_matrix
from hybreid.errors import UserError


def write_video(path, frames: int, size=(160, 120), fps=10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        image = np.full((size[1], size[0], 3), 40, np.uint8)
        cv2.rectangle(image, (10 + 5 * i, 30), (30 + 5 * i, 90), (200, 180, 160), -1)
        writer.write(image)
    writer.release()
    return path


class TestCapture:
    def test_a_file_is_read_whole_without_drops(self, tmp_path):
        capture = CameraCapture(CameraSettings(id="cam", source=str(write_video(tmp_path / "v.mp4", 25))))
        capture.start()
        frames = []
        while not capture.done:
            frame = capture.get(0.2)
            if frame is not None:
                frames.append(frame)
                time.sleep(0.01)  # a slow consumer: the file waits for it
        assert [f.index for f in frames] == list(range(25))
        assert capture.frames_dropped == 0
        assert frames[1].ts - frames[0].ts == pytest.approx(0.1)  # video time at 10 fps
        assert frames[0].image.shape == (120, 160, 3)

    def test_a_live_source_keeps_only_the_newest_frame(self, tmp_path):
        config = CameraSettings(id="cam", source=str(write_video(tmp_path / "v.mp4", 40)), realtime=True)
        capture = CameraCapture(config)
        capture.start()
        capture.finished.wait(10)
        frame = capture.get(0.5)
        assert frame.index == 39  # everything before the newest was overwritten
        assert capture.frames_dropped == 39

    @pytest.mark.slow
    def test_unreachable_stream_retries_with_backoff(self):
        capture = CameraCapture(CameraSettings(id="cam", source="rtsp://127.0.0.1:9/none"), timeout_ms=500,
                                max_backoff=1.0)
        capture.start()
        time.sleep(2.5)
        capture.stop()
        assert 2 <= capture.reconnects <= 6  # 0.5 s, 1 s, 1 s ... not a busy loop
        assert capture.get(0.01) is None

    def test_auto_modality_reads_the_colour_content(self):
        grey = np.repeat(np.random.default_rng(0).integers(0, 255, (90, 160, 1), dtype=np.uint8), 3, axis=2)
        colour = grey.copy()
        colour[..., 0] = 255 - colour[..., 0]
        assert decide_modality(grey) == "infrared"
        assert decide_modality(colour) == "visible"


class TestDetect:
    def test_background_subtraction_finds_a_walking_block(self):
        detector = BackgroundSubtractionDetector(BackgroundDetectorSettings(history=200, min_area=100))
        rng = np.random.default_rng(0)
        found = []
        for i in range(40):
            image = np.clip(np.full((120, 200, 3), 90.0) + rng.normal(0, 2, (120, 200, 3)), 0, 255).astype(np.uint8)
            if i >= 20:
                x = 20 + 6 * (i - 20)
                image[20:100, x : x + 30] = (220, 60, 60)
                found = detector("cam", image)
            else:
                detector("cam", image)
        (box,) = [d.box for d in found]
        assert box[2] == pytest.approx(30, abs=6) and box[3] == pytest.approx(80, abs=6)

    def test_person_sizes_follow_the_perspective_and_ignore_fragments(self):
        sizes = PersonSizes()
        assert sizes.expected(200) is None  # nothing seen yet
        for step in range(30):
            sizes.add(200, 100, 30)  # people near the camera
            sizes.add(150, 60, 18)  # further away: higher in the frame, smaller
            if step % 3 == 0:
                sizes.add(200, 40, 30)  # a fragment: legs whose body the background swallowed
        assert sizes.expected(200) == pytest.approx((100, 30)) and sizes.expected(152) == pytest.approx((60, 18))
        assert sizes.expected(175) is None  # no one was seen standing there
        # whose head is on row 100 stands on row 200; on row 90, on row 150; on row 40, nowhere seen
        assert sizes.standing_below(100) == pytest.approx((100, 30))
        assert sizes.standing_below(90) == pytest.approx((60, 18))
        assert sizes.standing_below(40) is None

    def test_faint_legs_join_the_body_through_the_looser_background_model(self):
        """A body and shoes the background model is sure of, legs between them 4 grey levels off the
        floor: the looser model's pixels there join them into one person."""
        def last_boxes(settings: BackgroundDetectorSettings) -> list:
            detector = BackgroundSubtractionDetector(settings)
            rng = np.random.default_rng(0)
            for step in range(60):
                image = np.clip(np.full((240, 360, 3), 90.0) + rng.normal(0, 1, (240, 360, 3)), 0, 255)
                if step >= 50:
                    x = 100 + 5 * (step - 50)
                    image[80:170, x : x + 45] = (200, 60, 60)  # body
                    image[170:220, x + 4 : x + 41] = 94  # legs the colour of the floor, nearly
                    image[220:230, x : x + 45] = 20  # shoes
                found = detector("cam", image.astype(np.uint8))
            return [d.box for d in found], (x, 80, 45, 150)

        boxes, person = last_boxes(BackgroundDetectorSettings(min_area=100, join_fragments=False))
        assert len(boxes) == 1 and iou_matrix(np.array([person]), np.array(boxes))[0, 0] > 0.85
        boxes, person = last_boxes(BackgroundDetectorSettings(min_area=100, join_fragments=False,
                                                              weak_var_threshold=None))
        assert len(boxes) == 2 and iou_matrix(np.array([person]), np.array(boxes)).max() < 0.7  # body; shoes

    @staticmethod
    def _walk_and_look(scenes: list[list[tuple[int, int, int, int]]], split_groups: bool = True,
                       whole_people: bool = False, join_fragments: bool = True):
        """Grey frames with people drawn as solid boxes, in order (later ones in front); returns the
        detections of the last frame. Before ``scenes``, 40 frames teach the detector the camera's
        perspective: one person at a time, near (feet on row 230, 150 tall) or far (180, 110)."""
        detector = BackgroundSubtractionDetector(
            BackgroundDetectorSettings(min_area=100, scale=1.0, split_groups=split_groups, whole_people=whole_people,
                                       join_fragments=join_fragments))
        rng = np.random.default_rng(0)
        teaching = [[(20 + 6 * i, 80, 45, 150)] if i % 2 else [(300 - 6 * i, 70, 33, 110)] for i in range(40)]
        found = []
        for boxes in [[]] * 10 + teaching + scenes:
            image = np.clip(np.full((240, 360, 3), 90.0) + rng.normal(0, 2, (240, 360, 3)), 0, 255).astype(np.uint8)
            for index, (x, y, w, h) in enumerate(boxes):
                image[y : y + h, x : x + w] = (200, 60 + 40 * index, 60)
            found = detector("cam", image)
        return [d.box for d in found]

    @pytest.mark.slow
    def test_two_people_walking_together_are_split_by_the_perspective(self):
        far, near = (150, 70, 33, 110), (125, 80, 45, 150)  # the far one half hidden behind the near one
        boxes = self._walk_and_look([[far, near]])
        assert len(boxes) == 2
        for truth in (far, near):
            assert max(iou_matrix(np.array([truth]), np.array(boxes))[0]) >= 0.5
        (merged,) = self._walk_and_look([[far, near]], split_groups=False)  # one region: the far one is lost
        assert iou_matrix(np.array([far]), np.array([merged]))[0, 0] < 0.5

    @pytest.mark.slow
    def test_two_side_by_side_are_split_and_one_broad_person_is_not(self):
        left, right = (100, 80, 45, 150), (145, 80, 45, 150)  # shoulder to shoulder on one row
        boxes = self._walk_and_look([[left, right]])
        assert len(boxes) == 2 and all(max(iou_matrix(np.array([t]), np.array(boxes))[0]) >= 0.5
                                       for t in (left, right))
        broad = (100, 80, 63, 150)  # 1.4 people wide: a bag, a coat, arms out; still one person
        (box,) = self._walk_and_look([[broad]])
        assert iou_matrix(np.array([broad]), np.array([box]))[0, 0] > 0.9

    @pytest.mark.slow
    def test_a_person_whose_legs_match_the_floor_gets_a_whole_box_and_a_head_does_not(self):
        near = (125, 80, 45, 150)
        upper_half = (125, 80, 45, 80)  # what the background model sees of them
        (box,) = self._walk_and_look([[upper_half]], whole_people=True)
        assert iou_matrix(np.array([near]), np.array([box]))[0, 0] > 0.9
        (box,) = self._walk_and_look([[upper_half]])  # off by default
        assert iou_matrix(np.array([near]), np.array([box]))[0, 0] < 0.6
        head = (135, 80, 25, 30)  # under a third of a person: not the top of one
        (box,) = self._walk_and_look([[head]], whole_people=True)
        assert iou_matrix(np.array([head]), np.array([box]))[0, 0] > 0.8

    @pytest.mark.slow
    def test_a_body_and_the_feet_under_it_are_one_person_and_a_bird_above_one_is_not(self):
        near = (125, 80, 45, 150)
        body, feet = (125, 80, 45, 100), (125, 215, 45, 15)  # the legs between them the floor's colour
        (box,) = self._walk_and_look([[body, feet]])
        assert iou_matrix(np.array([near]), np.array([box]))[0, 0] > 0.9
        apart = self._walk_and_look([[body, feet]], join_fragments=False)
        assert len(apart) == 2 and iou_matrix(np.array([near]), np.array(apart)).max() < 0.7
        bird = (135, 20, 20, 20)  # joined, bird and person would be 1.4 people tall here
        boxes = self._walk_and_look([[bird, near]])
        assert len(boxes) == 2 and all(max(iou_matrix(np.array([t]), np.array(boxes))[0]) > 0.9 for t in (bird, near))

    def test_the_weak_background_model_must_be_the_looser(self):
        with pytest.raises(ValueError, match="below var_threshold"):
            BackgroundDetectorSettings(var_threshold=16.0, weak_var_threshold=20.0)

    def test_box_filter(self):
        keep = BoxFilter(BoxFilterSettings(min_height=50, min_aspect=1.2, max_aspect=4.0, min_score=0.5))
        detections = [Detection((0, 0, 30, 80), 0.9), Detection((0, 0, 80, 30), 0.9),  # lying: dropped
                      Detection((0, 0, 10, 40), 0.9), Detection((0, 0, 30, 80), 0.2)]  # small / unsure
        assert keep(detections) == [detections[0]]

    def test_hog_is_available_with_opencv_4(self):
        assert isinstance(HOGDetector()("cam", np.zeros((256, 128, 3), np.uint8)), list)

    def test_yolo_raw_output_with_nms_and_letterbox_undone(self):
        frame = np.zeros((360, 640, 3), np.uint8)
        canvas, scale, pad = letterbox(frame, 640)
        assert canvas.shape == (640, 640, 3) and scale == 1.0 and pad == (0, 140)
        # Two overlapping person boxes (centre format, letterboxed) and a car: NMS keeps one person.
        output = np.zeros((1, 4 + 3, 3), np.float32)
        output[0, :, 0] = [100, 340, 40, 120, 0.9, 0.0, 0.0]
        output[0, :, 1] = [102, 342, 40, 120, 0.7, 0.0, 0.0]
        output[0, :, 2] = [400, 300, 80, 40, 0.0, 0.0, 0.95]
        (person,) = decode_yolo(output, scale, pad)
        assert person.box == pytest.approx((80, 140, 40, 120)) and person.score == pytest.approx(0.9)

    def test_yolo_nms_free_output(self):
        output = np.array([[[80, 280, 120, 400, 0.8, 0], [10, 10, 50, 50, 0.9, 2]]], np.float32)
        (person,) = decode_yolo(output, 0.5, (0, 70))
        assert person.box == pytest.approx((160, 420, 80, 240))

    def test_unknown_detector_is_one_clear_error(self):
        with pytest.raises(UserError, match="'background', 'hog', 'nanodet', 'yolo'"):
            validate_detector({"kind": "magic"})
        with pytest.raises(UserError, match="yolo.path"):
            validate_detector({"kind": "yolo"})
        assert isinstance(make_detector(validate_detector({"kind": "background", "min_area": 50})),
                          BackgroundSubtractionDetector)


class TestTrack:
    def test_iou(self):
        assert iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 10, 10], [20, 20, 5, 5]])).tolist() == \
            [[pytest.approx(1 / 3), 0.0]]

    def test_confirmation_identity_and_end(self):
        ids = iter(range(100, 200))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=3, max_age=2))
        seen_ids = []
        for step in range(5):
            a = Detection((10 + 2 * step, 10, 20, 50), 0.9)
            b = Detection((100 - 2 * step, 10, 20, 50), 0.8)
            seen, ended = tracker.update([a, b])
            seen_ids.append(sorted(t.track_id for t in seen))
            assert ended == []
        assert seen_ids[:2] == [[], []] and seen_ids[2:] == [[100, 101]] * 3  # confirmed at the 3rd hit
        for _ in range(2):
            _, ended = tracker.update([])
            assert ended == []
        _, ended = tracker.update([])  # the third miss exceeds max_age
        assert sorted(t.track_id for t in ended) == [100, 101]

    def test_a_walker_keeps_the_track_through_missed_detections(self):
        """12 px a frame, a 30 px wide box, 4 frames unseen: the last box seen no longer overlaps
        where the person reappears, the predicted one does."""
        ids = iter(range(100))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=2, max_age=10))
        ended_ids, seen_ids = [], set()
        for frame in range(20):
            detections = [] if 8 <= frame < 12 else [Detection((12.0 * frame, 40, 30, 80), 0.9)]
            seen, ended = tracker.update(detections, frame_size=(640, 240))  # unseen well inside the frame
            seen_ids |= {t.track_id for t in seen}
            ended_ids += [t.track_id for t in ended]
        assert seen_ids == {0} and ended_ids == []

    def test_two_people_crossing_keep_their_tracks(self):
        ids = iter(range(100))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=2, max_age=5))
        xs: dict[int, list[float]] = {}
        for frame in range(30):
            left = Detection((10.0 + 8 * frame, 40, 30, 80), 0.9)  # walks right
            right = Detection((250.0 - 8 * frame, 44, 30, 80), 0.9)  # walks left, crossing at frame 15
            seen, _ = tracker.update([left, right])
            for track in seen:
                xs.setdefault(track.track_id, []).append(track.box[0])
        assert set(xs) == {0, 1} and all(len(x) == 29 for x in xs.values())
        assert np.all(np.diff(xs[0]) > 0) and np.all(np.diff(xs[1]) < 0)

    def test_people_merged_into_one_blob_keep_their_tracks_and_their_boxes(self):
        """Two people cross and background subtraction sees one region for six frames: the
        tracks follow their motion through it (boxes where the people are, flagged shared)
        instead of one of them taking the merged box and leaving with the other person."""
        ids = iter(range(100))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=2, max_age=10))
        xs: dict[int, list[float]] = {}
        shared_frames = 0
        for frame in range(40):
            a, b = 20.0 + 10 * frame, 400.0 - 10 * frame  # they meet at frame 19
            if abs(a - b) < 60:
                detections = [Detection((min(a, b), 40, abs(a - b) + 30, 90), 0.9)]
            else:
                detections = [Detection((a, 40, 30, 90), 0.9), Detection((b, 40, 30, 90), 0.9)]
            seen, ended = tracker.update(detections, frame_size=(480, 240))
            assert ended == []
            for track in seen:
                xs.setdefault(track.track_id, []).append(track.box[0])
                shared_frames += track.shared
                truth = a if track.track_id == 0 else b
                if frame >= 1:
                    assert abs(track.box[0] - truth) < 6, (frame, track.track_id, track.box)
        assert set(xs) == {0, 1} and shared_frames >= 10

    def test_a_track_walking_out_does_not_take_over_the_person_walking_in(self):
        """At the right edge one person walks out while another walks in, their boxes on top of
        each other for a frame: the leaving track is not given the entrant behind it."""
        ids = iter(range(100))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=2, max_age=10))
        pids_of: dict[int, set[str]] = {}
        for frame in range(30):
            out_x, in_x = 200.0 + 10 * frame, 470.0 - 10 * (frame - 24)
            detections = []
            if out_x < 450:
                detections.append(("leaving", Detection((out_x, 40, 30, 90), 0.9)))
            if frame >= 24:
                detections.append(("entering", Detection((in_x, 40, 30, 90), 0.9)))
            seen, _ = tracker.update([d for _, d in detections], frame_size=(480, 240))
            for track in seen:
                who = min(detections, key=lambda d: abs(d[1].box[0] - track.box[0]))[0]
                pids_of.setdefault(track.track_id, set()).add(who)
        assert all(len(people) == 1 for people in pids_of.values()), pids_of
        assert {"leaving"} in pids_of.values() and {"entering"} in pids_of.values()

    def test_a_track_that_walks_out_ends_and_the_next_entrant_starts_a_new_one(self):
        """One person walks out at the left edge; two frames later another walks in there. Coasting
        on after leaving, the first track took the entrant over (one tracklet, two people); it
        now ends at its first miss past the edge (inside the frame a missed track still coasts:
        the walker above)."""
        ids = iter(range(100))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=2, max_age=10))
        leaving = [Detection((100.0 - 12 * frame, 40, 30, 80), 0.9) for frame in range(9)]  # x 100 .. 4
        entering = [Detection((0.0 + 12 * frame, 40, 30, 80), 0.9) for frame in range(8)]
        seen_ids, ended_ids = [], []
        for detections in [[d] for d in leaving] + [[]] * 2 + [[d] for d in entering]:
            seen, ended = tracker.update(detections, frame_size=(320, 240))
            seen_ids.append({t.track_id for t in seen})
            ended_ids += [t.track_id for t in ended]
        assert ended_ids == [0]  # ended at the first miss: its predicted box was cut by the edge it walked to
        assert set().union(*seen_ids[:9]) == {0} and set().union(*seen_ids[11:]) == {1}

    def test_a_confirmed_track_keeps_the_boxes_that_confirmed_it(self):
        ids = iter(range(100))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=3))
        boxes = [(10.0 + 5 * step, 40, 30, 80) for step in range(4)]
        for box in boxes[:2]:
            seen, _ = tracker.update([Detection(box, 0.9)])
            assert seen == []
        seen, _ = tracker.update([Detection(boxes[2], 0.9)])
        assert seen[0].unconfirmed_boxes == boxes[:2] and seen[0].box == boxes[2]
        seen[0].unconfirmed_boxes = []  # taken by the track log
        seen, _ = tracker.update([Detection(boxes[3], 0.9)])
        assert seen[0].unconfirmed_boxes == []

    def test_a_blob_someone_walks_into_is_widened_and_the_usual_width_survives_it(self):
        ids = iter(range(100))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=2))
        for frame in range(6):  # one walker, a box 30 wide by 90 high, a stride widening it to 36
            seen, _ = tracker.update([Detection((10.0 + 4 * frame, 40, 30 + 6 * (frame % 2), 90), 0.9)])
        track = seen[0]
        assert not track.widened and 0.33 < track.aspect < 0.4
        for frame in range(6, 10):  # a second person joins the blob: 60 wide
            seen, _ = tracker.update([Detection((10.0 + 4 * frame, 40, 60, 90), 0.9)])
            assert seen == [track] and track.widened
        assert 0.33 < track.aspect < 0.4
        tracker.update([Detection((50.0, 40, 31, 90), 0.9)])  # alone again
        assert not track.widened

    def test_crops_of_two_people_or_half_a_person_weigh_less(self):
        from hybreid.edge_runtime.runtime import crop_quality

        whole = crop_quality(0.8, (0, 0, 40, 128))
        assert whole == pytest.approx(0.8)
        assert crop_quality(0.8, (0, 0, 40, 64)) == pytest.approx(0.4)  # half the model's input height
        assert crop_quality(0.8, (0, 0, 80, 128), shared=True) < whole / 10
        assert crop_quality(0.8, (0, 0, 40, 128), cut=True) < whole / 5

    def test_one_frame_false_alarms_never_confirm(self):
        ids = iter(range(100))
        tracker = MotionTracker(lambda: next(ids), TrackerSettings(n_init=2))
        for step in range(4):
            seen, ended = tracker.update([Detection((50 * step, 0, 20, 50), 0.9)])
            assert seen == [] and ended == []


class TestOutbox:
    def test_sequence_numbers_survive_reopening_and_acks_remove(self, tmp_path):
        outbox = Outbox(tmp_path / "o.sqlite")
        seqs = [outbox.add("cam1", "t", lambda s: f"m{s}".encode()) for _ in range(3)]
        first, other = seqs[0], outbox.add("cam2", "t", lambda s: b"x")
        assert seqs == [first, first + 1, first + 2]
        track = outbox.next_track_id("cam1")
        assert outbox.next_track_id("cam1") == track + 1
        outbox.ack("cam1", first + 1)
        outbox.close()
        again = Outbox(tmp_path / "o.sqlite")
        assert [(c, s, p) for c, s, _, p in again.pending()] == [
            ("cam1", first, f"m{first}".encode()), ("cam1", first + 2, f"m{first + 2}".encode()), ("cam2", other, b"x")]
        assert again.add("cam1", "t", lambda s: b"y") == first + 3
        assert again.next_track_id("cam1") == track + 2
        assert again.stats() == {"stored": 5, "acknowledged": 1}

    def test_a_replaced_outbox_never_reuses_a_sequence_number_or_track_id(self, tmp_path):
        """Moving a damaged outbox aside once restarted seq at 0, and the matcher dropped every
        new sighting as a redelivery (and track 1 as an update of the old track 1)."""
        old = Outbox(tmp_path / "old.sqlite")
        sent = [old.add("cam1", "t", lambda s: b"p") for _ in range(16)]
        tracks = [old.next_track_id("cam1") for _ in range(4)]
        old.close()
        (tmp_path / "old.sqlite").rename(tmp_path / "aside.sqlite")
        new = Outbox(tmp_path / "old.sqlite")
        assert new.add("cam1", "t", lambda s: b"p") > max(sent)
        assert new.next_track_id("cam1") > max(tracks)

    @pytest.mark.parametrize(("policy", "kept", "counter"), [("drop_oldest", [2, 3, 4], "dropped_oldest"),
                                                              ("drop_newest", [0, 1, 2], "dropped_newest")])
    def test_full_outbox_policy_is_explicit_and_counted(self, tmp_path, policy, kept, counter):
        outbox = Outbox(tmp_path / "o.sqlite", OutboxSettings(max_messages=3, when_full=policy))
        first = outbox.add("cam", "t", lambda s: b"p")
        for _ in range(4):
            outbox.add("cam", "t", lambda s: b"p")
        assert [s - first for _, s, _, _ in outbox.pending()] == kept
        assert outbox.stats()[counter] == 2

    def test_damaged_outbox_file_is_one_clear_error(self, tmp_path):
        (tmp_path / "bad.sqlite").write_bytes(b"this is not sqlite" * 100)
        with pytest.raises(UserError, match="is damaged"):
            Outbox(tmp_path / "bad.sqlite")

    @pytest.mark.slow
    def test_a_damaged_outbox_is_left_untouched_and_what_it_holds_is_recovered(self, tmp_path, capsys):
        """Random bytes over pages 3-5 once ended `edge run` in a traceback."""
        import hashlib

        from hybreid.cli import main

        path = tmp_path / "o.sqlite"
        outbox = Outbox(path)
        payload = bytes(range(256)) * 16  # 4 KiB: about a page per record
        sent = [outbox.add(f"cam{n % 2}", "t", lambda s: payload) for n in range(40)]
        outbox.close()
        data = bytearray(path.read_bytes())
        page = 4096
        data[2 * page:5 * page] = np.random.default_rng(0).integers(0, 256, 3 * page, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(UserError, match="is damaged .* left untouched: recover") as error:
            Outbox(path)
        assert "\n" not in str(error.value)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert not (tmp_path / "o.sqlite-wal").exists() or (tmp_path / "o.sqlite-wal").stat().st_size == 0
        assert main(["edge", "outbox-recover", str(path), "--out", str(tmp_path / "new.sqlite")]) == 0
        report = json.loads(capsys.readouterr().out)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        recovered = Outbox(tmp_path / "new.sqlite")
        rows = recovered.pending(limit=100)
        # Pages 3-5 hold the tables' indexes here: read row by row, every record is still there.
        assert len(rows) == report["recovered_records"] == 40
        assert {(c, s) for c, s, _, _ in rows} == {(f"cam{n % 2}", s) for n, s in enumerate(sent)}
        assert all(p == payload for _, _, _, p in rows)
        assert recovered.add("cam0", "t", lambda s: b"x") > max(sent)  # nothing it sends repeats a number
        assert main(["edge", "outbox-recover", str(path), "--out", str(tmp_path / "new.sqlite")]) == 2


def crop(track: int, ts: float, quality: float, image=None) -> Crop:
    image = np.zeros((100, 40, 3), np.uint8) if image is None else image
    return Crop("cam", "visible", track, int(ts * 10), ts, (0, 0, 40, 100), 0.9, image, quality)


class TestEmbedding:
    def test_quality_weighted_mean_and_periodic_updates(self):
        out = []
        aggregator = TrackletAggregator(out.append, interval_s=1.0)
        aggregator.add(crop(1, 0.0, 3.0), np.array([1.0, 0.0], np.float32))
        aggregator.add(crop(1, 0.5, 1.0), np.array([0.0, 1.0], np.float32))
        assert out == []
        aggregator.add(crop(1, 1.2, 1.0), np.array([0.0, 1.0], np.float32))  # 1.2 s after the start
        aggregator.end("cam", 1)
        update, final = out
        assert not update.final and final.final and final.frames == 3
        expected = np.array([3.0, 2.0]) / np.linalg.norm([3.0, 2.0])
        assert np.allclose(final.embedding, expected, atol=1e-6)
        assert final.quality == pytest.approx(5 / 3) and final.first_ts == 0.0 and final.ts == 1.2

    def test_a_track_that_changes_person_is_published_as_two_tracklets(self):
        """Eight crops of one person, then six of another (a pair the tracker swapped): the
        first eight go out as a finished tracklet when the last four crops look like someone
        else; the rest goes out under a new track id, from the other person's first frame."""
        person_a, person_b = np.array([1.0, 0.0, 0.0], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
        rng = np.random.default_rng(0)
        new_ids = iter([101, 102])
        out = []
        aggregator = TrackletAggregator(out.append, interval_s=0, split_below=0.8,
                                        new_track_id=lambda camera: next(new_ids))
        for step in range(14):
            person = person_a if step < 8 else person_b
            noisy = person + rng.normal(0, 0.05, 3).astype(np.float32)
            aggregator.add(crop(7, step * 0.2, 1.0), noisy / np.linalg.norm(noisy))
        aggregator.end("cam", 7)
        first, second = out
        assert (first.track_id, first.frames, first.final) == (7, 8, True) and first.embedding @ person_a > 0.99
        assert (second.track_id, second.frames, second.final) == (101, 6, True) and second.embedding @ person_b > 0.99
        assert second.first_ts == pytest.approx(8 * 0.2)
        (split,) = aggregator.splits
        assert (split.camera_id, split.track_id, split.frame, split.new_track_id) == ("cam", 7, 16, 101)

        from hybreid.edge_runtime.runtime import published_track_log

        log = [("cam", frame, 7, (0, 0, 1, 1)) for frame in (14, 15, 16, 17)] + [("cam", 16, 8, (0, 0, 1, 1))]
        assert [track for _, _, track, _ in published_track_log(log, aggregator.splits)] == [7, 7, 101, 101, 8]

    def test_one_person_or_a_day_night_switch_is_no_split(self):
        person = np.array([1.0, 0.0, 0.0], np.float32)
        infrared_look = np.array([0.0, 0.0, 1.0], np.float32)  # the same person seen in infrared
        out = []
        aggregator = TrackletAggregator(out.append, interval_s=0, split_below=0.8, new_track_id=lambda camera: 99)
        for step in range(14):
            aggregator.add(crop(1, step * 0.2, 1.0), person)
            switched = crop(2, step * 0.2, 1.0)
            switched.modality = "visible" if step < 8 else "infrared"
            aggregator.add(switched, person if step < 8 else infrared_look)
        aggregator.end("cam", 1)
        aggregator.end("cam", 2)
        assert [(f.track_id, f.frames) for f in out] == [(1, 14), (2, 14)] and aggregator.splits == []

    def test_worker_batches_crops_and_finalises_after_them(self, tiny_onnx):
        from hybreid.inference import load_embedder

        out = []
        worker = EmbedWorker(load_embedder(tiny_onnx), TrackletAggregator(out.append, interval_s=0),
                             EmbedSettings(max_batch=4, max_wait_ms=500.0))
        worker.start()
        rng = np.random.default_rng(0)
        for i in range(6):
            worker.submit(crop(7, i * 0.1, 1.0, rng.integers(0, 255, (90, 40, 3), dtype=np.uint8)))
        worker.submit(TrackEnd("cam", 7))
        worker.drain()
        (feature,) = out
        assert feature.frames == 6 and feature.final
        assert worker.batches == 2 and worker.crops == 6  # a full batch of 4, then 2 flushed by the end
        assert np.linalg.norm(feature.embedding) == pytest.approx(1.0, abs=1e-5)
