"""Image reading and the train / test albumentations pipelines."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing, build_transforms, read_image

WHITE = np.full((50, 23, 3), 255, np.uint8)
WHITE_NORMALISED = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]


def test_read_image_is_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((3, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    image = read_image(tmp_path / "blue.png")
    assert image.dtype == np.uint8 and image.shape == (3, 2, 3)
    assert (image[..., 2] == 255).all() and (image[..., :2] == 0).all()


def test_read_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.jpg"))):
        read_image(tmp_path / "missing.jpg")
    corrupt = tmp_path / "0001_c1s1_000001_01.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(OSError, match=re.escape(str(corrupt)) + ".*could not decode"):
        read_image(corrupt)


def test_test_transform_white_image_is_exactly_normalised_white() -> None:
    out = build_transforms(32, 16, False)(image=WHITE)["image"]
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32
    for channel, value in enumerate(WHITE_NORMALISED):
        torch.testing.assert_close(out[channel], torch.full((32, 16), value), rtol=0, atol=1e-6)


def test_test_transform_custom_mean_std() -> None:
    gray = np.full((8, 4, 3), 51, np.uint8)  # 0.2 after scaling
    out = build_transforms(8, 4, False, mean=(0.2, 0.1, 0.0), std=(0.5, 0.5, 0.1))(image=gray)["image"]
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([0.0, 0.2, 2.0]), rtol=0, atol=1e-6)


def test_train_transform_shape_dtype_and_value_range() -> None:
    pipeline = build_transforms(64, 32, True, color_jitter=True, erasing_prob=0.5, seed=0)
    rng = np.random.default_rng(0)
    low = min(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for size in ((50, 23), (128, 64), (300, 100)):
        image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        out = pipeline(image=image)["image"]
        assert out.shape == (3, 64, 32) and out.dtype == torch.float32
        assert low - 1e-5 <= out.min() and out.max() <= high + 1e-5


def test_train_transform_without_randomness_is_the_test_transform() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(40, 20, 3), dtype=np.uint8)
    train = build_transforms(32, 16, True, flip_prob=0.0, padding=0, erasing_prob=0.0)(image=image)["image"]
    test = build_transforms(32, 16, False)(image=image)["image"]
    torch.testing.assert_close(train, test, rtol=0, atol=0)


def test_flip_and_padding() -> None:
    image = np.zeros((20, 10, 3), np.uint8)
    image[:, :5] = 255  # left half white
    flipped = build_transforms(20, 10, True, flip_prob=1.0, padding=0, erasing_prob=0.0)(image=image)["image"]
    assert (flipped[0, :, 5:] > 0).all() and (flipped[0, :, :5] < 0).all()
    # pad 10 with zeros, crop 40 x 20 back: the white image stays a rectangle of at least
    # 30 x 10 pixels (shifted by at most 10 each way) and the rest is black padding
    pipeline = build_transforms(40, 20, True, flip_prob=0.0, padding=10, erasing_prob=0.0, seed=3)
    black = -IMAGENET_MEAN[0] / IMAGENET_STD[0]
    padded_draws = 0
    for _ in range(20):
        red = pipeline(image=WHITE)["image"][0]
        white = torch.isclose(red, torch.tensor(WHITE_NORMALISED[0]))
        assert (white | torch.isclose(red, torch.tensor(black))).all()
        rows, cols = torch.nonzero(white, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(white.sum()) == height * width and height >= 30 and width >= 10
        padded_draws += int(white.sum()) < 40 * 20
    assert padded_draws > 0


def test_random_erasing_fills_zero_after_normalisation() -> None:
    pipeline = build_transforms(64, 32, True, flip_prob=0.0, padding=0, erasing_prob=1.0, seed=0)
    for _ in range(20):
        out = pipeline(image=WHITE)["image"]
        erased = (out == 0).all(dim=0)
        # one axis-aligned rectangle of 2 %..40 % of the image, the rest untouched white
        rows, cols = torch.nonzero(erased, as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(erased.sum()) == int(box)
        assert 0.02 * 64 * 32 * 0.8 <= int(box) <= 0.4 * 64 * 32 * 1.2
        torch.testing.assert_close(out[0][~erased], torch.full((int((~erased).sum()),), WHITE_NORMALISED[0]))


def test_random_erasing_reaches_large_areas_on_person_crops() -> None:
    """Zhong et al.'s rejection sampling reaches the top of the scale range on 256 x 128 crops
    (albumentations' A.Erasing would cap it at 15 % of the image)."""
    erasing = RandomErasing(scale=(0.3, 0.4), ratio=(0.3, 3.3), fill=0.0, p=1.0)
    erasing.set_random_seed(0)
    image = np.ones((256, 128, 3), np.float32)
    fractions = [float((erasing(image=image)["image"] == 0).all(axis=2).mean()) for _ in range(50)]
    assert min(fractions) >= 0.29 and max(fractions) <= 0.41


def test_same_seed_same_augmentations_different_seed_differs() -> None:
    image = np.random.default_rng(2).integers(0, 256, size=(60, 30, 3), dtype=np.uint8)

    def run(seed: int) -> list[torch.Tensor]:
        pipeline = build_transforms(32, 16, True, color_jitter=True, seed=seed)
        return [pipeline(image=image)["image"] for _ in range(6)]

    first, again, other = run(11), run(11), run(12)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_retrieval_pipeline_resizes_the_shorter_side_then_centre_crops():
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, 200:] = 255  # right half white
    out = build_transforms(224, 224, False, pipeline="retrieval", resize=256, mean=(0, 0, 0), std=(1, 1, 1))(
        image=image)["image"]
    assert out.shape == (3, 224, 224)
    # 300 x 400 -> 256 x 341; the centre 224 columns span 58..282 of 341: the white half starts at 170.5
    row = out[0, 112].numpy()
    assert row[:112].max() < 0.01 and row[114:].min() > 0.99
    train = build_transforms(224, 224, True, pipeline="retrieval", seed=3)
    assert train(image=image)["image"].shape == (3, 224, 224)
    with pytest.raises(ValueError, match="pipeline: expected one of reid, retrieval, got 'imagenet'"):
        build_transforms(224, 224, True, pipeline="imagenet")
