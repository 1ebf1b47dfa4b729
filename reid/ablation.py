"""The Group Loss++ inference ablation: metrics for every on/off combination of its test-time strategies.

The strategies (Elezi et al., "The Group Loss++", TPAMI): flip test-time augmentation, mix
pooling ``lam * max + (1 - lam) * avg`` in place of the trained pooling, a leaky final ReLU,
beta normalisation ``normalize(f) + beta * f`` and k-reciprocal re-ranking. The model-side
switches go through :meth:`reid.models.ReidModel.inference_options`, which puts the trained
modules back afterwards, also when a row fails.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import torch
from torch import nn

from .checkpoint import unwrap
from .distributed import DistInfo
from .evaluation.evaluator import metrics_from_features
from .inference import extract_query_gallery
from .progress import progress_bar

INFERENCE_SWITCHES = ("flip", "mix", "leaky", "beta", "rerank")


def row_name(switches_on: list[str]) -> str:
    """A result row's name: the switches that are on, joined by "+", or "baseline"."""
    return "+".join(switches_on) or "baseline"


def unsupported_switches(model: nn.Module, switches: tuple[str, ...] = INFERENCE_SWITCHES) -> dict[str, str]:
    """The model-side switches of ``switches`` that ``model`` cannot apply, each with the reason
    (today: ``leaky`` on a trunk whose last operation is not a ReLU, e.g. MobileNetV2's ReLU6).
    Probes without changing the model."""
    reasons: dict[str, str] = {}
    if "leaky" in switches:
        try:
            with unwrap(model).inference_options(leaky_relu=0.1):
                pass
        except ValueError as err:
            reasons["leaky"] = str(err)
    return reasons


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
    beta: float = 0.1,
    progress: bool | None = None,
    distributed: DistInfo | None = None,
    **metric_options: Any,
) -> dict[str, dict[str, Any]]:
    """Metrics for every on/off combination of Group Loss++'s inference strategies.

    ``switches`` picks which to vary (the others stay off): flip test-time augmentation, mix
    pooling with ``pool_lambda`` in place of the trained pooling, a leaky final ReLU with
    ``leaky_slope`` (off: the trained activation), beta normalisation with ``beta``, and
    k-reciprocal re-ranking. Features are extracted once per model-side combination (flip,
    mix, leaky); beta and re-ranking reuse them. Rows are named by the switches that are on
    ("baseline" for none). The model comes back as it was (its trained pooling and
    activation), also after an error. ``metric_options`` go to
    :func:`reid.evaluation.evaluator.metrics_from_features` (its ``beta`` and ``rerank`` are
    set here). ``progress``: a bar over the rows, named after the row being computed, above
    the extraction and evaluation bars (see :mod:`reid.progress`; None: on a terminal only).
    ``distributed``: every process of a torchrun job calls this; each extracts its share of the
    images (:func:`reid.inference.extract_features`) and rank 0 alone computes the metrics and
    returns the rows (the others return {}).
    """
    unknown = sorted(set(switches) - set(INFERENCE_SWITCHES))
    if unknown:
        raise ValueError(f"unknown inference switch(es) {', '.join(unknown)}; valid: {', '.join(INFERENCE_SWITCHES)}")
    model = unwrap(model)
    options = {k: v for k, v in metric_options.items() if k not in ("beta", "rerank")}
    rerank = "rerank" in switches

    def states(name: str) -> tuple[bool, ...]:
        return (False, True) if name in switches else (False,)

    model_side = list(product(states("flip"), states("mix"), states("leaky")))
    num_rows = len(model_side) * len(states("beta")) * (2 if rerank else 1)
    rows: dict[str, dict[str, Any]] = {}
    with progress_bar(total=num_rows, desc="ablation", unit="row", progress=progress) as bar:
        for flip, mix, leaky in model_side:
            on = [name for name, value in (("flip", flip), ("mix", mix), ("leaky", leaky)) if value]
            bar.set_description(f"ablation {row_name(on)}")
            with model.inference_options(pooling="mix" if mix else None, pool_lambda=pool_lambda,
                                         leaky_relu=leaky_slope if leaky else None):
                query, gallery = extract_query_gallery(model, query_loader, gallery_loader, device, feature=feature,
                                                       flip=flip, progress=progress, distributed=distributed)
            if distributed is not None and not distributed.is_main:
                continue
            for use_beta in states("beta"):
                name = row_name(on + ["beta"] * use_beta)
                bar.set_description(f"ablation {name}")
                metrics = metrics_from_features(query, gallery, beta=beta if use_beta else 0.0, rerank=rerank,
                                                progress=progress, **options)
                rows[name] = {k: v for k, v in metrics.items() if k != "rerank"}
                if "rerank" in metrics:
                    rows[row_name(on + ["beta"] * use_beta + ["rerank"])] = metrics["rerank"]
                bar.update(2 if "rerank" in metrics else 1)
    return rows
