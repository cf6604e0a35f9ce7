"""Losses against direct dense computations, for one rank and for ranks sharing a batch.

The multi-rank cases run in one process: rank r's loss gets a ``gather`` that returns every
rank's rows in rank order, its own rows being its own tensor (as the real gather-with-grad);
the mean of the rank losses must equal the dense loss over the combined batch, with the same
gradients (fp64, tolerance 1e-10). ``test_distributed.py`` checks the real gloo collectives.
"""

from __future__ import annotations

import pytest
import torch

from clipa_data.core.errors import ClipaError
from clipa_train.loss import ContrastiveLoss, SigmoidLoss, build_loss


def features(n: int = 8, d: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(
        torch.randn(n, d, generator=generator, dtype=torch.float64), dim=1
    )
    text = torch.nn.functional.normalize(
        torch.randn(n, d, generator=generator, dtype=torch.float64), dim=1
    )
    scale = torch.tensor(2.3, dtype=torch.float64)
    bias = torch.tensor(-1.7, dtype=torch.float64)
    return [t.clone().requires_grad_(True) for t in (image, text, scale, bias)]


def dense_contrastive(image, text, log_scale):
    """−mean log p(matching text | image) and vice versa, written out with logsumexp."""
    logits = log_scale.exp() * image @ text.t()
    n = logits.shape[0]
    rows = sum(torch.logsumexp(logits[i], 0) - logits[i, i] for i in range(n)) / n
    cols = sum(torch.logsumexp(logits[:, j], 0) - logits[j, j] for j in range(n)) / n
    return (rows + cols) / 2


def dense_sigmoid(image, text, log_scale, bias):
    """−Σᵢⱼ log σ(zᵢⱼ (s·Iᵢ·Tⱼ + b)) / n with zᵢᵢ = 1, zᵢⱼ = −1."""
    n = image.shape[0]
    total = 0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = log_scale.exp() * image[i] @ text[j] + bias
            total = total - torch.nn.functional.logsigmoid(z * logit)
    return total / n


def outputs(image, text, scale, bias=None):
    return {
        "image_features": image,
        "text_features": text,
        "logit_scale": scale,
        "logit_bias": bias,
    }


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


class FakeGather:
    """Rank ``rank`` of ``world``: its own rows are the argument, the others' come from the
    full (leaf) tensors, so gradients flow to every rank's rows as with gather-with-grad."""

    def __init__(self, full_image, full_text, rank, world):
        self.full = {"image": full_image, "text": full_text}
        self.rank, self.world = rank, world
        self.local = full_image.shape[0] // world

    def __call__(self, x):
        name = "image" if x is self.mine["image"] else "text"
        parts = [
            x if q == self.rank else self.full[name][q * self.local : (q + 1) * self.local]
            for q in range(self.world)
        ]
        return torch.cat(parts)

    def local_rows(self, name):
        return self.full[name][self.rank * self.local : (self.rank + 1) * self.local]

    def outputs(self, scale, bias=None):
        self.mine = {name: self.local_rows(name) for name in ("image", "text")}
        return outputs(self.mine["image"], self.mine["text"], scale, bias)


def test_contrastive_matches_dense_on_one_rank():
    image, text, scale, _ = features()
    ours = ContrastiveLoss()(outputs(image, text, scale))
    dense = dense_contrastive(image, text, scale)
    torch.testing.assert_close(ours, dense.to(ours.dtype), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("world", [2, 4])
def test_contrastive_over_ranks_equals_dense_combined_batch(world):
    image, text, scale, _ = features()
    dense = dense_contrastive(image, text, scale)
    per_rank = []
    for rank in range(world):
        gather = FakeGather(image, text, rank, world)
        per_rank.append(ContrastiveLoss(gather, rank)(gather.outputs(scale)))
    combined = torch.stack(per_rank).mean()
    torch.testing.assert_close(combined.double(), dense, rtol=1e-10, atol=1e-10)
    for ours, theirs in zip(
        grads(combined, [image, text, scale]), grads(dense, [image, text, scale]), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_sigmoid_matches_dense_on_one_rank():
    image, text, scale, bias = features()
    ours = SigmoidLoss()(outputs(image, text, scale, bias))
    dense = dense_sigmoid(image, text, scale, bias)
    torch.testing.assert_close(ours.double(), dense, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("world", [2, 4])
def test_sigmoid_chunked_over_ranks_equals_dense_combined_batch(world):
    image, text, scale, bias = features()
    dense = dense_sigmoid(image, text, scale, bias)
    per_rank = []
    for rank in range(world):
        gather = FakeGather(image, text, rank, world)
        per_rank.append(SigmoidLoss(gather, rank)(gather.outputs(scale, bias)))
    combined = torch.stack(per_rank).mean()
    torch.testing.assert_close(combined.double(), dense, rtol=1e-10, atol=1e-10)
    leaves = [image, text, scale, bias]
    for ours, theirs in zip(grads(combined, leaves), grads(dense, leaves), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_loss_errors():
    with pytest.raises(ClipaError, match="unknown loss 'softmax'"):
        build_loss("softmax")
    image, text, scale, _ = features()
    with pytest.raises(ClipaError, match="needs a model with a logit bias"):
        SigmoidLoss()(outputs(image, text, scale, None))


def test_a_rank_given_as_a_device_scalar_gives_the_same_losses():
    """XLA passes the rank as a tensor so every replica traces one graph; same numbers."""
    image, text, scale, bias = features()
    for cls in (ContrastiveLoss, SigmoidLoss):
        for rank in range(2):
            gather = FakeGather(image, text, rank, 2)
            as_int = cls(gather, rank)(gather.outputs(scale, bias))
            as_tensor = cls(gather, torch.tensor(rank))(gather.outputs(scale, bias))
            torch.testing.assert_close(as_tensor, as_int, rtol=0, atol=0)


def test_every_registered_loss_builds_and_sets_the_models_logit_init():
    from clipa_train.loss import LOSS_CHOICES, LOSSES
    from clipa_train.model import load_preset

    assert LOSSES == tuple(LOSS_CHOICES) == ("contrastive", "sigmoid")
    for name, choice in LOSS_CHOICES.items():
        assert isinstance(build_loss(name), choice.loss)
        config = load_preset("test-tiny").replace(loss=name)
        assert config.init_logit_scale == choice.init_logit_scale
        assert config.init_logit_bias == choice.init_logit_bias
