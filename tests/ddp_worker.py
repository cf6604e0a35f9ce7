"""Run under ``torchrun --nproc_per_node 2`` by test_distributed.py and test_accumulation.py
(not a test module itself): ``ddp_worker.py OUT [ACCUM_STEPS | fsdp | fault AT STEPS | close]``.

Each rank takes its half of the same global batches. Rank 0 writes, for both losses, the global
loss and the DDP-averaged gradients of one step, and the loop's losses and final weights; with
ACCUM_STEPS > 1 the step and the loop accumulate that many micro-batches per rank.
With ``fsdp`` as second argument it trains 10 steps under DDP and under FSDP (checkpoints at 5
and 10), resumes each from the other's step-5 checkpoint, and writes the FSDP model's outputs.
With ``fault AT STEPS`` rank 1's data fails at batch AT of STEPS and each rank writes what its
loop returned.
With ``close`` each rank writes its thread count before the group and after ``backend.close``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from forward_sizes import model_batch_sizes

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


def batches(
    rank: int, world: int, mask: str | None = "random", steps: int = OPTIM.total_steps
) -> SyntheticBatches:
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
        num_batches=steps,
    )


def one_step(loss_name: str, backend, accum_steps: int = 1) -> dict:
    """Global loss and averaged gradients of one step on batch 0 (as the optimiser would see
    them: after ``sync_gradients``; FSDP's sharded gradients gathered whole)."""
    torch.manual_seed(0)
    config = load_preset("test-tiny").replace(loss=loss_name)
    model = backend.shard_model(build_model(config))  # FSDP: in place; otherwise on the device
    step_model = backend.prepare_model(model)
    loss_fn = build_loss(loss_name, backend)
    batch = backend.to_device(batches(backend.rank, backend.world).batch(0))
    if accum_steps > 1:
        loss = accumulate_forward_backward(step_model, batch, loss_fn, backend, accum_steps)
    else:
        loss, _ = forward_backward(step_model, batch, loss_fn, backend)
    backend.sync_gradients(build_optimizer(model, OPTIM))
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {
        "loss": backend.mean_over_ranks(loss.detach()),
        "grads": {n: getattr(g, "full_tensor", g.clone)().clone() for n, g in grads.items()},
    }


def loop(backend, run_dir: Path, accum_steps: int = 1):
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny"))
    optimizer = build_optimizer(model, OPTIM)
    loss_fn = build_loss("contrastive", backend)
    config = LoopConfig(log_every=1, progress=False, accum_steps=accum_steps)
    with model_batch_sizes() as sizes:
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
    return {"weights": model.state_dict(), "forward_sizes": sizes}


# Clipping on, so the gradient norm over DTensor and whole gradients is exercised too.
SHARDED_OPTIM = OptimConfig(lr=2e-3, total_steps=10, warmup_steps=2, grad_clip_norm=1.0)


def sharded_run(backend, run_dir: Path, resume_from: Path | None = None, checkpointing=False):
    """10 steps (checkpoints at 5 and 10) of test-tiny; returns the model."""
    torch.manual_seed(0)
    model = backend.shard_model(build_model(load_preset("test-tiny")))
    train(
        model=model,
        optimizer=build_optimizer(model, SHARDED_OPTIM),
        optim_config=SHARDED_OPTIM,
        loss_fn=build_loss("contrastive", backend),
        batches=batches(backend.rank, backend.world, steps=SHARDED_OPTIM.total_steps),
        backend=backend,
        run_dir=run_dir,
        config=LoopConfig(
            log_every=1,
            checkpoint_every=5,
            keep_checkpoints=0,
            grad_checkpointing=checkpointing,
            progress=False,
        ),
        resume_from=resume_from,
    )
    return model


def sharded_main(out: Path) -> None:
    ddp = create_backend(BackendConfig(name="cpu"))
    fsdp = create_backend(BackendConfig(name="cpu", sharding="fsdp"))
    sharded_run(ddp, out / "ddp")
    model = sharded_run(fsdp, out / "fsdp", checkpointing=True)
    halfway = "checkpoints/step_00000005.pt"
    sharded_run(fsdp, out / "fsdp_from_ddp", resume_from=out / "ddp" / halfway)
    sharded_run(ddp, out / "ddp_from_fsdp", resume_from=out / "fsdp" / halfway)
    steps = {name: one_step(name, fsdp) for name in ("contrastive", "sigmoid")}
    batch = fsdp.to_device(batches(0, 1, mask=None).batch(0))  # the whole batch on every rank
    model.eval()
    with torch.no_grad():
        outputs = model(batch["image"], batch["text"])
        encoded = model.encode_image(batch["image"])  # a method the root's hooks also gather for
    if fsdp.is_main:
        torch.save(
            {"features": {k: v for k, v in outputs.items() if k.endswith("features")},
             "encoded": encoded, "world": fsdp.world, "one_step": steps},
            out / "fsdp_outputs.pt",
        )  # fmt: skip
    leave_together(fsdp)
    fsdp.close()
    ddp.close()


class FailingBatches:
    """Rank 1's batches fail (as a dead loader worker does) at batch ``at``; rank 0's do not."""

    def __init__(self, source: SyntheticBatches, at: int) -> None:
        self.source, self.at = source, at

    def __iter__(self):
        for index, batch in enumerate(self.source):
            if self.source.rank == 1 and index == self.at:
                raise ClipaError(f"batch {index} is damaged")
            yield batch

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)


