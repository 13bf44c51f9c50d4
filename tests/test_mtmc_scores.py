"""Multi-camera IDF1 on a ground truth and predictions worked out by hand."""

from __future__ import annotations

import pytest

from hybreid.errors import UserError
from hybreid.eval.mtmc import identity_scores, read_mot, write_mot

BOX = (10.0, 20.0, 40.0, 100.0)
MISSED = (300.0, 20.0, 40.0, 100.0)  # no overlap with BOX

# Camera A sees person 1 in frames 1-4. Camera B sees person 1 in frames 1-2, person 2 in
# frames 3-4. 8 true boxes in all.
TRUTH = {"A": [(f, 1, BOX) for f in range(1, 5)],
         "B": [(1, 1, BOX), (2, 1, BOX), (3, 2, BOX), (4, 2, BOX)]}


def test_one_global_id_per_person_across_cameras():
    # The tracker keeps person 1 as id 7 in both cameras, person 2 as id 8, but its frame-4
    # box in camera B is elsewhere. Matching 1<->7 covers 6 boxes, 2<->8 one: IDTP 7 of 8
    # true and 8 predicted boxes, so IDP = IDR = IDF1 = 7/8.
    predicted = {"A": [(f, 7, BOX) for f in range(1, 5)],
                 "B": [(1, 7, BOX), (2, 7, BOX), (3, 8, BOX), (4, 8, MISSED)]}
    scores = identity_scores(TRUTH, predicted)
    assert (scores["idtp"], scores["idfp"], scores["idfn"]) == (7, 1, 1)
    assert scores["idf1"] == pytest.approx(7 / 8) and scores["idp"] == pytest.approx(7 / 8)
    assert scores["people"] == 2 and scores["frames"] == 8 and scores["cameras"] == 2


def test_a_person_who_changes_id_between_cameras_costs_identity_matches():
    # Person 1 is id 7 in camera A and id 9 in camera B: one of the two runs cannot match,
    # 1<->7 keeps 4, 2<->8 keeps 2: IDTP 6, IDF1 = 2*6 / (8 + 8) = 0.75.
    predicted = {"A": [(f, 7, BOX) for f in range(1, 5)],
                 "B": [(1, 9, BOX), (2, 9, BOX), (3, 8, BOX), (4, 8, BOX)]}
    scores = identity_scores(TRUTH, predicted)
    assert scores["idtp"] == 6 and scores["idf1"] == pytest.approx(0.75)


def test_a_camera_without_predictions_counts_as_missed():
    scores = identity_scores(TRUTH, {"A": [(f, 7, BOX) for f in range(1, 5)]})
    # IDTP 4 of 8 true boxes, of 4 predicted: IDP 1, IDR 0.5, IDF1 = 8 / 12.
    assert scores["idp"] == 1.0 and scores["idr"] == 0.5 and scores["idf1"] == pytest.approx(2 / 3)


def test_mot_files_round_trip_and_bad_rows_are_one_clear_error(tmp_path):
    path = write_mot(tmp_path / "A.txt", TRUTH["B"])
    assert read_mot(path) == TRUTH["B"]
    assert path.read_text().splitlines()[0] == "1,1,10.00,20.00,40.00,100.00,1.0,-1,-1,-1"
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,10,20,40,100\nframe,id\n")
    with pytest.raises(UserError, match="bad.txt:2 is not a MOTChallenge row"):
        read_mot(bad)


def test_hota_splits_a_swapped_identity_from_a_missed_detection():
    """One person over ten frames. Given two ids (five frames each) with perfect boxes,
    every detection is right (DetA 1) and each match's id covers half the person's frames
    (AssA 0.5): HOTA = sqrt(1 x 0.5). With one id but half the frames missed, each match
    sees its id on five of the person's ten frames again (AssA 0.5) and detection finds
    five of ten (DetA 0.5): HOTA 0.5."""
    from hybreid.eval.mtmc import hota_scores

    box = (10.0, 10.0, 20.0, 40.0)
    truth = {"cam": [(frame, 1, box) for frame in range(1, 11)]}
    swapped = {"cam": [(frame, 7 if frame <= 5 else 8, box) for frame in range(1, 11)]}
    half = {"cam": [(frame, 7, box) for frame in range(1, 6)]}
    assert hota_scores(truth, truth) == pytest.approx({"hota": 1.0, "deta": 1.0, "assa": 1.0})
    assert hota_scores(truth, swapped) == pytest.approx({"hota": 0.5 ** 0.5, "deta": 1.0, "assa": 0.5})
    assert hota_scores(truth, half) == pytest.approx({"hota": 0.5, "deta": 0.5, "assa": 0.5})
