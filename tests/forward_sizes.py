"""The batch sizes the CLIP model's forward saw: accumulation is exact, so the losses and
weights of an accumulating run equal a one-pass run's, and only this shows that the run used
micro-batches at all (a loop that ignored --accum-steps passed every equivalence test)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from clipa_train.model.clip import CLIP


@contextlib.contextmanager
def model_batch_sizes() -> Iterator[list[int]]:
    """Collect the image batch size of every CLIP forward in this process while the block runs
    (DDP and FSDP wrappers call the CLIP module inside them, so they are seen too)."""
    sizes: list[int] = []

    def seen(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, CLIP):
            sizes.append(int(args[0].shape[0]))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(seen)
    try:
        yield sizes
    finally:
        handle.remove()


def assert_micro_batches(sizes: list[int], steps: int, per_rank_batch: int, accum: int) -> None:
    """``steps`` optimiser steps of ``accum`` micro-batches each: a forward without gradients
    over every micro-batch, then each again with gradients (``clipa_train.accumulation``)."""
    passes = 2 * accum if accum > 1 else 1
    assert sizes == [per_rank_batch // accum] * (steps * passes), sizes
