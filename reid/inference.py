"""Running a trained model over images: loaders to feature sets, a user's own images to embeddings.

:func:`extract_features` runs a model over a loader of (image, pid, camid, path) batches and
returns a :class:`reid.evaluation.features.FeatureSet`; every embedding comes from
``ReidModel.embed`` (the feature, flip test-time augmentation, L2 normalisation), the one path
the ONNX graph (:class:`reid.models.EmbeddingModule`) takes too.

``FeatureExtractor`` wraps a trained model with the test pipeline it was evaluated with
(resize to the training size, ImageNet normalisation) and runs it in batches through
:func:`extract_features`, so flip test-time augmentation and the choice of feature are exactly
those of the evaluation, L2-normalised by default. Its checkpoint defaults (the stored
``test.feature`` / ``test.flip``) are ``reid.builders.embedding_options``, which ``reid export``
uses too. :func:`extract_query_gallery` is the one way a test split's features are extracted
(training's evaluation, the ablation, ``reid test`` / ``report`` / ``visualize``).
Images may have any file name; only folders of Market-style names carry identity and camera
labels (:func:`labels_from_names`).

Unreadable image files (empty, not an image, truncated, undecodable) are never used: they
stop the extraction, before any model work where a cheap check can tell, with an error
naming them, or with ``extract(..., skip_invalid=True)`` are left out with one warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset

from .data.datasets.base import NameFormat, check_images, format_listing
from .data.datasets.custom import CUSTOM_NAME_PATTERN
from .data.loaders import init_worker
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageReadError, build_transforms, read_image
from .distributed import DistInfo, all_gather_objects, all_gather_rows, raise_if_any_failed
from .evaluation.features import FeatureSet
from .models.model import check_feature
from .progress import progress_bar

ImageInput = Union[str, os.PathLike, np.ndarray]
"""An image file path, or an H x W x 3 uint8 RGB array."""

# Formats OpenCV decodes in every build (opencv-python-headless included); matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Market-1501 and DukeMTMC-reID names ("0002_c1s1_000451_03.jpg", "0001_c2_f0046182.jpg"):
# the custom dataset's rule, any pid width, cameras from 1 with no upper bound.
_LABELLED_NAME = NameFormat(pattern=CUSTOM_NAME_PATTERN, example="0002_c1s1_000451_03.jpg", first_camera=1)

SKIP_HINT = "pass skip_invalid=True (reid extract --skip-invalid) to leave such files out"
_UNREADABLE = -2  # the pid _ImageList gives an image it could not decode (skip_invalid): its row is dropped


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader,
    device: torch.device | str = "cpu",
    *,
    feature: str = "bn",
    flip: bool = False,
    normalize: bool = False,
    progress: bool | None = None,
    description: str = "extracting features",
    distributed: DistInfo | None = None,
) -> FeatureSet:
    """Run ``model`` in eval mode over ``loader`` (batches of image, pid, camid, path).

    Each batch goes through ``model.embed(images, feature=..., flip=..., normalize=...)``
    (:meth:`reid.models.ReidModel.embed`): by default the features as the model gives them
    (not normalised; evaluation applies :func:`reid.evaluation.features.postprocess_features`
    later, beta normalisation included). ``flip`` averages the features of the image and of
    its mirror image, the usual re-ID test-time augmentation. ``progress``: a bar over the
    images with their rate (see :mod:`reid.progress`; None: on a terminal only).

    ``distributed``: this process's place in a torchrun job (:func:`reid.distributed.init_distributed`).
    With more than one process, every process of the job must call this with the same loader (one
    that reads its dataset in order, a test loader): each extracts its shard (:func:`shard_range`,
    whole batches of the one-process plan) and every one returns the whole set, in the loader's
    order, the bits one process with the same number of threads gives (each process holds the
    whole set: its memory is one process's). Only rank 0 shows progress, over its own shard.
    An error on any process stops all of them (:func:`reid.distributed.raise_if_any_failed`).
    """
    check_feature(feature)
    if distributed is None or not distributed.enabled:
        extracted = _embed_batches(model, loader, device, feature=feature, flip=flip, normalize=normalize,
                                   progress=progress, description=description)
        if extracted is None:
            raise ValueError("extract_features: the loader yielded no images")
        return extracted
    local, error = None, None
    try:
        local = _embed_batches(model, _shard_loader(loader, distributed), device, feature=feature, flip=flip,
                               normalize=normalize, progress=progress if distributed.is_main else False,
                               description=f"{description} (rank 0's shard of {distributed.world_size})")
    except Exception as err:  # the other processes must hear of it before they wait for this one's rows
        error = err
    raise_if_any_failed(error)
    return _gather_shards(local)


def _embed_batches(model: nn.Module, loader, device: torch.device | str, *, feature: str, flip: bool, normalize: bool,
                   progress: bool | None, description: str) -> FeatureSet | None:
    """The features of every batch of ``loader``, in its order; None when it yields none."""
    was_training = model.training
    model.eval()
    chunks, pids, camids, paths = [], [], [], []
    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    try:
        with progress_bar(total=total, desc=description, unit="img", progress=progress) as bar:
            for images, batch_pids, batch_camids, batch_paths in loader:
                images = images.to(device, non_blocking=True)
                chunks.append(model.embed(images, feature=feature, flip=flip, normalize=normalize).cpu())
                pids.append(torch.as_tensor(batch_pids))
                camids.append(torch.as_tensor(batch_camids))
                paths.extend(batch_paths)
                bar.update(len(images))
    finally:
        model.train(was_training)
    if not chunks:
        return None
    return FeatureSet(
        torch.cat(chunks).numpy(), torch.cat(pids).long().numpy(), torch.cat(camids).long().numpy(), paths
    )


def shard_range(num_items: int, batch_size: int, rank: int, world_size: int) -> range:
    """The items that process ``rank`` of ``world_size`` extracts: a contiguous run of whole batches
    of the one-process plan (batches of ``batch_size`` from item 0), as even as whole batches allow.

    The ranks in order cover every item once (no padding, no repeats; with more ranks than
    batches the last ones get none), so their shards concatenated in rank order are the
    one-process order. Whole batches, because an image's feature depends in its last bits on the size of the batch it is
    computed in (oneDNN convolutions and BLAS products choose their blocking by shape; measured
    on the 2-core CPU: up to 1e-7 on test_resnet and resnet18, 5e-6 on mobilenetv2_100), and the
    same batches give the same bits.
    """
    if batch_size < 1:
        raise ValueError(f"distributed extraction: expected a loader with a batch size, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"distributed extraction: rank {rank} of world size {world_size} is not a process")
    # Each rank takes num_batches // world_size batches, the first num_batches % world_size one more:
    # the ranks without work, if any, are the last ones (rank 0, which shows the progress, has work).
    per_rank, extra = divmod(-(-num_items // batch_size), world_size)
    first = rank * per_rank + min(rank, extra)
    last = first + per_rank + (rank < extra)
    return range(min(first * batch_size, num_items), min(last * batch_size, num_items))


# What a loader's batches depend on, carried over to the loader of one shard.
_LOADER_SETTINGS = ("batch_size", "drop_last", "num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn",
                    "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers", "pin_memory_device",
                    "in_order")


def _shard_loader(loader, distributed: DistInfo) -> DataLoader:
    """``loader`` over this process's shard only (:func:`shard_range`), with its batch size,
    workers and collation."""
    in_order = (isinstance(loader, DataLoader) and isinstance(loader.sampler, SequentialSampler)
                and loader.batch_size is not None)
    if not in_order:
        what = type(loader).__name__ if not isinstance(loader, DataLoader) else "a DataLoader with its own sampler"
        raise ValueError(f"distributed extraction: expected a DataLoader that reads its dataset in order in "
                         f"batches of batch_size (shuffle=False, no sampler), got {what}")
    shard = shard_range(len(loader.dataset), loader.batch_size, distributed.rank, distributed.world_size)
    settings = {name: getattr(loader, name) for name in _LOADER_SETTINGS if hasattr(loader, name)}
    return DataLoader(Subset(loader.dataset, shard), shuffle=False, **settings)


def _gather_shards(local: FeatureSet | None) -> FeatureSet:
    """Every process's shard (None: it had no items), concatenated in rank order, on every process."""
    parts = all_gather_objects(None if local is None else
                               (local.features.shape[1:], local.features.dtype, local.pids, local.camids, local.paths))
    present = [part for part in parts if part is not None]
    if not present:
        raise ValueError("extract_features: the loader yielded no images")
    shape, dtype = present[0][0], present[0][1]
    counts = [0 if part is None else len(part[4]) for part in parts]
    rows = torch.from_numpy(local.features if local is not None else np.empty((0, *shape), dtype))
    return FeatureSet(all_gather_rows(rows, counts).numpy(), np.concatenate([part[2] for part in present]),
                      np.concatenate([part[3] for part in present]), [path for part in present for path in part[4]])


def extract_query_gallery(model: nn.Module, query_loader, gallery_loader, device: torch.device | str = "cpu", *,
                          feature: str = "bn", flip: bool = False, progress: bool | None = None,
                          distributed: DistInfo | None = None) -> tuple[FeatureSet, FeatureSet]:
    """(query, gallery) feature sets of a test split: :func:`extract_features` over each loader
    (not normalised: the evaluation post-processes). A leave-one-out set passes one loader for
    both and is extracted once (the same FeatureSet twice). ``distributed``: split over the
    processes of a torchrun job, as in :func:`extract_features`."""
    query = extract_features(model, query_loader, device, feature=feature, flip=flip, progress=progress,
                             description="extracting query", distributed=distributed)
    if gallery_loader is query_loader:
        return query, query
    return query, extract_features(model, gallery_loader, device, feature=feature, flip=flip, progress=progress,
                                   description="extracting gallery", distributed=distributed)


class _ImageList(Dataset):
    """Paths and/or arrays -> ``(image tensor, -1, -1, name)``, the batches extract_features reads.

    ``positions``: the index of each image in the caller's list, for the ``"<array i>"`` names
    (default: its index here). With ``skip_invalid`` a file that does not decode gives a
    placeholder image with pid ``_UNREADABLE`` instead of raising, for the caller to drop.
    """

    def __init__(
        self,
        images: Sequence[ImageInput],
        transform,
        *,
        skip_invalid: bool = False,
        positions: Sequence[int] | None = None,
    ) -> None:
        self.images = images
        self.transform = transform
        self.skip_invalid = skip_invalid
        self.positions = positions

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, str]:
        image = self.images[index]
        if isinstance(image, np.ndarray):
            position = index if self.positions is None else self.positions[index]
            name, pixels = f"<array {position}>", image
        else:
            name = os.fspath(image)
            try:
                pixels = read_image(name)  # raises naming the file when it is missing or not an image
            except ImageReadError:
                if not self.skip_invalid:
                    raise
                return self.transform(image=np.zeros((1, 1, 3), np.uint8))["image"], _UNREADABLE, -1, name
        return self.transform(image=pixels)["image"], -1, -1, name


