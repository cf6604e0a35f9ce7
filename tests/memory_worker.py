"""Run by test_memory_estimate.py in a fresh process (not a test module itself).

Trains one configuration for two real steps on the CPU (the real model, AdamW, loss, loop,
with synthetic batches) and prints one JSON line: the process's resident-memory high-water mark
before the model was built and after the steps (``VmHWM``), in bytes.

    python memory_worker.py PRESET IMAGE_SIZE TEXT_LENGTH BATCH MASK GRAD_CHECKPOINTING RUN_DIR
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def peak_rss() -> int:
    """This process's resident-memory high-water mark, in bytes.

    ``VmHWM`` of /proc/self/status where there is one: ``ru_maxrss`` keeps the high-water mark
    of the process image before ``exec`` (Linux copies the old mm's into it), so a worker
    started by a large pytest process would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(preset: str, size: int, length: int, batch: int, mask: str, ckpt: bool, out: Path):
    import torch

    from clipa_train.backend import BackendConfig, create_backend
    from clipa_train.loop import LoopConfig, train
    from clipa_train.loss import build_loss
    from clipa_train.model import build_model, load_preset
    from clipa_train.optim import OptimConfig, build_optimizer
    from clipa_train.synthetic import SyntheticBatches

    torch.set_num_threads(1)
    config = load_preset(preset).replace(image_size=size, context_length=length)
    backend = create_backend(BackendConfig(name="cpu", precision="fp32"))
    batches = SyntheticBatches(
        batch_size=batch, image_size=size, text_length=length,
        vocab_size=config.text.vocab_size, num_batches=2, mask=mask,
        patch_size=config.vision.patch_size,
    )  # fmt: skip
    next(iter(SyntheticBatches(batch_size=2, image_size=size, text_length=length, num_batches=1)))
    before = peak_rss()
    torch.manual_seed(0)
    model = backend.shard_model(build_model(config))
    optim = OptimConfig(lr=1e-4, total_steps=2)
    train(
        model=model, optimizer=build_optimizer(model, optim), optim_config=optim,
        loss_fn=build_loss("contrastive", backend), batches=batches, backend=backend,
        run_dir=out, config=LoopConfig(progress=False, grad_checkpointing=ckpt, log_every=1),
    )  # fmt: skip
    print(json.dumps({"before": before, "peak": peak_rss()}))


if __name__ == "__main__":
    preset, size, length, batch, mask, ckpt, out = sys.argv[1:]
    main(preset, int(size), int(length), int(batch), mask, ckpt == "1", Path(out))
