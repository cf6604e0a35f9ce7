"""Exact gradient accumulation: one optimiser step over K micro-batches with the large batch's
loss and gradients (``--accum-steps K``).

The contrastive and sigmoid losses couple every pair of samples in the batch, so the mean of K
small-batch losses is *not* the large-batch loss. Instead (OpenCLIP's ``--accum-freq`` scheme):

1. a forward pass without gradients over every micro-batch collects its features;
2. each micro-batch is run again with gradients, its features put in place of its cached rows
   (the others stay detached), and the loss over all rows — this rank's whole batch, gathered
   over ranks as without accumulation — is back-propagated.

The gradient reaching micro-batch k's features in pass k is exactly the large batch's gradient of
those rows, so the K backward passes *sum* to the full-batch gradient of the towers, with no
rescaling. ``logit_scale`` and ``logit_bias`` enter every pass's loss whole; they keep their
gradient only in the last pass, so it is counted once, not K times. Under DDP every pass but the
last runs under ``no_sync`` (gradients add up locally and are reduced once). Under FSDP each
pass reduce-scatters its gradients (K per step): the gradients stay sharded, which is what FSDP
is for (holding them whole across passes would cost a full unsharded copy). The cost: one extra
forward of the towers per step and K evaluations of the loss over the rank's batch (small next
to the towers); the activations held are one micro-batch's. The loss returned is the last
pass's, which is the whole batch's loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from clipa_data.core.errors import ClipaError
from clipa_train.backend import Backend

FEATURES = ("image_features", "text_features")
"""Model outputs with one row per sample: cached, then replaced one micro-batch at a time."""

SHARED = ("logit_scale", "logit_bias")
"""Model outputs shared by the whole batch: their gradient is taken in the last pass only."""


def micro_batch_size(per_rank_batch: int, accum_steps: int, world: int = 1) -> int:
    """Samples per micro-batch; a clear error when ``accum_steps`` does not split the batch."""
    if accum_steps < 1:
        raise ClipaError(f"--accum-steps must be at least 1, got {accum_steps}")
    if per_rank_batch % accum_steps:
        over = (
            f" (--batch-size {per_rank_batch * world} over {world} processes)" if world > 1 else ""
        )
        raise ClipaError(
            f"--accum-steps {accum_steps} does not divide the batch per rank {per_rank_batch}"
            f"{over}; use a divisor of {per_rank_batch} or change --batch-size"
        )
    return per_rank_batch // accum_steps


def fewest_micro_batches(per_rank_batch: int, micro_batch: int) -> int:
    """``--accum-steps auto``: the fewest micro-batches, each of at most ``micro_batch`` samples,
    that split ``per_rank_batch`` evenly (every micro-batch has the same shape)."""
    if micro_batch < 1:
        raise ClipaError(f"--micro-batch must be at least 1, got {micro_batch}")
    least = -(-per_rank_batch // micro_batch)
    return next(k for k in range(least, per_rank_batch + 1) if per_rank_batch % k == 0)


def split_batch(
    batch: dict[str, torch.Tensor | None], accum_steps: int, world: int = 1
) -> list[dict[str, torch.Tensor | None]]:
    """A device batch cut into ``accum_steps`` consecutive micro-batches (views, no copies)."""
    size = micro_batch_size(batch["text"].shape[0], accum_steps, world)
    return [
        {key: None if v is None else v[i * size : (i + 1) * size] for key, v in batch.items()}
        for i in range(accum_steps)
    ]


def accumulate_forward_backward(
    step_model: nn.Module,
    batch: dict[str, torch.Tensor | None],
    loss_fn: Callable[[dict], torch.Tensor],
    backend: Backend,
    accum_steps: int,
) -> torch.Tensor:
    """Gradients of ``loss_fn`` over the whole ``batch``, computed ``accum_steps`` micro-batches
    at a time (added into ``.grad``); returns the loss of the whole batch (detached)."""
    parts = split_batch(batch, accum_steps, backend.world)
    with torch.no_grad():
        cached = [_forward(step_model, part, backend) for part in parts]
    loss = None
    for index, part in enumerate(parts):
        last = index == accum_steps - 1
        with contextlib.nullcontext() if last else _local_gradients(step_model):
            fresh = _forward(step_model, part, backend)
            loss = loss_fn(_spliced(cached, fresh, index, keep_shared=last))
            loss.backward()
    return loss.detach()


def _forward(step_model: nn.Module, part: dict, backend: Backend) -> dict[str, Any]:
    with backend.autocast():
        return step_model(part["image"], part["text"], part["patch_keep"])


def _spliced(
    cached: list[dict[str, Any]], fresh: dict[str, Any], index: int, keep_shared: bool
) -> dict[str, Any]:
    """The model outputs of the whole batch: cached rows with micro-batch ``index``'s fresh
    (differentiable) rows in their place; the shared scalars detached unless ``keep_shared``."""
    outputs = {
        key: torch.cat([fresh[key] if i == index else part[key] for i, part in enumerate(cached)])
        for key in FEATURES
    }
    for key in SHARED:
        value = fresh[key]
        outputs[key] = value if keep_shared or value is None else value.detach()
    return outputs


def _local_gradients(step_model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (gradients stay local until the last pass); nothing for a bare model
    (one process, or XLA, which reduces once in ``Backend.sync_gradients``) or an FSDP one
    (``fully_shard`` has no ``no_sync``: each pass reduce-scatters, keeping gradients sharded)."""
    no_sync = getattr(step_model, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()
