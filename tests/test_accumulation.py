"""Exact gradient accumulation: K micro-batches give the large batch's loss and gradients.

Tolerances (fp32; a micro-batch's matmuls sum in another order than the whole batch's): loss
1e-6 absolute; every gradient tensor within 1e-5 × its largest entry (+1e-9), the logit scale's
and bias's included, so a gradient counted K times instead of once fails (measured: loss equal,
gradients ≤ 1.2e-6 ×). Over 12 AdamW steps of the loop, losses within 1e-5 and weights within
1e-4 absolute of the one-pass run (the key third of ``in_proj_bias`` left out, see
test_distributed.py). In 2 gloo processes the same bounds hold
against one process with the combined batch in one pass (``ddp_worker.py OUT 4``).
"""

from __future__ import annotations

import pytest
import torch
from forward_sizes import assert_micro_batches, model_batch_sizes
from test_distributed import check_two_processes
from test_loop import read_metrics, run, source

from clipa_data.core.errors import ClipaError
from clipa_train.accumulation import (
    accumulate_forward_backward,
    fewest_micro_batches,
    micro_batch_size,
    split_batch,
)
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.loop import LoopConfig, forward_backward
from clipa_train.loss import build_loss
from clipa_train.model import build_model, load_preset
from clipa_train.run_config import resolve
from clipa_train.synthetic import SyntheticBatches

K = 4


def batch(size: int = 8, index: int = 0) -> dict:
    batches = SyntheticBatches(
        batch_size=size, image_size=32, text_length=16, vocab_size=512, patch_size=8,
        mask="random", seed=7,
    )  # fmt: skip
    return batches.batch(index)