def _check_inputs(images: Sequence[ImageInput]) -> None:
    """Fail before any model work on an input that is neither a path nor an RGB uint8 array."""
    for index, image in enumerate(images):
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise ValueError(
                    f"images[{index}]: expected an H x W x 3 uint8 RGB array, got shape "
                    f"{image.shape} and dtype {image.dtype}"
                )
        elif not isinstance(image, (str, os.PathLike)):
            raise TypeError(f"images[{index}]: expected an image path or a numpy array, got {type(image).__name__}")


class FeatureExtractor:
    """``extractor(images) -> N x D`` float32 embeddings (L2-normalised unless ``normalize=False``).

    Args:
        model: a :class:`reid.models.ReidModel` (anything with its ``embed``). It is moved to
            ``device`` and used in eval mode.
        height, width: the input size the model was trained at (``data.height/width``).
        feature: "bn" (after the BNNeck) or "pre_bn" (pooled trunk features).
        flip: average the features of each image and of its mirror image (before
            normalisation), the usual re-ID test-time augmentation.
        normalize: L2-normalise each row (so squared Euclidean distance is 2 - 2 cos).
            False returns the features as the model gives them, e.g. for beta normalisation
            (:func:`reid.evaluation.features.postprocess_features`) later.
        batch_size, num_workers: how images are batched and decoded.
        mean, std: the normalisation the model was trained with.
        pipeline, resize: the test transform ("reid": resize to height x width; "retrieval": shorter
            side to ``resize``, then a centre crop), as in :func:`reid.data.transforms.build_transforms`.
        progress: a bar over the images (see :mod:`reid.progress`; None: on a terminal only).
        distributed: this process's place in a torchrun job: the images are split over its
            processes and every one gets all the features (see :func:`extract_features`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        height: int,
        width: int,
        device: torch.device | str = "cpu",
        feature: str = "bn",
        flip: bool = False,
        normalize: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pipeline: str = "reid",
        resize: int = 256,
        progress: bool | None = None,
        distributed: DistInfo | None = None,
    ) -> None:
        check_feature(feature)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.height, self.width = int(height), int(width)
        self.feature, self.flip, self.normalize = feature, bool(flip), bool(normalize)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.progress, self.distributed = progress, distributed
        self.transform = build_transforms(self.height, self.width, False, pipeline=pipeline, resize=resize,
                                          mean=mean, std=std)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        *,
        flip: bool | None = None,
        feature: str | None = None,
        normalize: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool | None = None,
        distributed: DistInfo | None = None,
    ) -> "FeatureExtractor":
        """The model of a checkpoint written by `reid train`, with its stored input size.

        ``flip`` and ``feature`` default to the checkpoint's ``test.flip`` / ``test.feature``
        (``reid.builders.embedding_options``), so the embeddings are those its evaluation ranked with. A
        checkpoint whose weights do not fit its stored architecture or class count is a
        ValueError naming the file.
        """
        from .builders import embedding_options, load_model_from_checkpoint  # the config layer, above this module

        model, cfg = load_model_from_checkpoint(path, device)
        return cls(
            model, height=cfg.data.height, width=cfg.data.width, pipeline=cfg.data.pipeline, resize=cfg.data.resize,
            device=device, **embedding_options(cfg, feature=feature, flip=flip),
            normalize=normalize, batch_size=batch_size, num_workers=num_workers, progress=progress,
            distributed=distributed,
        )

    @property
    def feature_dim(self) -> int:
        return int(self.model.feature_dim)

    def __call__(self, images: Sequence[ImageInput]) -> np.ndarray:
        """The feature rows of ``images``; any unreadable file raises (see :meth:`extract`)."""
        return self.extract(images).features

    def extract(
        self,
        images: Sequence[ImageInput],
        pids: Sequence[int] | None = None,
        camids: Sequence[int] | None = None,
        *,
        skip_invalid: bool = False,
    ) -> FeatureSet:
        """Features of ``images`` in their order, with labels (-1 where not given).

        ``paths`` of the result are the image paths as given, ``"<array i>"`` for arrays.

        Before any model work every image file passes a cheap integrity check
        (:func:`reid.data.transforms.check_image_file`: empty? not an image? truncated?).
        A missing file raises ``FileNotFoundError``. A file that fails the check raises
        :class:`reid.data.transforms.ImageReadError` naming every such file, unless
        ``skip_invalid``: then those images are left out, as are files that pass the check
        but do not decode (found while extracting, where without ``skip_invalid`` they raise
        the same error). The result then has fewer rows than ``images``: its ``paths``,
        ``pids`` and ``camids`` are those of the images kept, in their order, and one
        warning names the files left out (with what is wrong with each).
        """
        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            raise TypeError(f"images: expected a list of images, got a single {type(images).__name__}; wrap it in [ ]")
        images = list(images)  # an N x H x W x 3 array is N images
        _check_inputs(images)
        pids_array = _labels(pids, len(images), "pids")
        camids_array = _labels(camids, len(images), "camids")
        keep, skipped = _check_files(images, skip_invalid)
        if skipped:
            images = [images[i] for i in keep]
            pids_array, camids_array = pids_array[keep], camids_array[keep]
        if not images:
            _warn_left_out(skipped)
            empty = np.zeros((0, self.feature_dim), dtype=np.float32)
            return FeatureSet(empty, pids_array, camids_array, [])
        loader = self._loader(images, skip_invalid=skip_invalid, positions=keep if skipped else None)
        raw = extract_features(self.model, loader, self.device, feature=self.feature, flip=self.flip,
                               normalize=self.normalize, progress=self.progress, distributed=self.distributed)
        features, paths = raw.features, raw.paths
        undecodable = raw.pids == _UNREADABLE
        if undecodable.any():
            skipped += [_read_error_message(path) for path, bad in zip(paths, undecodable) if bad]
            kept = np.flatnonzero(~undecodable)
            features, pids_array, camids_array = features[kept], pids_array[kept], camids_array[kept]
            paths = [paths[i] for i in kept]
        _warn_left_out(skipped)
        return FeatureSet(features, pids_array, camids_array, paths)

    def _loader(
        self, images: list[ImageInput], *, skip_invalid: bool = False, positions: Sequence[int] | None = None
    ) -> DataLoader:
        workers = min(self.num_workers, len(images))
        return DataLoader(
            _ImageList(images, self.transform, skip_invalid=skip_invalid, positions=positions),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=init_worker if workers > 0 else None,
        )


def _check_files(images: list[ImageInput], skip_invalid: bool) -> tuple[list[int], list[str]]:
    """Positions of the images to extract, and messages for the files left out (skip_invalid).

    Every path passes :func:`reid.data.datasets.base.check_images` (missing files raise,
    whatever ``skip_invalid``; arrays need no check).
    """
    files = [(os.fspath(image), index, -1) for index, image in enumerate(images) if not isinstance(image, np.ndarray)]
    good, skipped = check_images(files, skip_invalid=skip_invalid, where="the images to extract", hint=SKIP_HINT)
    good_files = {index for _, index, _ in good}
    keep = [index for index, image in enumerate(images) if isinstance(image, np.ndarray) or index in good_files]
    return keep, skipped


def _read_error_message(path: str) -> str:
    """What is wrong with a file that failed to decode in a loader (maybe in a worker process)."""
    try:
        read_image(path)
    except OSError as error:
        return str(error)
    return f"image file {path} could not be read while extracting"


def _warn_left_out(messages: list[str]) -> None:
    if messages:
        warnings.warn(
            f"left out {len(messages)} unreadable image file(s) (skip_invalid): {format_listing(messages)}",
            stacklevel=3,
        )


def _labels(values: Sequence[int] | None, count: int, name: str) -> np.ndarray:
    if values is None:
        return np.full(count, -1, dtype=np.int64)
    array = np.asarray(values, dtype=np.int64)
    if array.shape != (count,):
        raise ValueError(f"{name}: expected {count} values (one per image), got shape {array.shape}")
    return array


def find_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by their path relative to it.

    Files with other extensions (notes, Thumbs.db) are ignored, and so are hidden files and
    folders (names starting with "."): macOS writes "._name.jpg" companions that are not images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    suffixes = tuple(e.lower() for e in extensions)
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [Path(directory, f) for f in files if not f.startswith(".") and f.lower().endswith(suffixes)]
    if not found:
        raise ValueError(f"image folder {root} holds no images (looked for {', '.join(suffixes)}, recursively)")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def labels_from_names(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """(pids, camids) from Market / DukeMTMC-style file names, -1 for names that do not parse.

    ``0002_c1s1_000451_03.jpg`` -> (2, 0): cameras are numbered from 1 in names, from 0 here.
    """
    pids, camids = [], []
    for path in paths:
        try:
            pid, camid = _LABELLED_NAME.parse(Path(path).stem)
        except ValueError:
            pid, camid = -1, -1
        pids.append(pid)
        camids.append(camid)
    return np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64)
