"""Rendering synthetic pedestrian crops: palettes, backgrounds, the person figure, camera styles.

The pixels of the synthetic dataset (:mod:`reid.data.synthetic` plans which images exist,
names and writes them). Every function here is a pure function of its parameters and of the
``numpy.random.Generator`` it is handed: no file, no global random state, no seed streams.

What makes the images useful for re-ID rather than a toy:

* An identity is a combination of appearance attributes drawn from small palettes (upper
  clothing colour and pattern, lower clothing colour and type, skin, hair, body shape, bag,
  shoes), so many identities share most attributes: hard negatives, as in real data.
* A camera changes the background, colour cast, brightness/contrast, sharpness, resolution
  and the usual walking direction (front / back / side views: a backpack shows from the
  back, a chest logo from the front).
* Each image is one frame of a tracklet (walk phase, scale and position drift) plus crop
  jitter and occasional occlusion (an obstacle or a passer-by).

Determinism: the output is a function of the arguments and the generator's state, and the
draws happen in a fixed order. Changing a palette, a proportion or the order or number of
draws changes every image: bump :data:`reid.data.synthetic.GENERATOR_VERSION` with it, so a
dataset cached by the older code is regenerated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import cv2
import numpy as np

__all__ = [
    "DOMAINS",
    "Camera",
    "Identity",
    "Track",
    "render_false_detection",
    "render_junk",
    "render_tracklet_frame",
    "restyle_camera",
    "restyle_identity",
    "sample_camera",
    "sample_identity",
    "sample_track",
]

BGR = tuple[float, float, float]

# --------------------------------------------------------------------------------------
# Palettes. Colours are written as RGB for readability and stored as BGR for OpenCV.
# They are deliberately small so that identities share attributes (hard negatives).
# The order of every list is part of the output: draws pick entries by index.


def _bgr(rgb: tuple[int, int, int]) -> BGR:
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

    upper_colour: BGR
    upper_secondary: BGR
    pattern: str
    pattern_period: float  # stripe/check period as a fraction of body height
    short_sleeves: bool
    lower_colour: BGR
    lower_type: str
    skin: BGR
    hair_colour: BGR
    long_hair: bool
    height: float
    width: float
    bag: str
    bag_colour: BGR
    shoe_colour: BGR
    logo_colour: BGR
    logo_round: bool
    # The discrete attributes (palette indices): the dataset keeps them unique per identity.
    key: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes."""

    wall: BGR
    ground: BGR
    horizon: float  # fraction of image height where the wall meets the ground
    style: str
    clutter: tuple[BGR, ...]
    gains: BGR  # per-channel colour cast (BGR)
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
class Track:
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


# --------------------------------------------------------------------------------------
# Random attribute draws


