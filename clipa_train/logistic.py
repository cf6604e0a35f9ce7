"""Multinomial logistic regression in torch: the linear probe's head.

Full-batch L-BFGS (strong-Wolfe line search) on the mean cross-entropy + ``l2``/2·|W|², the
batch walked in chunks inside each closure so a million features × a thousand classes never
makes one logits matrix; the L2 strength is picked from a grid by top-1 on a held-out part of
the training set, then the head is refitted on all of it. Features are standardised with the
training statistics first: L-BFGS then converges in far fewer iterations, and one grid suits
every model's feature scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK = 65_536
"""Rows per chunk inside a closure (bounds the logits memory, not the result)."""


@dataclass(frozen=True)
class LinearHead:
    """A fitted head: ``logits = ((x - mean) / std) @ weight + bias``."""

    weight: torch.Tensor
    """``[D, C]``."""
    bias: torch.Tensor
    """``[C]``."""
    mean: torch.Tensor
    """``[D]`` training-feature mean."""
    std: torch.Tensor
    """``[D]`` training-feature standard deviation (floored)."""

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` logits of raw ``[N, D]`` features (computed in chunks)."""
        device = self.weight.device
        return torch.cat(
            [
                ((part.to(device) - self.mean) / self.std) @ self.weight + self.bias
                for part in features.split(CHUNK)
            ]
        )

    def top1(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of ``labels`` the head predicts first."""
        device = self.weight.device
        correct = sum(
            int((self.logits(part).argmax(dim=1) == part_labels.to(device)).sum())
            for part, part_labels in zip(features.split(CHUNK), labels.split(CHUNK), strict=True)
        )
        return correct / max(len(labels), 1)


def fit_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    l2: float,
    max_iter: int = 1000,
    device: str | torch.device = "cpu",
) -> LinearHead:
    """Fit ``classes``-way logistic regression to ``features [N, D]`` / ``labels [N]``."""
    x = features.to(device, torch.float32)
    y = labels.to(device, torch.int64)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], classes, device=device, requires_grad=True)
    bias = torch.zeros(classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )
    count = x.shape[0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        total = torch.zeros((), device=device)
        for start in range(0, count, CHUNK):  # gradients add up over the chunks
            part = slice(start, start + CHUNK)
            loss = F.cross_entropy(x[part] @ weight + bias, y[part], reduction="sum") / count
            loss.backward()
            total += loss.detach()
        penalty = 0.5 * l2 * weight.pow(2).sum()
        penalty.backward()
        return total + penalty.detach()

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearHead(weight.detach(), bias.detach(), mean, std)


def holdout_split(count: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices): a seeded permutation, at least one row on each side."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = min(max(1, round(count * share)), count - 1)
    return order[held:], order[:held]


@dataclass(frozen=True)
class ProbeFit:
    """The chosen head and how it was chosen."""

    head: LinearHead
    """Refitted on the whole training set with ``l2``."""
    l2: float
    """The chosen L2 strength."""
    holdout_top1: dict[float, float]
    """Held-out top-1 of every L2 strength tried."""


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    grid: tuple[float, ...],
    holdout: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
    device: str | torch.device = "cpu",
) -> ProbeFit:
    """Choose L2 on a held-out part of the training features, refit on all of them."""
    if features.shape[0] < 2:
        from clipa_data.core.errors import ClipaError

        raise ClipaError("the training set needs at least 2 images for a held-out split")
    fit_rows, held_rows = holdout_split(features.shape[0], holdout, seed)
    scores = {}
    for l2 in grid:
        head = fit_head(features[fit_rows], labels[fit_rows], classes, l2, max_iter, device)
        scores[l2] = head.top1(features[held_rows], labels[held_rows])
    # ties go to the stronger L2 (the simpler head)
    best = max(sorted(grid, reverse=True), key=lambda l2: scores[l2])
    head = fit_head(features, labels, classes, best, max_iter, device)
    return ProbeFit(head, best, scores)
