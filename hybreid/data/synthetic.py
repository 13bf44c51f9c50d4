"""Synthetic people seen by several cameras in visible light and in thermal infrared.

Stands in for the real datasets in tests, the demo and accuracy benchmarks (nothing
can be downloaded here). Each identity has clothing colours and patterns, materials,
body proportions, hair and accessories; each image varies pose (walking phase, view),
scale, crop, background, illumination, blur and noise. Cameras differ in colour cast,
brightness and background.

The infrared image is computed from physics, not from the visible one: every material
has an emissivity and a surface temperature (skin is warm, a thick coat is near the
air temperature, a metal buckle reflects the surroundings), and the sensor sees
``emissivity * T^4 + (1 - emissivity) * T_env^4``. A red and a blue shirt of the same
cotton look the same in infrared, a printed pattern disappears while a sewn-on patch of
another fabric stays: the visible/infrared gap is real.

Only numpy and OpenCV are used, so the edge side (synthetic scenes) can render too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

VISIBLE, INFRARED = "visible", "infrared"

# Part labels drawn into the label map, in drawing order.
BACKGROUND, SKIN, HAIR, TOP, PATTERN, BOTTOM, SHOES, BAG, HAT = range(9)

# Visible palettes are small on purpose: many identities share a colour, so colour
# alone does not identify a person and an untrained model scores low.
CLOTH_COLOURS = np.array([
    [0.85, 0.10, 0.10], [0.10, 0.20, 0.75], [0.10, 0.55, 0.20], [0.90, 0.85, 0.80], [0.08, 0.08, 0.10],
    [0.55, 0.55, 0.58], [0.90, 0.75, 0.15], [0.45, 0.25, 0.60], [0.95, 0.50, 0.10], [0.40, 0.25, 0.12],
])
SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.87, 0.67, 0.52], [0.68, 0.48, 0.33], [0.45, 0.30, 0.20]])
HAIR_COLOURS = np.array([[0.06, 0.05, 0.05], [0.30, 0.18, 0.08], [0.75, 0.60, 0.30], [0.55, 0.55, 0.55]])

# Material: (emissivity, insulation). Surface temperature = T_air + (T_skin - T_air) * (1 - insulation).
MATERIALS = {
    "cotton": (0.80, 0.15), "wool": (0.92, 0.85), "polyester": (0.90, 0.40), "denim": (0.85, 0.60),
    "leather": (0.95, 0.90), "nylon": (0.50, 0.50), "metallic": (0.20, 0.95),
}
MATERIAL_NAMES = list(MATERIALS)
SKIN_TEMPERATURE = 34.0


@dataclass(frozen=True)
class Garment:
    colour: tuple[float, float, float]
    material: str


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


@dataclass
class Pose:
    phase: float = 0.0  # walking cycle, radians
    view: str = "front"  # front, back, left, right
    scale: float = 0.9
    dx: float = 0.0
    dy: float = 0.0


def _garment(rng: np.random.Generator, colours: np.ndarray = CLOTH_COLOURS) -> Garment:
    colour = colours[rng.integers(len(colours))] * rng.uniform(0.85, 1.1)
    return Garment(tuple(np.clip(colour, 0, 1).tolist()), MATERIAL_NAMES[rng.integers(len(MATERIAL_NAMES) - 1)])


def _pattern_garment(rng: np.random.Generator, top: Garment) -> Garment:
    """Most patterns are woven or sewn in another fibre (they show in infrared); one in
    five is a print on the shirt's own fabric (it vanishes in infrared)."""
    garment = _garment(rng)
    if rng.random() < 0.2:
        return Garment(garment.colour, top.material)
    while garment.material == top.material:
        garment = _garment(rng)
    return garment


