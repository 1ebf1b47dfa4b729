"""Unsupervised adaptation, measured: direct transfer, `reid adapt`, and the oracle, on a second
synthetic domain with its own labelled test split.

Source domain: the synthetic set as the demo makes it (``domain="market"``). Target domain:
``domain="dusk"`` (other cameras: darker, bluish, softer, noisier, dim scenes; other people:
taller, slimmer, darker clothes; other identities, seed 1). Per seed:

* source-only (direct transfer): the demo's recipe (ImageNet MobileNetV2, Group Loss + CE)
  trained on the source, evaluated on the target's test split;
* adapted: that model through ``reid.adaptation.adapt`` on the target's *unlabelled* training
  images (their names carry ids, which adaptation never reads; the benchmark reads them only
  to score the pseudo-labels: NMI and pairwise precision / recall per round);
* oracle: the same recipe trained on the target's labelled training images.

The goal (issue 19): adaptation closes at least half of the gap between direct transfer and the
oracle, ``(adapted - direct) / (oracle - direct) >= 0.5`` in mAP.

    .venv/bin/python benchmarks/bench_adapt.py [--seeds 0 1 2] [--work outputs/bench_adapt] [--json FILE]

Prints the table (mean +- sample standard deviation over seeds) and the pseudo-label quality
per round; writes every number to ``benchmarks/results/adapt.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid import builders  # noqa: E402
from reid.adaptation import clustering_quality  # noqa: E402
from reid.adaptation.adapt import adapt, adaptation_config  # noqa: E402
from reid.checkpoint import load_checkpoint  # noqa: E402
from reid.config import load_config  # noqa: E402
from reid.data.synthetic import make_synthetic_market  # noqa: E402
from reid.engine import evaluate  # noqa: E402
from reid.inference import labels_from_names  # noqa: E402
from reid.io import atomic_write_json  # noqa: E402
from reid.training import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
DATA = dict(num_train_ids=60, num_test_ids=40, num_cameras=4, image_size=(128, 64), num_distractors=40, num_junk=0)
EPOCHS = 20
# The demo recipe at 64 x 32 input and 20 epochs (6 epochs gave a source model too weak to cluster the target
# at all: 34 mAP on its own domain, a first round of pseudo-labels with pairwise F1 below 0.17 whatever the
# DBSCAN settings); each training takes about 100 s on one core. Data workers 0: the study uses one core.
RECIPE = ["data.name=market1501", "data.height=64", "data.width=32", f"train.epochs={EPOCHS}", f"train.eval_every={EPOCHS}", "train.eval_untrained=false",
          "test.rerank=false", "data.num_workers=0", "train.device=cpu", "resume=true"]  # a finished run is reused
# reid adapt at its defaults, with 30 batches of 16 x 4 per round (one pass of the sampler over ~450
# clustered images is only 7 batches) and ROUNDS rounds.
ROUNDS = 4
ADAPT = [f"adapt.rounds={ROUNDS}", "adapt.iters_per_round=30", "data.num_workers=0", "train.device=cpu"]

log = logging.getLogger("reid")


def target_metrics(weights: Path, target: Path) -> dict:
    """mAP / Rank-1 of a checkpoint on the target domain's test split."""
    state = load_checkpoint(weights)
    cfg = builders.checkpoint_config(state, weights)
    cfg = load_config(None, [f"data.name=market1501", f"data.root={target}", f"data.height={cfg.data.height}",
                             f"data.width={cfg.data.width}", "data.num_workers=1", "test.rerank=false"])
    dataset = builders.dataset_from_config(cfg, generate=False)
    query_loader, gallery_loader = builders.test_loaders_from_config(cfg, dataset)
    model = builders.model_from_checkpoint(state, weights, "cpu")
    m = evaluate(model, query_loader, gallery_loader, "cpu", progress=False,
                 **builders.eval_options(cfg, dataset, rerank=False))
    return {"mAP": m["mAP"], "rank1": m["rank1"]}


