"""IdentityBatchSampler: batch layout, epoch coverage, determinism, rank shares, resuming."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from reid.data.samplers import IdentityBatchSampler, split_into_groups

# 12 identities with 1..12 images each (so some have fewer than K), in scrambled order
COUNTS = {pid: count for pid, count in zip(range(100, 112), range(1, 13))}


def scrambled_pids(seed: int = 0) -> list[int]:
    pids = [pid for pid, count in COUNTS.items() for _ in range(count)]
    np.random.default_rng(seed).shuffle(pids)
    return pids


def test_every_batch_has_p_distinct_ids_with_k_images_each() -> None:
    pids = scrambled_pids()
    num_ids, num_instances = 3, 4
    sampler = IdentityBatchSampler(pids, num_ids, num_instances, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == num_ids * num_instances
        # K consecutive indices per identity, P distinct identities
        blocks = [batch[i : i + num_instances] for i in range(0, len(batch), num_instances)]
        block_pids = [{pids[i] for i in block} for block in blocks]
        assert all(len(s) == 1 for s in block_pids)
        assert len({next(iter(s)) for s in block_pids}) == num_ids
        for block in blocks:
            count = COUNTS[pids[block[0]]]
            if count >= num_instances:
                assert len(set(block)) == num_instances  # no replacement when not needed
            else:
                # with replacement only as needed: all of the identity's images, then repeats
                assert set(block) == {i for i, p in enumerate(pids) if p == pids[block[0]]}


def test_epoch_covers_each_identity_ceil_n_over_k_times() -> None:
    pids = scrambled_pids()
    num_ids, num_instances = 3, 4
    expected = {pid: math.ceil(max(count, num_instances) / num_instances) for pid, count in COUNTS.items()}
    total_groups = sum(expected.values())  # 1+1+1+1+2+2+2+2+3+3+3+3 = 24
    assert total_groups == 24
    sampler = IdentityBatchSampler(pids, num_ids, num_instances, seed=7)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == total_groups // num_ids == 8  # the same every epoch
        appearances = Counter(pids[batch[j]] for batch in batches for j in range(0, len(batch), num_instances))
        assert sum(appearances.values()) == num_ids * len(batches)
        # g = ceil(n / K) appearances, g - 1 for the (here none) surplus groups
        assert appearances == expected
        # every image of every identity is seen
        assert {i for batch in batches for i in batch} == set(range(len(pids)))


def test_surplus_groups_are_dropped_from_fewer_than_p_identities() -> None:
    pids = scrambled_pids()
    num_ids, num_instances = 5, 2
    expected = {pid: math.ceil(max(count, num_instances) / num_instances) for pid, count in COUNTS.items()}
    total_groups = sum(expected.values())  # 1+1+2+2+3+3+4+4+5+5+6+6 = 42 -> 8 batches, 2 surplus groups
    assert total_groups == 42
    for epoch in range(5):
        sampler = IdentityBatchSampler(pids, num_ids, num_instances, seed=3)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 8
        appearances = Counter(pids[batch[j]] for batch in batches for j in range(0, len(batch), num_instances))
        short = {pid: expected[pid] - appearances[pid] for pid in COUNTS if appearances[pid] != expected[pid]}
        assert list(short.values()) == [1, 1]


def test_a_dominant_identity_is_capped_at_one_group_per_batch() -> None:
    # identity 0: 40 images (20 groups of 2); four more identities with 2 images (1 group each)
    pids = [0] * 40 + [1, 1, 2, 2, 3, 3, 4, 4]
    sampler = IdentityBatchSampler(pids, 2, 2, seed=0)
    # capping 20 -> B until stable: 24 groups -> 12 -> 8 -> 6 -> 5 -> 4 batches of (0, other)
    assert len(sampler) == 4
    batches = list(sampler)
    assert all(sorted({pids[i] for i in batch})[0] == 0 for batch in batches)
    assert sorted(pids[batch[j]] for batch in batches for j in (0, 2) if pids[batch[j]] != 0) == [1, 2, 3, 4]


def test_split_into_groups_counts() -> None:
    rng = np.random.default_rng(0)
    indices = np.arange(10, 20)
    groups = split_into_groups(indices, 4, rng)
    assert groups.shape == (3, 4)
    assert set(groups.ravel()) == set(indices)
    assert all(len(set(row)) == 4 for row in groups)
    single = split_into_groups(np.array([5, 6]), 4, rng)
    assert single.shape == (1, 4) and set(single.ravel()) == {5, 6}
    exact = split_into_groups(np.arange(8), 4, rng)
    assert sorted(exact.ravel()) == list(range(8))


def test_deterministic_per_seed_and_epoch() -> None:
    pids = scrambled_pids()

    def epoch_batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = IdentityBatchSampler(pids, 3, 2, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(0, 3) == epoch_batches(0, 3)
    assert epoch_batches(0, 3) != epoch_batches(0, 4)
    assert epoch_batches(0, 3) != epoch_batches(1, 3)
    # iterating twice, or after visiting another epoch, gives the same batches
    sampler = IdentityBatchSampler(pids, 3, 2, seed=0)
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(5)
    sampler.set_epoch(3)
    assert list(sampler) == first == list(sampler)


def test_ranks_get_disjoint_equal_shares_of_the_same_epoch() -> None:
    pids = scrambled_pids()
    world_size = 3
    full_sampler = IdentityBatchSampler(pids, 2, 2, seed=5)
    full_sampler.set_epoch(2)
    full = list(full_sampler)
    per_rank = len(full) // world_size
    shares = []
    for rank in range(world_size):
        sampler = IdentityBatchSampler(pids, 2, 2, seed=5, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        shares.append(list(sampler))
        assert len(sampler) == per_rank == len(shares[-1])
        assert shares[-1] == full[rank::world_size][:per_rank]
    positions = [tuple(batch) for share in shares for batch in share]
    assert len(positions) == world_size * per_rank
    # together the ranks hold exactly the first world_size * per_rank batches of the epoch
    assert sorted(positions) == sorted(tuple(b) for b in full[: world_size * per_rank])


def test_start_batch_resumes_with_the_tail_of_the_epoch() -> None:
    pids = scrambled_pids()
    sampler = IdentityBatchSampler(pids, 3, 2, seed=2, rank=1, world_size=2)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_batch=3)
    assert len(sampler) == len(full) - 3
    assert list(sampler) == full[3:]
    sampler.set_epoch(4, start_batch=len(full))
    assert len(sampler) == 0 and list(sampler) == []
    with pytest.raises(ValueError, match=f"start_batch must be in 0..{len(full)}"):
        sampler.set_epoch(4, start_batch=len(full) + 1)
    sampler.set_epoch(5)  # a new epoch starts from its first batch again
    assert sampler.start_batch == 0


def test_too_few_identities_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least num_identities=4 identities .* the data has 3"):
        IdentityBatchSampler([0, 0, 1, 1, 2, 2], 4, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 2, "world_size": 2}, "rank must be in 0..1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"num_instances": 0}, "num_instances must be >= 1"),
    ],
)
def test_argument_errors(kwargs: dict, message: str) -> None:
    arguments = {"num_identities": 2, "num_instances": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        IdentityBatchSampler([0, 0, 1, 1], **arguments)


def test_more_ranks_than_batches_is_an_error() -> None:
    with pytest.raises(ValueError, match="an epoch has 1 batches of 2 x 2, fewer than world_size=2"):
        IdentityBatchSampler([0, 0, 1, 1], 2, 2, world_size=2, rank=1)


def test_market_scale_epoch() -> None:
    """Market-1501-like train set: 751 identities with 1..33 images (about 12,900), P=16, K=4."""
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 34, size=751)
    pids = np.repeat(np.arange(751), counts)
    rng.shuffle(pids)
    sampler = IdentityBatchSampler(pids, 16, 4, seed=0)
    batches = list(sampler)
    assert all(len({pids[i] for i in batch}) == 16 for batch in batches)
    expected = [math.ceil(max(c, 4) / 4) for c in counts]
    assert len(batches) == sum(expected) // 16
    appearances = Counter(pids[batch[j]] for batch in batches for j in range(0, 64, 4))
    assert sum(appearances[pid] != expected[pid] for pid in range(751)) == sum(expected) % 16


def test_camera_round_robin_interleaves_cameras() -> None:
    from reid.data.samplers import camera_round_robin

    indices = np.array([10, 11, 12, 13, 14, 15])
    cameras = np.array([2, 2, 2, 0, 0, 5])
    # camera 2 first seen, then 0, then 5: one of each in turn, each camera's order kept
    np.testing.assert_array_equal(camera_round_robin(indices, cameras), [10, 13, 15, 11, 14, 12])


def test_camera_balanced_groups_span_cameras() -> None:
    from reid.data.samplers import IdentityBatchSampler

    pids = np.repeat([0, 1], 8)
    camids = np.tile([0, 0, 0, 0, 1, 1, 1, 1], 2)
    sampler = IdentityBatchSampler(pids, 2, 2, seed=3, camids=camids)
    plain = IdentityBatchSampler(pids, 2, 2, seed=3)
    for batch in sampler:
        for group in (batch[:2], batch[2:]):
            assert len({int(camids[i]) for i in group}) == 2  # K = 2 images from two cameras
    assert sorted(sum(list(sampler), [])) == sorted(sum(list(plain), []))  # the same images per epoch
