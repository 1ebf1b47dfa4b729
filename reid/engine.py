"""The training loop and evaluation: plain functions that read top to bottom.

The Group Loss++ inference ablation lives in ``reid.ablation``; running a model over a loader
in ``reid.inference``.

Nothing here knows about the config schema: ``reid.training`` builds the model, loaders,
criterion, optimization and checkpointer (``reid.builders``) and passes them in.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import Checkpointer, Progress, unwrap
from .evaluation.evaluator import metrics_from_features, primary_score
from .inference import extract_query_gallery
from .optim import Optimization
from .progress import progress_bar

log = logging.getLogger("reid")


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once the checkpoint to resume from has been written."""


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops.

    A second SIGINT while the first is pending falls back to the usual KeyboardInterrupt, so
    a user can still kill a run that hangs.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received %s: finishing this step, then saving a checkpoint", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def agreed(self) -> bool:
        """True when any process was asked to stop (all ranks must stop at the same step)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([float(self.requested)])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


@dataclass
class EpochResult:
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)  # mean of each weighted term and "total"
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    model: nn.Module,
    loader,
    criterion: nn.Module,
    optimization: Optimization,
    *,
    device: torch.device | str = "cpu",
    max_steps: int | None = None,
    stop: StopRequest | None = None,
    progress: bool | None = None,
    description: str = "train",
) -> EpochResult:
    """One pass over ``loader`` (at most ``max_steps`` batches).

    ``criterion(embeddings, logits, labels)`` returns the named loss terms with their sum
    under "total" (:class:`reid.losses.WeightedLosses`); ``optimization`` does the backward
    pass, clipping, the optimizer and the per-batch LR step. A stop request ends the epoch
    after the current step. ``progress``: a bar with the running losses (see :mod:`reid.progress`;
    None: on a terminal only, so logs stay clean).
    """
    device = torch.device(device)
    model.train()
    result = EpochResult()
    sums: dict[str, float] = {}
    total_steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    bar = progress_bar(total=total_steps, desc=description, progress=progress, delay=0.0)
    start = time.perf_counter()
    batches = iter(loader)
    while result.steps < total_steps:
        try:
            images, pids, _camids, _paths = next(batches)
        except StopIteration:
            break
        except RuntimeError:  # a DataLoader worker ended by the signal that asked us to stop
            if stop is None or not stop.requested:
                raise
            result.interrupted = True
            break
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(pids).to(device, non_blocking=True)
        with optimization.autocast(device):
            output = model(images)
        terms = criterion(output.embeddings, output.logits, labels)
        optimization.step(terms["total"])

        result.steps += 1
        result.images += len(images)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.item()
        elapsed = time.perf_counter() - start
        bar.set_postfix({**{k: f"{v / result.steps:.3f}" for k, v in sums.items()},
                         "img/s": f"{result.images / elapsed:.1f}"}, refresh=False)
        bar.update()
        if stop is not None and stop.agreed():
            result.interrupted = True
            break
    bar.close()
    result.seconds = time.perf_counter() - start
    result.losses = {k: v / max(1, result.steps) for k, v in sums.items()}
    return result


def evaluate(
    model: nn.Module,
    query_loader,
    gallery_loader,
    device: torch.device | str = "cpu",
    *,
    feature: str = "bn",
    flip: bool = False,
    progress: bool | None = None,
    **metric_options: Any,
) -> dict[str, Any]:
    """Extract query and gallery features and compute the field's metrics (see metrics_from_features).

    ``progress``: bars over the extraction, distances, ranking and re-ranking (see
    :mod:`reid.progress`; None: on a terminal only).
    """
    query, gallery = extract_query_gallery(unwrap(model), query_loader, gallery_loader, device, feature=feature,
                                           flip=flip, progress=progress)
    return metrics_from_features(query, gallery, progress=progress, **metric_options)


def selection_score(metrics: dict[str, Any]) -> float:
    """The number ``best.pt`` is kept by: the primary score (mAP, or MAP@R) of the one test set, or
    with several (``{"datasets": {name: metrics}}``) their mean, so that no test set alone decides."""
    if "datasets" in metrics:
        blocks = list(metrics["datasets"].values())
        return float(sum(primary_score(block) for block in blocks) / len(blocks))
    return primary_score(metrics)


# ---------------------------------------------------------------------------------------------
# The whole run


def fit(model: nn.Module, train_loader, criterion: nn.Module, optimization: Optimization, checkpointer: Checkpointer,
        *, epochs: int, steps_per_epoch: int, device: torch.device | str = "cpu", start: Progress | None = None,
        evaluate_fn: Callable[[nn.Module, bool], dict[str, Any]] | None = None, eval_every: int = 10,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        last_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train from ``start`` (default: the beginning) to ``epochs``; return the last metrics.

    After every epoch ``last.pt`` is written first (with the epoch's record), so an error in
    the evaluation that follows loses no training; then, every ``eval_every`` epochs and after
    the last one, ``evaluate_fn(model, final)`` runs on the main process (``final``: the caller
    may add re-ranking) and ``best.pt`` is written when
    :func:`selection_score` improves. ``on_epoch(record)`` gets
    one dict per epoch (losses, lr, speed, metrics) on the main process. A ``start`` at
    ``epochs`` (a run stopped in or before its final evaluation) runs only that evaluation, and
    hands ``last_record`` (the ``epoch_record`` its ``last.pt`` stored) on with the metrics.
    SIGINT/SIGTERM finish the current step, write ``last.pt`` and raise
    :class:`TrainingInterrupted`. Every process of a torchrun job calls fit (there are
    collectives inside); only the main one writes.
    """
    state = start if start is not None else Progress()
    is_main = checkpointer.is_main
    metrics: dict[str, Any] = {}
    with StopRequest() as stop:
        if state.epoch >= epochs and evaluate_fn is not None:
            record = dict(last_record or {"epoch": state.epoch, "lr": optimization.lr, "loss": {},
                                          "images_per_s": 0.0, "seconds": 0.0})
            metrics = _evaluate_epoch(model, state, record, evaluate_fn, checkpointer, final=True)
            if is_main and on_epoch is not None:
                on_epoch(record)
        while state.epoch < epochs:
            epoch = state.epoch
            # The sampler's batches are a pure function of (seed, epoch), so starting at a
            # batch offset reproduces the rest of an interrupted epoch exactly.
            train_loader.batch_sampler.set_epoch(epoch, start_batch=state.step)
            result = train_one_epoch(model, train_loader, criterion, optimization, device=device,
                                     max_steps=steps_per_epoch - state.step, stop=stop, progress=None if is_main else False,
                                     description=f"epoch {epoch + 1}/{epochs}")
            state.step += result.steps
            if result.interrupted and state.step < steps_per_epoch:
                checkpointer.save("last.pt", state)
                raise TrainingInterrupted(f"stopped at epoch {epoch + 1}, step {state.step}; resume with resume=true "
                                          f"(checkpoint {checkpointer.output_dir / 'last.pt'})")
            state.epoch, state.step = epoch + 1, 0
            record = {"epoch": state.epoch, "lr": optimization.lr, "loss": result.losses,
                      "images_per_s": round(result.images_per_second, 2), "seconds": round(result.seconds, 2)}
            checkpointer.save("last.pt", state, record=record)
            final = state.epoch == epochs
            if evaluate_fn is not None and (final or state.epoch % eval_every == 0):
                metrics = _evaluate_epoch(model, state, record, evaluate_fn, checkpointer, final=final)
            if is_main and on_epoch is not None:
                on_epoch(record)
            if stop.requested and not final:
                raise TrainingInterrupted(f"stopped after epoch {state.epoch}; resume with resume=true "
                                          f"(checkpoint {checkpointer.output_dir / 'last.pt'})")
    return metrics


def _evaluate_epoch(model: nn.Module, state: Progress, record: dict[str, Any],
                    evaluate_fn: Callable[[nn.Module, bool], dict[str, Any]], checkpointer: Checkpointer, *,
                    final: bool) -> dict[str, Any]:
    """Evaluate on the main process (into ``record``), write ``best.pt`` on a better score, and
    ``last.pt`` again with the best so far (for a resumed run)."""
    metrics: dict[str, Any] = {}
    if checkpointer.is_main:
        metrics = record["metrics"] = evaluate_fn(model, final)
        if selection_score(metrics) > state.best_score:
            state.best_score, state.best_epoch = selection_score(metrics), state.epoch
            checkpointer.save("best.pt", state)
        checkpointer.save("last.pt", state, record=record)
    _barrier()
    return metrics


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