def _jitter(rng: np.random.Generator, colour: Sequence[float], sigma: float) -> BGR:
    out = np.clip(np.asarray(colour) + rng.normal(0.0, sigma, 3), 0, 255)
    return (float(out[0]), float(out[1]), float(out[2]))


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random person: palette entries for every attribute, each colour shifted a little."""
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


def sample_camera(rng: np.random.Generator) -> Camera:
    """A random camera: its scene, colour cast, optics and the way people usually walk past it."""
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


def sample_track(identity: Identity, camera: Camera, rng: np.random.Generator) -> Track:
    """One walk of ``identity`` past ``camera``: its view (the camera's usual one, mostly) and drift."""
    return Track(
        identity=identity,
        view=int(rng.choice(4, p=camera.view_probs)),
        scale0=float(rng.uniform(0.84, 0.95)),
        scale_step=float(rng.uniform(-0.01, 0.01)),
        cx0=float(rng.normal(0, 0.05)),
        cx_step=float(rng.normal(0, 0.015)),
        top0=float(rng.uniform(0.01, 0.07)),
        phase0=float(rng.uniform(0, 2 * math.pi)),
        phase_step=float(rng.uniform(0.6, 1.6)),
    )


# --------------------------------------------------------------------------------------
# Domains: the same draws, seen in another place. "market" is the original (nothing changes);
# "dusk" is a second domain for adaptation benchmarks: evening street cameras (darker, bluish,
# softer, noisier, lower resolution, dim bluish scenes) and a population that is taller and
# slimmer and dresses darker. Pure functions of their input, no draw: "market" images stay
# byte-identical.

DOMAINS = ("market", "dusk")


def _toward(colour: Sequence[float], target: Sequence[float], amount: float, scale: float = 1.0) -> BGR:
    out = [float(np.clip(scale * ((1 - amount) * c + amount * t), 0, 255)) for c, t in zip(colour, target)]
    return (out[0], out[1], out[2])


def restyle_identity(identity: Identity, domain: str) -> Identity:
    """``identity`` as the people of ``domain`` look (see DOMAINS)."""
    if domain == "market":
        return identity
    if domain != "dusk":
        raise ValueError(f"domain={domain!r}: expected one of {', '.join(DOMAINS)}")
    navy = (70.0, 40.0, 30.0)  # BGR
    return dataclasses.replace(
        identity, height=identity.height * 1.06, width=identity.width * 0.86,
        upper_colour=_toward(identity.upper_colour, navy, 0.25, 0.85),
        upper_secondary=_toward(identity.upper_secondary, navy, 0.25, 0.85),
        lower_colour=_toward(identity.lower_colour, navy, 0.3, 0.8))


def restyle_camera(camera: Camera, domain: str) -> Camera:
    """``camera`` as a camera of ``domain`` (see DOMAINS)."""
    if domain == "market":
        return camera
    if domain != "dusk":
        raise ValueError(f"domain={domain!r}: expected one of {', '.join(DOMAINS)}")
    b, g, r = camera.gains
    dim_blue = (120.0, 80.0, 60.0)
    return dataclasses.replace(
        camera, wall=_toward(camera.wall, dim_blue, 0.5, 0.7), ground=_toward(camera.ground, dim_blue, 0.4, 0.6),
        clutter=tuple(_toward(c, dim_blue, 0.3, 0.8) for c in camera.clutter),
        gains=(b * 1.12, g * 1.0, r * 0.86), brightness=camera.brightness - 18, contrast=camera.contrast * 0.85,
        blur=camera.blur + 0.5, resolution=camera.resolution * 0.8, noise=camera.noise + 3.0,
        light_side=-camera.light_side, occlusion_prob=min(0.3, camera.occlusion_prob * 1.5))


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


def _shade(colour: Sequence[float], factor: float) -> BGR:
    return (min(255.0, colour[0] * factor), min(255.0, colour[1] * factor),
            min(255.0, colour[2] * factor))


# --------------------------------------------------------------------------------------
# The pedestrian


@dataclasses.dataclass(frozen=True)
class _Figure:
    """Where the parts of one drawn pedestrian go, in pixels (see :func:`_figure`)."""

    cx: float
    top: float  # head top, after the person's own height moved it down
    h: float  # the person's height in pixels
    bw: float  # the person's width factor
    view: int
    side: bool
    facing: float  # +1 / -1: which way a side view walks
    swing: float  # sin(walk phase): legs and arms swing opposite ways
    shoulder_y: float
    waist_y: float
    hip_y: float
    ankle_y: float
    sw: float  # half shoulder width
    hw: float  # half hip width
    thigh: float
    ankle: float
    arm_len: float
    arm_r0: float
    arm_r1: float

    def y(self, f: float) -> float:
        """The row at fraction ``f`` of the person's height below the head top."""
        return self.top + f * self.h


def _figure(person: Identity, cx: float, top: float, height: float, view: int, phase: float) -> _Figure:
    """Proportions of the usual figure canon (head ~ 1/7.5 of the body, hips at half height)."""
    h = height * person.height
    top = top + (height - h)  # shorter people stand on the same ground line
    bw = person.width
    side = view in (_LEFT, _RIGHT)
    return _Figure(
        cx=cx, top=top, h=h, bw=bw, view=view, side=side, facing=-1.0 if view == _LEFT else 1.0,
        swing=math.sin(phase),
        shoulder_y=top + 0.165 * h, waist_y=top + 0.47 * h, hip_y=top + 0.52 * h, ankle_y=top + 0.955 * h,
        sw=(0.078 if side else 0.13) * h * bw, hw=(0.075 if side else 0.102) * h * bw,
        thigh=0.047 * h * bw, ankle=0.027 * h * bw,
        arm_len=0.34 * h, arm_r0=0.033 * h * bw, arm_r1=0.023 * h * bw,
    )


def _draw_person(img: np.ndarray, person: Identity, cx: float, top: float, height: float,
                 view: int, phase: float) -> None:
    """Draw one pedestrian whose head top is at ``top`` and feet ``height`` pixels lower.

    Back to front, so that nearer parts cover farther ones: a side-view backpack and the far
    arm, legs and shoes, trousers, torso and its pattern, skirt, bags and straps, near arms
    and a handbag, head.
    """
    fig = _figure(person, cx, top, height, view, phase)
    if person.bag == "backpack" and fig.side:  # sticks out behind the torso
        bx = cx - fig.facing * fig.sw
        pts = np.array([(bx, fig.y(0.19)), (bx - fig.facing * 0.085 * fig.h, fig.y(0.2)),
                        (bx - fig.facing * 0.09 * fig.h, fig.y(0.43)), (bx, fig.y(0.44))])
        _poly(img, pts, person.bag_colour)
    if fig.side:  # the far arm, behind the body
        _draw_side_arm(img, person, fig, -0.5 * fig.swing, 0.8)
    _draw_legs(img, person, fig)
    _draw_clothes(img, person, fig)
    _draw_bag_front(img, person, cx, fig.y, fig.sw, fig.hw, view)
    if fig.side:
        hands = [_draw_side_arm(img, person, fig, 0.5 * fig.swing, 1.0)]
    else:
        hands = _draw_front_arms(img, person, fig)
    if person.bag == "handbag":
        _draw_handbag(img, person, fig.h, hands[-1])
    _draw_head(img, person, cx, fig.y, fig.h, view, fig.facing)


def _leg_ends(fig: _Figure) -> list[tuple[tuple[float, float], tuple[float, float], float]]:
    """(hip, foot, shade) of each leg, far leg first, from the walk cycle."""
    cx, h, swing = fig.cx, fig.h, fig.swing
    if fig.side:
        leg_len = fig.ankle_y - fig.hip_y
        legs = []
        for sign, dim in ((-1.0, 0.82), (1.0, 1.0)):  # the far leg is darker
            theta = 0.42 * swing * sign
            foot = (cx + fig.facing * math.sin(theta) * leg_len, fig.hip_y + math.cos(theta) * leg_len)
            legs.append(((cx, fig.hip_y), foot, dim))
        return legs
    spread = 0.05 * h * fig.bw
    lift_a, lift_b = 0.035 * h * max(0.0, swing), 0.035 * h * max(0.0, -swing)
    return [((cx - spread * 0.9, fig.hip_y), (cx - spread - 0.004 * h, fig.ankle_y - lift_a), 1.0),
            ((cx + spread * 0.9, fig.hip_y), (cx + spread + 0.004 * h, fig.ankle_y - lift_b), 1.0)]


def _draw_legs(img: np.ndarray, person: Identity, fig: _Figure) -> None:
    """Legs (bare or in trousers), the thighs of shorts, and shoes."""
    h = fig.h
    bare_legs = person.lower_type != "trousers"
    for hip, foot, dim in _leg_ends(fig):
        leg_colour = _shade(person.skin if bare_legs else person.lower_colour, dim)
        _capsule(img, hip, foot, fig.thigh, fig.ankle, leg_colour)
        if person.lower_type == "shorts":
            knee = (hip[0] + (foot[0] - hip[0]) * 0.4, hip[1] + (foot[1] - hip[1]) * 0.4)
            _capsule(img, hip, knee, fig.thigh * 1.12, fig.thigh * 1.02, _shade(person.lower_colour, dim))
        shoe_dx = fig.facing * 0.02 * h if fig.side else 0.0
        _ellipse(img, (foot[0] + shoe_dx, foot[1] + 0.012 * h),
                 (0.042 * h if fig.side else 0.03 * h, 0.018 * h), _shade(person.shoe_colour, dim))


def _draw_clothes(img: np.ndarray, person: Identity, fig: _Figure) -> None:
    """Trousers or shorts under the top, the torso with its pattern or logo, a skirt over it."""
    cx, h, y, sw, hw, lower = fig.cx, fig.h, fig.y, fig.sw, fig.hw, person.lower_colour
    if person.lower_type != "skirt":
        _poly(img, np.array([(cx - hw, fig.waist_y), (cx + hw, fig.waist_y), (cx + hw * 0.96, y(0.585)),
                             (cx - hw * 0.96, y(0.585))]), lower)
    # Torso: shoulders slightly rounded.
    torso = np.array([
        (cx - sw * 0.72, fig.shoulder_y - 0.012 * h), (cx + sw * 0.72, fig.shoulder_y - 0.012 * h),
        (cx + sw, fig.shoulder_y + 0.02 * h), (cx + hw * 1.02, fig.hip_y), (cx - hw * 1.02, fig.hip_y),
        (cx - sw, fig.shoulder_y + 0.02 * h),
    ])
    _poly(img, torso, person.upper_colour)
    if person.pattern in ("hstripes", "vstripes", "checks"):
        _draw_pattern(img, torso, person, h, fig.top, cx, fig.view)
    elif person.pattern == "logo" and fig.view == _FRONT:
        centre = (cx, y(0.29))
        if person.logo_round:
            _ellipse(img, centre, (0.038 * h, 0.038 * h), person.logo_colour)
        else:
            s = 0.036 * h
            _poly(img, np.array([(cx - s, centre[1] - s), (cx + s, centre[1] - s),
                                 (cx + s, centre[1] + s), (cx - s, centre[1] + s)]), person.logo_colour)
    if person.lower_type == "skirt":
        _poly(img, np.array([(cx - hw, fig.waist_y), (cx + hw, fig.waist_y), (cx + hw * 1.38, y(0.68)),
                             (cx - hw * 1.38, y(0.68))]), lower)


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


def _draw_side_arm(img: np.ndarray, person: Identity, fig: _Figure, theta: float,
                   dim: float) -> tuple[float, float]:
    """One arm of a side view, swung by ``theta`` radians; returns the hand."""
    shoulder = (fig.cx, fig.shoulder_y + 0.015 * fig.h)
    hand = (fig.cx + fig.facing * math.sin(theta) * fig.arm_len,
            fig.shoulder_y + 0.015 * fig.h + math.cos(theta) * fig.arm_len)
    return _draw_arm(img, person, shoulder, hand, fig.arm_r0, fig.arm_r1, dim)


def _draw_front_arms(img: np.ndarray, person: Identity, fig: _Figure) -> list[tuple[float, float]]:
    """Both arms of a front or back view, the swinging one slightly raised; returns the hands."""
    hands = []
    for sign, lift in ((-1.0, max(0.0, fig.swing)), (1.0, max(0.0, -fig.swing))):
        shoulder = (fig.cx + sign * (fig.sw - fig.arm_r0 * 0.8), fig.shoulder_y + 0.02 * fig.h)
        hand = (shoulder[0] + sign * 0.035 * fig.h, shoulder[1] + fig.arm_len * (1.0 - 0.1 * lift))
        hands.append(_draw_arm(img, person, shoulder, hand, fig.arm_r0, fig.arm_r1, 1.0))
    return hands


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


def _draw_handbag(img: np.ndarray, person: Identity, h: float, hand: tuple[float, float]) -> None:
    hx, hy = hand
    bag_w, bag_h = 0.055 * h, 0.085 * h
    _poly(img, np.array([(hx - bag_w, hy + 0.01 * h), (hx + bag_w, hy + 0.01 * h),
                         (hx + bag_w * 1.1, hy + bag_h), (hx - bag_w * 1.1, hy + bag_h)]),
          person.bag_colour)


def _draw_bag_front(img: np.ndarray, person: Identity, cx: float, y: Callable[[float], float], sw: float,
                    hw: float, view: int) -> None:
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


def _draw_head(img: np.ndarray, person: Identity, cx: float, y: Callable[[float], float], h: float,
               view: int, facing: float) -> None:
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
    img = _wall_and_ground(camera, rng, horizon, height, width)
    y_h = int(horizon * height)
    draw_style = _STYLE_DRAWERS.get(camera.style)
    if draw_style is not None:
        draw_style(img, camera, rng, y_h)
    _draw_scene_objects(img, camera, rng)
    return img


def _wall_and_ground(camera: Camera, rng: np.random.Generator, horizon: float, height: int,
                     width: int) -> np.ndarray:
    """The plain scene: a wall that darkens upwards, ground that lightens downwards, soft stains."""
    ys = _row_positions(height)
    t = np.clip((ys - horizon) * (1.0 / 0.06) + 0.5, 0.0, 1.0)[:, :, None]
    wall = np.asarray(camera.wall, np.float32)
    ground = np.asarray(camera.ground, np.float32)
    column = (wall * (0.88 + 0.12 * ys[:, :, None])) * (1 - t) + (ground * (0.92 + 0.16 * ys[:, :, None])) * t
    # Low-frequency texture (stains, shadows) on top of the wall/ground column.
    coarse = rng.normal(0.0, 9.0, (max(2, height // 12), max(2, width // 12), 3)).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(texture + column, 0, 255).astype(np.uint8)


def _draw_tiles(img: np.ndarray, camera: Camera, rng: np.random.Generator, y_h: int) -> None:
    """Paving joints below the horizon, in perspective."""
    height, width = img.shape[:2]
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


def _draw_facade(img: np.ndarray, camera: Camera, rng: np.random.Generator, y_h: int) -> None:
    """Rows of windows in the wall above the horizon."""
    height, width = img.shape[:2]
    window = _shade(camera.wall, 0.6)
    cols = int(rng.integers(2, 4))
    gap = width / cols
    x0 = rng.uniform(-gap / 2, 0)
    for i in range(cols + 1):
        xl = x0 + i * gap + gap * 0.2
        for yt in np.arange(rng.uniform(-0.2, 0.0) * height, y_h - 0.12 * height, 0.22 * height):
            cv2.rectangle(img, (int(xl), int(yt)), (int(xl + gap * 0.55), int(yt + 0.14 * height)),
                          window, -1)


def _draw_street_clutter(img: np.ndarray, camera: Camera, rng: np.random.Generator, y_h: int) -> None:
    """Poles, signs, parked bikes: two or three vertical shapes in the camera's clutter colours."""
    height, width = img.shape[:2]
    for _ in range(int(rng.integers(2, 4))):
        x = rng.uniform(-0.1, 1.0) * width
        wdt = rng.uniform(0.05, 0.2) * width
        yt = rng.uniform(0.0, 0.6) * height
        colour = camera.clutter[int(rng.integers(len(camera.clutter)))]
        cv2.rectangle(img, (int(x), int(yt)), (int(x + wdt), int(yt + rng.uniform(0.2, 0.7) * height)),
                      _jitter(rng, colour, 12.0), -1)


# What each background style adds to the plain scene ("gradient": nothing).
_STYLE_DRAWERS: dict[str, Callable[[np.ndarray, Camera, np.random.Generator, int], None]] = {
    "tiles": _draw_tiles,
    "facade": _draw_facade,
    "clutter": _draw_street_clutter,
}


def _draw_scene_objects(img: np.ndarray, camera: Camera, rng: np.random.Generator) -> None:
    """Every camera: up to two scene objects at random places (per image: the crop moves)."""
    height, width = img.shape[:2]
    for _ in range(int(rng.integers(0, 3))):
        colour = camera.clutter[int(rng.integers(len(camera.clutter)))]
        x = rng.uniform(-0.2, 1.0) * width
        yt = rng.uniform(0.0, 0.8) * height
        cv2.rectangle(img, (int(x), int(yt)),
                      (int(x + rng.uniform(0.1, 0.4) * width), int(yt + rng.uniform(0.1, 0.35) * height)),
                      _jitter(rng, colour, 15.0), -1)


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
        other = sample_identity(rng)
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


# --------------------------------------------------------------------------------------
# Whole crops: (height, width, 3) uint8 BGR images, as OpenCV writes them


def render_tracklet_frame(camera: Camera, track: Track, index: int, rng: np.random.Generator,
                          size: tuple[int, int]) -> np.ndarray:
    """Frame ``index`` of ``track`` seen by ``camera``: the walk's drift plus per-frame jitter."""
    height, width = size
    img = _background(camera, rng, height, width)
    body = height * camera.scale * (track.scale0 + track.scale_step * index) * rng.uniform(0.97, 1.03)
    cx = width * (0.5 + track.cx0 + track.cx_step * index + rng.normal(0, 0.035))
    top = height * (track.top0 + rng.normal(0, 0.02))
    phase = track.phase0 + track.phase_step * index + rng.normal(0, 0.3)
    view = track.view if rng.random() > 0.08 else int(rng.integers(4))  # people turn
    _draw_person(img, track.identity, cx, top, body, view, phase)
    if rng.random() < camera.occlusion_prob:
        _occlude(img, camera, rng)
    return _camera_effects(img, camera, rng)


def render_false_detection(camera: Camera, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A Market "0000" distractor: a false detection, background or a fragment of a body."""
    height, width = size
    img = _background(camera, rng, height, width)
    if rng.random() < 0.55:
        zoom = rng.uniform(1.4, 2.6)
        body = height * zoom
        top = -rng.uniform(0.0, body - 0.6 * height)
        _draw_person(img, sample_identity(rng), width * rng.uniform(0.3, 0.7), top, body,
                     int(rng.integers(4)), rng.uniform(0, 2 * math.pi))
    elif rng.random() < 0.5:
        _occlude(img, camera, rng)
    return _camera_effects(img, camera, rng)


def render_junk(camera: Camera, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A Market "-1" junk image: a detection that overlaps a person too little to count either way."""
    height, width = size
    img = _background(camera, rng, height, width)
    body = height * rng.uniform(0.7, 1.1)
    cx = width * (rng.uniform(-0.25, 0.05) if rng.random() < 0.5 else rng.uniform(0.95, 1.25))
    _draw_person(img, sample_identity(rng), cx, height * rng.uniform(-0.1, 0.2), body,
                 int(rng.integers(4)), rng.uniform(0, 2 * math.pi))
    return _camera_effects(img, camera, rng)