def one_seed(seed: int, source: Path, target: Path, work: Path) -> dict:
    run = work / f"seed{seed}"
    t0 = time.perf_counter()
    train(load_config(DEMO, [*RECIPE, f"data.root={source}", f"output_dir={run / 'source'}", f"train.seed={seed}"]))
    direct = target_metrics(run / "source" / "last.pt", target)
    log.info("seed %d direct transfer: %s (%.0f s)", seed, direct, time.perf_counter() - t0)

    rounds: list[dict] = []

    def score(record, labels, paths):
        true_ids, _ = labels_from_names(paths)
        rounds.append({"round": record["round"], "clusters": record["clusters"], "outliers": record["outliers"],
                       **clustering_quality(labels, true_ids)})
        log.info("seed %d round %d pseudo-labels: %s", seed, record["round"], rounds[-1])

    cfg, state = adaptation_config(run / "source" / "last.pt", [*ADAPT, f"train.seed={seed}", "overwrite=true"],
                                   run / "adapted")
    adapt(cfg, state, run / "source" / "last.pt", [target / "bounding_box_train"], progress=False, on_round=score)
    adapted = target_metrics(run / "adapted" / "last.pt", target)
    log.info("seed %d adapted: %s (%.0f s)", seed, adapted, time.perf_counter() - t0)

    train(load_config(DEMO, [*RECIPE, f"data.root={target}", f"output_dir={run / 'oracle'}", f"train.seed={seed}"]))
    oracle = target_metrics(run / "oracle" / "last.pt", target)
    log.info("seed %d oracle: %s (%.0f s)", seed, oracle, time.perf_counter() - t0)
    return {"seed": seed, "direct": direct, "adapted": adapted, "oracle": oracle, "rounds": rounds,
            "seconds": round(time.perf_counter() - t0, 1)}


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * spread:.2f}"


def table(results: list[dict]) -> str:
    lines = [f"| model (target test split, {len(results)} seeds) | mAP | Rank-1 |", "|---|---:|---:|"]
    for name, label in (("direct", "source only (direct transfer)"), ("adapted", "adapted (reid adapt, no labels)"),
                        ("oracle", "oracle (trained on the labelled target)")):
        lines.append(f"| {label} | {_mean_std([r[name]['mAP'] for r in results])} | "
                     f"{_mean_std([r[name]['rank1'] for r in results])} |")
    closed = [(r["adapted"]["mAP"] - r["direct"]["mAP"]) / (r["oracle"]["mAP"] - r["direct"]["mAP"]) for r in results]
    lines.append(f"\ngap closed (mAP): {_mean_std(closed)} % (per seed: "
                 f"{', '.join(f'{100 * c:.1f}' for c in closed)}; goal >= 50)")
    lines.append("\n| round | clusters | outliers | NMI | pairwise precision | pairwise recall |")
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for index in range(min(len(r["rounds"]) for r in results)):
        rows = [r["rounds"][index] for r in results]
        lines.append(f"| {index + 1} | {statistics.mean(x['clusters'] for x in rows):.1f} | "
                     f"{statistics.mean(x['outliers'] for x in rows):.1f} | {_mean_std([x['nmi'] for x in rows])} | "
                     f"{_mean_std([x['precision'] for x in rows])} | {_mean_std([x['recall'] for x in rows])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "bench_adapt")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "adapt.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)  # one core: the study runs beside other work
    source = make_synthetic_market(args.work / "source", seed=0, **DATA)
    target = make_synthetic_market(args.work / "target", seed=1, domain="dusk", **DATA)
    results = []
    for seed in args.seeds:
        results.append(one_seed(seed, source, target, args.work))
        atomic_write_json(args.json, {"data": {k: list(v) if isinstance(v, tuple) else v for k, v in DATA.items()},
                                      "recipe": RECIPE, "adapt": ADAPT, "results": results})
    print(table(results))
    return results


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
