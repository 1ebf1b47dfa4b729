"""Training loop, evaluation and checkpoint/resume: plain functions that read top to bottom.

Nothing here knows about the config schema: ``tools/train.py`` builds the model, loaders,
losses and optimizer (``reid.builders``) and passes them in.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .evaluation.features import extract_features, metrics_from_features

log = logging.getLogger("reid")

# name -> (weight, loss module); every loss is called as loss(embeddings, logits, labels).
WeightedLosses = Mapping[str, tuple[float, nn.Module]]


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once the checkpoint to resume from has been written."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel (what checkpoints hold)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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


def compute_losses(output: Any, labels: torch.Tensor, losses: WeightedLosses) -> dict[str, torch.Tensor]:
    """Weighted loss terms and their sum under "total"; a non-finite total is an error."""
    terms = {
        name: weight * loss(output.embeddings.float(), output.logits.float(), labels)
        for name, (weight, loss) in losses.items()
    }
    total = sum(terms.values())
    if not torch.isfinite(total):
        values = ", ".join(f"{k}={v.item():.6g}" for k, v in terms.items())
        raise FloatingPointError(f"non-finite loss: {values}; lower train.lr or check the data")
    terms["total"] = total
    return terms


def train_one_epoch(
    model: nn.Module,
    loader,
    losses: WeightedLosses,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    device: torch.device | str = "cpu",
    max_steps: int | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    stop: StopRequest | None = None,
    progress: bool = True,
    description: str = "train",
) -> EpochResult:
    """One pass over ``loader`` (at most ``max_steps`` batches); the scheduler steps per batch."""
    device = torch.device(device)
    model.train()
    result = EpochResult()
    sums: dict[str, float] = {}
    total_steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    bar = tqdm(total=total_steps, desc=description, disable=not progress, dynamic_ncols=True, leave=False)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    start = time.perf_counter()
    for images, pids, _camids, _paths in loader:
        if result.steps >= total_steps:
            break
        images = images.to(device, non_blocking=True)
        labels = torch.as_tensor(pids).to(device, non_blocking=True)
        with autocast:
            output = model(images)
        terms = compute_losses(output, labels, losses)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(terms["total"]).backward()
            scaler.unscale_(optimizer)  # so that clipping sees true gradient norms
        else:
            terms["total"].backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()

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
    **metric_options: Any,
) -> dict[str, Any]:
    """Extract query and gallery features and compute the field's metrics (see metrics_from_features)."""
    model = unwrap(model)
    query = extract_features(model, query_loader, device, feature=feature, flip=flip)
    gallery = extract_features(model, gallery_loader, device, feature=feature, flip=flip)
    return metrics_from_features(query, gallery, **metric_options)


INFERENCE_SWITCHES = ("flip", "mix", "leaky", "beta", "rerank")


