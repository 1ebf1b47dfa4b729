"""FeatureExtractor: a user's own images (paths, arrays, odd names) to L2-normalised embeddings."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid.builders import model_from_config
from reid.checkpoint import save_checkpoint
from reid.config import load_config, to_dict
from reid.data.transforms import ImageReadError, build_transforms, read_image
from reid.inference import FeatureExtractor, extract_features, find_images, labels_from_names

HEIGHT, WIDTH = 64, 32
NUM_CLASSES = 6  # of the shared tiny checkpoint (tests/conftest.py)


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth random colour blobs (JPEG keeps them close to the original) as H x W x 3 RGB."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 2, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def write_image(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix.lower(), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


# Odd names, two formats, nested folders; relative paths in the sorted order find_images returns.
IMAGE_NAMES = [
    "0001_c1s1_000151_01.jpg",
    "My Photo (1).PNG",
    "sub/0002_c3_f0046182.png",
    "sub/deeper/ünïcode crop-ß.jpeg",
    "z.last.jpg",
]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def make_extractor(model, **kwargs) -> FeatureExtractor:
    """An extractor over an already built model (cheap), at the checkpoint's input size."""
    return FeatureExtractor(model, height=HEIGHT, width=WIDTH, **kwargs)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    sizes = [(128, 64), (90, 40), (64, 32), (50, 50), (200, 70)]
    for seed, (name, (h, w)) in enumerate(zip(IMAGE_NAMES, sizes)):
        write_image(folder / name, random_image(seed, h, w))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub" / "Thumbs.db").write_bytes(b"\x00\x01")
    (folder / "._0001_c1s1_000151_01.jpg").write_bytes(b"macOS resource fork, not a JPEG")
    return folder


def test_find_images_recursive_sorted_images_only(image_folder):
    found = find_images(image_folder)
    assert [p.relative_to(image_folder).as_posix() for p in found] == IMAGE_NAMES


def test_find_images_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        find_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="empty.*holds no images"):
        find_images(tmp_path / "empty")


def test_labels_from_market_and_duke_names_else_minus_one():
    pids, camids = labels_from_names(["a/0001_c1s1_000151_01.jpg", "0002_c3_f0046182.png", "My Photo (1).PNG",
                                      "-1_c2s1_000001_00.jpg", "0012_c0s1_000001_00.jpg"])
    assert pids.tolist() == [1, 2, -1, -1, -1]  # camera 0 does not exist (numbered from 1)
    assert camids.tolist() == [0, 2, -1, 1, -1]


def test_folder_of_arbitrary_images_gives_unit_norm_rows(checkpoint, image_folder):
    path, model = checkpoint
    extractor = FeatureExtractor.from_checkpoint(path, batch_size=2)
    assert (extractor.height, extractor.width, extractor.feature, extractor.flip) == (HEIGHT, WIDTH, "bn", False)
    features = extractor(find_images(image_folder))
    assert features.dtype == np.float32 and features.shape == (len(IMAGE_NAMES), model.feature_dim)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(features, make_extractor(model)(find_images(image_folder)), atol=1e-6)  # weights loaded
    # distinct images give distinct embeddings (the test would pass for a constant otherwise)
    assert np.linalg.norm(features[:, None] - features[None], axis=2)[~np.eye(len(features), dtype=bool)].min() > 1e-4


def direct_features(model, images: list[np.ndarray], feature: str = "bn") -> torch.Tensor:
    """Model outputs for images pushed through the test pipeline one at a time, without the extractor."""
    transform = build_transforms(HEIGHT, WIDTH, False)
    batch = torch.stack([transform(image=image)["image"] for image in images])
    with torch.no_grad():
        out = model.eval()(batch)
    return out.bn_embeddings if feature == "bn" else out.embeddings


