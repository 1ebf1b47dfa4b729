"""A synthetic pedestrian dataset written in the Market-1501 layout.

Nobody can download Market-1501 on an offline machine, so the demo, the tests and CI use
this generator instead. It writes the three folders of the Market-1501 release
(``bounding_box_train/``, ``query/``, ``bounding_box_test/``) with Market's exact file
names (``PPPP_cCsS_FFFFFF_DD.jpg``; ``0000_*`` distractors and ``-1_*`` junk in the gallery
folder only), so ``build_dataset("market1501", root)`` reads it like the real thing.

What makes it useful for re-ID rather than a toy:

* An identity is a combination of appearance attributes drawn from small palettes (upper
  clothing colour and pattern, lower clothing colour and type, skin, hair, body shape, bag,
  shoes), so many identities share most attributes: hard negatives, as in real data.
* A camera changes the background, colour cast, brightness/contrast, sharpness, resolution
  and the usual walking direction (front / back / side views: a backpack shows from the
  back, a chest logo from the front).
* Each image is one frame of a tracklet (walk phase, scale and position drift) plus crop
  jitter and occasional occlusion (an obstacle or a passer-by).

Raw-pixel matching therefore scores far below a learned model (see
``benchmarks/bench_synthetic.py``), while a person stays recognisable across cameras.

Determinism: every random draw comes from a generator seeded by
``SeedSequence([seed, kind, pid, camera, index])``, so the files do not depend on the
order in which images are rendered, nor on the number of worker processes, and the same
arguments give byte-identical JPEGs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = [
    "GENERATOR_VERSION",
    "JPEG_QUALITY",
    "MANIFEST_NAME",
    "SPLIT_FOLDERS",
    "make_synthetic_market",
    "market_name",
]

# Bump when the rendering changes, so a cached tree made by an older generator is not reused.
GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic.json"
_GENERATOR = "reid.data.synthetic"  # written in the manifest: marks a tree as ours
SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
JPEG_QUALITY = 90

# Seed-sequence domains: keep the random streams of the different uses apart.
_KIND_IDENTITY, _KIND_CAMERA, _KIND_PLAN, _KIND_PERSON, _KIND_DISTRACTOR, _KIND_JUNK = range(6)

# Market-1501 names hold 4-digit pids, cameras 1..6 (we allow up to 9: one digit),
# sequences 1..6, 6-digit frame numbers and 2-digit detection indices.
_MAX_PID = 9999
_MAX_CAMERAS = 9
_NUM_SEQUENCES = 6
_MAX_FRAME = 999_999


def market_name(pid: int, camera: int, sequence: int, frame: int, detection: int) -> str:
    """Market-1501 file name, e.g. ``market_name(2, 1, 1, 451, 3) == "0002_c1s1_000451_03.jpg"``.

    pid -1 (junk) is written ``-1`` as in the release; every other pid uses 4 digits.
    """
    pid_text = "-1" if pid == -1 else f"{pid:04d}"
    return f"{pid_text}_c{camera}s{sequence}_{frame:06d}_{detection:02d}.jpg"


# --------------------------------------------------------------------------------------
# Palettes. Colours are written as RGB for readability and stored as BGR for OpenCV.
# They are deliberately small so that identities share attributes (hard negatives).


def _bgr(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return (float(rgb[2]), float(rgb[1]), float(rgb[0]))


_UPPER_COLOURS = [_bgr(c) for c in [
    (28, 28, 32), (228, 228, 222), (125, 125, 128), (32, 42, 88), (52, 92, 172),
    (168, 32, 38), (42, 108, 62), (222, 188, 52), (222, 142, 170), (108, 70, 42),
    (200, 182, 142), (98, 52, 118), (222, 118, 42), (142, 182, 222),
]]
_LOWER_COLOURS = [_bgr(c) for c in [
    (26, 26, 30), (72, 72, 78), (56, 76, 118), (112, 140, 180), (178, 160, 118),
    (222, 222, 214), (96, 64, 40), (38, 50, 40),
]]
_SKIN_TONES = [_bgr(c) for c in [(240, 204, 176), (214, 164, 128), (170, 120, 86), (110, 74, 52)]]
_HAIR_COLOURS = [_bgr(c) for c in [(18, 16, 16), (62, 40, 26), (120, 84, 50), (206, 170, 104),
                                   (150, 150, 150)]]
_SHOE_COLOURS = [_bgr(c) for c in [(22, 22, 22), (232, 232, 232), (96, 62, 36), (110, 110, 116),
                                   (180, 40, 40)]]
_BAG_COLOURS = [_bgr(c) for c in [(24, 24, 24), (110, 70, 40), (160, 36, 40), (40, 60, 130),
                                  (120, 120, 120)]]
_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo")
_PATTERN_PROBS = (0.44, 0.16, 0.1, 0.12, 0.18)  # plain clothing dominates real crowds
_LOWER_TYPES = ("trousers", "shorts", "skirt")
_LOWER_TYPE_PROBS = (0.64, 0.2, 0.16)
_BAGS = ("none", "backpack", "shoulder", "handbag")
_BAG_PROBS = (0.4, 0.26, 0.2, 0.14)
_HEIGHTS = (0.9, 0.95, 1.0)
_WIDTHS = (0.86, 1.0, 1.16)

# Scene palettes for the cameras: walls/buildings, pavement, and street clutter.
_WALL_COLOURS = [_bgr(c) for c in [
    (150, 150, 146), (176, 160, 136), (110, 104, 100), (190, 186, 176), (120, 132, 140),
    (156, 120, 96), (88, 96, 86), (204, 200, 190),
]]
_GROUND_COLOURS = [_bgr(c) for c in [
    (120, 118, 114), (150, 140, 124), (90, 90, 92), (170, 166, 158), (112, 100, 86),
    (136, 130, 140),
]]
_CLUTTER_COLOURS = [_bgr(c) for c in [
    (40, 40, 44), (200, 200, 196), (60, 90, 140), (150, 60, 50), (70, 110, 70),
    (190, 170, 90), (100, 80, 60), (140, 150, 160),
]]
_BACKGROUND_STYLES = ("gradient", "tiles", "facade", "clutter")

# Views: which side of the person faces the camera.
_FRONT, _BACK, _LEFT, _RIGHT = range(4)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Appearance attributes of one person (colours are BGR floats)."""

    upper_colour: tuple[float, float, float]
    upper_secondary: tuple[float, float, float]
    pattern: str
    pattern_period: float  # stripe/check period as a fraction of body height
    short_sleeves: bool
    lower_colour: tuple[float, float, float]
    lower_type: str
    skin: tuple[float, float, float]
    hair_colour: tuple[float, float, float]
    long_hair: bool
    height: float
    width: float
    bag: str
    bag_colour: tuple[float, float, float]
    shoe_colour: tuple[float, float, float]
    logo_colour: tuple[float, float, float]
    logo_round: bool
    key: tuple[int, ...]  # the discrete attributes: two identities never share all of them