def fault_main(out: Path, at: int, total: int) -> None:
    """``total`` steps with rank 1's data failing at batch ``at`` (agreements every 4 steps, a
    checkpoint every 4); every rank writes what its loop returned."""
    backend = create_backend(BackendConfig(name="cpu"))
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny"))
    optim = OptimConfig(lr=2e-3, total_steps=total, warmup_steps=1)
    result = train(
        model=model,
        optimizer=build_optimizer(model, optim),
        optim_config=optim,
        loss_fn=build_loss("contrastive", backend),
        batches=FailingBatches(batches(backend.rank, backend.world, steps=total), at),
        backend=backend,
        run_dir=out / "run",
        config=LoopConfig(log_every=4, stop_check_every=4, checkpoint_every=4, progress=False),
    )
    found = {"step": result.step, "failure": result.failure, "stopped": result.stopped}
    found["checkpoint"] = None if result.checkpoint is None else result.checkpoint.name
    (out / f"rank{backend.rank}.json").write_text(json.dumps(found))
    leave_together(backend)
    backend.close()


def close_main(out: Path) -> None:
    """A DDP model left in a reference cycle (as a finished loop leaves it) and a collective on
    a tensor Python has let go: ``backend.close`` must still end gloo's threads. One that
    outlived it dropped that tensor while the interpreter exited and aborted the process."""
    before = len(os.listdir("/proc/self/task"))
    backend = create_backend(BackendConfig(name="cpu"))
    holder: dict = {"model": backend.prepare_model(build_model(load_preset("test-tiny")))}
    holder["self"] = holder  # collected only by a full garbage collection
    del holder
    backend.any_rank(False)
    leave_together(backend)
    backend.close()
    after = len(os.listdir("/proc/self/task"))
    (out / f"rank{backend.rank}.json").write_text(json.dumps({"before": before, "after": after}))


def leave_together(backend) -> None:
    """A barrier before the group is destroyed, so that no rank leaves while its peer still
    works (as the command's ranks leave: after the loop's last agreement)."""
    backend.barrier()


def main(out: Path, accum_steps: int = 1) -> None:
    backend = create_backend(BackendConfig(name="cpu"))
    backend.per_rank_batch(GLOBAL_BATCH)
    try:
        backend.per_rank_batch(GLOBAL_BATCH - 1)
        odd_batch_error = None
    except ClipaError as error:
        odd_batch_error = str(error)
    results = {name: one_step(name, backend, accum_steps) for name in ("contrastive", "sigmoid")}
    results["loop"] = loop(backend, out / "run", accum_steps)
    results["world"] = backend.world
    results["odd_batch_error"] = odd_batch_error
    if backend.is_main:
        torch.save(results, out / "results.pt")
    leave_together(backend)
    backend.close()


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if sys.argv[2:] == ["fsdp"]:
        sharded_main(Path(sys.argv[1]))
    elif sys.argv[2:] == ["close"]:
        close_main(Path(sys.argv[1]))
    elif sys.argv[2:3] == ["fault"]:
        fault_main(Path(sys.argv[1]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
