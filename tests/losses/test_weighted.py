import numpy as np
import pytest
import torch

from reid.builders import criterion_from_config
from reid.config import load_config
from reid.losses import build_loss
from reid.losses.weighted import WeightedLosses


def test_weights_terms_and_total():
    torch.manual_seed(0)
    embeddings, logits = torch.randn(8, 4), torch.randn(8, 3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    criterion = WeightedLosses({"cross_entropy": (2.0, build_loss("cross_entropy", label_smoothing=0.0)),
                                "triplet": (0.5, build_loss("triplet"))})
    terms = criterion(embeddings, logits, labels)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    triplet = build_loss("triplet")(embeddings, logits, labels)
    assert terms["cross_entropy"].item() == pytest.approx(2.0 * ce.item())
    assert terms["triplet"].item() == pytest.approx(0.5 * triplet.item())
    assert terms["total"].item() == pytest.approx(terms["cross_entropy"].item() + terms["triplet"].item())
    logits[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"non-finite loss: cross_entropy=nan, triplet="):
        criterion(embeddings, logits, labels)
    assert np.isfinite(terms["triplet"].item())


def test_built_from_the_config_as_one_module():
    cfg = load_config(None, ["losses=[{name: group, weight: 0.5}, {name: cross_entropy}]"])
    criterion = criterion_from_config(cfg)
    assert list(criterion.terms) == ["group", "cross_entropy"] and criterion.weights == {"group": 0.5, "cross_entropy": 1.0}
    assert "group: weight 0.5" in repr(criterion)
    twice = load_config(None, ["losses=[{name: group}, {name: group}]"])
    with pytest.raises(ValueError, match="losses\\[1\\]: loss 'group' is listed twice"):
        criterion_from_config(twice)
