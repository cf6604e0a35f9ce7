"""Training-step throughput at CLIPA's reduced token lengths (and MFU where the peak is known).

Cases: (224 px, T77), (112 px, T16), (64 px, T16) and 224 px with a random patch mask of 0.5
(T77), on synthetic uint8 batches that go through the real step: host→device copy,
normalisation on the device, forward, contrastive loss, backward, AdamW, logit-scale clamp.

On a CUDA host: ViT-B/16 (``ViT-B-16-CL16`` with the text context set per case), bf16 autocast,
batch 256/1024/2048/512, results in ``results/step_gpu.json``. On the CPU: the small
``clipa-small`` preset (ViT-S/16-like), fp32, batch 32, results in ``results/step.json``. Cases
are timed in interleaved rounds and each case's fastest round is kept (the one least disturbed
by other work on a shared machine; the median is reported too). FLOPs are analytic (2 ×
multiply-adds of every matmul incl. attention and the patch embedding; a training step = 3 ×
forward), as in the performance notes.

    .venv/bin/python -m benchmarks.bench_step            # CPU here; ViT-B/16 bf16 on a GPU host
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch

from benchmarks.common import RESULTS_DIR, print_table, write_result
from clipa_data.core.atomic import write_json
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.loop import apply_update, forward_backward
from clipa_train.loss import build_loss
from clipa_train.model import ModelConfig, build_model, load_preset
from clipa_train.optim import OptimConfig, build_optimizer
from clipa_train.synthetic import SyntheticBatches

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, most specific first.
PEAKS = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
]


@dataclass(frozen=True)
class Case:
    name: str
    image_size: int
    text_length: int
    mask: str | None
    cpu_batch: int
    gpu_batch: int


CASES = [
    Case("224px_T77", 224, 77, None, 32, 256),
    Case("112px_T16", 112, 16, None, 32, 1024),
    Case("64px_T16", 64, 16, None, 32, 2048),
    Case("224px_mask0.5_T77", 224, 77, "random", 32, 512),
]


def tower_macs(width: int, layers: int, tokens: int, mlp_ratio: float) -> float:
    """Multiply-adds of one transformer tower's forward for one sample."""
    per_block = tokens * (4 * width * width + 2 * width * int(width * mlp_ratio))
    per_block += 2 * tokens * tokens * width  # QKᵀ and AV
    return layers * per_block


def train_flops_per_sample(config: ModelConfig, kept_patches: int, text_length: int) -> float:
    """Analytic training FLOPs for one sample (3 × forward, 2 FLOPs per multiply-add)."""
    vision, text = config.vision, config.text
    macs = vision.num_patches * 3 * vision.patch_size**2 * vision.width  # patch embedding
    macs += tower_macs(vision.width, vision.layers, kept_patches + 1, vision.mlp_ratio)
    macs += vision.width * config.embed_dim
    macs += tower_macs(text.width, text.layers, text_length, text.mlp_ratio)
    macs += text.width * config.embed_dim
    return 3 * 2 * macs


def peak_flops(device_name: str) -> float | None:
    return next((peak for fragment, peak in PEAKS if fragment in device_name), None)