def ablate_inference(
    model: nn.Module,
    query_loader,
    gallery_loader,
    device: torch.device | str = "cpu",
    *,
    switches: tuple[str, ...] = INFERENCE_SWITCHES,
    feature: str = "bn",
    pool_lambda: float = 0.5,
    leaky_slope: float = 0.1,
    trained_leaky_slope: float = 0.0,
    beta: float = 0.1,
    **metric_options: Any,
) -> dict[str, dict[str, Any]]:
    """Metrics for every on/off combination of Group Loss++'s inference strategies.

    ``switches`` picks which to vary (the others stay off): flip test-time augmentation, mix
    pooling ``pool_lambda * max + (1 - pool_lambda) * avg`` in place of the trained pooling,
    a leaky final ReLU with ``leaky_slope`` (off: the ``trained_leaky_slope``), beta normalisation ``normalize(f) + beta * f``,
    and k-reciprocal re-ranking. Features are extracted once per model-side combination
    (flip, mix, leaky); beta and re-ranking reuse them. Rows are named by the switches that
    are on ("baseline" for none). The model is restored afterwards.
    """
    unknown = sorted(set(switches) - set(INFERENCE_SWITCHES))
    if unknown:
        raise ValueError(f"unknown inference switch(es) {', '.join(unknown)}; valid: {', '.join(INFERENCE_SWITCHES)}")
    model = unwrap(model)
    trained_pool = model.pool
    options = {k: v for k, v in metric_options.items() if k not in ("beta", "rerank")}

    def states(name: str) -> tuple[bool, ...]:
        return (False, True) if name in switches else (False,)

    rows: dict[str, dict[str, Any]] = {}
    try:
        for flip in states("flip"):
            for mix in states("mix"):
                for leaky in states("leaky"):
                    model.pool = trained_pool
                    if mix:
                        model.set_pooling("mix", pool_lambda=pool_lambda)
                    if "leaky" in switches:
                        model.set_leaky_relu(leaky_slope if leaky else trained_leaky_slope)
                    query = extract_features(model, query_loader, device, feature=feature, flip=flip)
                    gallery = extract_features(model, gallery_loader, device, feature=feature, flip=flip)
                    for use_beta in states("beta"):
                        metrics = metrics_from_features(query, gallery, beta=beta if use_beta else 0.0,
                                                        rerank="rerank" in switches, **options)
                        on = [n for n, v in (("flip", flip), ("mix", mix), ("leaky", leaky), ("beta", use_beta)) if v]
                        rows["+".join(on) or "baseline"] = {k: v for k, v in metrics.items() if k != "rerank"}
                        if "rerank" in metrics:
                            rows["+".join(on + ["rerank"])] = metrics["rerank"]
    finally:
        model.pool = trained_pool
        if "leaky" in switches:
            model.set_leaky_relu(trained_leaky_slope)
    return rows


# ---------------------------------------------------------------------------------------------
# Checkpoint state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Where training stands: ``epoch`` is the epoch in progress, ``step`` the batches done in it."""

    epoch: int = 0
    step: int = 0
    best_mAP: float = -1.0
    best_epoch: int = -1


def training_state(model, optimizer, scheduler, scaler, progress: Progress, extra: Mapping[str, Any]) -> dict:
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "progress": vars(progress).copy(),
        "rng": rng_state(),
        **extra,
    }