@dataclasses.dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes."""

    wall: tuple[float, float, float]
    ground: tuple[float, float, float]
    horizon: float  # fraction of image height where the wall meets the ground
    style: str
    clutter: tuple[tuple[float, float, float], ...]
    gains: tuple[float, float, float]  # per-channel colour cast (BGR)
    brightness: float
    contrast: float
    blur: float  # Gaussian sigma in pixels at 128x64
    resolution: float  # < 1: the detection was smaller and upscaled, as in Market
    noise: float
    view_probs: tuple[float, float, float, float]
    light_side: float  # horizontal lighting gradient strength
    scale: float
    occlusion_prob: float


@dataclasses.dataclass(frozen=True)
class _Track:
    """One walk of one person through one camera (Market crops are tracklet frames)."""

    identity: Identity
    view: int
    scale0: float
    scale_step: float
    cx0: float
    cx_step: float
    top0: float
    phase0: float
    phase_step: float


@dataclasses.dataclass(frozen=True)
class _Job:
    folder: str
    name: str
    kind: int
    pid: int
    camera: int  # 1-based, as in the file name
    index: int
    track: _Track | None


# --------------------------------------------------------------------------------------
# Random attribute draws


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _jitter(rng: np.random.Generator, colour: Sequence[float], sigma: float) -> tuple[float, float, float]:
    out = np.clip(np.asarray(colour) + rng.normal(0.0, sigma, 3), 0, 255)
    return (float(out[0]), float(out[1]), float(out[2]))


def _sample_identity(rng: np.random.Generator) -> Identity:
    upper = int(rng.integers(len(_UPPER_COLOURS)))
    secondary = int((upper + rng.integers(1, len(_UPPER_COLOURS))) % len(_UPPER_COLOURS))
    pattern = int(rng.choice(len(_PATTERNS), p=_PATTERN_PROBS))
    short_sleeves = bool(rng.random() < 0.3)
    lower = int(rng.integers(len(_LOWER_COLOURS)))
    lower_type = int(rng.choice(len(_LOWER_TYPES), p=_LOWER_TYPE_PROBS))
    skin = int(rng.integers(len(_SKIN_TONES)))
    hair = int(rng.integers(len(_HAIR_COLOURS)))
    long_hair = bool(rng.random() < 0.35)
    height = int(rng.integers(len(_HEIGHTS)))
    width = int(rng.integers(len(_WIDTHS)))
    bag = int(rng.choice(len(_BAGS), p=_BAG_PROBS))
    bag_colour = int(rng.integers(len(_BAG_COLOURS)))
    shoe = int(rng.integers(len(_SHOE_COLOURS)))
    logo_colour = int(rng.integers(len(_UPPER_COLOURS)))
    logo_round = bool(rng.random() < 0.5)
    period = float(rng.uniform(0.045, 0.075))
    has_second = _PATTERNS[pattern] != "plain"
    key = (upper, secondary if has_second else -1, pattern, int(short_sleeves), lower, lower_type,
           skin, hair, int(long_hair), height, width, bag, bag_colour if bag else -1, shoe,
           logo_colour if _PATTERNS[pattern] == "logo" else -1)
    # A small per-person shift of every colour: two people rarely wear the exact same shade.
    return Identity(
        upper_colour=_jitter(rng, _UPPER_COLOURS[upper], 7.0),
        upper_secondary=_jitter(rng, _UPPER_COLOURS[secondary], 7.0),
        pattern=_PATTERNS[pattern],
        pattern_period=period,
        short_sleeves=short_sleeves,
        lower_colour=_jitter(rng, _LOWER_COLOURS[lower], 6.0),
        lower_type=_LOWER_TYPES[lower_type],
        skin=_jitter(rng, _SKIN_TONES[skin], 5.0),
        hair_colour=_jitter(rng, _HAIR_COLOURS[hair], 5.0),
        long_hair=long_hair,
        height=_HEIGHTS[height] * float(rng.uniform(0.985, 1.015)),
        width=_WIDTHS[width] * float(rng.uniform(0.97, 1.03)),
        bag=_BAGS[bag],
        bag_colour=_jitter(rng, _BAG_COLOURS[bag_colour], 6.0),
        shoe_colour=_jitter(rng, _SHOE_COLOURS[shoe], 6.0),
        logo_colour=_jitter(rng, _UPPER_COLOURS[logo_colour], 6.0),
        logo_round=logo_round,
        key=key,
    )


def _make_identities(seed: int, pids: Sequence[int]) -> dict[int, Identity]:
    """One identity per pid; redraw (from the same pid's stream) on a full attribute clash."""
    identities: dict[int, Identity] = {}
    taken: set[tuple[int, ...]] = set()
    for pid in sorted(pids):
        rng = _rng(seed, _KIND_IDENTITY, pid)
        identity = _sample_identity(rng)
        while identity.key in taken:
            identity = _sample_identity(rng)
        taken.add(identity.key)
        identities[pid] = identity
    return identities


def _make_camera(seed: int, camera: int) -> Camera:
    rng = _rng(seed, _KIND_CAMERA, camera)
    # Each camera mostly sees people walk one way (towards it, away from it or across).
    dominant = int(rng.integers(4))
    view_probs = np.full(4, 0.14)
    view_probs[dominant] = 0.58
    probs = view_probs / view_probs.sum()
    gains = rng.uniform(0.87, 1.13, 3)
    gains = gains / gains.mean() * rng.uniform(0.95, 1.05)
    clutter_idx = rng.choice(len(_CLUTTER_COLOURS), 3, replace=False)
    return Camera(
        wall=_jitter(rng, _WALL_COLOURS[int(rng.integers(len(_WALL_COLOURS)))], 10.0),
        ground=_jitter(rng, _GROUND_COLOURS[int(rng.integers(len(_GROUND_COLOURS)))], 10.0),
        horizon=float(rng.uniform(0.35, 0.75)),
        style=_BACKGROUND_STYLES[int(rng.integers(len(_BACKGROUND_STYLES)))],
        clutter=tuple(_CLUTTER_COLOURS[int(i)] for i in clutter_idx),
        gains=(float(gains[0]), float(gains[1]), float(gains[2])),
        brightness=float(rng.uniform(-28, 22)),
        contrast=float(rng.uniform(0.7, 1.1)),
        blur=float(rng.uniform(0.3, 1.3)),
        resolution=float(rng.uniform(0.45, 1.0)),
        noise=float(rng.uniform(2.0, 6.0)),
        view_probs=(float(probs[0]), float(probs[1]), float(probs[2]), float(probs[3])),
        light_side=float(rng.uniform(-0.35, 0.35)),
        scale=float(rng.uniform(0.95, 1.03)),
        occlusion_prob=float(rng.uniform(0.06, 0.2)),
    )


# --------------------------------------------------------------------------------------
# Drawing primitives (OpenCV anti-aliased fills with sub-pixel coordinates)

_SHIFT = 4
_ONE = float(1 << _SHIFT)
# Unit half-circle for the round ends of limbs (angles -90..90 degrees), as Python floats:
# for 14-point polygons plain arithmetic is faster than numpy.
_CAP = [(math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, math.pi / 2, 7).tolist()]


def _fixed(points: Any) -> np.ndarray:
    return np.rint(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32)


def _poly(img: np.ndarray, points: Any, colour: tuple[float, ...]) -> None:
    cv2.fillPoly(img, [_fixed(points)], colour, cv2.LINE_AA, _SHIFT)


def _ellipse(img: np.ndarray, centre: Sequence[float], axes: Sequence[float],
             colour: tuple[float, ...], angle: float = 0.0) -> None:
    c = (int(round(centre[0] * _ONE)), int(round(centre[1] * _ONE)))
    a = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(img, c, a, angle, 0, 360, colour, -1, cv2.LINE_AA, _SHIFT)


def _capsule(img: np.ndarray, p0: Sequence[float], p1: Sequence[float], r0: float, r1: float,
             colour: tuple[float, ...]) -> None:
    """A tapered limb: one polygon with round ends (no seams between parts)."""
    x0, y0, x1, y1 = p0[0] * _ONE, p0[1] * _ONE, p1[0] * _ONE, p1[1] * _ONE
    length = math.hypot(x1 - x0, y1 - y0) or 1e-6
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    # Points at angle a from the limb direction u, towards its normal v = (-uy, ux).
    pts = [(round(x1 + r1 * _ONE * (c * ux - s * uy)), round(y1 + r1 * _ONE * (c * uy + s * ux)))
           for c, s in _CAP]
    pts += [(round(x0 - r0 * _ONE * (c * ux - s * uy)), round(y0 - r0 * _ONE * (c * uy + s * ux)))
            for c, s in _CAP]
    cv2.fillPoly(img, [np.array(pts, np.int32)], colour, cv2.LINE_AA, _SHIFT)


def _shade(colour: Sequence[float], factor: float) -> tuple[float, float, float]:
    return (min(255.0, colour[0] * factor), min(255.0, colour[1] * factor),
            min(255.0, colour[2] * factor))


# --------------------------------------------------------------------------------------
# The pedestrian


def _draw_pattern(img: np.ndarray, polygon: np.ndarray, person: Identity, body: float,
                  top: float, cx: float, view: int) -> None:
    """Overlay the secondary colour of a striped/checked top, clipped to the torso polygon."""
    h, w = img.shape[:2]
    x0 = max(0, int(polygon[:, 0].min()) - 1)
    x1 = min(w, int(math.ceil(polygon[:, 0].max())) + 2)
    y0 = max(0, int(polygon[:, 1].min()) - 1)
    y1 = min(h, int(math.ceil(polygon[:, 1].max())) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [_fixed(polygon - (x0, y0))], 255, cv2.LINE_AA, _SHIFT)
    period = max(2.0, person.pattern_period * body)
    ys = (np.arange(y0, y1, dtype=np.float32) - top)[:, None] / period
    xs = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :] / period
    if view in (_LEFT, _RIGHT):
        xs = xs * 0.6  # foreshortened torso seen from the side
    if person.pattern == "hstripes":
        on = (np.floor(ys * 2.0) % 2 == 0) & np.ones_like(xs, bool)
    elif person.pattern == "vstripes":
        on = (np.floor(xs * 2.0 + 0.5) % 2 == 0) & np.ones_like(ys, bool)
    else:  # checks
        on = (np.floor(ys * 1.5) + np.floor(xs * 1.5 + 0.5)) % 2 == 0
    alpha = (mask.astype(np.float32) * (1.0 / 255.0)) * on
    region = img[y0:y1, x0:x1].astype(np.float32)
    secondary = np.asarray(person.upper_secondary, np.float32)
    region += alpha[..., None] * (secondary - region)
    img[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def _draw_person(img: np.ndarray, person: Identity, cx: float, top: float, height: float,
                 view: int, phase: float) -> None:
    """Draw one pedestrian whose head top is at ``top`` and feet ``height`` pixels lower.

    Proportions follow the usual figure canon (head ~ 1/7.5 of the body, hips at half height).
    """
    h = height * person.height
    top = top + (height - h)  # shorter people stand on the same ground line
    bw = person.width
    side = view in (_LEFT, _RIGHT)
    facing = -1.0 if view == _LEFT else 1.0
    swing = math.sin(phase)

    def y(f: float) -> float:
        return top + f * h

    shoulder_y, waist_y, hip_y, ankle_y = y(0.165), y(0.47), y(0.52), y(0.955)
    sw = (0.078 if side else 0.13) * h * bw  # half shoulder width
    hw = (0.075 if side else 0.102) * h * bw  # half hip width
    thigh, ankle = 0.047 * h * bw, 0.027 * h * bw
    upper, lower, skin = person.upper_colour, person.lower_colour, person.skin
    bare_legs = person.lower_type != "trousers"

    # Legs: feet positions from the walk cycle.
    if side:
        leg_len = ankle_y - hip_y
        legs = []
        for sign, dim in ((-1.0, 0.82), (1.0, 1.0)):  # far leg first, darker
            theta = 0.42 * swing * sign
            foot = (cx + facing * math.sin(theta) * leg_len, hip_y + math.cos(theta) * leg_len)
            legs.append(((cx, hip_y), foot, dim))
    else:
        spread = 0.05 * h * bw
        lift_a, lift_b = 0.035 * h * max(0.0, swing), 0.035 * h * max(0.0, -swing)
        legs = [((cx - spread * 0.9, hip_y), (cx - spread - 0.004 * h, ankle_y - lift_a), 1.0),
                ((cx + spread * 0.9, hip_y), (cx + spread + 0.004 * h, ankle_y - lift_b), 1.0)]

    # Backpack seen from the side sticks out behind the torso: draw it first.
    if person.bag == "backpack" and side:
        bx = cx - facing * sw
        pts = np.array([(bx, y(0.19)), (bx - facing * 0.085 * h, y(0.2)),
                        (bx - facing * 0.09 * h, y(0.43)), (bx, y(0.44))])
        _poly(img, pts, person.bag_colour)

    # Far arm in side view, behind the body.
    arm_len = 0.34 * h
    arm_r0, arm_r1 = 0.033 * h * bw, 0.023 * h * bw
    if side:
        theta = -0.5 * swing
        hand = (cx + facing * math.sin(theta) * arm_len, shoulder_y + 0.015 * h + math.cos(theta) * arm_len)
        _draw_arm(img, person, (cx, shoulder_y + 0.015 * h), hand, arm_r0, arm_r1, 0.8)

    for hip, foot, dim in legs:
        leg_colour = _shade(skin if bare_legs else lower, dim)
        _capsule(img, hip, foot, thigh, ankle, leg_colour)
        if person.lower_type == "shorts":
            knee = (hip[0] + (foot[0] - hip[0]) * 0.4, hip[1] + (foot[1] - hip[1]) * 0.4)
            _capsule(img, hip, knee, thigh * 1.12, thigh * 1.02, _shade(lower, dim))
        shoe_dx = facing * 0.02 * h if side else 0.0
        _ellipse(img, (foot[0] + shoe_dx, foot[1] + 0.012 * h),
                 (0.042 * h if side else 0.03 * h, 0.018 * h), _shade(person.shoe_colour, dim))

    if person.lower_type != "skirt":
        _poly(img, np.array([(cx - hw, waist_y), (cx + hw, waist_y), (cx + hw * 0.96, y(0.585)),
                             (cx - hw * 0.96, y(0.585))]), lower)

    # Torso: shoulders slightly rounded.
    torso = np.array([
        (cx - sw * 0.72, shoulder_y - 0.012 * h), (cx + sw * 0.72, shoulder_y - 0.012 * h),
        (cx + sw, shoulder_y + 0.02 * h), (cx + hw * 1.02, hip_y), (cx - hw * 1.02, hip_y),
        (cx - sw, shoulder_y + 0.02 * h),
    ])
    _poly(img, torso, upper)
    if person.pattern in ("hstripes", "vstripes", "checks"):
        _draw_pattern(img, torso, person, h, top, cx, view)
    elif person.pattern == "logo" and view == _FRONT:
        centre = (cx, y(0.29))
        if person.logo_round:
            _ellipse(img, centre, (0.038 * h, 0.038 * h), person.logo_colour)
        else:
            s = 0.036 * h
            _poly(img, np.array([(cx - s, centre[1] - s), (cx + s, centre[1] - s),
                                 (cx + s, centre[1] + s), (cx - s, centre[1] + s)]), person.logo_colour)

    if person.lower_type == "skirt":
        _poly(img, np.array([(cx - hw, waist_y), (cx + hw, waist_y), (cx + hw * 1.38, y(0.68)),
                             (cx - hw * 1.38, y(0.68))]), lower)

    _draw_bag_front(img, person, cx, y, sw, hw, view)

    # Near arms.
    if side:
        theta = 0.5 * swing
        hand = (cx + facing * math.sin(theta) * arm_len, shoulder_y + 0.015 * h + math.cos(theta) * arm_len)
        hands = [_draw_arm(img, person, (cx, shoulder_y + 0.015 * h), hand, arm_r0, arm_r1, 1.0)]
    else:
        hands = []
        for sign, lift in ((-1.0, max(0.0, swing)), (1.0, max(0.0, -swing))):
            shoulder = (cx + sign * (sw - arm_r0 * 0.8), shoulder_y + 0.02 * h)
            hand = (shoulder[0] + sign * 0.035 * h, shoulder[1] + arm_len * (1.0 - 0.1 * lift))
            hands.append(_draw_arm(img, person, shoulder, hand, arm_r0, arm_r1, 1.0))
    if person.bag == "handbag":
        hx, hy = hands[-1]
        bag_w, bag_h = 0.055 * h, 0.085 * h
        _poly(img, np.array([(hx - bag_w, hy + 0.01 * h), (hx + bag_w, hy + 0.01 * h),
                             (hx + bag_w * 1.1, hy + bag_h), (hx - bag_w * 1.1, hy + bag_h)]),
              person.bag_colour)

    _draw_head(img, person, cx, y, h, view, facing)


def _draw_arm(img: np.ndarray, person: Identity, shoulder: tuple[float, float],
              hand: tuple[float, float], r0: float, r1: float, dim: float) -> tuple[float, float]:
    skin = _shade(person.skin, dim)
    sleeve = _shade(person.upper_colour, dim)
    if person.short_sleeves:
        _capsule(img, shoulder, hand, r0 * 0.85, r1, skin)
        elbow = (shoulder[0] + (hand[0] - shoulder[0]) * 0.38, shoulder[1] + (hand[1] - shoulder[1]) * 0.38)
        _capsule(img, shoulder, elbow, r0 * 1.05, r0 * 0.95, sleeve)
    else:
        _capsule(img, shoulder, hand, r0, r1, sleeve)
    _ellipse(img, hand, (r1 * 1.05, r1 * 1.2), skin)
    return hand


def _draw_bag_front(img: np.ndarray, person: Identity, cx: float, y: Any, sw: float, hw: float,
                    view: int) -> None:
    """Bags and straps that lie over the torso (the side-view backpack is drawn earlier)."""
    colour = person.bag_colour
    strap = max(1.0, 0.012 * (y(1.0) - y(0.0)))
    if person.bag == "backpack":
        if view == _BACK:  # the pack itself covers the back
            bw = sw * 0.78
            _poly(img, np.array([(cx - bw * 0.9, y(0.185)), (cx + bw * 0.9, y(0.185)),
                                 (cx + bw, y(0.23)), (cx + bw, y(0.44)), (cx - bw, y(0.44)),
                                 (cx - bw, y(0.23))]), colour)
        elif view == _FRONT:  # only the two straps show
            for sign in (-1.0, 1.0):
                x = cx + sign * sw * 0.55
                _capsule(img, (x, y(0.17)), (x + sign * sw * 0.12, y(0.34)), strap, strap, colour)
        else:
            _capsule(img, (cx, y(0.17)), (cx, y(0.34)), strap, strap, colour)
    elif person.bag == "shoulder":
        if view in (_FRONT, _BACK):
            _capsule(img, (cx - sw * 0.6, y(0.17)), (cx + hw * 0.9, y(0.48)), strap, strap, colour)
            bx = cx + hw * 1.05
        else:
            _capsule(img, (cx, y(0.17)), (cx, y(0.46)), strap, strap, colour)
            bx = cx
        size = y(0.1) - y(0.0)
        _poly(img, np.array([(bx - size * 0.5, y(0.45)), (bx + size * 0.5, y(0.45)),
                             (bx + size * 0.55, y(0.56)), (bx - size * 0.55, y(0.56))]), colour)


def _draw_head(img: np.ndarray, person: Identity, cx: float, y: Any, h: float, view: int,
               facing: float) -> None:
    head_c = (cx, y(0.07))
    rx, ry = 0.047 * h, 0.06 * h
    hair = person.hair_colour
    # Neck.
    _capsule(img, (cx, y(0.11)), (cx, y(0.165)), 0.022 * h, 0.024 * h, person.skin)
    if view == _BACK:
        if person.long_hair:
            _poly(img, np.array([(cx - rx * 1.1, y(0.07)), (cx + rx * 1.1, y(0.07)),
                                 (cx + rx * 1.25, y(0.25)), (cx - rx * 1.25, y(0.25))]), hair)
        _ellipse(img, head_c, (rx * 1.03, ry * 1.0), hair)
    elif view == _FRONT:
        if person.long_hair:
            _poly(img, np.array([(cx - rx * 1.12, y(0.06)), (cx + rx * 1.12, y(0.06)),
                                 (cx + rx * 1.3, y(0.2)), (cx - rx * 1.3, y(0.2))]), hair)
        _ellipse(img, (cx, head_c[1] - 0.008 * h), (rx * 1.05, ry * 0.96), hair)
        _ellipse(img, (cx, head_c[1] + 0.01 * h), (rx * 0.9, ry * 0.82), person.skin)
    else:
        back = cx - facing * rx * 0.35
        if person.long_hair:
            _poly(img, np.array([(back - facing * rx * 0.2, y(0.06)), (back - facing * rx * 1.0, y(0.06)),
                                 (back - facing * rx * 1.15, y(0.22)), (back, y(0.22))]), hair)
        _ellipse(img, (cx + facing * rx * 0.12, head_c[1] + 0.005 * h), (rx * 0.95, ry * 0.9), person.skin)
        _ellipse(img, (back, head_c[1] - 0.01 * h), (rx * 0.85, ry * 0.86), hair)


# --------------------------------------------------------------------------------------
# Camera: background and image formation


@functools.lru_cache(maxsize=8)
def _row_positions(height: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]


@functools.lru_cache(maxsize=8)
def _column_positions(width: int) -> np.ndarray:
    return np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :, None]


