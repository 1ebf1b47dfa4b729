"""Train and test DataLoaders: batch shapes, (pid, camid, path) alignment, reproducibility."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.data.loaders import ImageDataset, build_test_loader, build_train_loader, shut_down_workers
from reid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def make_items(folder: Path, num_pids: int = 5, per_pid: int = 3) -> list[tuple[str, int, int]]:
    """Uniform grey images whose grey level encodes the item's position (10 * index)."""
    items = []
    for index in range(num_pids * per_pid):
        pid, camid = index // per_pid, index % per_pid
        path = folder / f"{pid:04d}_c{camid + 1}s1_{index:06d}_01.png"
        cv2.imwrite(str(path), np.full((12, 6, 3), 10 * index, np.uint8))
        items.append((str(path), pid, camid))
    return items


def grey_level(image: torch.Tensor) -> int:
    """Invert the normalisation of a uniform image's red channel."""
    return round((float(image[0].mean()) * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255)


def test_test_loader_batches_keep_pid_camid_path_aligned(tmp_path: Path) -> None:
    items = make_items(tmp_path)
    loader = build_test_loader(items, height=16, width=8, batch_size=4, num_workers=0)
    assert loader.pin_memory == torch.cuda.is_available()
    seen = []
    for images, pids, camids, paths in loader:
        assert images.shape[1:] == (3, 16, 8) and images.dtype == torch.float32
        assert pids.dtype == torch.int64 and camids.dtype == torch.int64
        assert len(paths) == images.shape[0] == len(pids) == len(camids)
        for image, pid, camid, path in zip(images, pids.tolist(), camids.tolist(), paths):
            index = items.index((path, pid, camid))  # the triple is one of the items ...
            assert grey_level(image) == 10 * index  # ... and the image is that item's image
            seen.append((path, pid, camid))
    assert seen == items  # every item once, in order
    assert [len(batch[0]) for batch in loader] == [4, 4, 4, 3]


def test_shut_down_workers_ends_the_persistent_workers_now(tmp_path: Path) -> None:
    items = make_items(tmp_path)
    loader = build_test_loader(items, height=16, width=8, batch_size=4, num_workers=2)
    first = [paths for _, _, _, paths in loader]
    workers = list(loader._iterator._workers)  # persistent: alive between epochs
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    shut_down_workers(loader)
    assert loader._iterator is None and not any(w.is_alive() for w in workers)
    assert [paths for _, _, _, paths in loader] == first  # iterated again: new workers, same batches
    shut_down_workers(loader, loader, build_test_loader(items, height=16, width=8, batch_size=4, num_workers=0))
    assert loader._iterator is None


def test_train_loader_batches(tmp_path: Path) -> None:
    items = make_items(tmp_path, num_pids=6, per_pid=3)
    loader = build_train_loader(
        items, height=16, width=8, num_identities=3, num_instances=2, num_workers=0, seed=0
    )
    loader.batch_sampler.set_epoch(1)
    assert len(loader) == len(loader.batch_sampler) > 0
    for images, pids, camids, paths in loader:
        assert images.shape == (6, 3, 16, 8) and images.dtype == torch.float32
        assert len(set(pids.tolist())) == 3
        assert (pids.view(3, 2) == pids.view(3, 2)[:, :1]).all()  # K consecutive images per pid
        lookup = {path: (pid, camid) for path, pid, camid in items}
        assert [lookup[p] for p in paths] == list(zip(pids.tolist(), camids.tolist()))


def train_epoch(items: list, seed: int, num_workers: int) -> list[torch.Tensor]:
    loader = build_train_loader(
        items, height=16, width=8, num_identities=2, num_instances=2, num_workers=num_workers, seed=seed
    )
    loader.batch_sampler.set_epoch(0)
    return [images for images, *_ in loader]


def test_train_loader_is_reproducible(tmp_path: Path) -> None:
    # random-looking images, so that flips and crops change the tensors
    items = make_items(tmp_path, num_pids=4, per_pid=2)
    rng = np.random.default_rng(0)
    for path, _, _ in items:
        cv2.imwrite(path, rng.integers(0, 256, size=(12, 6, 3), dtype=np.uint8))
    first, again, other = train_epoch(items, 3, 0), train_epoch(items, 3, 0), train_epoch(items, 4, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))


def test_train_loader_workers_are_seeded_differently_and_reproducibly(tmp_path: Path) -> None:
    # Every item is the same picture: workers that shared one augmentation stream (as forked
    # copies of a seeded pipeline do) would produce identical batches.
    items = make_items(tmp_path, num_pids=4, per_pid=2)
    picture = np.random.default_rng(0).integers(0, 256, size=(12, 6, 3), dtype=np.uint8)
    for path, _, _ in items:
        cv2.imwrite(path, picture)
    first, again = train_epoch(items, 3, 2), train_epoch(items, 3, 2)
    assert len(first) == len(again) >= 2
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # batch 0 from worker 0, batch 1 from worker 1


def test_corrupt_image_error_names_the_file(tmp_path: Path) -> None:
    items = make_items(tmp_path, num_pids=1, per_pid=2)
    Path(items[1][0]).write_bytes(b"garbage")
    loader = build_test_loader(items, height=16, width=8, batch_size=2, num_workers=0)
    with pytest.raises(OSError, match=re.escape(items[1][0])):
        next(iter(loader))


def test_image_dataset_item(tmp_path: Path) -> None:
    items = make_items(tmp_path, num_pids=2, per_pid=1)
    dataset = ImageDataset(items, build_transforms(16, 8, False))
    image, pid, camid, path = dataset[1]
    assert (type(pid), type(camid), type(path)) == (int, int, str)
    assert (path, pid, camid) == items[1]
    assert grey_level(image) == 10
    with pytest.raises(ValueError, match="at least one"):
        ImageDataset([], build_transforms(16, 8, False))


def test_resumed_epoch_sees_the_same_augmented_images(tmp_path: Path) -> None:
    """Starting an epoch at batch 2 (a resumed run) gives exactly the tail of the full epoch,
    augmentations included, with or without worker processes."""
    items = make_items(tmp_path, num_pids=6, per_pid=3)
    rng = np.random.default_rng(1)
    for path, _, _ in items:
        cv2.imwrite(path, rng.integers(0, 256, size=(12, 6, 3), dtype=np.uint8))

    def epoch_batches(num_workers: int, start_batch: int) -> list[torch.Tensor]:
        loader = build_train_loader(items, height=16, width=8, num_identities=2, num_instances=2,
                                    num_workers=num_workers, seed=5, erasing_prob=0.5)
        loader.batch_sampler.set_epoch(3, start_batch=start_batch)
        return [images for images, *_ in loader]

    full = epoch_batches(0, 0)
    assert len(full) >= 4
    for resumed in (epoch_batches(0, 2), epoch_batches(2, 2)):
        assert len(resumed) == len(full) - 2
        assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed))
