"""Train a re-ID model: ``python tools/train.py --config FILE [key=value ...]``.

With no arguments it runs the demo (configs/demo.yaml: synthetic data, small backbone).
Several processes: ``torchrun --nproc_per_node=N tools/train.py --config FILE``.
Stop with Ctrl-C (or SIGTERM) at any time; ``resume=true`` continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` importable when run as a script

import torch  # noqa: E402

from reid import builders  # noqa: E402
from reid.config import Config, ConfigError, load_config, save_config, to_dict  # noqa: E402
from reid.distributed import cleanup_distributed, init_distributed  # noqa: E402
from reid.engine import TrainingInterrupted, amp_settings, evaluate, fit, seed_everything  # noqa: E402
from reid.optim import build_optimizer, build_scheduler  # noqa: E402
from tools._common import DEMO_CONFIG, add_config_arguments, metrics_table, setup_logging  # noqa: E402

log = logging.getLogger("reid")


def resume_path(cfg: Config, output_dir: Path) -> Path | None:
    """``resume=true``: the output folder's last.pt if there is one; a string: that file."""
    if cfg.resume is False or cfg.resume == "":
        return None
    if cfg.resume is True:
        last = output_dir / "last.pt"
        if last.is_file():
            return last
        log.warning("resume=true but %s does not exist yet: starting from scratch", last)
        return None
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={cfg.resume!r}: no such checkpoint file")
    return path


def run(cfg: Config) -> dict[str, Any]:
    """Train as ``cfg`` says and return the final metrics (also written to metrics.json)."""
    device = builders.resolve_device(cfg.train.device)
    dist_info, device = init_distributed(device)
    output_dir = Path(cfg.output_dir)
    setup_logging(output_dir, is_main=dist_info.is_main)
    try:
        return _train(cfg, device, dist_info, output_dir)
    finally:
        cleanup_distributed()


def _train(cfg: Config, device: torch.device, dist_info, output_dir: Path) -> dict[str, Any]:
    seed_everything(cfg.train.seed + dist_info.rank)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    resume_from = resume_path(cfg, output_dir)
    if dist_info.is_main:
        save_config(cfg, output_dir / "config.yaml")
        if resume_from is None:
            (output_dir / "log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log

    dataset = builders.dataset_from_config(cfg)
    log.info("dataset %s (%s)\n%s", dataset.name, dataset.root, dataset.summary())
    train_loader = builders.train_loader_from_config(cfg, dataset, dist_info.rank, dist_info.world_size)
    query_loader, gallery_loader = builders.test_loaders_from_config(cfg, dataset)
    steps_per_epoch = len(train_loader)
    if cfg.train.iters_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, cfg.train.iters_per_epoch)

    model = builders.model_from_config(cfg, dataset.num_train_pids).to(device)
    log.info("model %s: %d-d embeddings, %d classes, %.1fM parameters", cfg.model.backbone, model.feature_dim,
             model.num_classes, sum(p.numel() for p in model.parameters()) / 1e6)
    losses = builders.losses_from_config(cfg)
    for _, loss in losses.values():
        loss.to(device)
    t = cfg.train
    optimizer = build_optimizer(
        [p for p in model.parameters() if p.requires_grad] + [p for _, l in losses.values() for p in l.parameters()],
        t.optimizer, t.lr, t.weight_decay, t.momentum,
    )
    scheduler = build_scheduler(
        optimizer, epochs=t.epochs, steps_per_epoch=steps_per_epoch, schedule=t.scheduler,
        warmup_epochs=t.warmup_epochs, warmup_factor=t.warmup_factor, milestones=t.milestones, gamma=t.gamma,
    )
    amp_dtype, scaler = amp_settings(t.amp, device)
    if dist_info.enabled:
        ddp_device = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_device)

    def evaluate_fn(current_model, final: bool) -> dict[str, Any]:
        # Re-ranking is costly; it runs on the final evaluation only.
        options = builders.eval_options(cfg, rerank=cfg.test.rerank and final)
        return evaluate(current_model, query_loader, gallery_loader, device, **options)

    untrained_file = output_dir / "untrained_metrics.json"
    if t.eval_untrained and resume_from is None and dist_info.is_main:
        untrained = evaluate_fn(model, True)
        untrained_file.write_text(json.dumps(untrained, indent=2))
        log.info("untrained model: mAP %.4f, rank1 %.4f", untrained["mAP"], untrained["rank1"])

    metrics = fit(
        model, train_loader, losses, optimizer, scheduler,
        epochs=t.epochs, steps_per_epoch=steps_per_epoch, output_dir=output_dir, device=device,
        evaluate_fn=evaluate_fn, eval_every=t.eval_every, resume_from=resume_from,
        checkpoint_extra={"config": to_dict(cfg), "num_classes": dataset.num_train_pids},
        amp_dtype=amp_dtype, scaler=scaler, grad_clip=t.grad_clip, is_main=dist_info.is_main,
    )
    if not dist_info.is_main:
        return metrics
    if untrained_file.is_file():
        metrics["untrained"] = json.loads(untrained_file.read_text())
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    rows = {"trained": metrics}
    if "rerank" in metrics:
        rows["trained + re-ranking"] = metrics["rerank"]
    if "untrained" in metrics:
        rows = {"untrained": metrics["untrained"], **rows}
    log.info("results on %s (%d valid queries)\n%s\nwritten to %s", dataset.name, metrics["num_valid_queries"],
             metrics_table(rows), output_dir / "metrics.json")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config or DEMO_CONFIG, args.overrides)  # overrides alone apply to the demo
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    try:
        return run(cfg)
    except TrainingInterrupted as err:
        log.warning("%s", err)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
