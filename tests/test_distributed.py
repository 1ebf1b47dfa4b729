"""Distributed extraction: the shard of each process, and real gloo process groups gathering
features identical to one process (reid/distributed.py, reid.inference.extract_features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset

from reid.distributed import DistInfo, all_gather_rows, raise_if_any_failed
from reid.evaluation.features import FeatureSet
from reid.inference import extract_features, shard_range


@pytest.mark.parametrize(("num_items", "batch_size", "world_size", "expected"), [
    (10, 3, 3, [range(0, 6), range(6, 9), range(9, 10)]),  # 4 batches: 2 + 1 + 1, the last one short
    (12, 4, 3, [range(0, 4), range(4, 8), range(8, 12)]),  # even
    (3, 2, 3, [range(0, 2), range(2, 3), range(3, 3)]),  # more processes than batches: the last gets none
    (1, 64, 4, [range(0, 1), range(1, 1), range(1, 1), range(1, 1)]),
    (7, 2, 1, [range(0, 7)]),
])
def test_shard_range_hand_computed(num_items, batch_size, world_size, expected):
    assert [shard_range(num_items, batch_size, rank, world_size) for rank in range(world_size)] == expected


def test_shard_range_covers_every_item_once_in_whole_batches():
    for num_items in range(0, 23):
        for batch_size in range(1, 6):
            num_batches = -(-num_items // batch_size)
            for world_size in range(1, 9):
                shards = [shard_range(num_items, batch_size, rank, world_size) for rank in range(world_size)]
                # concatenated in rank order: the one-process order, nothing padded or repeated
                assert [i for shard in shards for i in shard] == list(range(num_items))
                # each shard is whole batches of the one-process plan (the last may be the short one)
                assert all(shard.start % batch_size == 0 for shard in shards if len(shard))
                batches = [-(-len(shard) // batch_size) for shard in shards]
                assert sum(batches) == num_batches and max(batches) - min(batches) <= 1
                # the processes without work are the last ones
                assert batches == sorted(batches, reverse=True)


def test_shard_range_refuses_what_is_not_a_process_or_a_batch():
    with pytest.raises(ValueError, match=r"^distributed extraction: rank 2 of world size 2 is not a process$"):
        shard_range(10, 4, 2, 2)
    with pytest.raises(ValueError, match=r"^distributed extraction: expected a loader with a batch size, got 0$"):
        shard_range(10, 0, 0, 2)


class NumberedImages(Dataset):
    """``(3 x 64 x 32 image from seed i, pid i // 2, camid i % 3, "img<i>.jpg")``; item ``fail_at`` raises."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if index == self.fail_at:
            raise OSError(f"img{index}.jpg: not an image")
        image = torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(index))
        return image, index // 2, index % 3, f"img{index}.jpg"


WORLD_SIZE = 3
# (items, batch size): shards of 2, 2, 1 items; then 2, 1, 0 (a process with nothing to extract)
CASES = ((5, 2), (3, 2))


def _save(features: FeatureSet, path: Path) -> None:
    np.savez(path, features=features.features, pids=features.pids, camids=features.camids,
             paths=np.asarray(features.paths))


def _run_rank(rank: int, model: torch.nn.Module, init_file: str, out: str) -> None:
    """One process of a 3-process gloo job: what it extracted and the errors it raised, as files."""
    torch.set_num_threads(1)  # the reference runs with one thread too (torchrun's default per process)
    out_dir = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    info = DistInfo(rank, WORLD_SIZE)
    try:
        for count, batch_size in CASES:
            loader = DataLoader(NumberedImages(count), batch_size=batch_size)
            _save(extract_features(model, loader, distributed=info), out_dir / f"case{count}_rank{rank}.npz")
        rows = torch.arange(rank * 4, dtype=torch.int64).reshape(rank * 2, 2)  # 0, 2 and 4 rows
        torch.save(all_gather_rows(rows, [0, 2, 4]), out_dir / f"rows_rank{rank}.pt")
        errors = []
        for loader in (DataLoader(NumberedImages(5, fail_at=4), batch_size=2),  # item 4 is rank 2's
                       DataLoader(NumberedImages(5), batch_size=2, shuffle=True)):
            try:
                extract_features(model, loader, distributed=info)
            except (OSError, ValueError) as err:
                errors.append(f"{type(err).__name__}: {err}")
        try:
            raise_if_any_failed(None)  # everyone succeeded: nothing raised
        except Exception as err:  # pragma: no cover - reported through the file
            errors.append(f"unexpected {err!r}")
        (out_dir / f"errors_rank{rank}.txt").write_text("\n".join(errors))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny_reid_model():
    from reid.builders import model_from_config
    from reid.config import load_config

    torch.manual_seed(0)
    model = model_from_config(load_config(None, ["model.backbone=test_resnet", "model.embedding_dim=16"]), 4)
    for module in model.modules():  # statistics that are not the identity, so BatchNorm counts
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.slow
def test_three_gloo_processes_gather_the_one_process_features(tiny_reid_model, tmp_path):
    mp.spawn(_run_rank, args=(tiny_reid_model, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        references = {count: extract_features(tiny_reid_model, DataLoader(NumberedImages(count), batch_size=size))
                      for count, size in CASES}
    finally:
        torch.set_num_threads(threads)
    for count, _ in CASES:
        reference = references[count]
        assert reference.paths == [f"img{i}.jpg" for i in range(count)]
        for rank in range(WORLD_SIZE):  # every process holds the whole set, in the one-process order
            with np.load(tmp_path / f"case{count}_rank{rank}.npz") as got:
                assert got["features"].dtype == np.float32 and got["features"].shape == (count, 16)
                assert np.array_equal(got["features"], reference.features)  # the same bits
                assert np.array_equal(got["pids"], reference.pids) and np.array_equal(got["camids"], reference.camids)
                assert got["paths"].tolist() == reference.paths

    expected_rows = torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3], [4, 5], [6, 7]])  # rank 1's 2 rows, rank 2's 4
    for rank in range(WORLD_SIZE):
        assert torch.equal(torch.load(tmp_path / f"rows_rank{rank}.pt"), expected_rows)

    shuffled = ("ValueError: distributed extraction: expected a DataLoader that reads its dataset in order in "
                "batches of batch_size (shuffle=False, no sampler), got a DataLoader with its own sampler")
    others = "OSError: process 2 of 3 failed: img4.jpg: not an image"
    assert (tmp_path / "errors_rank0.txt").read_text().splitlines() == [others, shuffled]
    assert (tmp_path / "errors_rank1.txt").read_text().splitlines() == [others, shuffled]
    assert (tmp_path / "errors_rank2.txt").read_text().splitlines() == ["OSError: img4.jpg: not an image", shuffled]
