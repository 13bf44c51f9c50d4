"""The synthetic people's physics: what shows in infrared follows the fabric and, in the near
infrared, the dye's darkness; never the visible image's grey."""

from dataclasses import replace

import numpy as np

from hybreid.synthetic import datasets as synthetic_datasets
from hybreid.synthetic.datasets import write_once
from hybreid.synthetic.people import (
    INFRARED,
    NEAR_INFRARED,
    PANEL_LABELS,
    PATTERN,
    THERMAL,
    TOP,
    VISIBLE,
    CameraStyle,
    Garment,
    Panel,
    Pose,
    draw_labels,
    make_identity,
    person_layers,
)

SIZE = (128, 64)
FRONT = Pose(view="front", scale=0.95)
COLOUR_CAMERA = CameraStyle(camid=0, modality=VISIBLE)
THERMAL_CAMERA = CameraStyle(camid=1, modality=INFRARED, band=THERMAL, air_temperature=15.0)
NEAR_INFRARED_CAMERA = CameraStyle(camid=2, modality=INFRARED, band=NEAR_INFRARED)


def _plain(identity):
    """The identity with a solid top, no panels and no accessory: one fabric on the torso."""
    return replace(identity, pattern="solid", panels=(), accessory="none")


def _torso_values(identity, camera):
    image, _ = person_layers(identity, FRONT, camera, *SIZE)
    labels = draw_labels(identity, FRONT, *SIZE)
    return image[np.isin(labels, (TOP, PATTERN))]


def test_a_print_vanishes_in_thermal_infrared_and_a_woven_pattern_stays():
    base = _plain(make_identity(3))
    cotton = Garment((0.9, 0.85, 0.8), "cotton")
    printed = replace(base, top=cotton, pattern="hstripes", pattern_garment=Garment((0.1, 0.2, 0.75), "cotton"))
    woven = replace(printed, pattern_garment=Garment((0.1, 0.2, 0.75), "wool"))
    assert len(np.unique(_torso_values(printed, COLOUR_CAMERA), axis=0)) > 1
    assert np.ptp(_torso_values(printed, THERMAL_CAMERA)) == 0
    assert np.ptp(_torso_values(woven, THERMAL_CAMERA)) > 0


def test_thermal_infrared_follows_the_fabric_not_the_colour():
    base = _plain(make_identity(5))
    white = replace(base, top=Garment((0.9, 0.9, 0.9), "cotton"))
    black = replace(base, top=Garment((0.08, 0.08, 0.1), "cotton"))
    black_wool = replace(base, top=Garment((0.08, 0.08, 0.1), "wool"))
    assert not np.allclose(_torso_values(white, COLOUR_CAMERA).mean(0), _torso_values(black, COLOUR_CAMERA).mean(0))
    # Same cloth: the same infrared image whatever its colour.
    assert np.allclose(_torso_values(white, THERMAL_CAMERA), _torso_values(black, THERMAL_CAMERA))
    # Same colour, another cloth: another infrared level (wool insulates, its surface is cooler).
    assert _torso_values(black_wool, THERMAL_CAMERA).mean() < _torso_values(black, THERMAL_CAMERA).mean()


def test_near_infrared_follows_the_dye_darkness_and_the_fibre():
    base = _plain(make_identity(5))
    white = replace(base, top=Garment((0.9, 0.85, 0.8), "cotton"))
    red = replace(base, top=Garment((0.85, 0.1, 0.1), "cotton"))
    black = replace(base, top=Garment((0.08, 0.08, 0.1), "cotton"))

    def visible_grey(person):
        return _torso_values(person, COLOUR_CAMERA).mean()

    def near_infrared(person):
        return _torso_values(person, NEAR_INFRARED_CAMERA).mean()

    # A black shirt is dark in both bands.
    assert near_infrared(black) < near_infrared(red) and near_infrared(black) < near_infrared(white)
    # Red and white are far apart in the visible and close in the near infrared: not a grey conversion.
    assert abs(near_infrared(red) - near_infrared(white)) < 0.5 * abs(visible_grey(red) - visible_grey(white))
    # Same colour, another fibre: another level (leather reflects less at 850 nm than nylon).
    black_nylon = replace(base, top=Garment((0.08, 0.08, 0.1), "nylon"))
    black_leather = replace(base, top=Garment((0.08, 0.08, 0.1), "leather"))
    assert near_infrared(black_leather) < near_infrared(black_nylon)


def test_panels_sit_at_the_same_place_on_the_body_in_every_view():
    base = _plain(make_identity(7))
    block = Panel("top", 0.0, 0.4, 0.2, 0.5, Garment((0.1, 0.55, 0.2), "nylon"))
    band = Panel("bottom", 0.0, 1.0, 0.3, 0.5, Garment((0.08, 0.08, 0.1), "leather"))
    person = replace(base, top=Garment((0.9, 0.85, 0.8), "cotton"), panels=(block, band), bottom_kind="trousers")
    front = draw_labels(person, FRONT, *SIZE)
    back = draw_labels(person, replace(FRONT, view="back"), *SIZE)
    side = draw_labels(person, replace(FRONT, view="left"), *SIZE)

    def columns(labels, value):
        return np.nonzero((labels == value).any(0))[0]

    # The block covers the body's left side: the image's left from the front, its right from behind.
    centre = SIZE[1] / 2
    assert columns(front, PANEL_LABELS[0]).mean() < centre < columns(back, PANEL_LABELS[0]).mean()
    assert not (side == PANEL_LABELS[0]).any()  # a chest block is not seen from the side
    for labels in (front, back, side):
        assert (labels == PANEL_LABELS[1]).any()  # a band goes all round
    # And it shows in both infrared bands: nylon and cotton differ in emissivity and insulation.
    for camera in (THERMAL_CAMERA, NEAR_INFRARED_CAMERA):
        image, _ = person_layers(person, FRONT, camera, *SIZE)
        assert image[front == PANEL_LABELS[0]].mean() != image[front == TOP].mean()


def test_identities_are_deterministic_and_varied():
    assert make_identity(11, seed=4) == make_identity(11, seed=4)
    people = [make_identity(pid) for pid in range(200)]
    assert len({p.top.material for p in people}) >= 4
    assert sum(bool(p.panels) for p in people) > 150
    assert {p.pattern for p in people} == {"solid", "hstripes", "vstripes", "check", "patch"}


def test_write_once_reuses_a_complete_copy_and_rewrites_after_a_generator_change(tmp_path, monkeypatch):
    calls = []

    def writer(root, **settings):
        calls.append(settings)
        root.mkdir(parents=True, exist_ok=True)
        (root / "data.txt").write_text(str(len(calls)))

    root = tmp_path / "synthetic"
    write_once(writer, root, train_ids=3)
    write_once(writer, root, train_ids=3)
    assert len(calls) == 1
    write_once(writer, root, train_ids=4)
    assert len(calls) == 2 and (root / "data.txt").read_text() == "2"
    monkeypatch.setattr(synthetic_datasets, "GENERATOR_VERSION", synthetic_datasets.GENERATOR_VERSION + 1)
    write_once(writer, root, train_ids=4)
    assert len(calls) == 3
