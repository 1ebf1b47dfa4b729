"""Image reading and albumentations pipelines for re-ID (the BoT / torchreid recipe).

Train: resize -> horizontal flip -> zero-pad + random crop back to size -> optional colour
jitter -> normalise -> random erasing -> CHW tensor. Test: resize -> normalise -> tensor.
Random erasing comes after normalisation, as in torchreid and fast-reid, and fills the
rectangle with 0, i.e. the normalisation mean colour (torchvision's default; a neutral
occluder that does not add a colour the network could key on).
"""

from __future__ import annotations

import io
import math
import os
import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

# Images are decoded and augmented in parallel by DataLoader workers, one image per call, so
# OpenCV's own thread pool only oversubscribes the cores, and a pool that is running when a
# worker is forked deadlocks the child (its locks are copied mid-use; seen as a hang in
# cv2.setNumThreads inside a forked worker). Serial OpenCV never starts that pool.
cv2.setNumThreads(1)

from .datasets.base import (  # the checks need no OpenCV: datasets use them without importing it
    HEAD_BYTES,
    TAIL_BYTES,
    ImageReadError,
    check_image_file,
    image_error,
    image_format,
    read_error,
    structure_problem,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageReadError",
    "RandomErasing",
    "build_transforms",
    "check_image_file",
    "read_image",
    "seed_transform",
]

# Images larger than this many pixels are refused before decoding: a 1 MB PNG can declare
# 30000 x 30000 pixels, 2.7 GB once decoded (per DataLoader worker). Re-ID crops and retrieval
# photos are far below it; $REID_MAX_IMAGE_PIXELS raises (or lowers) it.
MAX_IMAGE_PIXELS = 100_000_000
MAX_IMAGE_PIXELS_ENV = "REID_MAX_IMAGE_PIXELS"

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# OpenCV >= 4.10 decodes straight to RGB: the same pixels, ~15 us less per 128 x 64 image than BGR + cvtColor.
_DECODES_RGB = hasattr(cv2, "IMREAD_COLOR_RGB")
_IMREAD_FLAG: int = cv2.IMREAD_COLOR_RGB if _DECODES_RGB else cv2.IMREAD_COLOR