@pytest.mark.parametrize("feature", ["bn", "pre_bn"])
def test_features_equal_a_direct_model_forward(checkpoint, image_folder, feature):
    _, model = checkpoint
    paths = find_images(image_folder)
    raw = make_extractor(model, feature=feature, normalize=False, batch_size=2)(paths)
    expected = direct_features(model, [read_image(p) for p in paths], feature)
    np.testing.assert_allclose(raw, expected.numpy(), rtol=1e-5, atol=1e-6)
    normalised = make_extractor(model, feature=feature)(paths)
    np.testing.assert_allclose(normalised, F.normalize(expected, dim=1).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("feature, flip, normalize", [("bn", False, True), ("pre_bn", True, False), ("bn", True, True)])
def test_extractor_and_extract_features_are_model_embed(checkpoint, image_folder, feature, flip, normalize):
    """One path: the extractor's rows are ``model.embed`` on the test pipeline's tensors, bit for bit."""
    _, model = checkpoint
    paths = find_images(image_folder)
    transform = build_transforms(HEIGHT, WIDTH, False)
    batch = torch.stack([transform(image=read_image(p))["image"] for p in paths])
    with torch.no_grad():
        expected = model.eval().embed(batch, feature=feature, flip=flip, normalize=normalize).numpy()
    options = dict(feature=feature, flip=flip, normalize=normalize)
    np.testing.assert_array_equal(make_extractor(model, batch_size=len(paths), **options)(paths), expected)
    loader = [(batch, torch.full((len(paths),), 3), torch.zeros(len(paths)), [str(p) for p in paths])]
    extracted = extract_features(model, loader, **options)
    np.testing.assert_array_equal(extracted.features, expected)
    assert extracted.pids.tolist() == [3] * len(paths) and extracted.paths == [str(p) for p in paths]


def test_paths_and_arrays_give_identical_features(checkpoint, image_folder):
    _, model = checkpoint
    extractor = make_extractor(model, batch_size=3)
    paths = [str(p) for p in find_images(image_folder)]
    arrays = [read_image(p) for p in paths]
    mixed = [arrays[0], paths[1], arrays[2], Path(paths[3]), paths[4]]
    from_paths = extractor.extract(paths)
    np.testing.assert_array_equal(extractor(arrays), from_paths.features)
    np.testing.assert_array_equal(extractor(mixed), from_paths.features)
    assert from_paths.paths == paths
    assert extractor.extract(mixed).paths == ["<array 0>", paths[1], "<array 2>", paths[3], paths[4]]


def test_batch_size_does_not_change_features(checkpoint, image_folder):
    _, model = checkpoint
    paths = find_images(image_folder)
    one_batch = make_extractor(model, batch_size=64)(paths)
    np.testing.assert_allclose(make_extractor(model, batch_size=1)(paths), one_batch, atol=1e-6)


def test_flip_averages_image_and_mirror_before_normalising(checkpoint):
    _, model = checkpoint
    images = [random_image(seed, HEIGHT, WIDTH) for seed in (11, 12, 13)]  # already at input size: no resize
    mirrors = [np.ascontiguousarray(image[:, ::-1]) for image in images]
    flipped = make_extractor(model, flip=True)(images)
    expected = F.normalize(0.5 * (direct_features(model, images) + direct_features(model, mirrors)), dim=1)
    np.testing.assert_allclose(flipped, expected.numpy(), rtol=1e-5, atol=1e-6)
    # the same through the extractor itself: raw features of image and mirror, averaged, then normalised
    raw = make_extractor(model, flip=False, normalize=False)
    average = 0.5 * (raw(images) + raw(mirrors))
    np.testing.assert_allclose(flipped, average / np.linalg.norm(average, axis=1, keepdims=True), atol=1e-6)
    plain = make_extractor(model, flip=False)(images)
    assert np.abs(flipped - plain).max() > 1e-3  # flipping really changed something


def test_defaults_come_from_the_checkpoint_test_config(checkpoint, tmp_path):
    _, model = checkpoint
    path = tmp_path / "flip.pt"  # the same weights, stored with other test settings and input size
    cfg = load_config(None, ["model.backbone=test_resnet", "data.height=32", "data.width=16",
                             "test.flip=true", "test.feature=pre_bn"])
    save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg), "num_classes": NUM_CLASSES}, path)
    extractor = FeatureExtractor.from_checkpoint(path)
    assert (extractor.flip, extractor.feature, extractor.height, extractor.width) == (True, "pre_bn", 32, 16)
    assert extractor.transform(image=random_image(0, 100, 50))["image"].shape == (3, 32, 16)
    overridden = FeatureExtractor.from_checkpoint(path, flip=False, feature="bn", normalize=False, batch_size=5)
    assert (overridden.flip, overridden.feature, overridden.normalize, overridden.batch_size) == (False, "bn", False, 5)


