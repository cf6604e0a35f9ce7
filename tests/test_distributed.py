"""Two torchrun processes (gloo) against one process with the combined batch.

Tolerances (fp32; the two layouts sum in different orders): loss 1e-6 absolute; every gradient
tensor within 1e-5 × its largest entry (measured: < 1e-6 ×); after 4 AdamW steps of the loop,
losses 1e-5 absolute and weights 1e-4 absolute (weights move up to 8e-3, lr 2e-3 × 4; measured
≤ 2e-5). The key third of each attention's ``in_proj_bias`` is left out of the weight comparison:
its true gradient is zero (softmax ignores a shift shared by all keys), so AdamW, which divides
by √v, moves it by amplified rounding noise (~2e-4 here) in both runs alike."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import make_builder_dir, make_records
from clipa_cli.train_app import app
from forward_sizes import assert_micro_batches
from typer.testing import CliRunner

from clipa_data.demo import write_demo_validation
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.checkpoint import base_architecture, load_checkpoint
from clipa_train.model import build_model, load_openclip_weights

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker


def test_two_gloo_processes_match_one_process_with_the_combined_batch(tmp_path):
    check_two_processes(tmp_path, accum_steps=1)


def check_two_processes(tmp_path: Path, accum_steps: int) -> None:
    """2 torchrun processes (each accumulating ``accum_steps`` micro-batches) against one process
    with the combined batch in one pass: loss and gradients of a step, the loop's trajectory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__).parent / "ddp_worker.py"),
        str(tmp_path / "ddp"),
        str(accum_steps),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp" / "results.pt", weights_only=False)
    assert ddp["world"] == 2
    assert ddp["odd_batch_error"] == (
        "global batch size 7 is not divisible by the world size 2; use a multiple of 2"
    )

    single = create_backend(BackendConfig(name="cpu"))
    assert single.world == 1
    for name in ("contrastive", "sigmoid"):
        one = ddp_worker.one_step(name, single)
        torch.testing.assert_close(ddp[name]["loss"], one["loss"], rtol=0, atol=1e-6)
        assert ddp[name]["grads"].keys() == one["grads"].keys()
        for key, grad in one["grads"].items():
            error = (ddp[name]["grads"][key] - grad).abs().max()
            assert error <= 1e-5 * grad.abs().max() + 1e-9, (name, key, float(error))

    single_loop = ddp_worker.loop(single, tmp_path / "single")
    weights = single_loop["weights"]
    steps = ddp_worker.OPTIM.total_steps
    assert_micro_batches(single_loop["forward_sizes"], steps, ddp_worker.GLOBAL_BATCH, accum=1)
    per_rank = ddp_worker.GLOBAL_BATCH // 2  # rank 0's forwards: micro-batches when accumulating
    assert_micro_batches(ddp["loop"]["forward_sizes"], steps, per_rank, accum=accum_steps)
    losses = {
        run: [
            json.loads(line)["loss"]
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in ("ddp/run", "single")
    }
    assert len(losses["single"]) == 4
    torch.testing.assert_close(
        torch.tensor(losses["ddp/run"]), torch.tensor(losses["single"]), rtol=0, atol=1e-5
    )
    for key, value in weights.items():
        theirs = ddp["loop"]["weights"][key]
        if key.endswith("attn.in_proj_bias"):  # skip the key third, see the module docstring
            third = value.shape[0] // 3
            theirs, value = (torch.cat([t[:third], t[2 * third :]]) for t in (theirs, value))
        error = (theirs - value).abs().max()
        assert error <= 1e-4, (key, float(error))


def _losses(run: Path, key: str = "loss") -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record[key] for record in map(json.loads, lines)}


