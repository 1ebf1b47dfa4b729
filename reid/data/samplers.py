"""P identities x K images per batch, the batch layout that Group Loss and triplet losses need.

An epoch is defined as follows (all draws from one numpy Generator seeded by (seed, epoch)):

1. Each identity's images are shuffled and cut into groups of K. An identity with n >= K
   images gets g = ceil(n / K) groups: every image appears once, and the last, short group is
   completed with images drawn without replacement from the identity's other groups, so each
   group holds K distinct images. An identity with n < K images gets one group: all n images
   plus K - n drawn with replacement (the only way to fill K slots).
2. The epoch has B = floor(G / P) batches, G = sum of g over identities. (An identity cannot
   appear twice in a batch, so g is first capped at B, recomputing B until it is stable; this
   only matters when one identity has more groups than there are batches.) The G - B * P < P
   surplus groups are dropped: the last group of that many distinct identities drawn at random.
3. Batches are formed one at a time: P distinct identities are drawn without replacement
   with probability proportional to their remaining groups, and each gives its next group.
   An identity with as many groups left as there are batches left is always taken; that
   keeps every draw feasible, so the epoch always has exactly B batches.
4. With W ranks, rank r takes batches r, r + W, r + 2W, ... truncated to floor(B / W), so
   ranks get disjoint shares of equal length.

So each identity appears g times per epoch (g - 1 for the < P identities that gave a surplus
group), every image of an identity with >= K images is seen, and ``len(sampler)`` is the same
in every epoch, which keeps per-step learning-rate schedules exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class IdentityBatchSampler(Sampler[list[int]]):
    """Yields lists of ``num_identities * num_instances`` dataset indices (one rank's batches).

    Each batch holds ``num_identities`` distinct pids with ``num_instances`` images each, the K
    images of one identity next to each other. ``set_epoch(epoch, start_batch)`` selects the
    epoch (deterministic for ``(seed, epoch)``) and lets an interrupted epoch resume: iteration
    skips the first ``start_batch`` batches of this rank.
    """

    def __init__(
        self,
        pids: Sequence[int],
        num_identities: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        camids: Sequence[int] | None = None,
    ) -> None:
        pid_array = np.asarray(pids)
        if pid_array.ndim != 1 or pid_array.size == 0:
            raise ValueError(f"pids must be a non-empty 1-D sequence, got shape {pid_array.shape}")
        sizes = {"num_identities": num_identities, "num_instances": num_instances, "world_size": world_size}
        for label, value in sizes.items():
            if value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1} for world_size={world_size}, got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        _, identity_of_index = np.unique(pid_array, return_inverse=True)
        counts = np.bincount(identity_of_index)
        if len(counts) < num_identities:
            raise ValueError(
                f"the identity sampler needs at least num_identities={num_identities} identities "
                f"to fill a batch, but the data has {len(counts)}"
            )
        order = np.argsort(identity_of_index, kind="stable")
        self.indices_by_identity: list[np.ndarray] = np.split(order, np.cumsum(counts)[:-1])
        self.groups_per_identity, self.num_batches = plan_group_counts(counts, num_identities, num_instances)
        if self.num_batches < world_size:
            raise ValueError(
                f"an epoch has {self.num_batches} batches of {num_identities} x {num_instances}, fewer than "
                f"world_size={world_size}: use fewer ranks or smaller batches"
            )
        self.num_identities = num_identities
        self.num_instances = num_instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # camera-balanced groups (unsupervised adaptation): each group of K spans as many cameras as it can
        self.camids = None if camids is None else np.asarray(camids)
        if self.camids is not None and self.camids.shape != pid_array.shape:
            raise ValueError(f"camids must have one entry per pid ({pid_array.shape}), got shape {self.camids.shape}")
        self.epoch = 0
        self.start_batch = 0
        self._cached_epoch: int | None = None
        self._cached_batches: list[np.ndarray] = []

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; skip this rank's first ``start_batch`` batches (to resume mid-epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        per_rank = self.num_batches // self.world_size
        if not 0 <= start_batch <= per_rank:
            raise ValueError(
                f"start_batch must be in 0..{per_rank} (this rank's batches per epoch), got {start_batch}"
            )
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._rank_batches()[self.start_batch :]:
            yield batch.tolist()

    def __len__(self) -> int:
        return self.num_batches // self.world_size - self.start_batch

    def _rank_batches(self) -> list[np.ndarray]:
        if self._cached_epoch != self.epoch:
            self._cached_batches = self._epoch_batches(self.epoch)
            self._cached_epoch = self.epoch
        per_rank = self.num_batches // self.world_size
        return self._cached_batches[self.rank :: self.world_size][:per_rank]

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """All ranks' batches of one epoch (module docstring, steps 1-3)."""
        rng = np.random.default_rng([self.seed, epoch])
        num_ids, num_instances = self.num_identities, self.num_instances
        groups = [split_into_groups(indices, num_instances, rng, self.camids) for indices in self.indices_by_identity]
        remaining = self.groups_per_identity.copy()
        surplus = int(remaining.sum()) - self.num_batches * num_ids
        if surplus > 0:  # groups are taken front to back, so the dropped group is the identity's last
            remaining[rng.choice(len(remaining), size=surplus, replace=False, p=remaining / remaining.sum())] -= 1
        used = np.zeros_like(remaining)
        batches: list[np.ndarray] = []
        for batches_left in range(self.num_batches, 0, -1):
            # Invariant: remaining.sum() == P * batches_left and remaining <= batches_left.
            tight = np.flatnonzero(remaining == batches_left)
            others = np.flatnonzero((remaining > 0) & (remaining < batches_left))
            chosen = tight
            if len(tight) < num_ids:
                weights = remaining[others] / remaining[others].sum()
                picked = rng.choice(others, size=num_ids - len(tight), replace=False, p=weights)
                chosen = rng.permutation(np.concatenate([tight, picked]))
            batches.append(np.concatenate([groups[c][used[c]] for c in chosen]))
            used[chosen] += 1
            remaining[chosen] -= 1
        return batches


def camera_round_robin(indices: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """``indices`` reordered: the first of each camera, then the second of each, ... (cameras
    in order of first appearance, each camera's indices in their given order)."""
    _, first, inverse = np.unique(cameras, return_index=True, return_inverse=True)
    camera_rank = np.argsort(np.argsort(first))[inverse]  # 0 for the camera seen first, ...
    position = np.zeros(len(indices), dtype=np.int64)
    for camera in range(len(first)):
        mine = np.flatnonzero(camera_rank == camera)
        position[mine] = np.arange(mine.size)
    return indices[np.lexsort((camera_rank, position))]


def plan_group_counts(counts: np.ndarray, num_identities: int, num_instances: int) -> tuple[np.ndarray, int]:
    """Groups per identity and batches per epoch (module docstring, step 2)."""
    groups = -(-np.maximum(counts, num_instances) // num_instances)  # ceil(max(n, K) / K)
    num_batches = int(groups.sum()) // num_identities
    while True:
        capped = np.minimum(groups, num_batches)
        stable = int(capped.sum()) // num_identities
        if stable == num_batches:
            return capped, num_batches
        num_batches = stable


def split_into_groups(indices: np.ndarray, group_size: int, rng: np.random.Generator,
                      camids: np.ndarray | None = None) -> np.ndarray:
    """One identity's indices as a (num_groups, group_size) array (module docstring, step 1).

    With ``camids`` (camera-balanced), the shuffled indices are dealt round-robin over the
    identity's cameras (in the order each camera first appears) before being cut into groups,
    so consecutive images, and so each group, come from as many cameras as possible; the
    random draws are the same as without it.
    """
    shuffled = rng.permutation(indices)
    if camids is not None:
        shuffled = camera_round_robin(shuffled, camids[shuffled])
    count = len(indices)
    if count < group_size:
        extra = rng.choice(indices, size=group_size - count, replace=True)
        return np.concatenate([shuffled, extra]).reshape(1, group_size)
    num_groups = math.ceil(count / group_size)
    missing = num_groups * group_size - count
    # The last group holds shuffled[(num_groups - 1) * K:]; complete it from the other groups,
    # which hold at least K > missing images, so it stays free of repeats.
    filler = rng.choice(shuffled[: (num_groups - 1) * group_size], size=missing, replace=False)
    return np.concatenate([shuffled, filler]).reshape(num_groups, group_size)
