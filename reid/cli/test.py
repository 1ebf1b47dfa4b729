"""``reid test``: evaluate a checkpoint on its dataset's query/gallery split, or on any dataset's (--dataset)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from .report import add_report_arguments, check_report_folder
from .common import (
    INFERENCE_SWITCHES,
    add_allow_resize_argument,
    add_config_arguments,
    add_quiet_argument,
    add_weights_argument,
    checkpoint_config,
    check_new_file,
    evaluation_setup,
    load_model,
    progress_setting,
    run_config,
    test_features,
    setup_logging,
)

log = logging.getLogger("reid")

SUMMARY = "evaluate a checkpoint on its dataset, optionally re-ranked or ablated"
DESCRIPTION = f"""{SUMMARY}.

Prints the metrics of the dataset's protocol (re-ID: mAP, mINP and Rank-1/5/10, with and
without re-ranking when asked; retrieval sets: Recall@K, MAP@R, ...) and writes them as
JSON to --output, by default <checkpoint stem>_test_metrics.json beside the checkpoint
(best.pt -> best_test_metrics.json; with --ablate: best_ablation.json). The training run's
metrics.json is never written. The model is rebuilt from the config stored in the checkpoint;
--config and key=value overrides choose the data and the test options (defaults: the
checkpoint's own). A synthetic dataset must exist already (reid test never generates one).
--dataset NAME tests the model on any dataset's test split (cross-domain testing), in --root DIR
or in the folder the checkpoint's config gives that name (a test set's or a training source's); a
checkpoint trained with several test sets needs it to choose one.

--ablate evaluates every on/off combination of Group Loss++'s inference strategies in one run,
one table row each: --ablate all ({', '.join(INFERENCE_SWITCHES)}; a switch the model cannot apply,
such as the leaky ReLU on a trunk that does not end in a ReLU, is left out with a warning) or
e.g. --ablate flip,beta."""
EPILOG = """examples:
  reid test --weights outputs/demo/best.pt --rerank
  reid test --weights outputs/demo/best.pt --ablate flip,beta
  reid test --weights outputs/demo/best.pt data.root=datasets/other --output other.json
  reid test --weights outputs/market/best.pt --dataset msmt17 --root datasets/msmt17 --output msmt17.json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, config_help="experiment YAML for data and test options (default: the checkpoint's)")
    add_weights_argument(parser)
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="test on this dataset (e.g. msmt17, cuhk03_np) instead of the checkpoint's test sets; "
                             "its folder: --root, else the one the checkpoint's config gives it")
    parser.add_argument("--root", default=None, metavar="DIR", help="with --dataset: the dataset's folder")
    parser.add_argument("--rerank", action="store_true", help="also report k-reciprocal re-ranking")
    parser.add_argument("--ablate", default=None, metavar="SWITCHES",
                        help=f"'all' or a comma-separated subset of {','.join(INFERENCE_SWITCHES)}")
    parser.add_argument("--mix-lambda", type=float, default=0.5, help="ablation: lam of lam*max + (1-lam)*avg")
    parser.add_argument("--leaky-slope", type=float, default=0.1, help="ablation: slope of the leaky final ReLU")
    parser.add_argument("--beta", type=float, default=0.1, help="ablation: beta of normalize(f) + beta * f")
    parser.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="JSON file to write (default: <checkpoint stem>_test_metrics.json, or "
                             "<stem>_ablation.json with --ablate, beside the checkpoint)")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="also write the HTML report of this evaluation into DIR (see reid report --help)")
    add_report_arguments(parser)
    add_allow_resize_argument(parser)
    add_quiet_argument(parser)


