"""Two torchrun processes (gloo) against one process with the combined batch.

Tolerances (fp32; the two layouts sum in different orders): loss 1e-6 absolute; every gradient
tensor within 1e-5 × its largest entry (measured: < 1e-6 ×); after 4 AdamW steps of the loop,
losses 1e-5 absolute and weights 1e-4 absolute (weights move up to 8e-3, lr 2e-3 × 4; measured
≤ 2e-5). The key third of each attention's ``in_proj_bias`` is left out of the weight comparison:
its true gradient is zero (softmax ignores a shift shared by all keys), so AdamW, which divides
by √v, moves it by amplified rounding noise (~2e-4 here) in both runs alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from clipa_train.backend import BackendConfig, create_backend

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

    weights = ddp_worker.loop(single, tmp_path / "single")
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
        theirs = ddp["weights"][key]
        if key.endswith("attn.in_proj_bias"):  # skip the key third, see the module docstring
            third = value.shape[0] // 3
            theirs, value = (torch.cat([t[:third], t[2 * third :]]) for t in (theirs, value))
        error = (theirs - value).abs().max()
        assert error <= 1e-4, (key, float(error))
