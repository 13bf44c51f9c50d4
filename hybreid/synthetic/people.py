"""Synthetic people seen by several cameras in visible light and in infrared.

Stands in for the real datasets in tests, the demo and accuracy benchmarks (nothing
can be downloaded here). Each identity has clothing in fabrics dyed in their usual
colours, patterns, panels of other fabrics (yokes, bands, pockets), body proportions,
hair and accessories; each image varies pose (walking phase, view), scale, crop,
background, illumination, blur and noise. Cameras differ in colour cast, brightness and
background.

The infrared image is computed from each material's emissivity, not from the visible
image, in one of the two bands the real datasets use:

- Near infrared (SYSU-MM01 and LLCM: cameras lit by their own ~850 nm illuminator). The
  sensor sees reflected light; an opaque surface reflects ``1 - emissivity`` (the
  fibre's, at 850 nm) times what the dye lets through. Dyes absorb in the near infrared
  much as they do at the red end of the visible, so a black shirt is dark in both, while
  a red and a white cotton shirt, far apart in colour, are both bright.
- Thermal (RegDB's far infrared): the sensor sees emitted heat, ``emissivity * T^4 +
  (1 - emissivity) * T_env^4``; skin is warm, a thick coat is near the air temperature,
  a metal buckle reflects the surroundings. A red and a blue shirt of the same cotton
  look the same, a printed pattern disappears while a sewn-on patch of another fabric
  stays.

Only numpy and OpenCV are used, so the edge side (synthetic scenes) can render too.

One file of about 500 lines, on purpose: the fabric table, the emissivity model and the
painter share one person description, and the datasets, scenes and sites all reach it
through :func:`make_identity` and :func:`person_layers`; split, each piece would be read
only with the others open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# Raised whenever a change alters the images, so cached copies are written afresh.
GENERATOR_VERSION = 2

VISIBLE, INFRARED = "visible", "infrared"
NEAR_INFRARED, THERMAL = "near_infrared", "thermal"  # the infrared bands

# Part labels drawn into the label map, in drawing order, then one label per panel.
BACKGROUND, SKIN, HAIR, TOP, PATTERN, BOTTOM, SHOES, BAG, HAT = range(9)
MAX_PANELS = 4
PANEL_LABELS = tuple(range(HAT + 1, HAT + 1 + MAX_PANELS))
NUM_LABELS = PANEL_LABELS[-1] + 1

# Each fabric comes in the colours it is usually dyed in (denim is blue or black, leather
# black or brown, sportswear nylon loud): in real clothing a colour says something about
# the fabric, and the fabric decides the infrared image. That correlation is the bridge
# a model can learn across the modality gap; the palettes overlap, so it is not a lookup.
# The palettes are small on purpose: many identities share a colour, so colour alone does
# not identify a person and an untrained model scores low.
MATERIAL_COLOURS = {
    "cotton": [[0.85, 0.10, 0.10], [0.90, 0.85, 0.80], [0.90, 0.75, 0.15], [0.55, 0.75, 0.90], [0.95, 0.50, 0.10]],
    "wool": [[0.55, 0.55, 0.58], [0.45, 0.12, 0.15], [0.15, 0.35, 0.20], [0.70, 0.60, 0.45], [0.15, 0.15, 0.35]],
    "polyester": [[0.45, 0.25, 0.60], [0.08, 0.08, 0.10], [0.10, 0.55, 0.55], [0.85, 0.10, 0.10], [0.90, 0.85, 0.80]],
    "denim": [[0.15, 0.25, 0.55], [0.35, 0.50, 0.75], [0.08, 0.08, 0.10]],
    "leather": [[0.08, 0.08, 0.10], [0.40, 0.25, 0.12], [0.65, 0.45, 0.25]],
    "nylon": [[0.95, 0.50, 0.10], [0.55, 0.85, 0.15], [0.10, 0.20, 0.75], [0.08, 0.08, 0.10]],
    "metallic": [[0.75, 0.75, 0.78], [0.80, 0.68, 0.30]],
}
# Which fabric each garment is made of, by how common it is.
TOP_MATERIALS = {"cotton": 0.35, "wool": 0.2, "polyester": 0.2, "nylon": 0.15, "leather": 0.1}
BOTTOM_MATERIALS = {"denim": 0.45, "cotton": 0.2, "wool": 0.15, "polyester": 0.1, "leather": 0.1}
ACCESSORY_MATERIALS = {"nylon": 0.35, "leather": 0.3, "polyester": 0.15, "metallic": 0.2}
SHOE_MATERIALS = {"leather": 0.6, "nylon": 0.25, "cotton": 0.15}
SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.87, 0.67, 0.52], [0.68, 0.48, 0.33], [0.45, 0.30, 0.20]])
HAIR_COLOURS = np.array([[0.06, 0.05, 0.05], [0.30, 0.18, 0.08], [0.75, 0.60, 0.30], [0.55, 0.55, 0.55]])

# Thermal band. Material: (emissivity, insulation).
# Surface temperature = T_air + (T_skin - T_air) * (1 - insulation).
MATERIALS = {
    "cotton": (0.80, 0.15), "wool": (0.92, 0.85), "polyester": (0.90, 0.40), "denim": (0.85, 0.60),
    "leather": (0.95, 0.90), "nylon": (0.50, 0.50), "metallic": (0.20, 0.95),
}
SKIN_TEMPERATURE = 34.0
# Near-infrared band: the undyed fibre's emissivity at ~850 nm (reflectance = 1 - emissivity).
NEAR_INFRARED_EMISSIVITY = {
    "cotton": 0.25, "wool": 0.40, "polyester": 0.30, "denim": 0.35, "leather": 0.60, "nylon": 0.20, "metallic": 0.10,
}
SKIN_NEAR_INFRARED_REFLECTANCE = 0.45  # plus a little with lighter skin; melanin absorbs less here than in the visible


@dataclass(frozen=True)
class Garment:
    colour: tuple[float, float, float]
    material: str


@dataclass(frozen=True)
class Panel:
    """A piece of a garment cut from another fabric: a yoke, a band, a pocket, a logo.

    Placed in the garment's own frame (0..1 across and down the torso or the legs), so it
    sits at the same place on the body in every view and both modalities. Its fabric
    differs from the garment's, so it also shows in infrared: this is the kind of
    construction detail that survives the modality gap.
    """

    on: str  # top, bottom
    x0: float
    x1: float
    y0: float
    y1: float
    garment: Garment


@dataclass(frozen=True)
class Identity:
    """Everything about a person that stays the same across cameras and modalities."""

    pid: int
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    long_hair: bool
    top: Garment
    long_sleeves: bool
    pattern: str  # solid, hstripes, vstripes, check, patch
    pattern_garment: Garment
    pattern_period: float  # stripe / check period as a fraction of body height
    patch_offset: float  # where a patch sits across the chest, -1 (left) .. 1 (right)
    bottom: Garment
    bottom_kind: str  # trousers, shorts, skirt
    shoes: Garment
    accessory: str  # none, backpack, shoulder_bag, hat
    accessory_garment: Garment
    height: float
    build: float
    head: float
    panels: tuple[Panel, ...] = ()
    top_length: float = 0.0  # how far a jacket or coat reaches below the hips, as a fraction of height


@dataclass(frozen=True)
class CameraStyle:
    """What one camera does to every image it takes."""

    camid: int
    modality: str
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    brightness: float = 1.0
    background: tuple[float, float, float] = (0.5, 0.5, 0.5)
    air_temperature: float = 20.0
    blur: float = 0.6
    noise: float = 0.02
    side_view_bias: float = 0.5
    band: str = NEAR_INFRARED  # infrared cameras only: NEAR_INFRARED or THERMAL


@dataclass
class Pose:
    phase: float = 0.0  # walking cycle, radians
    view: str = "front"  # front, back, left, right
    scale: float = 0.9
    dx: float = 0.0
    dy: float = 0.0


def _garment(rng: np.random.Generator, materials: dict[str, float], exclude: str | None = None) -> Garment:
    """A garment of one of ``materials`` (drawn by their weights), dyed in one of its colours."""
    names = [name for name in materials if name != exclude]
    weights = np.array([materials[name] for name in names])
    material = names[rng.choice(len(names), p=weights / weights.sum())]
    palette = MATERIAL_COLOURS[material]
    colour = np.array(palette[rng.integers(len(palette))]) * rng.uniform(0.85, 1.1)
    return Garment(tuple(np.clip(colour, 0, 1).tolist()), material)


def _pattern_garment(rng: np.random.Generator, top: Garment) -> Garment:
    """Most patterns are woven or sewn in another fibre (they show in infrared); one in
    ten is a print on the shirt's own fabric (it vanishes in infrared)."""
    if rng.random() < 0.1:
        return Garment(_garment(rng, TOP_MATERIALS).colour, top.material)
    return _garment(rng, TOP_MATERIALS, exclude=top.material)


