"""``--compile``: a compiled step trains like the eager one, compiles once per stage (dynamo's
counters, logged as ``torch_compiles``), in one process and under DDP and FSDP on two, and
checkpoints the plain model; bad choices are refused.

The compiled runs use the ``aot_eager`` backend: the real dynamo trace and AOTAutograd joint
graph, without inductor's C++ kernel generation; the inductor run (what ``--compile on`` uses by
default) takes a minute or more on a 2-core CPU and is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipa_data.core.errors import ClipaError
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.checkpoint import load_checkpoint, restore_checkpoint, unwrap
from clipa_train.compile import check_compiler, compile_model, graphs_compiled, resolve_compile
from clipa_train.loop import LoopConfig, train
from clipa_train.loss import build_loss
from clipa_train.model import build_model, load_openclip_weights, load_preset
from clipa_train.optim import OptimConfig, build_optimizer
from clipa_train.resolved_stage import resolve_stage
from clipa_train.run_config import resolve
from clipa_train.synthetic import SyntheticBatches

STEPS = 10
OPTIM = OptimConfig(lr=2e-3, total_steps=STEPS, warmup_steps=3, grad_clip_norm=1.0)


def batches() -> SyntheticBatches:
    return SyntheticBatches(
        batch_size=8, image_size=32, text_length=16, vocab_size=512, patch_size=8,
        mask="random", mask_ratio=0.5, seed=3,
    )  # fmt: skip


def run(run_dir, backend_config: BackendConfig, evaluate=None):
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny"))
    result = train(
        model=model,
        optimizer=build_optimizer(model, OPTIM),
        optim_config=OPTIM,
        loss_fn=build_loss("contrastive"),
        batches=batches(),
        backend=create_backend(backend_config),
        run_dir=run_dir,
        config=LoopConfig(log_every=1, eval_every=5, progress=False),
        evaluate=evaluate,
    )
    return result, model


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def evaluate(model, step: int) -> dict[str, float]:
    """An in-loop evaluation that runs the model: it must not add compiled graphs."""
    batch = batches().batch(0)
    images = batch["image"].permute(0, 3, 1, 2).float() / 255
    outputs = model(images, batch["text"].long(), None)
    return {"feature_norm": float(outputs["image_features"].norm())}


@pytest.mark.parametrize(
    "compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]
)
def test_compiled_training_compiles_once_matches_eager_and_checkpoints_the_plain_model(
    tmp_path, compiler
):
    compiled = BackendConfig(name="cpu", compile=True, compiler=compiler)
    result, model = run(tmp_path / "compiled", compiled, evaluate)
    eager, _ = run(tmp_path / "eager", BackendConfig(name="cpu"))

    records = metrics(tmp_path / "compiled")
    counts = [r["torch_compiles"] for r in records]
    assert len([r for r in records if "loss" in r]) == STEPS
    assert counts[0] >= 1 and set(counts) == {counts[0]}, f"recompiled after step 1: {counts}"
    assert all(r["torch_compiles"] is None for r in metrics(tmp_path / "eager"))
    losses = [r["loss"] for r in records if "loss" in r]
    # inductor fuses and reorders float sums: close to eager, not equal
    tolerance = 1e-4 if compiler == "aot_eager" else 2e-3
    assert losses == pytest.approx([r["loss"] for r in eager.records], rel=tolerance, abs=1e-5)

    payload = load_checkpoint(result.checkpoint)
    assert payload["step"] == STEPS
    assert not [key for key in payload["model"] if "_orig_mod" in key or key.startswith("module.")]
    fresh = build_model(load_preset("test-tiny"))
    step, _ = restore_checkpoint(
        payload,
        model=fresh,
        optimizer=build_optimizer(fresh, OPTIM),
        backend=create_backend(BackendConfig(name="cpu")),
    )
    assert step == STEPS
    for (name, trained), loaded in zip(
        model.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert torch.equal(trained, loaded), name


def test_unwrap_strips_the_compiled_wrapper_and_prefixed_weights_load(tmp_path):
    model = build_model(load_preset("test-tiny"))
    wrapped = compile_model(model, "eager")
    assert any(key.startswith("_orig_mod.") for key in wrapped.state_dict())
    assert unwrap(wrapped) is model and unwrap(model) is model
    # Weights saved from a compiled (and DDP-wrapped) model elsewhere, e.g. OpenCLIP runs.
    prefixed = {f"_orig_mod.module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": prefixed}, tmp_path / "compiled.pt")
    fresh = build_model(load_preset("test-tiny"))
    load_openclip_weights(fresh, tmp_path / "compiled.pt")
    for (name, saved), loaded in zip(
        model.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert torch.equal(saved, loaded), name


def test_the_count_sees_a_recompilation():
    """What the no-recompilation check relies on: a new input shape is a new graph."""
    model = compile_model(build_model(load_preset("test-tiny")), "eager")
    source = batches()
    before = graphs_compiled()
    for rows in (8, 8, 4):
        batch = source.batch(0)
        images = batch["image"][:rows].permute(0, 3, 1, 2).float()
        model(images, batch["text"][:rows].long(), None)
        if rows == 8:
            first = graphs_compiled()
    assert first > before and graphs_compiled() > first


@pytest.mark.parametrize(
    ("choice", "device", "expected"),
    [
        ("auto", "cuda", True),
        ("auto", "cpu", False),
        ("auto", "xla", False),
        ("on", "cuda", True),
        ("on", "cpu", True),
        ("off", "cuda", False),
        ("off", "xla", False),
    ],
)
def test_resolve_compile(choice, device, expected):
    assert resolve_compile(choice, device) is expected


def test_bad_compile_choices_are_one_line_errors(tmp_path):
    with pytest.raises(ClipaError, match="unknown --compile value 'fast'; choose one of auto, on"):
        resolve_compile("fast", "cuda")
    with pytest.raises(ClipaError, match="--compile on does not apply to --backend xla"):
        resolve_compile("on", "xla")
    with pytest.raises(ClipaError, match="--compile on does not apply"):
        BackendConfig(name="xla", compile=True)
    with pytest.raises(
        ClipaError, match=r"unknown --compile-backend 'nope'; choose one of .*inductor"
    ):
        check_compiler("nope")
    check_compiler("aot_eager")


def test_compile_on_with_xla_is_refused_when_the_stage_is_resolved(tmp_path):
    """Refused before the data is even opened (the builder path does not exist)."""
    options = {"data": str(tmp_path / "none"), "out": str(tmp_path / "run"), "model": "clipa-tiny"}
    with pytest.raises(ClipaError, match="use --compile auto or off with xla") as error:
        resolve_stage(resolve("pretrain", {**options, "backend": "xla", "compile": "on"}))
    assert "\n" not in str(error.value)
    with pytest.raises(ClipaError, match="--compile must be one of auto, on, off"):
        resolve("pretrain", {**options, "compile": "bogus"})


def test_compiled_ddp_fsdp_and_accumulation_on_two_processes_compile_once_match_eager(tmp_path):
    """Compiling after the DDP wrapper and after fully_shard, also with accumulation: one set of
    graphs on the first step (DDP buckets and FSDP hooks may split it), none later, and the eager
    run's losses."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).parent / "compile_worker.py"), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for sharding in ("ddp", "fsdp"):
        eager = results[f"{sharding}/eager"]
        assert all(r["torch_compiles"] is None for r in eager)
        for variant in ("compiled", "compiled_accum"):  # accumulation is exact: the same losses
            compiled = results[f"{sharding}/{variant}"]
            counts = [r["torch_compiles"] for r in compiled]
            assert counts[0] >= 1 and set(counts) == {counts[0]}, (sharding, variant, counts)
            assert [r["loss"] for r in compiled] == pytest.approx(
                [r["loss"] for r in eager], rel=1e-4, abs=1e-5
            ), (sharding, variant)
