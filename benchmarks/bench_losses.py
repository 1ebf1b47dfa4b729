"""The loss study: does Group Loss earn its place? Four recipes at an equal budget, several seeds.

Every cell fine-tunes the same ImageNet init (MobileNetV2, ``model.pretrained=true``) on the same
data, epochs and P x K batches; only the losses differ:

- ``group_ce``: Group Loss + cross-entropy (the Group Loss papers' recipe);
- ``ce_triplet``: cross-entropy + batch-hard triplet, margin 0.3 (the BoT recipe, Luo et al. 2019);
- ``ce``: cross-entropy alone;
- ``group``: Group Loss alone (its priors still train the classifier).

Cross-entropy and Group Loss keep the settings of each setting's config (label smoothing,
temperature, anchors, iterations). Two settings:

- ``reid``: ``configs/demo.yaml`` (the synthetic Market-layout set), test split: mAP, Rank-1, mINP;
- ``retrieval``: ``configs/fashion_mnist_group.yaml`` (real images, unseen classes 5-9,
  leave-one-out): MAP@R, Recall@1, NMI.

Commands (run one at a time on a 2-core machine; each cell trains one model):

    .venv/bin/python benchmarks/bench_losses.py --recipe group_ce --seed 0 [--setting reid]
        one cell: prints one JSON line with its metrics (fractions)
    .venv/bin/python benchmarks/bench_losses.py --all [--seeds 0 1 2] [--settings reid retrieval]
        every cell not yet in --results (benchmarks/results/losses.json), each stored as soon as
        it finishes (an interrupted study continues where it stopped), then the table
    .venv/bin/python benchmarks/bench_losses.py --sweep [tune|group_alone]
        tune: Group Loss's temperature, anchors, iterations and P x K (group_ce, seed 0) on the
        validation split of the reid setting (data.val_ids, never the test split); stored
        under "group_sweep". group_alone: why Group Loss alone trails (temperature, detached
        priors, anchors, lr; group_ce's priors and label smoothing); stored under "group_alone_sweep"
    .venv/bin/python benchmarks/bench_losses.py --table
        the stored study: mean +- std (sample standard deviation over seeds) per recipe
    .venv/bin/python benchmarks/bench_losses.py --priors outputs/demo/last.pt [more.pt ...]
        the scale of a trained model's logits on its training images, and how far Group
        Loss's priors softmax(Z / T) are from uniform at T = 1 ... 160 (one JSON line each)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid.config import Config, load_config, to_dict  # noqa: E402
from reid.io import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "losses.json"
RECIPES = ("group_ce", "ce_triplet", "ce", "group")
TRIPLET = {"name": "triplet", "params": {"margin": 0.3}}


class BenchError(Exception):
    """A user's mistake (a bad results file, mixed settings): one line, exit 2."""


@dataclass(frozen=True)
class Setting:
    config: str
    metrics: dict[str, str]  # stored name -> key of reid's metrics dict
    results_key: str | None  # None: the top level of the results file; else its own key
    overrides: tuple[str, ...] = ()


SETTINGS = {
    "reid": Setting("configs/demo.yaml", {"mAP": "mAP", "rank1": "rank1", "mINP": "mINP"}, None,
                    ("train.eval_untrained=false", "test.rerank=false")),
    "retrieval": Setting("configs/fashion_mnist_group.yaml",
                         {"map_at_r": "map_at_r", "recall@1": "recall@1", "nmi": "nmi"}, "retrieval",
                         ("train.eval_untrained=false",)),
}

# Sweeps on the validation split of the reid setting (data.val_ids, never the test split), seed 0,
# one change at a time from a base. A change holds Group Loss parameters, "pk" ("PxK": identities x
# images per batch, 64 images each), "label_smoothing" (of the CE term), "lr" and "recipe".
SWEEP_VAL_IDS = 30


@dataclass(frozen=True)
class Sweep:
    results_key: str
    recipe: str  # of every row that names none
    base: dict[str, Any]  # applied before each change: the demo's settings when the sweep was run
    changes: tuple[dict[str, Any], ...]
    about: str