class Runner:
    """One case: model, optimiser and a few pre-made host batches, stepped on the backend."""

    def __init__(self, case: Case, preset: str, batch: int, backend, use_compile: bool) -> None:
        config = load_preset(preset).replace(
            image_size=case.image_size, context_length=case.text_length
        )
        torch.manual_seed(0)
        self.model = build_model(config)
        self.step_model = backend.prepare_model(self.model)
        if use_compile:
            self.step_model = torch.compile(self.step_model)
        self.optim = OptimConfig(lr=1e-4, total_steps=1000)
        self.optimizer = build_optimizer(self.model, self.optim)
        self.loss_fn = build_loss("contrastive", backend)
        source = SyntheticBatches(
            batch_size=batch,
            image_size=case.image_size,
            text_length=case.text_length,
            vocab_size=config.text.vocab_size,
            patch_size=config.vision.patch_size,
            mask=case.mask,
            mask_ratio=0.5,
        )
        pin = backend.device.type == "cuda"
        self.batches = [
            {
                k: v.pin_memory() if pin and torch.is_tensor(v) else v
                for k, v in source.batch(i).items()
            }
            for i in range(2)
        ]
        first = self.batches[0]
        kept = first["patch_keep"].shape[1] if "patch_keep" in first else config.vision.num_patches
        self.flops = train_flops_per_sample(config, kept, case.text_length)
        self.batch, self.backend, self.steps = batch, backend, 0

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps, measured to the end of the device work."""
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            batch = self.backend.to_device(self.batches[self.steps % 2])
            forward_backward(self.step_model, batch, self.loss_fn, self.backend)
            apply_update(self.model, self.optimizer, self.optim, self.backend)
            self.backend.step_boundary()
            self.steps += 1
        self._sync()
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.backend.device.type == "cuda":
            torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: 2 CPU, 20 GPU)")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up steps (0: 1 CPU, 10 GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    args = parser.parse_args()

    on_gpu = torch.cuda.is_available()
    precision = "bf16" if on_gpu else "fp32"
    backend = create_backend(BackendConfig(name="cuda" if on_gpu else "cpu", precision=precision))
    preset = "ViT-B-16-CL16" if on_gpu else "clipa-small"
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    peak = peak_flops(device) if on_gpu else None
    steps = args.steps or (20 if on_gpu else 2)
    warmup = args.warmup or (10 if on_gpu else 1)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    runners = {}
    for case in CASES:
        batch = case.gpu_batch if on_gpu else case.cpu_batch
        runners[case.name] = Runner(case, preset, batch, backend, args.compile and on_gpu)
        runners[case.name].run(warmup)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            times[name].append(runner.run(steps))

    figures, rows = {}, []
    for case in CASES:
        runner = runners[case.name]
        seconds = min(times[case.name]) / steps
        samples_per_s = runner.batch / seconds
        achieved = samples_per_s * runner.flops
        mfu = achieved / peak if peak else None
        figures[case.name] = {
            "image_size": case.image_size,
            "text_length": case.text_length,
            "mask": case.mask,
            "batch": runner.batch,
            "step_ms": seconds * 1e3,
            "median_step_ms": statistics.median(times[case.name]) / steps * 1e3,
            "samples_per_s": samples_per_s,
            "train_gflops_per_sample": runner.flops / 1e9,
            "achieved_tflops": achieved / 1e12,
            "mfu": mfu,
            "round_seconds": times[case.name],
        }
        rows.append(
            [
                case.name,
                runner.batch,
                seconds * 1e3,
                samples_per_s,
                runner.flops / 1e9,
                achieved / 1e12,
                "n/a" if mfu is None else f"{mfu:.1%}",
            ]
        )
    base = figures["224px_T77"]["samples_per_s"]
    ratios = {
        "t112_vs_t224": figures["112px_T16"]["samples_per_s"] / base,
        "t64_vs_t224": figures["64px_T16"]["samples_per_s"] / base,
        "mask0.5_vs_t224": figures["224px_mask0.5_T77"]["samples_per_s"] / base,
    }
    print_table(
        f"Training step: {preset}, {precision}, {device}",
        ["case", "batch", "step ms", "samples/s", "GFLOPs/sample", "TFLOP/s", "MFU"],
        rows,
    )
    print_table(
        "Ratios (samples/s vs 224 px / T77)",
        ["ratio", "value"],
        [[k, v] for k, v in ratios.items()],
    )
    name = "step_gpu" if on_gpu else "step"
    path = write_result(
        name,
        ratios=ratios,
        figures=figures,
        config={
            "preset": preset,
            "precision": precision,
            "device": device,
            "peak_flops": peak,
            "rounds": args.rounds,
            "steps_per_round": steps,
            "warmup_steps": warmup,
            "torch_compile": bool(args.compile and on_gpu),
            "threads": torch.get_num_threads(),
        },
        packages=["torch", "numpy"],
        command="make setup && .venv/bin/python -m benchmarks.bench_step"
        + (" --compile" if args.compile and on_gpu else ""),
    )
    payload = json.loads(path.read_text())
    payload = {"device": device, **payload}  # which machine the figures belong to, up front
    write_json(RESULTS_DIR / path.name, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
