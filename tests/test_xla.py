"""PyTorch/XLA on the CPU (``make test-xla``: torch 2.9 + torch-xla 2.9, ``PJRT_DEVICE=CPU``).

Every image reduction (resize, random, grid, block as fixed-K ``patch_keep`` sets) and every text
length shape trains a tiny model for 20 steps with at most 3 graph compilations (warm-up lr,
cosine, gradient clipping, metrics every 5 steps, a checkpoint at the end); the step itself
makes no device-to-host transfer.
"""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.xla
torch_xla = pytest.importorskip("torch_xla")

from clipa_data.errors import ClipaError  # noqa: E402
from clipa_train.backend import BackendConfig, create_backend  # noqa: E402
from clipa_train.loop import LoopConfig, apply_update, forward_backward, train  # noqa: E402
from clipa_train.loss import build_loss  # noqa: E402
from clipa_train.model import build_model, load_preset  # noqa: E402
from clipa_train.optim import OptimConfig, build_optimizer, learning_rate, set_learning_rate  # noqa: E402
from clipa_train.synthetic import SyntheticBatches  # noqa: E402

STEPS = 20
OPTIM = OptimConfig(lr=1e-3, total_steps=STEPS, warmup_steps=5, grad_clip_norm=1.0)
CASES = {
    # name: (image size, patch_keep mask, text length, precision, gradient checkpointing)
    "resize-32px-T16": (32, None, 16, "fp32", False),
    "resize-16px-T8": (16, None, 8, "fp32", False),
    "random-0.5-T16": (32, "random", 16, "fp32", False),
    "grid-T16-bf16": (32, "grid", 16, "bf16", True),
    "block-0.5-T32": (32, "block", 32, "fp32", False),
}


def transfers_from_device() -> int:
    import torch_xla.debug.metrics as met

    data = met.metric_data("TransferFromDeviceTime")
    return int(data[0]) if data else 0


def setup(image_size, mask, text_length, precision, loss="contrastive"):
    backend = create_backend(BackendConfig(name="xla", precision=precision))
    torch.manual_seed(0)
    config = load_preset("test-tiny").replace(
        image_size=image_size, context_length=text_length, loss=loss
    )
    model = build_model(config).to(backend.device)
    batches = SyntheticBatches(
        batch_size=16,
        image_size=image_size,
        text_length=text_length,
        vocab_size=512,
        patch_size=8,
        mask=mask,
        mask_ratio=0.5,
        num_batches=STEPS,
    )
    return backend, model, build_optimizer(model, OPTIM), batches


@pytest.mark.parametrize("case", list(CASES))
def test_twenty_steps_compile_at_most_three_graphs(case, tmp_path):
    image_size, mask, text_length, precision, checkpointing = CASES[case]
    backend, model, optimizer, batches = setup(image_size, mask, text_length, precision)
    assert backend.name == "xla" and backend.device.type == "xla"
    if mask is not None:
        k = batches.batch(0)["patch_keep"].shape[1]
        assert k == {"random": 8, "grid": 4, "block": 9}[mask]
    before = backend.compile_count()
    result = train(
        model=model,
        optimizer=optimizer,
        optim_config=OPTIM,
        loss_fn=build_loss("contrastive", backend),
        batches=batches,
        backend=backend,
        run_dir=tmp_path,
        config=LoopConfig(log_every=5, progress=False, grad_checkpointing=checkpointing),
    )
    records = result.records
    assert result.step == STEPS and [r["step"] for r in records] == [5, 10, 15, 20]
    compiles = [r["xla_compiles"] for r in records]
    assert all(isinstance(c, int) for c in compiles)
    assert compiles[-1] - before <= 3, compiles
    assert compiles[-1] == compiles[0], "no compilation after the first steps"
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    payload = torch.load(result.checkpoint, weights_only=False)
    assert all(t.device.type == "cpu" for t in payload["model"].values())


def test_the_step_makes_no_host_round_trip():
    backend, model, optimizer, batches = setup(32, "random", 16, "fp32", loss="sigmoid")
    loss_fn = build_loss("sigmoid", backend)
    iterator = iter(batches)

    def step(index):
        set_learning_rate(optimizer, learning_rate(index, OPTIM))
        batch = backend.to_device(next(iterator))
        loss, _ = forward_backward(model, batch, loss_fn, backend)
        apply_update(model, optimizer, OPTIM, backend)
        backend.step_boundary()
        return loss.detach()

    for index in range(3):  # warm-up: compile
        step(index)
    transfers, compiles = transfers_from_device(), backend.compile_count()
    losses = [step(index) for index in range(3, 9)]
    assert transfers_from_device() == transfers
    assert backend.compile_count() == compiles
    values = backend.to_host({str(i): loss for i, loss in enumerate(losses)})
    assert transfers_from_device() > transfers and all(map(math.isfinite, values.values()))


def test_optimizer_built_before_moving_to_xla_is_refused(tmp_path):
    backend, _, _, batches = setup(32, None, 16, "fp32")
    model = build_model(load_preset("test-tiny"))
    optimizer = build_optimizer(model, OPTIM)  # CPU parameters: fused AdamW
    with pytest.raises(ClipaError, match="optimiser was built before the model moved to xla"):
        train(
            model=model,
            optimizer=optimizer,
            optim_config=OPTIM,
            loss_fn=build_loss("contrastive"),
            batches=batches,
            backend=backend,
            run_dir=tmp_path,
        )