def read_image(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 uint8 RGB image, decoded strictly: never a partly decoded one.

    OpenCV decodes a truncated JPEG with a warning only and fills the missing rows with grey,
    so the file is read once and checked first as in :func:`check_image_file` (empty?
    signature? end marker?), then decoded from memory (``cv2.imdecode``: the pixels of
    ``cv2.imread``, EXIF orientation applied). Files in other formats OpenCV knows are
    decoded without the checks. Raises ``FileNotFoundError`` for a missing file and
    :class:`ImageReadError` (an ``OSError``) naming the file and saying what is wrong.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise read_error(path, error) from None
    if not data:
        raise image_error(path, "is empty (0 bytes)")
    fmt = image_format(data[:HEAD_BYTES])
    problem = structure_problem(fmt, data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data), lambda: data)
    if problem is None:
        problem = _size_problem(data)
    if problem is not None:
        raise image_error(path, problem)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_FLAG)
    if image is None:
        if fmt is None:  # the file's bytes are not repeated: it may be anything, a secret included
            raise image_error(path, "is corrupt or not an image: OpenCV could not decode it")
        raise image_error(path, f"is corrupt: OpenCV could not decode its {fmt} data")
    return image if _DECODES_RGB else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def max_image_pixels() -> int:
    """``MAX_IMAGE_PIXELS``, or ``$REID_MAX_IMAGE_PIXELS`` when set (read on every call: workers inherit it)."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV}={text!r}: expected a positive number of pixels")
    return value


def _size_problem(data: bytes) -> str | None:
    """Why the image's declared size is too large to decode, or None; reads its header only
    (Pillow's lazy open). A header Pillow cannot read is left to OpenCV."""
    from PIL import Image  # Pillow comes with matplotlib

    limit = max_image_pixels()
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # ours applies (and names its setting); Pillow decodes nothing here
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - not a header Pillow reads: OpenCV decides
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if width * height > limit:
        return (f"is too large to decode: {width} x {height} = {width * height:,} pixels, more than the limit of "
                f"{limit:,} (set {MAX_IMAGE_PIXELS_ENV}=N to raise it for files you trust)")
    return None


class RandomErasing(A.ImageOnlyTransform):
    """Random erasing (Zhong et al., AAAI 2020, Algorithm 1).

    With probability ``p``, draw a target area ``S_e`` uniformly from ``scale`` times the
    image area and an aspect ratio ``r_e`` (height / width) uniformly from ``ratio``;
    ``H_e = sqrt(S_e * r_e)``, ``W_e = sqrt(S_e / r_e)``. Retry (up to ``max_attempts``)
    until the rectangle fits, then fill it with ``fill``. albumentations' own ``A.Erasing``
    instead caps the area so that every ratio in the range fits, which for 256 x 128
    person crops limits the erased area to 15 % of the image instead of the paper's 40 %.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.02, 0.4),
        ratio: tuple[float, float] = (0.3, 3.3),
        fill: float = 0.0,
        max_attempts: int = 100,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale = scale
        self.ratio = ratio
        self.fill = fill
        self.max_attempts = max_attempts

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        for _ in range(self.max_attempts):
            area = self.py_random.uniform(*self.scale) * height * width
            aspect = self.py_random.uniform(*self.ratio)
            box_height = round(math.sqrt(area * aspect))
            box_width = round(math.sqrt(area / aspect))
            if 0 < box_height < height and 0 < box_width < width:
                top = self.py_random.randint(0, height - box_height)
                left = self.py_random.randint(0, width - box_width)
                return {"box": (top, left, box_height, box_width)}
        return {"box": None}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int] | None = None, **params: Any) -> np.ndarray:
        if box is None:
            return img
        top, left, box_height, box_width = box
        img = img.copy()
        img[top : top + box_height, left : left + box_width] = self.fill
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio", "fill", "max_attempts")


PIPELINES = ("reid", "retrieval")


def build_transforms(
    height: int,
    width: int,
    is_train: bool,
    *,
    pipeline: str = "reid",
    resize: int = 256,
    flip_prob: float = 0.5,
    padding: int = 10,
    color_jitter: bool = False,
    erasing_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
) -> A.Compose:
    """The train or test pipeline; ``pipeline(image=rgb_uint8)["image"]`` is a float32 3 x H x W tensor.

    ``pipeline="reid"`` (the BoT / torchreid recipe): resize to height x width; for training,
    flip, pad + random crop, optional colour jitter and random erasing. ``pipeline="retrieval"``
    (the deep-metric-learning standard of the Group Loss papers and their peers): for training
    a random resized crop to height x width (scale 0.08-1, aspect 3/4-4/3) and a flip; for
    testing the shorter side resized to ``resize``, then a centre crop of height x width.
    ``seed`` makes the random augmentations repeatable (see :func:`seed_transform`).
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline: expected one of {', '.join(PIPELINES)}, got {pipeline!r}")
    normalize = A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)
    if pipeline == "retrieval":
        if is_train:
            steps: list[A.BasicTransform] = [
                A.RandomResizedCrop(size=(height, width), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                    interpolation=cv2.INTER_LINEAR),
                A.HorizontalFlip(p=flip_prob)]
        else:
            steps = [A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_LINEAR), A.CenterCrop(height, width)]
        steps.append(normalize)
    else:
        steps = [A.Resize(height, width, interpolation=cv2.INTER_LINEAR)]
        if is_train:
            steps.append(A.HorizontalFlip(p=flip_prob))
            if padding > 0:
                steps += [
                    A.Pad(padding=padding, fill=0, border_mode=cv2.BORDER_CONSTANT),
                    A.RandomCrop(height, width),
                ]
            if color_jitter:
                # Mild photometric jitter: re-ID relies on clothing colour, so hue is left alone.
                steps.append(A.ColorJitter(brightness=0.2, contrast=0.15, saturation=0.1, hue=0.0, p=0.5))
            steps.append(normalize)
            if erasing_prob > 0:
                steps.append(RandomErasing(scale=(0.02, 0.4), ratio=(0.3, 3.3), fill=0.0, p=erasing_prob))
        else:
            steps.append(normalize)
    steps.append(ToTensorV2())
    transform = A.Compose(steps)
    if seed is not None:
        seed_transform(transform, seed)
    return transform


def seed_transform(pipeline: A.Compose, seed: int) -> None:
    """Restart the pipeline's random stream from ``seed``.

    ``A.Compose(seed=...)`` gives every step its own generator seeded with the same number,
    so e.g. the flip and erasing coin tosses start out identical. One shared generator for
    all steps keeps them independent and still repeatable.
    """
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
