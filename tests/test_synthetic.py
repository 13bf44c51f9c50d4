"""The synthetic people's physics: what shows in infrared follows the fabric, not the colour."""

from dataclasses import replace

import numpy as np

from hybreid.data.synthetic import (
    INFRARED,
    PANEL_LABELS,
    PATTERN,
    TOP,
    VISIBLE,
    Garment,
    Panel,
    Pose,
    draw_labels,
    make_identity,
    person_layers,
)

SIZE = (128, 64)
FRONT = Pose(view="front", scale=0.95)


def _plain(identity):
    """The identity with a solid top, no panels and no accessory: one fabric on the torso."""
    return replace(identity, pattern="solid", panels=(), accessory="none")


def _torso_values(identity, modality):
    image, _ = person_layers(identity, FRONT, modality, 15.0, *SIZE)
    labels = draw_labels(identity, FRONT, *SIZE)
    return image[np.isin(labels, (TOP, PATTERN))]


def test_a_print_vanishes_in_infrared_and_a_woven_pattern_stays():
    base = _plain(make_identity(3))
    cotton = Garment((0.9, 0.85, 0.8), "cotton")
    printed = replace(base, top=cotton, pattern="hstripes", pattern_garment=Garment((0.1, 0.2, 0.75), "cotton"))
    woven = replace(printed, pattern_garment=Garment((0.1, 0.2, 0.75), "wool"))
    assert len(np.unique(_torso_values(printed, VISIBLE), axis=0)) > 1
    assert np.ptp(_torso_values(printed, INFRARED)) == 0
    assert np.ptp(_torso_values(woven, INFRARED)) > 0


def test_infrared_follows_the_fabric_not_the_colour():
    base = _plain(make_identity(5))
    white = replace(base, top=Garment((0.9, 0.9, 0.9), "cotton"))
    black = replace(base, top=Garment((0.08, 0.08, 0.1), "cotton"))
    black_wool = replace(base, top=Garment((0.08, 0.08, 0.1), "wool"))
    assert not np.allclose(_torso_values(white, VISIBLE).mean(0), _torso_values(black, VISIBLE).mean(0))
    # Same cloth: the same infrared image whatever its colour.
    assert np.allclose(_torso_values(white, INFRARED), _torso_values(black, INFRARED))
    # Same colour, another cloth: another infrared level (wool insulates, its surface is cooler).
    assert _torso_values(black_wool, INFRARED).mean() < _torso_values(black, INFRARED).mean()


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
    # And it shows in infrared: nylon and cotton differ in emission and insulation.
    image, _ = person_layers(person, FRONT, INFRARED, 15.0, *SIZE)
    assert image[front == PANEL_LABELS[0]].mean() != image[front == TOP].mean()


def test_identities_are_deterministic_and_varied():
    assert make_identity(11, seed=4) == make_identity(11, seed=4)
    people = [make_identity(pid) for pid in range(200)]
    assert len({p.top.material for p in people}) >= 4
    assert sum(bool(p.panels) for p in people) > 150
    assert {p.pattern for p in people} == {"solid", "hstripes", "vstripes", "check", "patch"}