def ablation_switches(text: str) -> tuple[str, ...]:
    switches = INFERENCE_SWITCHES if text == "all" else tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in switches if s not in INFERENCE_SWITCHES]
    if unknown or not switches:
        raise ValueError(f"--ablate {text!r}: expected 'all' or a comma-separated subset of "
                         f"{','.join(INFERENCE_SWITCHES)}" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return switches


def output_path(args: argparse.Namespace) -> Path:
    """--output, else <stem>_test_metrics.json / <stem>_ablation.json beside the checkpoint.

    The default file is this command's own and is replaced by the next evaluation. An --output
    that exists is replaced only with --overwrite (it may be anything: a checkpoint, say), and
    never when it is the training run's metrics.json.
    """
    weights: Path = args.weights
    if args.output is None:
        suffix = "ablation" if args.ablate is not None else "test_metrics"
        return weights.with_name(f"{weights.stem}_{suffix}.json")
    run_metrics = weights.parent / "metrics.json"
    if args.output.resolve() == run_metrics.resolve():
        raise ValueError(f"--output {args.output}: that is the training run's metrics file; "
                         "choose another name (reid test never overwrites it)")
    check_new_file(args.output, overwrite=args.overwrite)
    return args.output


def dataset_overrides(args: argparse.Namespace) -> list[str]:
    """--dataset NAME [--root DIR] as the overrides that make NAME the one test set (JSON is YAML).
    Without --root, NAME's folder is the one the checkpoint's config gives it (a test set's or a
    training source's)."""
    if args.dataset is None:
        if args.root is not None:
            raise ValueError("--root DIR: give the dataset it holds with --dataset NAME")
        return []
    root = args.root
    if root is None:
        from reid.builders import known_root

        root = known_root(run_config(checkpoint_config(args.weights), args.config, args.overrides), args.dataset)
        if root is None:
            raise ValueError(f"--dataset {args.dataset}: the checkpoint's config names no folder for it; "
                             "give it with --root DIR")
    roots = [str(root)]
    # data.val_ids=0: a model tuned on held-out training ids is tested on a real test split here
    return [f"test.datasets={json.dumps([args.dataset])}", f"test.roots={json.dumps(roots)}", "data.val_ids=0"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns the metrics written (for --ablate: one entry per combination).

    Under torchrun (``torchrun --nproc_per_node N -m reid test ...``) every process extracts its
    share of the images; rank 0 alone evaluates, prints and writes, the others return {}.
    """
    from reid.distributed import cleanup_distributed

    try:
        return _run(args)
    finally:
        cleanup_distributed()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from reid.distributed import init_distributed, launcher_rank

    setup_logging(is_main=launcher_rank() == 0)
    args.overrides = [*args.overrides, *dataset_overrides(args)]
    switches = ablation_switches(args.ablate) if args.ablate is not None else None
    output = output_path(args)
    if args.report is not None:
        check_report_folder(args.report, overwrite=args.overwrite)
    cfg, device, dataset, state = evaluation_setup(args)
    dist_info, device = init_distributed(device)

    from reid import builders
    from reid.ablation import ablate_inference, unsupported_switches
    from reid.evaluation.evaluator import metrics_from_features, metrics_table
    from reid.io import atomic_write_json

    model = load_model(state, args.weights, device)
    progress = progress_setting(args) if dist_info.is_main else False
    ablation = None
    if switches is not None and args.ablate == "all":
        # "all" means every switch this model supports; a switch named explicitly stays an error.
        for switch, reason in unsupported_switches(model, switches).items():
            log.warning("--ablate all: leaving out %s: %s", switch, reason)
            switches = tuple(s for s in switches if s != switch)
    if switches is not None:
        options = {k: v for k, v in builders.eval_options(cfg, dataset).items() if k not in ("flip", "beta", "rerank")}
        query_loader, gallery_loader = builders.test_loaders_from_config(cfg, dataset)
        ablation = ablate_inference(
            model, query_loader, gallery_loader, device, switches=switches,
            pool_lambda=args.mix_lambda, leaky_slope=args.leaky_slope, beta=args.beta, progress=progress,
            distributed=dist_info, **options,
        )
        if dist_info.is_main:
            print(metrics_table(ablation))
            atomic_write_json(output, ablation)
            log.info("wrote %s", output)
    if switches is None or args.report is not None:
        query, gallery = test_features(cfg, dataset, model, device, progress=progress, distributed=dist_info)
        if not dist_info.is_main:
            return {}
        options = builders.metric_options(cfg, dataset, rerank=args.rerank)
        # The verification block (thresholds at FPRs) is what `reid extract --same-person-fpr` reads.
        metrics = metrics_from_features(query, gallery, verification=dataset.protocol == "reid", progress=progress,
                                        **options)
        if switches is None:
            rows = {"model": metrics, **({"model + re-ranking": metrics["rerank"]} if "rerank" in metrics else {})}
            print(metrics_table(rows))
            atomic_write_json(output, metrics)
            log.info("wrote %s", output)
        if args.report is not None:
            from .report import write

            write(args, args.report, cfg, query, gallery, protocol=dataset.protocol, recall_ks=dataset.recall_ks,
                  log_file=args.weights.parent / "log.jsonl", metrics=metrics, ablation=ablation)
    return ablation if switches is not None else metrics