def test_unreadable_image_error_names_the_file(checkpoint, image_folder, tmp_path):
    _, model = checkpoint
    extractor = make_extractor(model)
    broken = tmp_path / "broken crop.jpg"
    broken.write_bytes(b"this is not a JPEG")
    paths = find_images(image_folder)
    with pytest.raises(OSError, match="broken crop.jpg"):
        extractor([paths[0], broken])
    with pytest.raises(FileNotFoundError, match="gone.png"):
        extractor([tmp_path / "gone.png"])


def test_bad_inputs_name_the_position(checkpoint):
    _, model = checkpoint
    extractor = make_extractor(model)
    good = random_image(0, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match=r"images\[1\].*uint8.*float32"):
        extractor([good, good.astype(np.float32)])
    with pytest.raises(ValueError, match=r"images\[0\].*H x W x 3.*\(64, 32\)"):
        extractor([good[:, :, 0]])
    with pytest.raises(TypeError, match=r"images\[0\].*int"):
        extractor([3])
    with pytest.raises(TypeError, match="a single str; wrap it in"):
        extractor("photo.jpg")
    np.testing.assert_array_equal(extractor(np.stack([good, good[::-1]])), extractor([good, good[::-1]]))
    with pytest.raises(ValueError, match="feature"):
        make_extractor(model, feature="logits")
    empty = extractor([])
    assert empty.shape == (0, extractor.feature_dim) and empty.dtype == np.float32


