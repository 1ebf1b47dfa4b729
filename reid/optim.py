"""Optimizers and per-iteration learning-rate schedules (linear warmup, then cosine or steps)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

OPTIMIZERS = ("adam", "adamw", "sgd", "radam")
SCHEDULES = ("cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")


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
    raise ValueError(f"unknown scheduler {schedule!r}; valid: {', '.join(SCHEDULES)}")


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


def amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype and grad scaler for ``amp`` in {none, bf16, fp16}; CUDA only.

    On CPU mixed precision is ignored with a warning: bf16 matmuls are far slower than fp32 on
    CPUs without bf16 units (measured on the project's 2-core machines).
    """
    if amp == "none":
        return None, None
    if device.type != "cuda":
        logging.getLogger("reid").warning("train.amp=%s ignored on %s: mixed precision is used on CUDA only", amp, device)
        return None, None
    if amp == "bf16":
        return torch.bfloat16, None
    if amp == "fp16":
        return torch.float16, torch.amp.GradScaler("cuda")
    raise ValueError(f"train.amp: expected one of {', '.join(AMP_MODES)}, got {amp!r}")


@dataclass
class Optimization:
    """Everything a training step does after the loss: backward (scaled under fp16), gradient
    clipping, the optimizer step and the per-iteration LR schedule; plus the autocast context
    of the forward pass."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None
    grad_clip: float = 0.0  # max gradient norm; 0: off
    # Decoupled L2-SP (Li et al., "Explicit Inductive Bias for Transfer Learning with
    # Convolutional Networks", ICML 2018): after each step, every anchored parameter moves toward
    # its anchor (its initial, pretrained value) by lr * anchor_weight * (w - w0), with the lr of
    # its parameter group. The anchors are the weights the model was built with, so a resumed
    # run (rebuilt from the same pretrained source) pulls toward the same values.
    anchors: dict[torch.nn.Parameter, torch.Tensor] = field(default_factory=dict)
    anchor_weight: float = 0.0

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # so that clipping sees the true gradient norms
        else:
            loss.backward()
        if self.grad_clip > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.anchor_weight > 0:
            self._pull_to_anchors()
        if self.scheduler is not None:
            self.scheduler.step()

    @torch.no_grad()
    def _pull_to_anchors(self) -> None:
        for group in self.optimizer.param_groups:
            rate = group["lr"] * self.anchor_weight
            for p in group["params"]:
                anchor = self.anchors.get(p)
                if anchor is not None:
                    p.sub_(rate * (p - anchor))

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_modules(self) -> dict[str, object]:
        """What a checkpoint saves of it (None entries are skipped by the Checkpointer)."""
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}