SWEEPS = {
    # Tuning Group Loss for the demo (group_ce), from the demo's settings before it: T 80, 16 x 4.
    "tune": Sweep("group_sweep", "group_ce", {"temperature": 80.0, "pk": "16x4"}, (
        {},
        {"temperature": 24.0}, {"temperature": 40.0}, {"temperature": 160.0},
        {"num_anchors": 1}, {"num_anchors": 3},
        {"num_iterations": 2}, {"num_iterations": 3},
        {"pk": "8x8"}, {"pk": "32x2"},
        {"temperature": 160.0, "pk": "8x8"},  # the two best single changes together
    ), "Group Loss's temperature, anchors, iterations and P x K (group_ce)"),
    # Why Group Loss alone trails (issue 11, item 6), from the demo's settings (T 160, 8 x 8).
    "group_alone": Sweep("group_alone_sweep", "group", {}, (
        {},
        {"temperature": 1.0}, {"temperature": 10.0}, {"temperature": 40.0},
        {"detach_priors": True}, {"num_anchors": 4},
        {"recipe": "group_ce"}, {"recipe": "group_ce", "detach_priors": True},
        {"recipe": "group_ce", "label_smoothing": 0.0},
        {"lr": 0.003}, {"lr": 0.012},  # the lr was tuned with CE present
    ), "Group Loss alone: temperature, detached priors, anchors, lr; and group_ce's priors and label smoothing"),
}


def recipe_losses(recipe: str, losses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loss list of ``recipe``, built from the setting config's own group and CE entries."""
    by_name = {spec["name"]: spec for spec in losses}
    missing = [name for name in ("group", "cross_entropy") if name not in by_name]
    if missing:
        raise ValueError(f"the setting's config lists no {' / '.join(missing)} loss to build the recipes from")
    group, ce = by_name["group"], by_name["cross_entropy"]
    recipes = {"group_ce": [group, ce], "ce_triplet": [ce, TRIPLET], "ce": [ce], "group": [group]}
    if recipe not in recipes:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    return recipes[recipe]


def cell_config(setting: str, recipe: str, seed: int, output_dir: Path, *, val_ids: int = 0,
                group: dict[str, Any] | None = None, extra: list[str] | tuple[str, ...] = ()):
    """The config of one cell: the setting's config, the recipe's losses, the seed.

    ``group`` overrides Group Loss parameters, ``pk`` ("PxK" identities x images per batch),
    ``label_smoothing`` (of the cross-entropy term) and ``lr``.
    """
    s = SETTINGS[setting]
    base = load_config(REPO / s.config, [*s.overrides, *extra])
    losses = [dict(spec) for spec in to_dict(base)["losses"]]
    group = dict(group or {})
    overrides = [f"train.seed={seed}", f"output_dir={output_dir}", f"data.val_ids={val_ids}"]
    if "pk" in group:
        p, k = (int(n) for n in str(group.pop("pk")).split("x"))
        overrides += [f"data.num_identities={p}", f"data.num_instances={k}"]
    if "lr" in group:
        overrides.append(f"train.lr={group.pop('lr')}")
    ce_params = {"label_smoothing": group.pop("label_smoothing")} if "label_smoothing" in group else {}
    for spec in losses:
        if spec["name"] == "group":
            spec["params"] = {**spec["params"], **group}
        elif spec["name"] == "cross_entropy":
            spec["params"] = {**spec["params"], **ce_params}
    overrides.append("losses=" + json.dumps(recipe_losses(recipe, losses)))
    return load_config(REPO / s.config, [*s.overrides, *extra, *overrides])


def run_cell(setting: str, recipe: str, seed: int, **kwargs: Any) -> dict[str, Any]:
    """Train one cell in a temporary folder; its metrics (fractions) and wall seconds."""
    from reid.training import train

    with tempfile.TemporaryDirectory(prefix="bench_losses_") as tmp:
        cfg = cell_config(setting, recipe, seed, Path(tmp) / "run", **kwargs)
        start = time.perf_counter()
        metrics = train(cfg)
        seconds = time.perf_counter() - start
    row = {name: float(metrics[key]) for name, key in SETTINGS[setting].metrics.items()}
    row["seconds"] = round(seconds, 1)
    return row


def read_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"{path}: not a readable results file ({err}); move it away to start afresh") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected a JSON object at the top level")
    return data


def setting_block(data: dict[str, Any], setting: str) -> dict[str, Any]:
    """Where ``setting``'s "setting" and "recipes" live in the results file (created if absent)."""
    key = SETTINGS[setting].results_key
    return data if key is None else data.setdefault(key, {})


