"""CLIP's contrastive loss and the sigmoid (SigLIP) loss, both over the global batch.

Every rank computes only its own rows: its local image (and text) features against the features
of *all* ranks, gathered with gradient (``gather``: the backend's all-gather whose backward sums
the incoming gradients of every rank, i.e. a reduce-scatter). With gradients averaged over ranks
afterwards (DDP, or ``reduce_gradients`` on XLA) this is exactly the gradient of the loss over
the combined batch. Features are widened to fp32 first, so the logits never run in bf16.

``LOSS_CHOICES`` at the end is the only list of loss names (options, validation and the model's
logit init read it). torch is imported inside the functions that compute, so that list stays
readable without torch (``clipa-train --help`` never imports it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick

if TYPE_CHECKING:
    import torch

    from clipa_train.backend import Backend

Gather = Callable[["torch.Tensor"], "torch.Tensor"]
Rank = Union[int, "torch.Tensor"]  # a device scalar on XLA: every replica traces one graph


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16 features from autocast are widened; fp64 stays fp64)."""
    import torch

    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class ContrastiveLoss:
    """Symmetric InfoNCE: ½ (CE(s·I_local·T_allᵀ) + CE(s·T_local·I_allᵀ)), labels offset by
    ``rank · B_local`` (CLIPA's ``local_loss=True, gather_with_grad=True``)."""

    def __init__(self, gather: Gather = _identity, rank: Rank = 0) -> None:
        self.gather = gather
        self.rank = rank

    def __call__(self, outputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        image = _wide(outputs["image_features"])
        text = _wide(outputs["text_features"])
        scale = _wide(outputs["logit_scale"]).exp()
        all_image, all_text = self.gather(image), self.gather(text)
        local = image.shape[0]
        labels = torch.arange(local, device=image.device) + local * self.rank
        image_loss = F.cross_entropy(scale * image @ all_text.t(), labels)
        text_loss = F.cross_entropy(scale * text @ all_image.t(), labels)
        return (image_loss + text_loss) / 2


class SigmoidLoss:
    """SigLIP: −Σ log σ(zᵢⱼ·(s·Iᵢ·Tⱼ + b)) / B_local over the local images i and all texts j,
    zᵢⱼ = +1 for the matching pair, −1 otherwise; ``logit_bias`` b is learnable.

    The gathered text features are processed one rank's chunk at a time (only the own chunk holds
    positives), as SigLIP's chunked formulation; the logits never span more than ``B_local²``.
    """

    def __init__(self, gather: Gather = _identity, rank: Rank = 0) -> None:
        self.gather = gather
        self.rank = rank

    def __call__(self, outputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if outputs["logit_bias"] is None:
            raise ClipaError(
                "the sigmoid loss needs a model with a logit bias (build it with loss='sigmoid')"
            )
        image = _wide(outputs["image_features"])
        text = _wide(outputs["text_features"])
        scale = _wide(outputs["logit_scale"]).exp()
        bias = _wide(outputs["logit_bias"])
        local = image.shape[0]
        positives = 2 * torch.eye(local, device=image.device) - 1
        total = image.new_zeros(())
        for chunk_rank, chunk in enumerate(self.gather(text).split(local)):
            logits = scale * image @ chunk.t() + bias
            if isinstance(self.rank, torch.Tensor):  # XLA: one graph for every replica
                signs = torch.where(self.rank == chunk_rank, positives, -torch.ones_like(logits))
            else:
                signs = positives if chunk_rank == self.rank else -torch.ones_like(logits)
            total = total - F.logsigmoid(signs * logits).sum()
        return total / local


@dataclass(frozen=True)
class LossChoice:
    """One ``--loss`` name: the loss and the model's logit init it trains best from."""

    loss: Callable[[Gather, Rank], ContrastiveLoss | SigmoidLoss]
    """Built with the backend's gather-with-grad and rank."""
    init_logit_scale: float
    """Initial log temperature of the model."""
    init_logit_bias: float | None
    """Initial logit bias (None: the model has no bias parameter)."""


LOSS_CHOICES: dict[str, LossChoice] = {
    "contrastive": LossChoice(ContrastiveLoss, math.log(1 / 0.07), None),
    "sigmoid": LossChoice(SigmoidLoss, math.log(10.0), -10.0),
}
"""Loss name -> loss and logit init (CLIP: log(1/0.07), no bias; SigLIP: log 10, bias -10)."""

LOSSES: tuple[str, ...] = tuple(LOSS_CHOICES)
"""The loss names, in the order help texts list them."""


def loss_of(has_bias: bool) -> str:
    """The loss a model (or its weights) was built for: one with a ``logit_bias`` the sigmoid
    loss, one without the contrastive loss."""
    return next(
        name
        for name, choice in LOSS_CHOICES.items()
        if (choice.init_logit_bias is not None) == has_bias
    )


def loss_choice(name: str) -> LossChoice:
    """The registry entry called ``name``; a clear error for an unknown name."""
    return pick(LOSS_CHOICES, name, "loss")


def build_loss(name: str, backend: Backend | None = None) -> ContrastiveLoss | SigmoidLoss:
    """The loss called ``name``, wired to ``backend``'s gather-with-grad and rank (no backend:
    one process)."""
    choice = loss_choice(name)
    gather = backend.all_gather_with_grad if backend is not None else _identity
    rank = backend.loss_rank if backend is not None else 0
    return choice.loss(gather, rank)
