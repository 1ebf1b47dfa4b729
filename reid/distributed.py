"""torchrun integration: process group set-up from the launcher's environment variables, and the
collectives the library needs on top of torch's (rows of uneven sizes, agreeing on a failure).

Training splits the batches (``IdentityBatchSampler(rank=, world_size=)``) and averages gradients
(DistributedDataParallel); extraction splits the images and gathers the features
(:func:`reid.inference.extract_features` with ``distributed=``).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run alone.

    NCCL for CUDA devices, gloo on CPU. Each process drives the GPU of its LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launcher_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun), known before the
    group is joined: for what is decided first, such as the log level."""
    return int(os.environ.get("RANK", "0"))


def all_gather_objects(value: Any) -> list[Any]:
    """``value`` of every process, in rank order (pickled through the group: small things such as
    labels, paths and sizes; large arrays go through :func:`all_gather_rows`)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_gather_rows(rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The rows of every process concatenated in rank order, on the CPU, the bits as sent.

    ``counts[r]``: how many rows rank r holds (every rank passes the same list, exchanged first,
    e.g. with :func:`all_gather_objects`); all ``rows`` share their trailing shape and dtype.
    A collective moves equal sizes, so each rank sends its rows padded to the largest count and
    the padding is cut off here. NCCL moves CUDA tensors: the rows travel on this process's GPU.
    """
    if len(rows) != counts[dist.get_rank()]:
        raise ValueError(f"all_gather_rows: this process holds {len(rows)} rows, counts say {counts[dist.get_rank()]}")
    largest = max(counts)
    if largest == 0:  # every rank knows it: none enters the collective
        return rows.cpu()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((largest, *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[: len(rows)] = rows
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:count].cpu() for part, count in zip(gathered, counts)])


def raise_if_any_failed(error: Exception | None) -> None:
    """Tell every process whether any failed, so that none waits forever in the next collective.

    Every process calls this with the error it caught (None: it succeeded). The failed one raises
    its own error; the others raise the first failure's message as its nearest built-in type
    (an ``OSError`` or ``ValueError`` stays a user's one-line error), naming the process.
    """
    failures = all_gather_objects(None if error is None else (_builtin_type(error).__name__, str(error)))
    if error is not None:
        raise error
    for rank, failure in enumerate(failures):
        if failure is not None:
            kind, message = failure
            text = f"process {rank} of {len(failures)} failed: {message}"
            try:
                other = getattr(builtins, kind)(text)
            except TypeError:  # a built-in type that takes more than a message (UnicodeDecodeError)
                other = RuntimeError(text)
            raise other


def _builtin_type(error: Exception) -> type:
    return next(kind for kind in type(error).__mro__ if kind.__module__ == "builtins")
