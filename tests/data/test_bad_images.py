"""Bad image files are never used silently: strict decoding, build-time checks, skip_invalid."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data import build_dataset
from reid.data.loaders import build_test_loader, build_train_loader
from reid.data.synthetic import make_synthetic_market
from reid.data.transforms import ImageReadError, check_image_file, read_image

JPEG_TRUNCATED = "is truncated (JPEG data ends before its end marker FF D9)"
PNG_TRUNCATED = "is truncated (PNG data ends before its IEND chunk)"


def smooth_image(seed: int = 0, height: int = 128, width: int = 64) -> np.ndarray:
    """Random colour blobs plus noise, H x W x 3 BGR: a JPEG of it has a few KB of scan data."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (8, 4, 3), dtype=np.uint8), (width, height))
    return np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)


def encoded(suffix: str, seed: int = 0, height: int = 128, width: int = 64) -> bytes:
    ok, data = cv2.imencode(suffix, smooth_image(seed, height, width))
    assert ok
    return data.tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    return write(path, data[: int(len(data) * keep)])


def expected_pixels(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def error_of(path: Path, reason: str) -> str:
    return re.escape(f"image file {path} {reason}")


# read_image and check_image_file --------------------------------------------------------------


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected reason) for every kind of bad file."""
    jpeg, png = encoded(".jpg"), encoded(".png")
    return {
        "truncated jpeg": (write(folder / "0001_c1s1_000001_01.jpg", jpeg[: int(len(jpeg) * 0.6)]), JPEG_TRUNCATED),
        "jpeg without its last 2 bytes": (write(folder / "cut2.jpg", jpeg[:-2]), JPEG_TRUNCATED),
        "empty": (write(folder / "empty.jpg", b""), "is empty (0 bytes)"),
        "truncated png": (write(folder / "half.png", png[: int(len(png) * 0.6)]), PNG_TRUNCATED),
        "png cut before IEND": (write(folder / "no_iend.png", png[:-12]), PNG_TRUNCATED),
    }


@pytest.mark.parametrize("kind", ["truncated jpeg", "jpeg without its last 2 bytes", "empty", "truncated png",
                                  "png cut before IEND"])
def test_read_image_and_check_refuse_bad_files_naming_them(tmp_path: Path, kind: str) -> None:
    path, reason = bad_files(tmp_path)[kind]
    for function in (read_image, check_image_file):
        with pytest.raises(ImageReadError, match=error_of(path, reason)) as info:
            function(path)
        assert (info.value.path, info.value.reason) == (str(path), reason)


def test_text_file_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.jpg", b"these are my notes, not a JPEG")
    with pytest.raises(ImageReadError, match=error_of(path, "is corrupt or not an image: OpenCV could not decode")):
        read_image(path)
    with pytest.raises(ImageReadError, match=error_of(path, "is not an image: it does not start with the signature")):
        check_image_file(path)


def test_undecodable_file_that_passes_the_cheap_check_still_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "garbage.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    check_image_file(path)  # JPEG signature and end marker: the cheap check cannot tell
    with pytest.raises(ImageReadError, match=error_of(path, "is corrupt: OpenCV could not decode its JPEG data")):
        read_image(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    for function in (read_image, check_image_file):
        with pytest.raises(FileNotFoundError, match=re.escape(f"image file {tmp_path / 'gone.jpg'} does not exist")):
            function(tmp_path / "gone.jpg")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".webp"])
def test_good_files_decode_exactly_as_opencv_imread(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"ok{suffix}", encoded(suffix))
    check_image_file(path)
    np.testing.assert_array_equal(read_image(path), expected_pixels(path))


def test_data_after_the_end_marker_is_allowed(tmp_path: Path) -> None:
    """Some cameras append trailers: the end marker is then not in the last bytes."""
    for suffix in (".jpg", ".png"):
        clean = write(tmp_path / f"clean{suffix}", encoded(suffix))
        path = write(tmp_path / f"trailer{suffix}", clean.read_bytes() + b"\x00" * 100 + b"TRAILER" * 50)
        check_image_file(path)
        np.testing.assert_array_equal(read_image(path), expected_pixels(clean))


def test_truncation_after_an_embedded_thumbnail_is_found(tmp_path: Path) -> None:
    """An application segment holding a whole JPEG (an EXIF thumbnail has its own FF D9) does not
    hide the truncation of the main image: the check walks the segments to the main scan."""
    main, thumbnail = encoded(".jpg"), encoded(".jpg", seed=1, height=16, width=8)
    segment = b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail  # APP15
    whole = write(tmp_path / "whole.jpg", main[:2] + segment + main[2:])
    np.testing.assert_array_equal(read_image(whole), expected_pixels(write(tmp_path / "main.jpg", main)))
    data = whole.read_bytes()
    cut = write(tmp_path / "cut.jpg", data[: len(data) - len(main) // 3])  # inside the main scan
    assert b"\xff\xd9" in cut.read_bytes()  # the thumbnail's end marker
    for function in (read_image, check_image_file):
        with pytest.raises(ImageReadError, match=error_of(cut, JPEG_TRUNCATED)):
            function(cut)


def test_error_is_an_oserror_that_survives_pickling_and_rebuilding() -> None:
    error = ImageReadError("image file a.jpg is empty (0 bytes)", path="a.jpg", reason="is empty (0 bytes)")
    assert isinstance(error, OSError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.reason) == (str(error), "a.jpg", "is empty (0 bytes)")
    rebuilt = ImageReadError("Caught ImageReadError in DataLoader worker process 0: ...")  # as DataLoader does
    assert rebuilt.path is None and "worker" in str(rebuilt)


# datasets -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_market(tmp_path_factory) -> Path:
    return make_synthetic_market(
        tmp_path_factory.mktemp("clean_market"), num_train_ids=3, num_test_ids=4, num_cameras=2,
        image_size=(64, 32), images_per_camera=(3, 3), num_distractors=2, num_junk=1,
    )


@pytest.fixture
def market(clean_market: Path, tmp_path: Path) -> Path:
    """A fresh copy of the small synthetic Market tree for a test to damage."""
    root = tmp_path / "market"
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (root / folder).mkdir(parents=True)
        for file in (clean_market / folder).iterdir():
            (root / folder / file.name).write_bytes(file.read_bytes())
    return root


def paths_of(items) -> list[str]:
    return [path for path, _, _ in items]


def test_unreadable_train_image_is_an_error_naming_it(market: Path) -> None:
    bad = truncate(sorted((market / "bounding_box_train").iterdir())[2])
    expected = error_of(bad, JPEG_TRUNCATED) + r".*data\.skip_invalid=true"
    for name in ("market1501", "custom"):
        with pytest.raises(ImageReadError, match=expected):
            build_dataset(name, market)


def test_unreadable_query_image_is_an_error_naming_it(market: Path) -> None:
    bad = write(sorted((market / "query").iterdir())[0], b"")
    with pytest.raises(ImageReadError, match=error_of(bad, "is empty (0 bytes)") + r".*data\.skip_invalid=true"):
        build_dataset("market1501", market)


def test_several_unreadable_images_are_all_named(market: Path) -> None:
    files = sorted((market / "bounding_box_test").iterdir())
    bad = [truncate(files[1]), write(files[4], b"")]
    with pytest.raises(ImageReadError, match=r"2 unreadable image files in split folder .*bounding_box_test") as info:
        build_dataset("market1501", market)
    assert all(str(path) in str(info.value) for path in bad)


@pytest.mark.parametrize("name", ["market1501", "custom"])
def test_skip_invalid_leaves_out_exactly_the_unreadable_images_with_one_warning(market: Path, name: str) -> None:
    clean = build_dataset("market1501", market)
    bad_train = truncate(Path(clean.train[1][0]))
    bad_query = write(Path(clean.query[0][0]), b"not an image at all")
    with pytest.warns(UserWarning) as record:
        ds = build_dataset(name, market, skip_invalid=True)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1
    assert messages[0].startswith(f"{name}: skipped 2 image file(s)")
    assert f"image file {bad_train} {JPEG_TRUNCATED}" in messages[0]
    assert f"image file {bad_query} is not an image" in messages[0]
    assert paths_of(ds.train) == [p for p in paths_of(clean.train) if p != str(bad_train)]
    assert paths_of(ds.query) == paths_of(clean.query)[1:]
    assert ds.gallery == clean.gallery


def test_skip_warning_counts_names_and_images_and_names_the_first_ten(market: Path) -> None:
    gallery = sorted(p for p in (market / "bounding_box_test").iterdir() if not p.name.startswith("-1"))
    bad = [write(path, b"") for path in gallery[:12]]
    (market / "bounding_box_test" / "person.jpg").write_bytes(bad[0].read_bytes())  # invalid name too
    with pytest.warns(UserWarning) as record:
        ds = build_dataset("market1501", market, skip_invalid=True)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 13 image file(s)" in message and message.endswith("(and 3 more)")
    assert "person.jpg: the name does not match" in message
    assert sum(f"image file {path} is empty" in message for path in bad) == 9  # 10 shown, one is the name
    assert len(ds.gallery) == len(gallery) - 12


def test_split_of_only_unreadable_images_is_an_error_even_when_skipping(market: Path) -> None:
    for path in (market / "query").iterdir():
        truncate(path)
    expected = "query holds no usable images .*all junk or skipped.*" + error_of(path, JPEG_TRUNCATED)
    with pytest.raises(ValueError, match=expected):
        build_dataset("market1501", market, skip_invalid=True)


def test_custom_csv_lists_are_checked_too(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write(tmp_path / name, encoded(".jpg"))
    truncate(tmp_path / "b.jpg")
    (tmp_path / "train.csv").write_text("a.jpg,1,0\nb.jpg,2,0\n")
    (tmp_path / "query.csv").write_text("c.jpg,1,0\n")
    (tmp_path / "gallery.csv").write_text("a.jpg,1,1\n")
    with pytest.raises(ImageReadError, match=error_of(tmp_path / "b.jpg", JPEG_TRUNCATED)):
        build_dataset("custom", tmp_path)
    with pytest.warns(UserWarning, match=r"custom: skipped 1 image file\(s\).*b\.jpg is truncated"):
        ds = build_dataset("custom", tmp_path, skip_invalid=True)
    assert ds.train == [(str(tmp_path / "a.jpg"), 0, 0)]


def test_clean_dataset_builds_without_warnings(market: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_dataset("market1501", market, skip_invalid=True)


# loaders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_over_a_truncated_file_raises_the_named_error(tmp_path: Path, num_workers: int) -> None:
    """A file damaged after the dataset was built: an error naming it, never a grey image."""
    items = [(str(write(tmp_path / f"{i}.jpg", encoded(".jpg", seed=i))), i % 2, 0) for i in range(4)]
    bad = truncate(Path(items[2][0]))
    batches = iter(build_test_loader(items, height=32, width=16, batch_size=2, num_workers=num_workers))
    try:
        with pytest.raises(ImageReadError, match=error_of(bad, JPEG_TRUNCATED)):  # a worker's error keeps its type
            list(batches)
    finally:
        # Stop the worker now: left to the garbage collector, PyTorch's shutdown waits 5 s for it.
        getattr(batches, "_shutdown_workers", lambda: None)()


def test_train_loader_over_an_empty_file_raises_the_named_error(tmp_path: Path) -> None:
    items = [(str(write(tmp_path / f"{i}.jpg", encoded(".jpg", seed=i))), i % 2, 0) for i in range(4)]
    bad = write(Path(items[1][0]), b"")
    loader = build_train_loader(items, height=32, width=16, num_identities=2, num_instances=2, num_workers=0)
    loader.batch_sampler.set_epoch(0)
    with pytest.raises(ImageReadError, match=error_of(bad, "is empty (0 bytes)")):
        list(loader)