def test_checkpoint_of_another_architecture_or_class_count_names_the_file(checkpoint, tmp_path):
    cfg = load_config(None, ["model.backbone=test_resnet", f"data.height={HEIGHT}", f"data.width={WIDTH}"])
    other = model_from_config(load_config(None, ["model.backbone=test_efficientnet"]), NUM_CLASSES)
    wrong_arch = save_checkpoint(
        {"model": other.state_dict(), "config": to_dict(cfg), "num_classes": NUM_CLASSES}, tmp_path / "effnet.pt"
    )
    with pytest.raises(ValueError, match=r"effnet\.pt: weights do not fit model 'test_resnet'"):
        FeatureExtractor.from_checkpoint(wrong_arch)

    _, model = checkpoint
    wrong_classes = save_checkpoint(
        {"model": model.state_dict(), "config": to_dict(cfg), "num_classes": NUM_CLASSES + 3}, tmp_path / "classes.pt"
    )
    with pytest.raises(ValueError, match=r"classes\.pt: field 'num_classes': expected 6 \(the rows of the stored "
                       r"classifier\.weight\), got 9"):
        FeatureExtractor.from_checkpoint(wrong_classes)

    no_config = save_checkpoint({"model": model.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"bare\.pt: checkpoint has no stored config"):
        FeatureExtractor.from_checkpoint(no_config)


# unreadable image files -------------------------------------------------------------------------


@pytest.fixture
def damaged_folder(tmp_path):
    """Three good images and three bad ones (truncated JPEG, empty PNG, text named .jpg), with their labels."""
    folder = tmp_path / "damaged"
    good = ["0001_c1s1_000151_01.jpg", "0002_c2s1_000001_01.png", "sub/0003_c3_f0046182.jpg"]
    for seed, name in enumerate(good):
        write_image(folder / name, random_image(seed, 128, 64))
    truncated = write_image(folder / "0004_c1s1_000001_01.jpg", random_image(7, 128, 64))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size * 6 // 10])
    (folder / "sub" / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    bad = [folder / "0004_c1s1_000001_01.jpg", folder / "notes.jpg", folder / "sub" / "empty.png"]
    return folder, [folder / name for name in good], bad


def count_forward_calls(model):
    calls = []
    return calls, model.register_forward_hook(lambda *args: calls.append(1))


def test_unreadable_file_fails_before_any_model_work_naming_it(checkpoint, damaged_folder):
    _, model = checkpoint
    folder, _, bad = damaged_folder
    calls, hook = count_forward_calls(model)
    try:
        with pytest.raises(ImageReadError, match=r"3 unreadable image files in the images to extract") as info:
            make_extractor(model).extract(find_images(folder))
        with pytest.raises(ImageReadError, match=re.escape(f"image file {bad[0]} is truncated (JPEG data ends")):
            make_extractor(model)([bad[0]])
    finally:
        hook.remove()
    assert calls == []
    assert all(str(path) in str(info.value) for path in bad)
    assert "skip_invalid=True" in str(info.value) and "--skip-invalid" in str(info.value)


def test_skip_invalid_leaves_out_unreadable_files_with_one_warning(checkpoint, damaged_folder):
    _, model = checkpoint
    folder, good, bad = damaged_folder
    paths = [str(p) for p in find_images(folder)]
    extractor = make_extractor(model, batch_size=2)
    with pytest.warns(UserWarning) as record:
        result = extractor.extract(paths, *labels_from_names(paths), skip_invalid=True)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("left out 3 unreadable image file(s)")
    assert f"image file {bad[0]} is truncated" in message and f"image file {bad[2]} is empty" in message
    assert f"image file {bad[1]} is not an image" in message
    kept = [p for p in paths if Path(p) in good]
    assert result.paths == kept and len(result) == 3
    assert result.pids.tolist() == [1, 2, 3] and result.camids.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(result.features, extractor(kept))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_file_that_fails_only_to_decode_is_left_out_too(checkpoint, damaged_folder, num_workers):
    """A file with a JPEG signature and end marker passes the cheap check, then fails to decode."""
    _, model = checkpoint
    folder, good, bad = damaged_folder
    garbage = folder / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    arrays = [random_image(20, HEIGHT, WIDTH), random_image(21, 90, 40)]
    images = [arrays[0], bad[0], good[0], garbage, arrays[1]]
    extractor = make_extractor(model, batch_size=2, num_workers=num_workers)
    with pytest.raises(ImageReadError, match=re.escape(f"image file {bad[0]} is truncated")):
        extractor.extract(images)
    if num_workers == 0:  # (from a worker, the error's traceback would keep it alive for PyTorch's 5 s shutdown wait)
        with pytest.raises(ImageReadError, match=re.escape(f"image file {garbage} is corrupt: OpenCV could not")):
            extractor.extract([good[0], garbage])
    with pytest.warns(UserWarning) as record:
        result = extractor.extract(images, pids=[10, 11, 12, 13, 14], skip_invalid=True)
    assert len(record) == 1 and str(record[0].message).startswith("left out 2 unreadable image file(s)")
    assert f"image file {garbage} is corrupt" in str(record[0].message)
    assert result.paths == ["<array 0>", str(good[0]), "<array 4>"]
    assert result.pids.tolist() == [10, 12, 14] and result.camids.tolist() == [-1, -1, -1]
    np.testing.assert_allclose(result.features, extractor([arrays[0], good[0], arrays[1]]), atol=1e-6)


def test_skip_invalid_with_nothing_left_gives_an_empty_set(checkpoint, damaged_folder):
    _, model = checkpoint
    _, _, bad = damaged_folder
    extractor = make_extractor(model)
    with pytest.warns(UserWarning, match="left out 3 unreadable"):
        result = extractor.extract(bad, skip_invalid=True)
    assert result.features.shape == (0, extractor.feature_dim) and result.paths == []
    with pytest.raises(FileNotFoundError, match="gone.jpg"):  # a missing file is an error, skipping or not
        extractor.extract([*bad, bad[0].parent / "gone.jpg"], skip_invalid=True)


def test_extractor_uses_the_checkpoints_test_pipeline(save_tiny_checkpoint, tmp_path):
    """A model trained with the retrieval pipeline is fed resize + centre crop, as its evaluation was."""
    from reid.data.transforms import build_transforms
    from reid.inference import FeatureExtractor

    path = tmp_path / "retrieval.pt"
    save_tiny_checkpoint(path, ["data.pipeline=retrieval", "data.resize=80"])
    extractor = FeatureExtractor.from_checkpoint(path)
    image = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    expected = build_transforms(64, 32, False, pipeline="retrieval", resize=80)(image=image)["image"]
    assert torch.equal(extractor.transform(image=image)["image"], expected)