def restore_training_state(path: str | Path, model, optimizer, scheduler, scaler) -> Progress:
    state = load_checkpoint(path)
    try:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        progress = Progress(**state["progress"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: cannot resume from this checkpoint ({err})") from None
    set_rng_state(state["rng"])
    return progress


# ---------------------------------------------------------------------------------------------
# The whole run


def fit(
    model: nn.Module,
    train_loader,
    losses: WeightedLosses,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    epochs: int,
    steps_per_epoch: int,
    output_dir: str | Path,
    device: torch.device | str = "cpu",
    evaluate_fn: Callable[[nn.Module, bool], dict[str, Any]] | None = None,
    eval_every: int = 10,
    resume_from: str | Path | None = None,
    checkpoint_extra: Mapping[str, Any] | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
    is_main: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train for ``epochs``, evaluating every ``eval_every`` epochs and after the last one.

    Writes ``last.pt`` after every epoch and on SIGINT/SIGTERM (then raises
    TrainingInterrupted), ``best.pt`` whenever mAP improves, and one JSON line per epoch to
    ``log.jsonl``. ``evaluate_fn(model, final)`` returns metrics; ``final`` is True after the
    last epoch (the caller may add re-ranking then). Returns the last evaluation's metrics.
    Only the main process writes files; every process must call fit (collectives inside).
    """
    output_dir = Path(output_dir)
    extra = dict(checkpoint_extra or {})
    state = Progress()
    if resume_from is not None:
        state = restore_training_state(resume_from, model, optimizer, scheduler, scaler)
        log.info("resumed from %s at epoch %d, step %d", resume_from, state.epoch + 1, state.step)

    def checkpoint(name: str) -> None:
        if is_main:
            save_checkpoint(training_state(model, optimizer, scheduler, scaler, state, extra), output_dir / name)

    writer = _tensorboard(output_dir) if is_main else None
    metrics: dict[str, Any] = {}
    with StopRequest() as stop:
        while state.epoch < epochs:
            epoch = state.epoch
            # The sampler's batches are a pure function of (seed, epoch), so starting at a
            # batch offset reproduces the rest of an interrupted epoch exactly.
            train_loader.batch_sampler.set_epoch(epoch, start_batch=state.step)
            result = train_one_epoch(
                model, train_loader, losses, optimizer, scheduler,
                device=device, max_steps=steps_per_epoch - state.step, amp_dtype=amp_dtype, scaler=scaler,
                grad_clip=grad_clip, stop=stop, progress=progress and is_main,
                description=f"epoch {epoch + 1}/{epochs}",
            )
            state.step += result.steps
            if result.interrupted and state.step < steps_per_epoch:
                checkpoint("last.pt")
                raise TrainingInterrupted(
                    f"stopped at epoch {epoch + 1}, step {state.step}; resume with resume=true "
                    f"(checkpoint {output_dir / 'last.pt'})"
                )
            state.epoch, state.step = epoch + 1, 0
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": result.losses,
                "images_per_s": round(result.images_per_second, 2),
                "seconds": round(result.seconds, 2),
            }
            final = state.epoch == epochs
            if evaluate_fn is not None and (final or state.epoch % eval_every == 0):
                if is_main:
                    metrics = evaluate_fn(model, final)
                    record["metrics"] = metrics
                    if metrics["mAP"] > state.best_mAP:
                        state.best_mAP, state.best_epoch = metrics["mAP"], state.epoch
                        checkpoint("best.pt")
                _barrier()
            checkpoint("last.pt")
            if is_main:
                _log_epoch(output_dir, record, writer)
            if stop.requested and not final:
                raise TrainingInterrupted(
                    f"stopped after epoch {epoch + 1}; resume with resume=true (checkpoint {output_dir / 'last.pt'})"
                )
    if writer is not None:
        writer.close()
    return metrics


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _log_epoch(output_dir: Path, record: dict[str, Any], writer) -> None:
    losses = ", ".join(f"{k} {v:.4f}" for k, v in record["loss"].items())
    line = f"epoch {record['epoch']}: {losses}, lr {record['lr']:.2e}, {record['images_per_s']:.1f} img/s"
    if "metrics" in record:
        m = record["metrics"]
        line += f" | mAP {m['mAP']:.4f} rank1 {m['rank1']:.4f} mINP {m['mINP']:.4f}"
    log.info(line)
    with open(output_dir / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    if writer is not None:
        step = record["epoch"]
        for name, value in record["loss"].items():
            writer.add_scalar(f"loss/{name}", value, step)
        writer.add_scalar("lr", record["lr"], step)
        for name in ("mAP", "mINP", "rank1"):
            if name in record.get("metrics", {}):
                writer.add_scalar(f"eval/{name}", record["metrics"][name], step)


def _tensorboard(output_dir: Path):
    """A SummaryWriter when TensorBoard is installed; training does not depend on it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output_dir / "tensorboard"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """Autocast dtype and grad scaler for ``amp`` in {none, bf16, fp16}; CUDA only.

    On CPU mixed precision is ignored with a warning: bf16 matmuls are far slower than fp32 on
    CPUs without bf16 units (measured on the project's 2-core machines).
    """
    if amp == "none":
        return None, None
    if device.type != "cuda":
        log.warning("train.amp=%s ignored on %s: mixed precision is used on CUDA only", amp, device)
        return None, None
    if amp == "bf16":
        return torch.bfloat16, None
    if amp == "fp16":
        return torch.float16, torch.amp.GradScaler("cuda")
    raise ValueError(f"train.amp must be none, bf16 or fp16, got {amp!r}")