def make_identity(pid: int, seed: int = 0) -> Identity:
    """The identity ``pid`` of the population ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, pid])
    accessory = rng.choice(["none", "backpack", "shoulder_bag", "hat"], p=[0.4, 0.25, 0.2, 0.15])
    accessory_garment = _garment(rng)
    if rng.random() < 0.3:
        accessory_garment = Garment(accessory_garment.colour, "metallic")
    top = _garment(rng)
    return Identity(
        pid=pid,
        skin=tuple(SKIN_TONES[rng.integers(len(SKIN_TONES))].tolist()),
        hair=tuple(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))].tolist()),
        long_hair=bool(rng.random() < 0.35),
        top=top,
        long_sleeves=bool(rng.random() < 0.5),
        pattern=str(rng.choice(["solid", "hstripes", "vstripes", "check", "patch"], p=[0.4, 0.15, 0.15, 0.1, 0.2])),
        pattern_garment=_pattern_garment(rng, top),
        pattern_period=float(rng.uniform(0.03, 0.08)),
        patch_offset=float(rng.uniform(-0.6, 0.6)),
        bottom=_garment(rng),
        bottom_kind=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.65, 0.2, 0.15])),
        shoes=_garment(rng, CLOTH_COLOURS[[3, 4, 5, 9]]),
        accessory=str(accessory),
        accessory_garment=accessory_garment,
        height=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.8, 1.25)),
        head=float(rng.uniform(0.9, 1.12)),
    )


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
    torso = np.array([[cx - shoulder_w, shoulder_y], [cx + shoulder_w, shoulder_y],
                      [cx + hip_w, hip_y], [cx - hip_w, hip_y]], np.int32)
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
    _apply_pattern(label, identity, pose, (cx, shoulder_y, hip_y, shoulder_w), h)
    return label


def _apply_pattern(label: np.ndarray, identity: Identity, pose: Pose, torso, h: float) -> None:
    if identity.pattern == "solid":
        return
    cx, shoulder_y, hip_y, shoulder_w = torso
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
        SHOES: (identity.shoes.colour, "leather"),
        BAG: (identity.accessory_garment.colour, identity.accessory_garment.material),
        HAT: (identity.accessory_garment.colour, identity.accessory_garment.material),
    }


def _radiance(temperature_c: np.ndarray | float) -> np.ndarray | float:
    return ((np.asarray(temperature_c) + 273.15) / 310.0) ** 4


def person_layers(identity: Identity, pose: Pose, modality: str, air_temperature: float, height: int,
                  width: int) -> tuple[np.ndarray, np.ndarray]:
    """The person alone: (colour ``[H, W, 3]`` in [0, 1] or radiance ``[H, W]``, alpha ``[H, W]``)."""
    label = draw_labels(identity, pose, height, width)
    alpha = (label != BACKGROUND).astype(np.float32)
    parts = _part_table(identity)
    if modality == VISIBLE:
        lut = np.zeros((9, 3), np.float32)
        for part, (colour, _) in parts.items():
            lut[part] = colour
        image = lut[label]
        # Soft vertical shading and a lit side give the figure volume.
        shade = np.linspace(1.08, 0.82, height, dtype=np.float32)[:, None, None]
        image = image * shade
    else:
        lut = np.zeros(9, np.float32)
        for part, (_, material) in parts.items():
            if material is None:  # skin
                lut[part] = _radiance(SKIN_TEMPERATURE - 1.0)
            elif material == "hair":
                lut[part] = 0.95 * _radiance(air_temperature + 0.45 * (SKIN_TEMPERATURE - air_temperature))
            else:
                emissivity, insulation = MATERIALS[material]
                surface = air_temperature + (SKIN_TEMPERATURE - air_temperature) * (1 - insulation)
                lut[part] = emissivity * _radiance(surface) + (1 - emissivity) * _radiance(air_temperature)
        image = lut[label]
    return image, alpha


def thermal_to_grey(radiance: np.ndarray, air_temperature: float, gain: float = 1.0) -> np.ndarray:
    """Automatic-gain style mapping of radiance to [0, 1] around the scene's air temperature."""
    low = _radiance(air_temperature - 6.0)
    high = _radiance(SKIN_TEMPERATURE + 2.0)
    return np.clip((radiance - low) / (high - low) * gain, 0, 1)


def background(camera: CameraStyle, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A cluttered background: colour ``[H, W, 3]`` (visible) or radiance ``[H, W]`` (infrared)."""
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
    base = _radiance(camera.air_temperature + rng.normal(0, 1.0))
    image = np.full((height, width), base, np.float32)
    for _ in range(rng.integers(1, 5)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        temperature = camera.air_temperature + rng.normal(0, 6.0)
        cv2.rectangle(image, (int(x0), int(y0)), (int(x0 + rng.integers(4, width // 2)),
                      int(y0 + rng.integers(4, height // 2))), float(_radiance(temperature)), -1)
    return image


def finish(image: np.ndarray, camera: CameraStyle, rng: np.random.Generator) -> np.ndarray:
    """Camera effects (cast, brightness, blur, noise) and conversion to ``uint8`` RGB."""
    if camera.modality == VISIBLE:
        image = image * np.array(camera.cast, np.float32) * camera.brightness * rng.uniform(0.8, 1.2)
    else:
        image = np.repeat(thermal_to_grey(image, camera.air_temperature, rng.uniform(0.85, 1.15))[..., None], 3, 2)
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
    person, alpha = person_layers(identity, pose, camera.modality, camera.air_temperature, render_h, render_w)
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
    def make(cls, modalities: list[str], seed: int = 0) -> CameraSet:
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
            ))
        return cls(cameras)