def make_identity(pid: int, seed: int = 0) -> Identity:
    """The identity ``pid`` of the population ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, pid])
    accessory = rng.choice(["none", "backpack", "shoulder_bag", "hat"], p=[0.4, 0.25, 0.2, 0.15])
    accessory_garment = _garment(rng, ACCESSORY_MATERIALS)
    top = _garment(rng, TOP_MATERIALS)
    bottom = _garment(rng, BOTTOM_MATERIALS)
    return Identity(
        pid=pid,
        skin=tuple(SKIN_TONES[rng.integers(len(SKIN_TONES))].tolist()),
        hair=tuple(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))].tolist()),
        long_hair=bool(rng.random() < 0.35),
        top=top,
        long_sleeves=bool(rng.random() < 0.5),
        pattern=str(rng.choice(["solid", "hstripes", "vstripes", "check", "patch"], p=[0.2, 0.2, 0.2, 0.15, 0.25])),
        pattern_garment=_pattern_garment(rng, top),
        pattern_period=float(rng.uniform(0.04, 0.1)),
        patch_offset=float(rng.uniform(-0.6, 0.6)),
        bottom=bottom,
        bottom_kind=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.65, 0.2, 0.15])),
        shoes=_garment(rng, SHOE_MATERIALS),
        accessory=str(accessory),
        accessory_garment=accessory_garment,
        height=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.8, 1.25)),
        head=float(rng.uniform(0.9, 1.12)),
        panels=_panels(rng, top, bottom),
        top_length=float(rng.uniform(0.08, 0.25)) if rng.random() < 0.4 else 0.0,
    )


def _panels(rng: np.random.Generator, top: Garment, bottom: Garment) -> tuple[Panel, ...]:
    """Zero to MAX_PANELS panels: full-width bands (yokes, hems) or blocks (pockets, logos)."""
    panels = []
    for _ in range(rng.choice(MAX_PANELS + 1, p=[0.05, 0.2, 0.3, 0.25, 0.2])):
        on = "top" if rng.random() < 0.7 else "bottom"
        base = top if on == "top" else bottom
        garment = _garment(rng, TOP_MATERIALS if on == "top" else BOTTOM_MATERIALS, exclude=base.material)
        y0 = float(rng.uniform(0.0, 0.8))
        y1 = min(1.0, y0 + float(rng.uniform(0.12, 0.3)))
        if rng.random() < 0.5:
            x0, x1 = 0.0, 1.0
        else:
            x0 = float(rng.uniform(0.0, 0.6))
            x1 = min(1.0, x0 + float(rng.uniform(0.25, 0.45)))
        panels.append(Panel(on, x0, x1, y0, y1, garment))
    return tuple(panels)


def random_pose(rng: np.random.Generator, camera: CameraStyle) -> Pose:
    if rng.random() < camera.side_view_bias:
        view = "left" if rng.random() < 0.5 else "right"
    else:
        view = "front" if rng.random() < 0.5 else "back"
    return Pose(phase=float(rng.uniform(0, 2 * np.pi)), view=view, scale=float(rng.uniform(0.78, 0.98)),
                dx=float(rng.normal(0, 0.05)), dy=float(rng.normal(0, 0.03)))


def _limb(label: np.ndarray, start, end, width: float, value: int) -> None:
    cv2.line(label, tuple(int(v) for v in start), tuple(int(v) for v in end), int(value), max(1, int(width)),
             lineType=cv2.LINE_8)


def draw_labels(identity: Identity, pose: Pose, height: int, width: int) -> np.ndarray:
    """Part-label map of one person in one pose (``uint8``, labels as above)."""
    label = np.zeros((height, width), np.uint8)
    h = height * pose.scale * identity.height
    side = pose.view in ("left", "right")
    cx = width / 2 + pose.dx * width
    top_y = height - h - 0.02 * height + pose.dy * height
    head_r = 0.065 * h * identity.head
    shoulder_w = (0.075 if side else 0.125) * h * identity.build
    hip_w = (0.065 if side else 0.095) * h * identity.build
    neck_y = top_y + 2 * head_r
    shoulder_y = neck_y + 0.02 * h
    hip_y = shoulder_y + 0.30 * h
    knee_y = hip_y + 0.22 * h
    foot_y = top_y + h
    swing = np.sin(pose.phase) * (0.32 if side else 0.08)
    limb_w = 0.07 * h * identity.build
    arm_w = 0.05 * h * identity.build

    if identity.accessory == "backpack" and pose.view != "front":
        offset = {"back": 0.0, "left": 0.07 * h, "right": -0.07 * h}[pose.view]
        bw = 0.11 * h if pose.view == "back" else 0.06 * h
        cv2.rectangle(label, (int(cx + offset - bw), int(shoulder_y + 0.01 * h)),
                      (int(cx + offset + bw), int(hip_y - 0.04 * h)), BAG, -1)
    if identity.long_hair and pose.view != "front":
        cv2.ellipse(label, (int(cx), int(neck_y + 0.02 * h)), (int(head_r * 1.1), int(head_r * 1.6)), 0, 0, 360,
                    HAIR, -1)
    # Legs: thighs and shins swing in opposite phases.
    for sign in (-1, 1):
        hip = np.array([cx + sign * hip_w * 0.5, hip_y])
        knee = np.array([cx + sign * hip_w * 0.5 + sign * swing * 0.22 * h * (1 if side else 0.3), knee_y])
        foot = np.array([knee[0] + sign * swing * 0.18 * h, foot_y - 0.02 * h])
        if side:
            knee[0] = cx + sign * swing * 0.22 * h
            foot[0] = knee[0] + sign * swing * 0.16 * h
        thigh_label = BOTTOM if identity.bottom_kind != "skirt" else SKIN
        shin_label = BOTTOM if identity.bottom_kind == "trousers" else SKIN
        _limb(label, hip, knee, limb_w, thigh_label)
        _limb(label, knee, foot, limb_w * 0.85, shin_label)
        cv2.ellipse(label, (int(foot[0] + (0.02 * h if pose.view == "right" else -0.02 * h if side else 0)),
                            int(foot[1])), (int(limb_w * (0.8 if side else 0.5)), int(0.025 * h)), 0, 0, 360,
                    SHOES, -1)
    if identity.bottom_kind == "skirt":
        skirt = np.array([[cx - hip_w, hip_y - 0.02 * h], [cx + hip_w, hip_y - 0.02 * h],
                          [cx + hip_w * 1.5, knee_y], [cx - hip_w * 1.5, knee_y]], np.int32)
        cv2.fillPoly(label, [skirt], BOTTOM)
    else:
        cv2.rectangle(label, (int(cx - hip_w), int(hip_y - 0.03 * h)), (int(cx + hip_w), int(hip_y + 0.04 * h)),
                      BOTTOM, -1)
    hem_y = hip_y + identity.top_length * h
    hem_w = hip_w * (1 + identity.top_length)
    torso = np.array([[cx - shoulder_w, shoulder_y], [cx + shoulder_w, shoulder_y],
                      [cx + hem_w, hem_y], [cx - hem_w, hem_y]], np.int32)
    cv2.fillPoly(label, [torso], TOP)
    # Arms: the far arm is hidden behind the torso in a side view.
    for sign in ((-1, 1) if not side else (1,)):
        shoulder = np.array([cx + sign * shoulder_w * (0.95 if not side else 0.0), shoulder_y + 0.02 * h])
        elbow = shoulder + np.array([sign * 0.02 * h - swing * 0.16 * h * (1 if side else sign), 0.15 * h])
        hand = elbow + np.array([-swing * 0.14 * h * (1 if side else sign), 0.14 * h])
        _limb(label, shoulder, elbow, arm_w, TOP)
        _limb(label, elbow, hand, arm_w * 0.9, TOP if identity.long_sleeves else SKIN)
        cv2.circle(label, (int(hand[0]), int(hand[1])), int(arm_w * 0.55), SKIN, -1)
    cv2.circle(label, (int(cx), int(top_y + head_r)), int(head_r), SKIN, -1)
    hair_start = 180 if pose.view == "front" else 160
    cv2.ellipse(label, (int(cx), int(top_y + head_r * 0.95)), (int(head_r * 1.05), int(head_r * 1.0)), 0,
                hair_start, 360 + (0 if pose.view == "front" else 20), HAIR, -1)
    if pose.view == "back":
        cv2.circle(label, (int(cx), int(top_y + head_r)), int(head_r * 0.92), HAIR, -1)
    if identity.accessory == "hat":
        cv2.ellipse(label, (int(cx), int(top_y + head_r * 0.6)), (int(head_r * 1.35), int(head_r * 0.75)), 0, 180,
                    360, HAT, -1)
    if identity.accessory == "shoulder_bag":
        bag_x = cx + (hip_w * 1.1 if pose.view != "left" else -hip_w * 1.1)
        cv2.line(label, (int(cx - shoulder_w * 0.6), int(shoulder_y)), (int(bag_x), int(hip_y - 0.02 * h)), BAG,
                 max(1, int(0.015 * h)))
        cv2.rectangle(label, (int(bag_x - 0.05 * h), int(hip_y - 0.05 * h)), (int(bag_x + 0.05 * h),
                      int(hip_y + 0.05 * h)), BAG, -1)
    if identity.accessory == "backpack" and pose.view == "front":
        for sign in (-1, 1):
            cv2.line(label, (int(cx + sign * shoulder_w * 0.55), int(shoulder_y)),
                     (int(cx + sign * hip_w * 0.7), int(hip_y - 0.08 * h)), BAG, max(1, int(0.02 * h)))
    _apply_pattern(label, identity, pose, (cx, shoulder_y, shoulder_w), h)
    _apply_panels(label, identity, pose, (cx, shoulder_y, hem_y, foot_y, shoulder_w))
    return label


def _apply_panels(label: np.ndarray, identity: Identity, pose: Pose, body) -> None:
    cx, shoulder_y, hem_y, foot_y, shoulder_w = body
    ys, xs = np.mgrid[0 : label.shape[0], 0 : label.shape[1]]
    across = (xs - (cx - shoulder_w)) / (2 * shoulder_w)  # 0..1 over the shoulders
    if pose.view == "back":
        across = 1 - across  # the left side of the body is on the image's right
    for index, panel in enumerate(identity.panels):
        top, bottom = (shoulder_y, hem_y) if panel.on == "top" else (hem_y, foot_y)
        down = (ys - top) / max(bottom - top, 1.0)
        inside = (down >= panel.y0) & (down < panel.y1)
        if pose.view in ("front", "back"):
            inside &= (across >= panel.x0) & (across < panel.x1)
        elif panel.x1 - panel.x0 < 1.0:
            continue  # a block on the front or back is not seen from the side
        garment_labels = (TOP, PATTERN) if panel.on == "top" else (BOTTOM,)
        label[inside & np.isin(label, garment_labels)] = PANEL_LABELS[index]


def _apply_pattern(label: np.ndarray, identity: Identity, pose: Pose, torso, h: float) -> None:
    if identity.pattern == "solid":
        return
    cx, shoulder_y, shoulder_w = torso
    ys, xs = np.mgrid[0 : label.shape[0], 0 : label.shape[1]]
    period = max(2, int(identity.pattern_period * h))
    if identity.pattern == "hstripes":
        mask = ((ys - int(shoulder_y)) // period) % 2 == 0
    elif identity.pattern == "vstripes":
        mask = ((xs - int(cx)) // period) % 2 == 0
    elif identity.pattern == "check":
        mask = (((ys - int(shoulder_y)) // period + (xs - int(cx)) // period) % 2) == 0
    else:  # a patch on the chest (front) or a print on the back, placed per identity
        if pose.view in ("left", "right"):
            return
        centre = cx + identity.patch_offset * shoulder_w * (1 if pose.view == "front" else -1)
        mask = (np.abs(xs - centre) < shoulder_w * 0.4) & (ys > shoulder_y + 0.05 * h) & (ys < shoulder_y + 0.15 * h)
    label[(label == TOP) & mask] = PATTERN


def _part_table(identity: Identity) -> dict[int, tuple[tuple[float, float, float], str | None]]:
    return {
        SKIN: (identity.skin, None), HAIR: (identity.hair, "hair"), TOP: (identity.top.colour, identity.top.material),
        PATTERN: (identity.pattern_garment.colour, identity.pattern_garment.material),
        BOTTOM: (identity.bottom.colour, identity.bottom.material),
        SHOES: (identity.shoes.colour, identity.shoes.material),
        BAG: (identity.accessory_garment.colour, identity.accessory_garment.material),
        HAT: (identity.accessory_garment.colour, identity.accessory_garment.material),
    } | {PANEL_LABELS[index]: (panel.garment.colour, panel.garment.material)
         for index, panel in enumerate(identity.panels)}


def _radiance(temperature_c: np.ndarray | float) -> np.ndarray | float:
    return ((np.asarray(temperature_c) + 273.15) / 310.0) ** 4


def person_layers(identity: Identity, pose: Pose, camera: CameraStyle, height: int,
                  width: int) -> tuple[np.ndarray, np.ndarray]:
    """The person alone: (colour ``[H, W, 3]`` in [0, 1] or infrared signal ``[H, W]``, alpha ``[H, W]``)."""
    label = draw_labels(identity, pose, height, width)
    alpha = (label != BACKGROUND).astype(np.float32)
    parts = _part_table(identity)
    if camera.modality == VISIBLE:
        lut = np.zeros((NUM_LABELS, 3), np.float32)
        for part, (colour, _) in parts.items():
            lut[part] = colour
        image = lut[label]
        # Soft vertical shading and a lit side give the figure volume.
        shade = np.linspace(1.08, 0.82, height, dtype=np.float32)[:, None, None]
        image = image * shade
    elif camera.band == THERMAL:
        lut = np.zeros(NUM_LABELS, np.float32)
        for part, (_, material) in parts.items():
            lut[part] = _thermal_radiance(material, camera.air_temperature)
        image = lut[label]
    else:
        lut = np.zeros(NUM_LABELS, np.float32)
        for part, (colour, material) in parts.items():
            lut[part] = _near_infrared_reflectance(colour, material)
        # The illuminator sits by the lens and lights the head better than the feet.
        image = lut[label] * np.linspace(1.05, 0.85, height, dtype=np.float32)[:, None]
    return image, alpha


def _thermal_radiance(material: str | None, air_temperature: float) -> float:
    if material is None:  # skin
        return float(_radiance(SKIN_TEMPERATURE - 1.0))
    if material == "hair":
        return 0.95 * float(_radiance(air_temperature + 0.45 * (SKIN_TEMPERATURE - air_temperature)))
    emissivity, insulation = MATERIALS[material]
    surface = air_temperature + (SKIN_TEMPERATURE - air_temperature) * (1 - insulation)
    return float(emissivity * _radiance(surface) + (1 - emissivity) * _radiance(air_temperature))


def _near_infrared_reflectance(colour: tuple[float, float, float], material: str | None) -> float:
    # A dye absorbs at ~850 nm about as it does at the visible's red end, and never all of it.
    red_end = 0.7 * colour[0] + 0.2 * colour[1] + 0.1 * colour[2]
    if material is None:  # skin
        return SKIN_NEAR_INFRARED_REFLECTANCE + 0.2 * red_end
    if material == "hair":
        return 0.2 + 0.4 * red_end
    return (1 - NEAR_INFRARED_EMISSIVITY[material]) * (0.15 + 0.85 * red_end)


def infrared_to_grey(signal: np.ndarray, camera: CameraStyle, gain: float = 1.0) -> np.ndarray:
    """The infrared camera's grey image in [0, 1]: near-infrared reflectance times the
    gain, or thermal radiance mapped automatic-gain style around the air temperature."""
    if camera.band != THERMAL:
        return np.clip(signal * gain, 0, 1)
    low = _radiance(camera.air_temperature - 6.0)
    high = _radiance(SKIN_TEMPERATURE + 2.0)
    return np.clip((signal - low) / (high - low) * gain, 0, 1)


def background(camera: CameraStyle, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A cluttered background: colour ``[H, W, 3]`` (visible) or infrared signal ``[H, W]``."""
    if camera.modality == VISIBLE:
        # Each image's scene is drawn from one shared, muted distribution and only tinted
        # by its camera: a background colour must not identify the camera outright.
        scene = rng.uniform(0.3, 0.7) + rng.normal(0, 0.06, 3)
        base = np.clip(0.75 * scene + 0.25 * np.array(camera.background), 0, 1).astype(np.float32)
        image = np.ones((height, width, 3), np.float32) * base
        image *= np.linspace(rng.uniform(0.8, 1.1), rng.uniform(0.9, 1.2), height, dtype=np.float32)[:, None, None]
        for _ in range(rng.integers(2, 7)):
            x0, y0 = rng.integers(0, width), rng.integers(0, height)
            colour = np.clip(base + rng.normal(0, 0.15, 3), 0, 1)
            cv2.rectangle(image, (int(x0), int(y0)), (int(x0 + rng.integers(4, width // 2)),
                          int(y0 + rng.integers(4, height // 2))), colour.tolist(), -1)
        floor = int(height * rng.uniform(0.75, 0.9))
        image[floor:] *= 0.8
        return image
    if camera.band == THERMAL:
        base = float(_radiance(camera.air_temperature + rng.normal(0, 1.0)))
        clutter = [float(_radiance(camera.air_temperature + rng.normal(0, 6.0))) for _ in range(rng.integers(1, 5))]
    else:  # reflectances of walls, floors and furniture
        base = float(rng.uniform(0.25, 0.6))
        clutter = [float(np.clip(base + rng.normal(0, 0.15), 0, 1)) for _ in range(rng.integers(1, 5))]
    image = np.full((height, width), base, np.float32)
    for value in clutter:
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        cv2.rectangle(image, (int(x0), int(y0)), (int(x0 + rng.integers(4, width // 2)),
                      int(y0 + rng.integers(4, height // 2))), value, -1)
    return image


def finish(image: np.ndarray, camera: CameraStyle, rng: np.random.Generator) -> np.ndarray:
    """Camera effects (cast, brightness, blur, noise) and conversion to ``uint8`` RGB."""
    if camera.modality == VISIBLE:
        image = image * np.array(camera.cast, np.float32) * camera.brightness * rng.uniform(0.8, 1.2)
    else:
        image = np.repeat(infrared_to_grey(image, camera, rng.uniform(0.85, 1.15))[..., None], 3, 2)
    sigma = camera.blur * rng.uniform(0.6, 1.4)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = image + rng.normal(0, camera.noise, image.shape[:2] + (1,) if camera.modality == INFRARED
                               else image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def render_crop(identity: Identity, camera: CameraStyle, rng: np.random.Generator,
                size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """One detection-style crop ``[H, W, 3]`` uint8 RGB of ``identity`` seen by ``camera``."""
    height, width = size
    render_h, render_w = height * 2, width * 2  # draw at 2x, then downsample: smoother edges
    pose = random_pose(rng, camera)
    person, alpha = person_layers(identity, pose, camera, render_h, render_w)
    scene = background(camera, rng, render_h, render_w)
    if camera.modality == VISIBLE:
        composite = scene * (1 - alpha[..., None]) + person * alpha[..., None]
    else:
        composite = scene * (1 - alpha) + person * alpha
    composite = cv2.resize(composite, (width, height), interpolation=cv2.INTER_AREA)
    return finish(composite, camera, rng)


@dataclass
class CameraSet:
    """Cameras of a synthetic site, by 0-based camera id."""

    cameras: list[CameraStyle] = field(default_factory=list)

    @classmethod
    def make(cls, modalities: list[str], seed: int = 0, infrared_band: str = NEAR_INFRARED) -> CameraSet:
        """Cameras with drawn styles; every infrared one works in ``infrared_band``."""
        if infrared_band not in (NEAR_INFRARED, THERMAL):
            raise ValueError(f"infrared_band must be {NEAR_INFRARED!r} or {THERMAL!r}, got {infrared_band!r}")
        rng = np.random.default_rng([seed, 7919])
        cameras = []
        for camid, modality in enumerate(modalities):
            cameras.append(CameraStyle(
                camid=camid,
                modality=modality,
                cast=tuple(np.clip(rng.normal(1.0, 0.12, 3), 0.7, 1.3).tolist()),
                brightness=float(rng.uniform(0.7, 1.2)),
                background=tuple(rng.uniform(0.15, 0.8, 3).tolist()),
                air_temperature=float(rng.uniform(8, 26)),
                blur=float(rng.uniform(0.4, 1.2) if modality == VISIBLE else rng.uniform(0.7, 1.2)),
                noise=float(rng.uniform(0.01, 0.04)),
                side_view_bias=float(rng.uniform(0.2, 0.8)),
                band=infrared_band,
            ))
        return cls(cameras)
