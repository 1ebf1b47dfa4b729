"""tools/extract.py (`reid extract`): a folder of arbitrary images to a FeatureSet .npz; query folder ranked against gallery."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.evaluation.features import FeatureSet
from reid.inference import FeatureExtractor
from tools import extract as extract_tool

HEIGHT, WIDTH = 64, 32


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint[0]


def write_image(path: Path, seed: int, size: tuple[int, int] = (96, 48)) -> Path:
    """Random colour blobs, H x W from ``size``, in the format of the file's extension."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, size=(4, 2, 3), dtype=np.uint8), (size[1], size[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix.lower(), image)
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def test_images_folder_to_npz_round_trips_through_featureset(checkpoint, tmp_path):
    folder = tmp_path / "my crops"
    names = ["0007_c2s1_000101_00.jpg", "IMG 2024-01-01 (copy).JPG", "nested/0003_c5_f0000001.png", "nested/x.png"]
    for seed, name in enumerate(names):
        write_image(folder / name, seed)
    (folder / "nested" / "labels.csv").write_text("not,an,image\n")

    output = tmp_path / "out" / "feats.npz"
    result = extract_tool.main(["--weights", str(checkpoint), "--images", str(folder), "--output", str(output),
                                "--device", "cpu", "--batch-size", "3"])
    loaded = FeatureSet.load(output)
    assert loaded.paths == [str(folder / name) for name in names]
    assert loaded.pids.tolist() == [7, -1, 3, -1] and loaded.camids.tolist() == [1, -1, 4, -1]
    np.testing.assert_array_equal(loaded.features, result["features"].features)
    assert loaded.features.dtype == np.float32 and loaded.features.shape[0] == len(names)
    np.testing.assert_allclose(np.linalg.norm(loaded.features, axis=1), 1.0, atol=1e-5)
    # the same numbers as the Python API on the same files
    np.testing.assert_allclose(loaded.features, FeatureExtractor.from_checkpoint(checkpoint)(loaded.paths), atol=1e-6)


@pytest.fixture
def query_and_gallery(tmp_path) -> tuple[Path, Path]:
    query, gallery = tmp_path / "query", tmp_path / "gallery"
    a = write_image(query / "person a.jpg", seed=1)
    b = write_image(query / "b" / "0001_c1s1_000001_00.png", seed=2, size=(128, 64))
    (gallery / "cam2").mkdir(parents=True)
    shutil.copy(a, gallery / "cam2" / "a again.jpg")  # the same bytes under another name
    shutil.copy(b, gallery / "b_copy.png")
    for seed in range(10, 15):
        write_image(gallery / f"other_{seed}.jpg", seed)
    (gallery / "README").write_text("gallery of crops")
    return query, gallery


def parse_ranking(text: str) -> dict[str, list[tuple[str, float]]]:
    """The printed ranking back into {query: [(gallery name, distance), ...]}."""
    rankings: dict[str, list[tuple[str, float]]] = {}
    current = None
    for line in text.splitlines()[1:]:
        match = re.fullmatch(r"\s+(\d+)  (\d+\.\d{6})  (.+)", line)
        if match:
            assert int(match[1]) == len(rankings[current]) + 1
            rankings[current].append((match[3], float(match[2])))
        elif line.strip():
            current = line
            rankings[current] = []
    return rankings


def test_query_against_gallery_puts_the_identical_image_first(checkpoint, query_and_gallery, tmp_path, capsys):
    query, gallery = query_and_gallery
    argv = ["--weights", str(checkpoint), "--query", str(query), "--gallery", str(gallery), "--top-k", "3",
            "--device", "cpu", "--output-dir", str(tmp_path / "feats")]
    result = extract_tool.main(argv)
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("2 query images against 7 gallery images")
    ranking = parse_ranking(printed)
    assert list(ranking) == ["b/0001_c1s1_000001_00.png", "person a.jpg"]  # sorted by path
    assert [name for name, _ in ranking["person a.jpg"]][0] == "cam2/a again.jpg"
    assert [name for name, _ in ranking["b/0001_c1s1_000001_00.png"]][0] == "b_copy.png"
    for matches in ranking.values():
        distances = [d for _, d in matches]
        assert len(matches) == 3 and distances == sorted(distances)
        assert distances[0] < 1e-5 and distances[1] > 1e-4  # identical pixels vs a different image
    # what main returns is what it printed (to the printed precision)
    for name, matches in result["matches"].items():
        assert [m for m, _ in matches] == [m for m, _ in ranking[name]]
        np.testing.assert_allclose([d for _, d in matches], [d for _, d in ranking[name]], atol=1e-6)

    # both feature sets were written and agree with a direct distance computation
    q, g = FeatureSet.load(tmp_path / "feats" / "query.npz"), FeatureSet.load(tmp_path / "feats" / "gallery.npz")
    assert (len(q), len(g)) == (2, 7) and q.pids.tolist() == [1, -1] and q.camids.tolist() == [0, -1]
    squared = ((q.features[:, None] - g.features[None]) ** 2).sum(-1)
    first = Path(g.paths[int(np.argmin(squared[1]))]).relative_to(gallery).as_posix()
    assert first == "cam2/a again.jpg"
    assert result["matches"]["person a.jpg"][1][1] == pytest.approx(np.sort(squared[1])[1], abs=1e-5)

    # the same command prints the same text again (sorted, deterministic); the files exist now
    extract_tool.main([*argv, "--overwrite"])
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "x"], "--images needs --output"),
        (["--query", "q"], "give --images DIR --output FILE.npz, or --query DIR --gallery DIR"),
        (["--images", "x", "--output", "f.npz", "--query", "q"], "not both"),
        (["--query", "q", "--gallery", "g", "--output", "f.npz"], "use --output-dir"),
        (["--query", "q", "--gallery", "g", "--top-k", "0"], "--top-k"),
    ],
)
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        extract_tool.main(["--weights", "w.pt", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_folder_is_named(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        extract_tool.main(["--weights", str(checkpoint), "--images", str(tmp_path / "no-such-folder"),
                           "--output", str(tmp_path / "f.npz"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --images {tmp_path / 'no-such-folder'}: no such folder\n"
    assert not (tmp_path / "f.npz").exists()