def test_fsdp_follows_ddp_and_their_checkpoints_load_into_each_other_and_one_process(tmp_path):
    """FSDP (2 gloo processes, gradient checkpointing on, clipping on) against DDP for 10 steps;
    each resumed at step 5 from the other's checkpoint; the FSDP checkpoint in one process.

    Tolerance: losses rtol 1e-4 (fp32; the reduce-scatter and the all-reduce sum in different
    orders; measured ≤ 3e-6 relative), logged logit scales 1e-5; one step's gradients (both
    losses) within 1e-5 of each tensor's largest entry of the one-process gradients."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path), "fsdp",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert list(ddp) == list(fsdp) == list(range(1, 11))
    close = {"rtol": 1e-4, "atol": 0}
    torch.testing.assert_close(
        torch.tensor(list(fsdp.values())), torch.tensor(list(ddp.values())), **close
    )
    scales = [_losses(tmp_path / run, "logit_scale") for run in ("ddp", "fsdp")]
    assert list(scales[0]) == list(range(1, 11)) and scales[0].keys() == scales[1].keys()
    torch.testing.assert_close(
        torch.tensor(list(scales[1].values())),
        torch.tensor(list(scales[0].values())),
        rtol=0,
        atol=1e-5,
    )
    for run in ("fsdp_from_ddp", "ddp_from_fsdp"):
        resumed = _losses(tmp_path / run)
        assert list(resumed) == list(range(6, 11)), run
        expected = [ddp[step] for step in resumed]
        torch.testing.assert_close(
            torch.tensor(list(resumed.values())), torch.tensor(expected), **close
        )

    # One full state dict, in the format and with the keys of a DDP checkpoint.
    saved = {
        run: load_checkpoint(tmp_path / run / "checkpoints" / "step_00000010.pt")
        for run in ("ddp", "fsdp")
    }
    assert saved["fsdp"]["model"].keys() == saved["ddp"]["model"].keys()
    for key, value in saved["ddp"]["model"].items():
        assert type(saved["fsdp"]["model"][key]) is torch.Tensor, key
        torch.testing.assert_close(saved["fsdp"]["model"][key], value, rtol=0, atol=1e-3)
    optimizers = [saved[run]["optimizer"] for run in ("ddp", "fsdp")]
    assert optimizers[0]["param_groups"] == optimizers[1]["param_groups"]
    assert optimizers[0]["state"].keys() == optimizers[1]["state"].keys()

    # The FSDP checkpoint in one process, as `clipa-train eval` builds its model.
    path = tmp_path / "fsdp" / "checkpoints" / "step_00000010.pt"
    model = build_model(base_architecture(None, str(path), default="test-tiny"))
    load_openclip_weights(model, str(path))
    model.eval()
    reference = torch.load(tmp_path / "fsdp_outputs.pt", weights_only=True)
    batch = create_backend(BackendConfig(name="cpu")).to_device(
        ddp_worker.batches(0, 1, mask=None).batch(0)
    )
    with torch.no_grad():
        outputs = model(batch["image"], batch["text"])
        encoded = model.encode_image(batch["image"])
    for key, value in reference["features"].items():
        torch.testing.assert_close(outputs[key], value, rtol=0, atol=1e-5)
    torch.testing.assert_close(encoded, reference["encoded"], rtol=0, atol=1e-5)

    # One step's gradients, as AdamW gets them, against one process with the whole batch: the
    # loss trajectory above hardly moves when FSDP's gradients are scaled wrongly (clipping and
    # AdamW's normalisation absorb a factor), these do.
    single = create_backend(BackendConfig(name="cpu"))
    for name, step in reference["one_step"].items():
        one = ddp_worker.one_step(name, single)
        torch.testing.assert_close(step["loss"], one["loss"], rtol=0, atol=1e-6)
        assert step["grads"].keys() == one["grads"].keys(), name
        for key, grad in one["grads"].items():
            error = (step["grads"][key] - grad).abs().max()
            assert error <= 1e-5 * grad.abs().max() + 1e-9, (name, key, float(error))


def test_fsdp_through_clipa_train_pretrain_then_eval_in_one_process(tmp_path):
    """The real command under torchrun (2 gloo processes, real loader, gradient checkpointing,
    in-loop zero-shot, where every rank runs the sharded forward); its checkpoint then scores the
    same in `clipa-train eval` in this process. Each rank reads one shard (an epoch), each with
    a broken image: the summary counts both (it counted rank 0's)."""
    shards = [make_records(24, start=i * 24) for i in range(2)]
    for shard in shards:
        shard[3] = dataclasses.replace(shard[3], jpg=shard[3].jpg[:200])
    data = make_builder_dir(tmp_path / "data", shards)
    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    zeroshot = ["--zeroshot", val.root, "--classnames", val.classnames_path]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(sys.executable).parent / "clipa-train"), "pretrain", "--data", data,
        "--out", tmp_path / "run", "--model", "clipa-tiny", "--image-size", 32,
        "--text-length", 8, "--text-mask", "truncate", "--batch-size", 8, "--samples", 48,
        "--workers", 1, "--no-progress", "--sharding", "fsdp", "--grad-checkpointing", *zeroshot,
        "--max-bad-fraction", 0.2,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(part) for part in command], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pretrain summary") == 1, done.stdout  # rank 0's table only
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["zeroshot"]["n"] == 20
    assert summary["stream"]["bad_images"] == 2, summary["stream"]
    shard_names = {m.split(" of shard ")[1].split(":")[0] for m in summary["stream"]["messages"]}
    assert len(shard_names) == 2, summary["stream"]

    result = CliRunner().invoke(
        app, [str(a) for a in ("eval", "--checkpoint", summary["checkpoint"], *zeroshot[2:],
        "--imagenet-val", val.root, "--workers", 1, "--json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert (scores["top1"], scores["top5"]) == (
        summary["zeroshot"]["top1"],
        summary["zeroshot"]["top5"],
    )


@pytest.mark.parametrize(
    "at, total, step, checkpoint",
    [(0, 12, 0, None), (5, 12, 8, "step_00000004.pt"), (9, 10, 10, "step_00000008.pt")],
    ids=["first batch", "mid-run", "after the last agreement"],
)
def test_a_data_fault_on_one_rank_stops_both_at_their_next_agreement(
    at, total, step, checkpoint, tmp_path
):
    """Rank 1's data fails at batch ``at``: it steps on its last batch until the ranks agree
    (every 4 steps; before the first step, where it has no batch; after the last one), then both
    stop with its line, and the steps since the last checkpoint are not saved. The other rank
    used to die in the next collective with gloo's traceback."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path), "fault", str(at), str(total),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {
        "step": step,
        "failure": f"rank 1: batch {at} is damaged",
        "stopped": True,
        "checkpoint": checkpoint,
    }
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected, rank


def test_closing_the_backend_ends_the_process_groups_threads(tmp_path):
    """After ``backend.close`` no gloo thread is left, even with a DDP model still in a
    reference cycle: such a thread dropped its last collective's tensor while the interpreter
    exited, and the process aborted ("terminate called without an active exception") after a
    finished run, now and then (1 in 8 on a loaded machine)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path), "close",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        threads = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert threads["after"] <= threads["before"], (rank, threads)


@pytest.mark.parametrize(
    "options, env, line",
    [
        (["--accum-steps", "8"], {}, "error: --accum-steps 8 does not divide the batch per rank 4"),
        (["--data", "missing"], {}, "error: "),
        ([], {"CLIPA_MEMORY_AVAILABLE": "1M"}, "error: clipa-tiny at --batch-size 8"),
    ],
    ids=["options", "data", "memory"],
)
def test_a_check_before_training_fails_with_one_line_under_torchrun(options, env, line, tmp_path):
    """Every rank fails the checks before training the same way (options, data, memory): the
    first process of the host says it, the other exits non-zero without repeating it."""
    data = make_builder_dir(tmp_path / "data", [make_records(8)])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(sys.executable).parent / "clipa-train"), "pretrain", "--data", data,
        "--out", tmp_path / "run", "--model", "clipa-tiny", "--image-size", 32,
        "--text-length", 8, "--text-mask", "truncate", "--batch-size", 8, "--samples", 16,
        "--workers", 1, "--no-progress", *options,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(
        [str(part) for part in command], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    errors = [text for text in done.stderr.splitlines() if text.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(line), done.stderr[-3000:]
    assert not (tmp_path / "run").exists()
