"""Run under ``torchrun --nproc_per_node 2`` by test_distributed.py and test_accumulation.py
(not a test module itself): ``ddp_worker.py OUT [ACCUM_STEPS]``.

Each rank takes its half of the same global batches. Rank 0 writes, for both losses, the global
loss and the DDP-averaged gradients of one step, and the loop's losses and final weights; with
ACCUM_STEPS > 1 the step and the loop accumulate that many micro-batches per rank.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from clipa_data.core.errors import ClipaError
from clipa_train.accumulation import accumulate_forward_backward
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.loop import LoopConfig, forward_backward, train
from clipa_train.loss import build_loss
from clipa_train.model import build_model, load_preset
from clipa_train.optim import OptimConfig, build_optimizer
from clipa_train.synthetic import SyntheticBatches

GLOBAL_BATCH = 8
OPTIM = OptimConfig(lr=2e-3, total_steps=4, warmup_steps=1)


def batches(rank: int, world: int, mask: str | None = "random") -> SyntheticBatches:
    return SyntheticBatches(
        batch_size=GLOBAL_BATCH,
        image_size=32,
        text_length=16,
        vocab_size=512,
        patch_size=8,
        mask=mask,
        seed=5,
        rank=rank,
        world=world,
        num_batches=OPTIM.total_steps,
    )


def one_step(loss_name: str, backend, accum_steps: int = 1) -> dict:
    """Global loss and averaged gradients of one step on batch 0."""
    torch.manual_seed(0)
    config = load_preset("test-tiny").replace(loss=loss_name)
    model = build_model(config)
    step_model = backend.prepare_model(model)
    loss_fn = build_loss(loss_name, backend)
    batch = backend.to_device(batches(backend.rank, backend.world).batch(0))
    if accum_steps > 1:
        loss = accumulate_forward_backward(step_model, batch, loss_fn, backend, accum_steps)
    else:
        loss, _ = forward_backward(step_model, batch, loss_fn, backend)
    return {
        "loss": backend.mean_over_ranks(loss.detach()),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
    }


def loop(backend, run_dir: Path, accum_steps: int = 1):
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny"))
    optimizer = build_optimizer(model, OPTIM)
    loss_fn = build_loss("contrastive", backend)
    config = LoopConfig(log_every=1, progress=False, accum_steps=accum_steps)
    train(
        model=model,
        optimizer=optimizer,
        optim_config=OPTIM,
        loss_fn=loss_fn,
        batches=batches(backend.rank, backend.world),
        backend=backend,
        run_dir=run_dir,
        config=config,
    )
    return model.state_dict()


def main(out: Path, accum_steps: int = 1) -> None:
    backend = create_backend(BackendConfig(name="cpu"))
    backend.per_rank_batch(GLOBAL_BATCH)
    try:
        backend.per_rank_batch(GLOBAL_BATCH - 1)
        odd_batch_error = None
    except ClipaError as error:
        odd_batch_error = str(error)
    results = {name: one_step(name, backend, accum_steps) for name in ("contrastive", "sigmoid")}
    results["weights"] = loop(backend, out / "run", accum_steps)
    results["world"] = backend.world
    results["odd_batch_error"] = odd_batch_error
    if backend.is_main:
        torch.save(results, out / "results.pt")
    backend.close()


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