@functools.lru_cache(maxsize=8)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """Fixed Gaussian noise, twice the image size: each image takes a random window of it.

    Drawing 3*H*W normals per image costs more than all the drawing; a window of a fixed
    bank looks the same and stays deterministic (the bank never depends on the arguments).
    """
    rng = np.random.default_rng(np.random.SeedSequence([2015, 9, 15]))
    return rng.standard_normal((2 * height, 2 * width, 3), dtype=np.float32)


def _background(camera: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A street-like backdrop: wall over ground plus camera-specific structure and clutter."""
    horizon = camera.horizon + rng.normal(0.0, 0.04)
    ys = _row_positions(height)
    t = np.clip((ys - horizon) * (1.0 / 0.06) + 0.5, 0.0, 1.0)[:, :, None]
    wall = np.asarray(camera.wall, np.float32)
    ground = np.asarray(camera.ground, np.float32)
    # Ground lightens towards the bottom, the wall darkens towards the top.
    column = (wall * (0.88 + 0.12 * ys[:, :, None])) * (1 - t) + (ground * (0.92 + 0.16 * ys[:, :, None])) * t
    # Low-frequency texture (stains, shadows) on top of the wall/ground column.
    coarse = rng.normal(0.0, 9.0, (max(2, height // 12), max(2, width // 12), 3)).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    img = np.clip(texture + column, 0, 255).astype(np.uint8)
    y_h = int(horizon * height)
    if camera.style == "tiles":
        line = _shade(camera.ground, 0.78)
        step = rng.uniform(0.08, 0.14) * height
        yy = y_h + rng.uniform(0, step)
        while yy < height:
            cv2.line(img, (0, int(yy)), (width - 1, int(yy)), line, 1)
            yy += step
            step *= 1.25  # perspective: tiles grow towards the camera
        x = rng.uniform(0, width / 3)
        while x < width:
            cv2.line(img, (int(x), y_h), (int(x + (x - width / 2) * 0.8), height - 1), line, 1)
            x += width / 3
    elif camera.style == "facade":
        window = _shade(camera.wall, 0.6)
        cols = int(rng.integers(2, 4))
        gap = width / cols
        x0 = rng.uniform(-gap / 2, 0)
        for i in range(cols + 1):
            xl = x0 + i * gap + gap * 0.2
            for yt in np.arange(rng.uniform(-0.2, 0.0) * height, y_h - 0.12 * height, 0.22 * height):
                cv2.rectangle(img, (int(xl), int(yt)), (int(xl + gap * 0.55), int(yt + 0.14 * height)),
                              window, -1)
    elif camera.style == "clutter":
        for _ in range(int(rng.integers(2, 4))):  # poles, signs, parked bikes: vertical shapes
            x = rng.uniform(-0.1, 1.0) * width
            wdt = rng.uniform(0.05, 0.2) * width
            yt = rng.uniform(0.0, 0.6) * height
            colour = camera.clutter[int(rng.integers(len(camera.clutter)))]
            cv2.rectangle(img, (int(x), int(yt)), (int(x + wdt), int(yt + rng.uniform(0.2, 0.7) * height)),
                          _jitter(rng, colour, 12.0), -1)
    # Every camera: up to two scene objects at random places (per image: the crop moves).
    for _ in range(int(rng.integers(0, 3))):
        colour = camera.clutter[int(rng.integers(len(camera.clutter)))]
        x = rng.uniform(-0.2, 1.0) * width
        yt = rng.uniform(0.0, 0.8) * height
        cv2.rectangle(img, (int(x), int(yt)),
                      (int(x + rng.uniform(0.1, 0.4) * width), int(yt + rng.uniform(0.1, 0.35) * height)),
                      _jitter(rng, colour, 15.0), -1)
    return img


def _occlude(img: np.ndarray, camera: Camera, rng: np.random.Generator) -> None:
    """Occasional occlusion: an obstacle at the bottom/side or a passer-by at the edge."""
    height, width = img.shape[:2]
    kind = int(rng.integers(3))
    colour = _jitter(rng, camera.clutter[int(rng.integers(len(camera.clutter)))], 15.0)
    if kind == 0:  # bench / car / railing in front of the legs
        yt = int(height * rng.uniform(0.62, 0.85))
        cv2.rectangle(img, (0, yt), (width - 1, height - 1), colour, -1)
    elif kind == 1:  # pole, pillar or door frame at one side
        wdt = int(width * rng.uniform(0.15, 0.32))
        x0 = 0 if rng.random() < 0.5 else width - wdt
        cv2.rectangle(img, (x0, 0), (x0 + wdt, height - 1), colour, -1)
    else:  # another pedestrian half in the crop
        other = _sample_identity(rng)
        cx = width * (rng.uniform(-0.15, 0.05) if rng.random() < 0.5 else rng.uniform(0.95, 1.15))
        size = height * rng.uniform(0.8, 1.0)
        _draw_person(img, other, cx, height * rng.uniform(-0.02, 0.1), size, int(rng.integers(4)),
                     rng.uniform(0, 2 * math.pi))


def _camera_effects(img: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Lighting, colour cast, contrast/brightness, resolution loss, blur and noise of one camera."""
    height, width = img.shape[:2]
    # One affine map per pixel: ((x - 128) * contrast + 128 + brightness) * light * gain.
    light = 1.0 + np.float32(camera.light_side + rng.normal(0, 0.05)) * _column_positions(width)
    gain = light * (np.asarray(camera.gains, np.float32) * np.float32(rng.uniform(0.93, 1.07)))
    contrast = np.float32(camera.contrast * rng.uniform(0.95, 1.05))
    offset = np.float32(128.0 + camera.brightness + rng.normal(0, 5)) - 128.0 * contrast
    out = img * (gain * contrast)
    out += gain * offset
    if camera.resolution < 0.95:  # the detection was small and got upscaled, as in Market
        small = (max(8, int(width * camera.resolution)), max(16, int(height * camera.resolution)))
        out = cv2.resize(cv2.resize(out, small, interpolation=cv2.INTER_AREA), (width, height),
                         interpolation=cv2.INTER_LINEAR)
    sigma = (camera.blur + rng.normal(0, 0.15)) * height / 128.0
    if sigma > 0.2:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    oy, ox = int(rng.integers(height)), int(rng.integers(width))
    noise = _noise_bank(height, width)[oy:oy + height, ox:ox + width]
    out += noise * np.float32(camera.noise)
    return np.clip(out, 0, 255).astype(np.uint8)


def _render(job: _Job, camera: Camera, seed: int, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    pid_key = job.pid if job.kind == _KIND_PERSON else 0
    rng = _rng(seed, job.kind, pid_key, job.camera, job.index)
    img = _background(camera, rng, height, width)
    if job.kind == _KIND_PERSON:
        assert job.track is not None
        track = job.track
        i = job.index
        body = height * camera.scale * (track.scale0 + track.scale_step * i) * rng.uniform(0.97, 1.03)
        cx = width * (0.5 + track.cx0 + track.cx_step * i + rng.normal(0, 0.035))
        top = height * (track.top0 + rng.normal(0, 0.02))
        phase = track.phase0 + track.phase_step * i + rng.normal(0, 0.3)
        view = track.view if rng.random() > 0.08 else int(rng.integers(4))  # people turn
        _draw_person(img, track.identity, cx, top, body, view, phase)
        if rng.random() < camera.occlusion_prob:
            _occlude(img, camera, rng)
    elif job.kind == _KIND_DISTRACTOR:
        # Market's "0000" images are false detections: background or a fragment of a body.
        if rng.random() < 0.55:
            zoom = rng.uniform(1.4, 2.6)
            body = height * zoom
            top = -rng.uniform(0.0, body - 0.6 * height)
            _draw_person(img, _sample_identity(rng), width * rng.uniform(0.3, 0.7), top, body,
                         int(rng.integers(4)), rng.uniform(0, 2 * math.pi))
        elif rng.random() < 0.5:
            _occlude(img, camera, rng)
    else:
        # Junk ("-1"): detections that overlap a person too little to count either way.
        body = height * rng.uniform(0.7, 1.1)
        cx = width * (rng.uniform(-0.25, 0.05) if rng.random() < 0.5 else rng.uniform(0.95, 1.25))
        _draw_person(img, _sample_identity(rng), cx, height * rng.uniform(-0.1, 0.2), body,
                     int(rng.integers(4)), rng.uniform(0, 2 * math.pi))
    return _camera_effects(img, camera, rng)


# --------------------------------------------------------------------------------------
# Planning: which images exist and what they are called


def _plan(seed: int, train_pids: Sequence[int], test_pids: Sequence[int], cameras: Sequence[Camera],
          identities: dict[int, Identity], cameras_per_id: tuple[int, int],
          images_per_camera: tuple[int, int], queries_per_camera: int, num_distractors: int,
          num_junk: int) -> list[_Job]:
    num_cameras = len(cameras)
    test_set = set(test_pids)
    jobs: list[_Job] = []
    for pid in sorted([*train_pids, *test_pids]):
        rng = _rng(seed, _KIND_PLAN, pid)
        lo, hi = cameras_per_id[0], min(cameras_per_id[1], num_cameras)
        k = int(rng.integers(lo, hi + 1))
        chosen = sorted(int(c) + 1 for c in rng.choice(num_cameras, k, replace=False))
        for cam in chosen:
            camera = cameras[cam - 1]
            n = int(rng.integers(images_per_camera[0], images_per_camera[1] + 1))
            track = _Track(
                identity=identities[pid],
                view=int(rng.choice(4, p=camera.view_probs)),
                scale0=float(rng.uniform(0.84, 0.95)),
                scale_step=float(rng.uniform(-0.01, 0.01)),
                cx0=float(rng.normal(0, 0.05)),
                cx_step=float(rng.normal(0, 0.015)),
                top0=float(rng.uniform(0.01, 0.07)),
                phase0=float(rng.uniform(0, 2 * math.pi)),
                phase_step=float(rng.uniform(0.6, 1.6)),
            )
            sequence = int(rng.integers(1, _NUM_SEQUENCES + 1))
            step = int(rng.integers(4, 30))
            frame0 = int(rng.integers(0, _MAX_FRAME - step * n))
            detections = rng.integers(1, 9, n)
            query_idx = set(rng.choice(n, queries_per_camera, replace=False).tolist()) if pid in test_set else set()
            for i in range(n):
                folder = ("query" if i in query_idx else "bounding_box_test") if pid in test_set \
                    else "bounding_box_train"
                name = market_name(pid, cam, sequence, frame0 + i * step, int(detections[i]))
                jobs.append(_Job(folder, name, _KIND_PERSON, pid, cam, i, track))
    # Distractors and junk: unique frame numbers by construction (index-based).
    for kind, count, pid in ((_KIND_DISTRACTOR, num_distractors, 0), (_KIND_JUNK, num_junk, -1)):
        rng = _rng(seed, _KIND_PLAN, 0, kind)
        cams = rng.integers(1, num_cameras + 1, count)
        seqs = rng.integers(1, _NUM_SEQUENCES + 1, count)
        dets = rng.integers(1, 9, count)
        for i in range(count):
            frame = 1 + i * 9 + int(rng.integers(0, 9))
            name = market_name(pid, int(cams[i]), int(seqs[i]), frame, int(dets[i]))
            jobs.append(_Job("bounding_box_test", name, kind, pid, int(cams[i]), i, None))
    # Unique names by construction (strictly increasing frames per tracklet, index-based
    # frames for distractors/junk); a clash would silently overwrite an image.
    assert len({(job.folder, job.name) for job in jobs}) == len(jobs), "duplicate synthetic file names"
    return jobs


def _write_jobs(root: str, jobs: Sequence[_Job], cameras: Sequence[Camera], seed: int,
                size: tuple[int, int]) -> int:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    for job in jobs:
        img = _render(job, cameras[job.camera - 1], seed, size)
        path = os.path.join(root, job.folder, job.name)
        if not cv2.imwrite(path, img, params):
            raise OSError(f"could not write the synthetic image {path!r} (is the folder writable?)")
    return len(jobs)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core; nested threads only contend


# --------------------------------------------------------------------------------------
# Public entry point


def _check_range(name: str, value: Sequence[int], low: int) -> tuple[int, int]:
    if len(value) != 2 or int(value[0]) < low or int(value[1]) < int(value[0]):
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max, got {tuple(value)!r}")
    return int(value[0]), int(value[1])


def _arguments(**kwargs: Any) -> dict[str, Any]:
    """The arguments that decide the output, in the JSON form stored in the manifest."""
    return json.loads(json.dumps(kwargs))


def _existing_files(root: Path) -> int:
    return sum(len(os.listdir(root / f)) for f in SPLIT_FOLDERS if (root / f).is_dir())


def _is_complete(root: Path, manifest: dict[str, Any]) -> bool:
    if manifest.get("complete") is not True:
        return False
    try:
        expected = {folder: int(manifest["counts"][folder]["images"]) for folder in SPLIT_FOLDERS}
    except (KeyError, TypeError, ValueError):
        return False
    return all((root / f).is_dir() and len(os.listdir(root / f)) == n for f, n in expected.items())


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's content, or {} when there is none or it is not a JSON object."""
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return content if isinstance(content, dict) else {}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} (on disk) != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs) or "none (the tree is incomplete)"


