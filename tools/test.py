"""Evaluate a checkpoint: ``python tools/test.py --weights CKPT [--config FILE] [--rerank] [key=value ...]``.

Prints mAP, mINP and Rank-1/5/10 (with and without re-ranking when asked) and writes
metrics.json. The model is rebuilt from the config stored in the checkpoint; ``--config`` and
overrides choose the data and the test options (defaults: the checkpoint's own).

``--ablate`` evaluates every on/off combination of Group Loss++'s inference strategies in one
run, one table row each: ``--ablate all`` (flip, mix, leaky, beta, rerank) or e.g.
``--ablate flip,beta``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` importable when run as a script

from reid import builders  # noqa: E402
from reid.engine import INFERENCE_SWITCHES, ablate_inference, evaluate  # noqa: E402
from tools._common import add_config_arguments, metrics_table, model_and_config, setup_logging  # noqa: E402

log = logging.getLogger("reid")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--weights", type=Path, required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--rerank", action="store_true", help="also report k-reciprocal re-ranking")
    parser.add_argument("--ablate", default=None, metavar="SWITCHES",
                        help=f"'all' or a comma-separated subset of {','.join(INFERENCE_SWITCHES)}")
    parser.add_argument("--mix-lambda", type=float, default=0.5, help="ablation: lam of lam*max + (1-lam)*avg")
    parser.add_argument("--leaky-slope", type=float, default=0.1, help="ablation: slope of the leaky final ReLU")
    parser.add_argument("--beta", type=float, default=0.1, help="ablation: beta of normalize(f) + beta * f")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write metrics.json (default: the checkpoint's folder)")
    args = parser.parse_args(argv)
    setup_logging()

    model, cfg, device = model_and_config(parser, args.weights, args.config, args.overrides)
    dataset = builders.dataset_from_config(cfg)
    query_loader, gallery_loader = builders.test_loaders_from_config(cfg, dataset)
    if args.ablate is not None:
        switches = INFERENCE_SWITCHES if args.ablate == "all" else tuple(s for s in args.ablate.split(",") if s)
        options = builders.eval_options(cfg)
        for key in ("flip", "beta", "rerank"):
            options.pop(key)
        metrics = ablate_inference(
            model, query_loader, gallery_loader, device, switches=switches,
            pool_lambda=args.mix_lambda, leaky_slope=args.leaky_slope, trained_leaky_slope=cfg.model.leaky_relu,
            beta=args.beta, **options,
        )
        rows = metrics
    else:
        metrics = evaluate(model, query_loader, gallery_loader, device, **builders.eval_options(cfg, rerank=args.rerank))
        rows = {"model": metrics}
        if "rerank" in metrics:
            rows["model + re-ranking"] = metrics["rerank"]
    print(metrics_table(rows))
    output = args.output or args.weights.parent / "metrics.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2))
    log.info("wrote %s", output)
    return metrics


if __name__ == "__main__":
    main()