def step(loss_name: str, accum_steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one step of a fresh test-tiny model on batch 0."""
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny").replace(loss=loss_name))
    backend = create_backend(BackendConfig(name="cpu"))
    loss_fn = build_loss(loss_name, backend)
    device_batch = backend.to_device(batch())
    if accum_steps == 1:
        loss, _ = forward_backward(model, device_batch, loss_fn, backend)
    else:
        loss = accumulate_forward_backward(model, device_batch, loss_fn, backend, accum_steps)
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_name", ["contrastive", "sigmoid"])
def test_k_micro_batches_give_the_full_batch_loss_and_gradients(loss_name):
    full_loss, full = step(loss_name, 1)
    loss, accumulated = step(loss_name, K)
    torch.testing.assert_close(loss, full_loss, rtol=0, atol=1e-6)
    assert accumulated.keys() == full.keys()
    shared = {"logit_scale"} | ({"logit_bias"} if loss_name == "sigmoid" else set())
    assert shared <= full.keys()
    for name, grad in full.items():
        assert grad.abs().max() > 0, name
        error = (accumulated[name] - grad).abs().max()
        assert error <= 1e-5 * grad.abs().max() + 1e-9, (name, float(error))


def test_micro_batches_are_consecutive_slices():
    whole = batch()
    parts = split_batch(whole, K)
    assert [p["text"].shape[0] for p in parts] == [2] * K
    for key in ("image", "text", "patch_keep"):
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
    no_mask = {**whole, "patch_keep": None}
    assert all(p["patch_keep"] is None for p in split_batch(no_mask, 2))


def test_the_loop_with_accumulation_follows_the_one_pass_loop(tmp_path):
    with model_batch_sizes() as sizes:
        _, one_pass = run(tmp_path / "one", source())
    assert_micro_batches(sizes, steps=12, per_rank_batch=8, accum=1)
    config = LoopConfig(log_every=1, progress=False, accum_steps=K)
    with model_batch_sizes() as sizes:
        _, accumulated = run(tmp_path / "accum", source(), config=config)
    assert_micro_batches(sizes, steps=12, per_rank_batch=8, accum=K)
    losses = [[r["loss"] for r in read_metrics(tmp_path / d)] for d in ("one", "accum")]
    assert len(losses[0]) == 12
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=0, atol=1e-5)
    theirs = accumulated.state_dict()
    for key, value in one_pass.state_dict().items():
        other = theirs[key]
        if key.endswith("attn.in_proj_bias"):  # zero true gradient: AdamW amplifies noise
            third = value.shape[0] // 3
            other, value = (torch.cat([t[:third], t[2 * third :]]) for t in (other, value))
        assert (other - value).abs().max() <= 1e-4, key


def test_two_gloo_processes_accumulating_match_one_process_with_the_combined_batch(tmp_path):
    check_two_processes(tmp_path, accum_steps=K)


def test_accum_steps_that_do_not_split_the_batch():
    with pytest.raises(ClipaError, match=r"^--accum-steps must be at least 1, got 0$"):
        micro_batch_size(8, 0)
    with pytest.raises(
        ClipaError,
        match=r"^--accum-steps 3 does not divide the batch per rank 4 \(--batch-size 8 over 2 "
        r"processes\); use a divisor of 4 or change --batch-size$",
    ):
        micro_batch_size(4, 3, world=2)
    assert micro_batch_size(8, 4) == 2
    with pytest.raises(ClipaError, match="accum_steps must be at least 1"):
        LoopConfig(accum_steps=0)
    options = {"data": "d", "out": "o"}
    with pytest.raises(ClipaError, match=r"^--accum-steps 3 does not divide --batch-size 8;"):
        resolve("pretrain", {**options, "batch_size": 8, "accum_steps": 3})
    for bad in (-1, 0, "many"):
        with pytest.raises(
            ClipaError, match=rf"^--accum-steps must be a whole number ≥ 1 or auto, got {bad}$"
        ):
            resolve("pretrain", {**options, "accum_steps": bad})
    with pytest.raises(ClipaError, match=r"^--accum-steps auto needs --micro-batch N$"):
        resolve("pretrain", {**options, "accum_steps": "auto"})
    with pytest.raises(ClipaError, match=r"^--micro-batch must be at least 1, got 0$"):
        resolve("pretrain", {**options, "accum_steps": "auto", "micro_batch": 0})
    with pytest.raises(ClipaError, match=r"^--micro-batch is read only with --accum-steps auto"):
        resolve("pretrain", {**options, "micro_batch": 4})
    config = resolve("pretrain", {**options, "batch_size": 8, "accum_steps": "4"})  # as a flag
    assert config.optim.accum_steps == 4


def test_accum_steps_auto_takes_the_fewest_micro_batches_that_fit():
    assert [fewest_micro_batches(8, m) for m in (8, 5, 4, 3, 2, 1)] == [1, 2, 2, 4, 4, 8]
    assert fewest_micro_batches(7, 2) == 7  # a prime batch: micro-batches of 1
    assert LoopConfig(micro_batch=3).micro_batches(8) == 4
    assert LoopConfig(accum_steps=2).micro_batches(8) == 2
    with pytest.raises(ClipaError, match=r"^--micro-batch must be at least 1, got 0$"):
        fewest_micro_batches(8, 0)


def test_the_loop_refuses_a_batch_per_rank_it_cannot_split(tmp_path):
    with pytest.raises(ClipaError, match="--accum-steps 3 does not divide the batch per rank 8"):
        run(tmp_path, source(), config=LoopConfig(progress=False, accum_steps=3))


def test_accum_steps_not_splitting_the_batch_per_rank_is_refused_before_the_run(
    tmp_path, monkeypatch
):
    from builders import make_builder_dir, make_records

    from clipa_train.resolved_stage import resolve_stage

    data = make_builder_dir(tmp_path / "data", [make_records(8)])
    options = {"data": data, "out": tmp_path / "run", "model": "clipa-tiny", "image_size": 32,
               "text_length": 8, "text_mask": "truncate", "batch_size": 8}  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; resolving starts no process
    assert resolve_stage(resolve("pretrain", {**options, "accum_steps": 4})).config
    with pytest.raises(ClipaError, match=r"^--accum-steps 8 does not divide the batch per rank 4"):
        resolve_stage(resolve("pretrain", {**options, "accum_steps": 8}))
    assert not (tmp_path / "run").exists()
