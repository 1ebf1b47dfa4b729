"""Group Loss: label propagation over the batch's similarity graph, then NLL.

Elezi, Vascon, Torcinovich, Pelillo and Leal-Taixé, "The Group Loss for Deep Metric Learning",
ECCV 2020; Elezi et al., "The Group Loss++: A Deeper Look into Group Loss for Deep Metric
Learning", TPAMI 2022. The math follows the official implementation (see docs/ARCHITECTURE.md):

1. Anchors: the first ``num_anchors`` samples of each class in batch order (or a given mask).
   An anchor's prior is the exact one-hot of its label, every other prior is softmax(Z / T).
2. W = ReLU(Pearson correlation between embedding rows), diagonal kept (W_ii = 1).
3. ``num_iterations`` replicator-dynamics steps: X <- X * (W @ X), rows renormalised to 1.
4. Loss = mean over the batch of -log(X[i, y_i] + 1e-12).

Only this group term is returned; the classification term is ``CrossEntropyLoss``, listed
separately in the config with its own weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Added inside the log as in the official code, so an exactly-zero probability gives a large
# finite loss instead of inf.
LOG_EPS = 1e-12


def first_anchors_mask(labels: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """Boolean B mask: True for the first ``num_anchors`` samples of each label, in batch order.

    A class with fewer samples than ``num_anchors`` has all of its samples as anchors.
    """
    same = labels[:, None] == labels[None, :]
    # rank of sample i within its class = how many earlier samples share its label
    rank_in_class = torch.tril(same, diagonal=-1).sum(dim=1)
    return rank_in_class < num_anchors


def pearson_similarity(embeddings: torch.Tensor) -> torch.Tensor:
    """ReLU of the Pearson correlation between the rows of ``embeddings`` (B x D), with W_ii = 1.

    Each row is centred and L2-normalised, so W is invariant to per-row positive scaling and
    shifting of the embeddings. The diagonal is the correlation of a row with itself, exactly 1:
    set explicitly so that a constant row (zero variance, undefined correlation) still keeps
    W_ii = 1 and correlates 0 with the others instead of producing NaN; for every other row this
    equals the computed value (its gradient is zero, as ||x / ||x|| || is constant).
    """
    centred = embeddings - embeddings.mean(dim=1, keepdim=True)
    unit = F.normalize(centred, p=2, dim=1, eps=1e-12)
    similarity = F.relu(unit @ unit.t())
    diagonal = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    return similarity.masked_fill(diagonal, 1.0)


def group_loss_probabilities(
    embeddings: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    anchor_mask: torch.Tensor,
    *,
    temperature: float,
    num_iterations: int,
    detach_priors: bool = False,
) -> torch.Tensor:
    """X after ``num_iterations`` replicator steps: B x C rows on the probability simplex.

    No guard against a row summing to zero is needed: W >= 0 with W_ii = 1 and X >= 0 give
    (X * (W @ X))[i, c] >= X[i, c] ** 2, so a row's new mass is at least sum_c X[i, c] ** 2 > 0.
    Softmax priors are strictly positive and an anchor's one-hot row keeps its single entry
    (>= 1 * 1), so every row stays positive and an anchor stays exactly one-hot (its zero
    entries are multiplied, never added to). The official code has no guard either.
    ``detach_priors``: no gradient flows from X into the logits (only into the embeddings, via W).
    """
    priors = F.softmax((logits.detach() if detach_priors else logits) / temperature, dim=1)
    one_hot = F.one_hot(labels, num_classes=logits.shape[1]).to(priors.dtype)
    probabilities = torch.where(anchor_mask[:, None], one_hot, priors)
    similarity = pearson_similarity(embeddings)
    for _ in range(num_iterations):
        probabilities = probabilities * (similarity @ probabilities)
        probabilities = probabilities / probabilities.sum(dim=1, keepdim=True)
    return probabilities


class GroupLoss(nn.Module):
    """The Group Loss term (Elezi et al., ECCV 2020 / TPAMI 2022); see the module docstring.

    Args:
        temperature: T of the softmax priors softmax(logits / T). 80 as in the official re-ID
            branch (retrieval runs used 24 to 79).
        num_anchors: labelled samples per class (the first ones in batch order); 0 = none.
        num_iterations: replicator-dynamics steps (the official runs use 1 or 2).
        detach_priors: stop the gradient into the logits (the classifier then learns only from
            the classification loss); False, as in the official code, trains it through the priors.

    ``forward(embeddings B x D, logits B x C, labels B, anchor_mask=None)`` returns a scalar.
    An explicit boolean ``anchor_mask`` (B) replaces the first-per-class choice. The loss is
    computed in at least float32, outside autocast, as the products of probabilities need it.
    """

    def __init__(self, temperature: float = 80.0, num_anchors: int = 2, num_iterations: int = 1,
                 detach_priors: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature: expected a value > 0, got {temperature!r}")
        if int(num_anchors) != num_anchors or num_anchors < 0:
            raise ValueError(f"num_anchors: expected an integer >= 0, got {num_anchors!r}")
        if int(num_iterations) != num_iterations or num_iterations < 1:
            raise ValueError(f"num_iterations: expected an integer >= 1, got {num_iterations!r}")
        self.temperature = float(temperature)
        self.num_anchors = int(num_anchors)
        self.num_iterations = int(num_iterations)
        self.detach_priors = bool(detach_priors)

    def probabilities(
        self,
        embeddings: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        anchor_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The refined class probabilities X (B x C) the loss is taken from."""
        _check_inputs(embeddings, logits, labels, anchor_mask)
        if anchor_mask is None:
            anchor_mask = first_anchors_mask(labels, self.num_anchors)
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, logits.dtype), torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return group_loss_probabilities(
                embeddings.to(dtype),
                logits.to(dtype),
                labels,
                anchor_mask,
                temperature=self.temperature,
                num_iterations=self.num_iterations,
                detach_priors=self.detach_priors,
            )

    def forward(
        self,
        embeddings: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        anchor_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        probabilities = self.probabilities(embeddings, logits, labels, anchor_mask)
        return F.nll_loss(torch.log(probabilities + LOG_EPS), labels)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, num_anchors={self.num_anchors}, "
                f"num_iterations={self.num_iterations}, detach_priors={self.detach_priors}")


def _check_inputs(
    embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, anchor_mask: torch.Tensor | None
) -> None:
    if embeddings.ndim != 2 or logits.ndim != 2 or labels.ndim != 1:
        raise ValueError(
            "GroupLoss: expected embeddings B x D, logits B x C and labels B; got shapes "
            f"{tuple(embeddings.shape)}, {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    if not embeddings.shape[0] == logits.shape[0] == labels.shape[0]:
        raise ValueError(
            "GroupLoss: embeddings, logits and labels must have the same batch size; got "
            f"{embeddings.shape[0]}, {logits.shape[0]}, {labels.shape[0]}"
        )
    if anchor_mask is not None and (anchor_mask.dtype != torch.bool or anchor_mask.shape != labels.shape):
        raise ValueError(
            f"GroupLoss: anchor_mask must be a boolean tensor of shape {tuple(labels.shape)}; "
            f"got {anchor_mask.dtype} {tuple(anchor_mask.shape)}"
        )
