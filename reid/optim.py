"""Optimizers and per-iteration learning-rate schedules (linear warmup, then cosine or steps)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

OPTIMIZERS = ("adam", "adamw", "sgd", "radam")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "radam":  # the Group Loss papers' optimizer
        return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def lr_factor(
    step: int,
    *,
    total_steps: int,
    steps_per_epoch: int,
    schedule: str = "cosine",
    warmup_epochs: float = 0,
    warmup_factor: float = 0.01,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based).

    Linear warmup from ``warmup_factor`` to 1 over ``warmup_epochs``, then either a cosine
    decay to 0 at ``total_steps`` or a drop by ``gamma`` at each epoch in ``milestones``.
    """
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        alpha = step / warmup_steps
        return warmup_factor * (1 - alpha) + alpha
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return gamma ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown scheduler {schedule!r}; valid: cosine, step")


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int, schedule: str = "cosine", **kwargs
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration; its state is just the step count, so resume is exact."""
    total = epochs * steps_per_epoch
    lr_factor(0, total_steps=total, steps_per_epoch=steps_per_epoch, schedule=schedule, **kwargs)  # validate
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps=total, steps_per_epoch=steps_per_epoch, schedule=schedule, **kwargs),
    )
