"""Run under ``torchrun --nproc_per_node 2`` by test_compile.py (not a test module itself).

Trains test-tiny for a few steps under DDP and under FSDP, each eager, compiled (aot_eager) and
compiled with 2 accumulated micro-batches (a no-grad and a grad graph, DDP's no_sync through the
compiled wrapper), on the same per-rank halves of the same global batches; rank 0 writes every
run's metrics records to ``results.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from ddp_worker import batches

from clipa_train.backend import BackendConfig, create_backend
from clipa_train.loop import LoopConfig, train
from clipa_train.loss import build_loss
from clipa_train.model import build_model, load_preset
from clipa_train.optim import OptimConfig, build_optimizer

OPTIM = OptimConfig(lr=2e-3, total_steps=6, warmup_steps=1)


def run(sharding: str, compiled: bool, accum_steps: int, run_dir: Path) -> list[dict] | None:
    config = BackendConfig(name="cpu", sharding=sharding, compile=compiled, compiler="aot_eager")
    backend = create_backend(config)
    torch.manual_seed(0)
    model = backend.shard_model(build_model(load_preset("test-tiny")))
    train(
        model=model,
        optimizer=build_optimizer(model, OPTIM),
        optim_config=OPTIM,
        loss_fn=build_loss("contrastive", backend),
        batches=batches(backend.rank, backend.world, steps=OPTIM.total_steps),
        backend=backend,
        run_dir=run_dir,
        config=LoopConfig(log_every=1, progress=False, accum_steps=accum_steps),
    )
    if not backend.is_main:
        return None
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def main(out: Path) -> None:
    variants = {"eager": (False, 1), "compiled": (True, 1), "compiled_accum": (True, 2)}
    results = {
        f"{sharding}/{name}": run(sharding, compiled, accum, out / f"{sharding}-{name}")
        for sharding in ("ddp", "fsdp")
        for name, (compiled, accum) in variants.items()
    }
    if int(os.environ["RANK"]) == 0:
        (out / "results.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