def describe(setting: str, group: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = cell_config(setting, "group_ce", 0, Path("unused"), group=group)
    return {
        "name": setting, "dataset": cfg.data.name,  # the config file: SETTINGS[name].config
        "split": "test", "backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained,
        "input": f"{cfg.data.height}x{cfg.data.width}", "epochs": cfg.train.epochs,
        "iters_per_epoch": cfg.train.iters_per_epoch,
        "batch": f"{cfg.data.num_identities}x{cfg.data.num_instances}", "lr": cfg.train.lr,
        "trunk_lr_factor": cfg.train.trunk_lr_factor, "trunk_anchor": cfg.train.trunk_anchor,
        "losses": to_dict(cfg)["losses"], "machine": "2-core CPU, no GPU", "metrics": "fractions",
        # every key, so that cells measured under another config are never mixed with these
        "config": {k: v for k, v in to_dict(cfg).items() if k not in ("output_dir", "losses")},
    }


def check_same_setting(block: dict[str, Any], setting: dict[str, Any], path: Path) -> None:
    """Store ``setting`` in ``block``; cells already there must have been measured with it.

    A config key that reid gained after the cells were measured counts as unchanged while it
    holds its default (a new key's default keeps the old behaviour)."""
    stored = block.get("setting")
    if (block.get("recipes") or block.get("rows")) and stored is not None and "config" in stored:
        stored = {**stored, "config": _with_new_defaults(stored["config"], setting.get("config"),
                                                         to_dict(Config()))}
    if (block.get("recipes") or block.get("rows")) and stored != setting:
        changed = sorted(k for k in set(setting) | set(stored or {}) if (stored or {}).get(k) != setting.get(k))
        raise BenchError(f"{path}: its {setting['name']} cells were measured with another setting "
                         f"(changed: {', '.join(changed)}); pass --results NEW_FILE or move the file away")
    block["setting"] = setting


def _with_new_defaults(stored: Any, current: Any, defaults: Any) -> Any:
    """``stored`` plus each key it lacks that ``current`` holds at its default value."""
    if not (isinstance(stored, dict) and isinstance(current, dict) and isinstance(defaults, dict)):
        return stored
    merged = {k: _with_new_defaults(v, current.get(k), defaults.get(k)) for k, v in stored.items()}
    for key, value in current.items():
        if key not in stored and key in defaults and value == defaults[key]:
            merged[key] = value
    return merged


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def table(data: dict[str, Any], setting: str) -> str:
    block = setting_block(data, setting)
    names = list(SETTINGS[setting].metrics)
    lines = [f"| recipe ({setting}) | seeds | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for recipe in RECIPES:
        seeds = block.get("recipes", {}).get(recipe, {}).get("seeds", {})
        if not seeds:
            continue
        cells = []
        for name in names:
            mean, std = mean_std([100 * row[name] for row in seeds.values()])
            cells.append(f"{mean:.2f} +- {std:.2f}")
        lines.append(f"| {recipe} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> None:
    data = read_results(args.results)
    for setting in args.settings:
        block = setting_block(data, setting)
        check_same_setting(block, describe(setting), args.results)
        for seed in args.seeds:
            for recipe in args.recipes:
                seeds = block.setdefault("recipes", {}).setdefault(recipe, {}).setdefault("seeds", {})
                if str(seed) in seeds:
                    continue
                row = run_cell(setting, recipe, seed)
                seeds[str(seed)] = row
                atomic_write_json(args.results, data)
                print(json.dumps({"setting": setting, "recipe": recipe, "seed": seed, **row}), flush=True)
    for setting in args.settings:
        print("\n" + table(data, setting))


def run_sweep(args: argparse.Namespace) -> None:
    sweep = SWEEPS[args.sweep]
    data = read_results(args.results)
    block = data.setdefault(sweep.results_key, {"rows": []})
    setting = {**describe("reid", group=sweep.base), "split": f"validation: data.val_ids={SWEEP_VAL_IDS}",
               "recipe": sweep.recipe, "seed": 0}
    check_same_setting(block, setting, args.results)
    done = {json.dumps(row["change"], sort_keys=True) for row in block["rows"]}
    for change in sweep.changes:
        if json.dumps(change, sort_keys=True) in done:
            continue
        cell = {**sweep.base, **change}
        recipe = cell.pop("recipe", sweep.recipe)
        row = {"change": change, **run_cell("reid", recipe, 0, val_ids=SWEEP_VAL_IDS, group=cell)}
        block["rows"].append(row)
        atomic_write_json(args.results, data)
        print(json.dumps(row), flush=True)
    print("\n" + sweep_table(block))


def sweep_table(block: dict[str, Any]) -> str:
    """One column per row of a stored sweep: its change and its validation mAP."""
    names = [", ".join(f"{k} {v}" for k, v in row["change"].items()) or "none" for row in block["rows"]]
    return "\n".join(["| change | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
                      "| validation mAP | " + " | ".join(f"{100 * row['mAP']:.2f}" for row in block["rows"]) + " |"])


PRIOR_TEMPERATURES = (1.0, 10.0, 40.0, 80.0, 160.0)


def prior_sharpness(logits: Any, temperatures: tuple[float, ...] = PRIOR_TEMPERATURES) -> dict[str, float]:
    """What Group Loss's priors softmax(Z / T) make of logits Z (N x C): the logits' standard
    deviation, the mean spread (max - min) of a row, and the mean top prior at each T (a uniform
    prior, which carries no information, is 1 / C)."""
    import torch

    row = {"classes": int(logits.shape[1]), "logit_std": float(logits.std()),
           "row_spread": float((logits.max(dim=1).values - logits.min(dim=1).values).mean())}
    for temperature in temperatures:
        row[f"top_prior@T{temperature:g}"] = float(torch.softmax(logits / temperature, dim=1).max(dim=1).values.mean())
    return row


def checkpoint_priors(path: Path) -> dict[str, float]:
    """``prior_sharpness`` of a trained model's logits on its own training images (un-augmented)."""
    import torch

    from reid import builders
    from reid.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    cfg = builders.checkpoint_config(state, path)
    model = builders.model_from_checkpoint(state, path).eval()
    dataset = builders.dataset_from_config(cfg, generate=False)
    loader = builders.test_loader_from_config(cfg, dataset.train)
    with torch.no_grad():
        logits = torch.cat([model(images).logits for images, *_ in loader])
    return prior_sharpness(logits)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--recipe", choices=RECIPES, help="run one cell and print its JSON line")
    mode.add_argument("--all", action="store_true", help="run every missing cell, store each, print the table")
    mode.add_argument("--sweep", nargs="?", const="tune", choices=tuple(SWEEPS),
                      help="a sweep on the validation split (default: %(const)s): "
                      + "; ".join(f"{name}: {sweep.about}" for name, sweep in SWEEPS.items()))
    mode.add_argument("--table", action="store_true", help="print the stored study")
    mode.add_argument("--priors", type=Path, nargs="+", metavar="CKPT",
                      help="how informative Group Loss's priors softmax(Z / T) are for these trained models")
    parser.add_argument("--seed", type=int, default=0, help="--recipe: the seed")
    parser.add_argument("--setting", choices=tuple(SETTINGS), default="reid", help="--recipe: the setting")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--all: the seeds")
    parser.add_argument("--settings", choices=tuple(SETTINGS), nargs="+", default=list(SETTINGS))
    parser.add_argument("--recipes", choices=RECIPES, nargs="+", default=list(RECIPES), help="--all: the recipes")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from reid.engine import TrainingInterrupted

    try:
        run(args)
    except (BenchError, ValueError, OSError) as err:  # a bad file or setting: one line
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except (TrainingInterrupted, KeyboardInterrupt):
        # A cell trains in a temporary folder, so it cannot be resumed; finished cells are stored.
        stored = f"; finished cells are in {args.results}, and a rerun continues from them" if (
            args.all or args.sweep) else ""
        print(f"interrupted: the cell in progress is lost{stored}", file=sys.stderr)
        raise SystemExit(130) from None


def run(args: argparse.Namespace) -> None:
    if args.recipe:
        row = run_cell(args.setting, args.recipe, args.seed)
        print(json.dumps({"setting": args.setting, "recipe": args.recipe, "seed": args.seed, **row}))
    elif args.all:
        run_all(args)
    elif args.sweep:
        run_sweep(args)
    elif args.priors:
        for path in args.priors:
            print(json.dumps({"checkpoint": str(path), **checkpoint_priors(path)}))
    else:
        data = read_results(args.results)
        print("\n\n".join(table(data, s) for s in SETTINGS if setting_block(data, s).get("recipes")))


if __name__ == "__main__":
    main()