def _counts(jobs: Sequence[_Job]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for folder in SPLIT_FOLDERS:
        in_folder = [j for j in jobs if j.folder == folder]
        people = {j.pid for j in in_folder if j.kind == _KIND_PERSON}
        counts[folder] = {
            "images": len(in_folder),
            "identities": len(people),
            "cameras": len({j.camera for j in in_folder}),
            "distractors": sum(j.kind == _KIND_DISTRACTOR for j in in_folder),
            "junk": sum(j.kind == _KIND_JUNK for j in in_folder),
        }
    return counts


def make_synthetic_market(
    root: str | os.PathLike[str],
    num_train_ids: int = 100,
    num_test_ids: int = 100,
    num_cameras: int = 6,
    image_size: tuple[int, int] = (128, 64),
    seed: int = 0,
    *,
    cameras_per_id: tuple[int, int] = (2, 6),
    images_per_camera: tuple[int, int] = (2, 6),
    queries_per_camera: int = 1,
    num_distractors: int = 100,
    num_junk: int = 50,
    overwrite: bool = False,
    workers: int = 1,
) -> Path:
    """Write a synthetic re-ID dataset in the Market-1501 layout into ``root``; return ``Path(root)``.

    Args:
        root: the dataset folder; ``bounding_box_train/``, ``query/`` and
            ``bounding_box_test/`` are created directly inside it, next to a manifest
            ``synthetic.json`` (the arguments and the counts per split).
        num_train_ids: identities in ``bounding_box_train`` (pids 1, 3, 5, ...: odd).
        num_test_ids: identities in ``query`` + ``bounding_box_test`` (pids 2, 4, 6, ...: even),
            disjoint from the training identities as in Market-1501.
        num_cameras: 2..9 (Market has 6; the file name has one digit for the camera).
        image_size: (height, width) of every crop; Market's is (128, 64).
        seed: the same seed and arguments give byte-identical files.
        cameras_per_id: (min, max) cameras in which an identity appears (max is clipped to
            ``num_cameras``); min >= 2 so that every query has a cross-camera match.
        images_per_camera: (min, max) frames of one identity in one camera (one tracklet).
        queries_per_camera: query images taken from each (test identity, camera) tracklet,
            as Market does; the rest go to the gallery, so every camera of a test identity
            keeps a gallery image and every query has a match in another camera.
        num_distractors: ``0000_*`` gallery images (false detections: background or a
            body fragment).
        num_junk: ``-1_*`` gallery images (bad detections; loaders drop them).
        overwrite: replace an existing tree made with other arguments (or by someone else)
            instead of raising; it also forces regeneration of an identical tree.
        workers: processes used to render; the output does not depend on it.

    A complete tree written with the same arguments is returned at once without rewriting
    (the manifest is written last, so an interrupted run is regenerated). Files outside
    the three split folders and the manifest are never touched.
    """
    height, width = (int(image_size[0]), int(image_size[1]))
    if height < 32 or width < 16:
        raise ValueError(f"image_size must be (height, width) with height >= 32 and width >= 16, got {image_size!r}")
    if not 2 <= num_cameras <= _MAX_CAMERAS:
        raise ValueError(f"num_cameras must be in 2..{_MAX_CAMERAS} (one digit in Market names, and "
                         f"queries need a second camera), got {num_cameras}")
    if num_train_ids < 1 or num_test_ids < 1:
        raise ValueError(f"num_train_ids and num_test_ids must be >= 1, got {num_train_ids}, {num_test_ids}")
    if 2 * num_train_ids - 1 > _MAX_PID or 2 * num_test_ids > _MAX_PID:
        raise ValueError(f"pids have 4 digits in Market names: at most {(_MAX_PID + 1) // 2} train and "
                         f"{_MAX_PID // 2} test identities, got {num_train_ids} and {num_test_ids}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if queries_per_camera < 1:
        raise ValueError(f"queries_per_camera must be >= 1, got {queries_per_camera}")
    cams_range = _check_range("cameras_per_id", cameras_per_id, 2)
    images_range = _check_range("images_per_camera", images_per_camera, queries_per_camera + 1)
    if images_range[1] > 1000:  # a tracklet's frames must fit the 6-digit frame number
        raise ValueError(f"images_per_camera max must be <= 1000, got {images_range[1]}")
    if num_distractors < 0 or num_junk < 0 or max(num_distractors, num_junk) * 9 + 9 > _MAX_FRAME:
        raise ValueError(f"num_distractors and num_junk must be in 0..{_MAX_FRAME // 9 - 1}, "
                         f"got {num_distractors} and {num_junk}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    root = Path(root)
    arguments = _arguments(
        num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cameras=num_cameras,
        image_size=[height, width], seed=seed, cameras_per_id=list(cams_range),
        images_per_camera=list(images_range), queries_per_camera=queries_per_camera,
        num_distractors=num_distractors, num_junk=num_junk,
    )
    manifest_path = root / MANIFEST_NAME
    manifest = _read_manifest(manifest_path)
    ours = manifest.get("generator") == _GENERATOR
    same_arguments = ours and manifest.get("arguments") == arguments
    # A tree from an older generator version with the same arguments is a stale cache of
    # ours: regenerated without asking, like an interrupted one.
    current = same_arguments and manifest.get("version") == GENERATOR_VERSION
    if current and not overwrite and _is_complete(root, manifest):
        return root
    existing = _existing_files(root)
    if not overwrite and not same_arguments and (existing or manifest_path.exists()):
        what = (f"made with other arguments ({_differences(manifest.get('arguments') or {}, arguments)})"
                if ours else "not made by this generator")
        raise FileExistsError(
            f"{root} already holds a dataset ({existing} files in its split folders) {what}; "
            "pass overwrite=True (reid make-synthetic --overwrite) to replace it, or choose another root")

    train_pids = [2 * i + 1 for i in range(num_train_ids)]
    test_pids = [2 * i + 2 for i in range(num_test_ids)]
    cameras = [_make_camera(seed, c) for c in range(1, num_cameras + 1)]
    identities = _make_identities(seed, [*train_pids, *test_pids])
    jobs = _plan(seed, train_pids, test_pids, cameras, identities, cams_range, images_range,
                 queries_per_camera, num_distractors, num_junk)

    # Start from empty split folders; the incomplete manifest marks the tree as ours.
    for folder in SPLIT_FOLDERS:
        if (root / folder).exists():
            shutil.rmtree(root / folder)
        (root / folder).mkdir(parents=True)
    counts = _counts(jobs)
    record = {"generator": _GENERATOR, "version": GENERATOR_VERSION, "arguments": arguments,
              "complete": False, "counts": counts}
    manifest_path.write_text(json.dumps(record, indent=2) + "\n")

    size = (height, width)
    if workers == 1:
        _write_jobs(str(root), jobs, cameras, seed, size)
    else:
        chunk = max(64, len(jobs) // (workers * 8) + 1)
        chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
        # forkserver, not fork: a process that already ran torch or OpenCV holds thread pools whose
        # locks a forked child inherits mid-use (a deadlock seen after `reid visualize` in-process).
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(_write_jobs, str(root), c, cameras, seed, size) for c in chunks]
            for future in futures:
                future.result()

    record["complete"] = True
    manifest_path.write_text(json.dumps(record, indent=2) + "\n")
    return root
