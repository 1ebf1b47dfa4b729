"""DataLoaders: a train loader over the identity sampler, test loaders that keep (pid, camid, path).

Reproducibility: the batch plan comes from the sampler (seeded by (seed, epoch)), and every
training sample carries its own augmentation seed, a pure function of (seed, rank, epoch,
batch number, position in the batch). So the same arguments give the same batches whatever
the number of workers, and a run resumed mid-epoch (``set_epoch(epoch, start_batch)``)
sees exactly the images, and augmentations, that the uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from .datasets.base import Item
from .samplers import IdentityBatchSampler
from .transforms import build_transforms, read_image, seed_transform

Transform = Callable[..., dict[str, Any]]


class ImageDataset(Dataset):
    """Items ``(path, pid, camid)`` -> ``(image tensor, pid, camid, path)``.

    Paths, pids and camids are held in numpy arrays rather than a list of tuples: worker
    processes then share them instead of copying them page by page as Python touches the
    reference counts of millions of small objects.

    Images are decoded strictly (:func:`reid.data.transforms.read_image`): a file that is
    empty, truncated or undecodable raises ``ImageReadError`` naming it, from a worker
    process too, never a partly grey image. The lists of :func:`reid.data.build_dataset`
    have already passed the cheap check of every file (``data.skip_invalid`` leaves the bad
    ones out there); a file damaged since, or corrupt inside, stops the loader here.
    """

    def __init__(self, items: Sequence[Item], transform: Transform) -> None:
        if len(items) == 0:
            raise ValueError("ImageDataset needs at least one (path, pid, camid) item")
        paths, pids, camids = zip(*items)
        self.paths = np.array(paths, dtype=np.str_)
        self.pids = np.array(pids, dtype=np.int64)
        self.camids = np.array(camids, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, str]:
        """``dataset[i]``, or ``dataset[i, seed]`` to draw the augmentation from ``seed``."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        path = str(self.paths[index])
        if seed is not None:
            seed_transform(self.transform, seed)
        image = self.transform(image=read_image(path))["image"]
        return image, int(self.pids[index]), int(self.camids[index]), path


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Pairs each index of an :class:`IdentityBatchSampler` batch with its augmentation seed.

    The seed depends only on (seed, rank, epoch, batch number, position), never on which worker
    loads the sample or how many batches came before in this process: that is what makes an
    interrupted-and-resumed run end at the same weights as an uninterrupted one.
    """

    def __init__(self, sampler: IdentityBatchSampler, seed: int) -> None:
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for number, batch in enumerate(self.sampler, start=self.start_batch):
            key = [self.seed, self.sampler.rank, self.epoch, number]
            seeds = np.random.SeedSequence(key).generate_state(len(batch))
            yield [(int(index), int(s)) for index, s in zip(batch, seeds)]


def build_train_loader(
    items: Sequence[Item],
    *,
    height: int,
    width: int,
    num_identities: int,
    num_instances: int,
    num_workers: int = 2,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
    camera_balanced: bool = False,
    **transform_kwargs: Any,
) -> DataLoader:
    """Batches of ``num_identities`` x ``num_instances`` augmented training images.

    Call ``loader.batch_sampler.set_epoch(epoch)`` (or ``set_epoch(epoch, start_batch)`` to
    resume an interrupted epoch) before each epoch. ``transform_kwargs``
    go to :func:`reid.data.transforms.build_transforms` (flip_prob, padding, ...).
    ``pin_memory`` defaults to whether CUDA is available. ``camera_balanced``: each identity's K
    images of a batch come from as many of its cameras as possible (the sampler's ``camids``).
    """
    transform = build_transforms(height, width, True, **transform_kwargs)
    dataset = ImageDataset(items, transform)
    sampler = IdentityBatchSampler(
        dataset.pids, num_identities, num_instances, seed=seed, rank=rank, world_size=world_size,
        camids=dataset.camids if camera_balanced else None,
    )
    return DataLoader(
        dataset,
        batch_sampler=SeededBatchSampler(sampler, seed),
        **_worker_kwargs(num_workers, pin_memory),
    )


def build_test_loader(
    items: Sequence[Item],
    *,
    height: int,
    width: int,
    batch_size: int = 128,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pipeline: str = "reid",
    resize: int = 256,
) -> DataLoader:
    """Un-augmented images in the items' order: batches of ``(images, pids, camids, paths)``.

    ``pipeline`` / ``resize``: see :func:`reid.data.transforms.build_transforms`."""
    norm = {key: value for key, value in (("mean", mean), ("std", std)) if value is not None}
    dataset = ImageDataset(items, build_transforms(height, width, False, pipeline=pipeline, resize=resize, **norm))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, drop_last=False, **_worker_kwargs(num_workers, pin_memory)
    )


def _worker_kwargs(num_workers: int, pin_memory: bool | None) -> dict[str, Any]:
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
        # Workers that survive the epoch skip re-importing torch and re-forking every epoch.
        "persistent_workers": num_workers > 0,
        "worker_init_fn": init_worker if num_workers > 0 else None,
    }


def shut_down_workers(*loaders: DataLoader) -> None:
    """End the persistent worker processes of ``loaders`` now, not when the loaders are collected.

    The workers leave SIGTERM to the main process (``init_worker``), so a loader still alive at
    interpreter exit (held by a reference cycle) would make multiprocessing's exit handler,
    which sends one SIGTERM and joins, wait for ever. A loader iterated again starts new workers.
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # where DataLoader keeps persistent workers
        if iterator is None:
            continue
        if hasattr(iterator, "_shutdown_workers"):  # a multiprocessing iterator
            iterator._shutdown_workers()
        loader._iterator = None


def init_worker(worker_id: int) -> None:
    """Seed a worker's global generators from the seed PyTorch derived for it, and leave
    SIGINT / SIGTERM to the main process.

    Training samples carry their own augmentation seeds; this only keeps any other use of the
    global generators in a worker repeatable and distinct between workers. Ctrl-C, ``timeout``,
    SLURM and systemd signal the whole process group: a worker that died of it would take the
    batch the main process waits for, so the main process could not finish its step and write
    the checkpoint to resume from. The main process stops and shuts the workers down itself
    (a second SIGTERM, as its shutdown sends to a worker that does not end, ends the worker).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _second_sigterm_ends_worker)
    seed = get_worker_info().seed % 2**32
    np.random.seed(seed)
    random.seed(seed)


_sigterm_seen = False


def _second_sigterm_ends_worker(signum: int, frame: Any) -> None:
    global _sigterm_seen
    if _sigterm_seen:
        os._exit(128 + signum)  # a worker's exit code when a signal ends it
    _sigterm_seen = True
