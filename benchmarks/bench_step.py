"""Training-step throughput at CLIPA's reduced token lengths (and MFU where the peak is known).

Cases: (224 px, T77), (112 px, T16), (64 px, T16) and 224 px with a random patch mask of 0.5
(T77), on synthetic uint8 batches that go through the real step: host→device copy,
normalisation on the device, forward, contrastive loss, backward, AdamW, logit-scale clamp.

On a CUDA host: ViT-B/16 (``ViT-B-16-CL16`` with the text context set per case), bf16 autocast,
batch 256/1024/2048/512. On the CPU: the small ``clipa-small`` preset (ViT-S/16-like), fp32,
batch 32, results in ``results/step.json``; cases are timed in interleaved rounds there and each
case's fastest round is kept (the one least disturbed by other work on a shared machine; the
median is reported too). On a GPU the cases run one after another (each freed before the next,
so compiled graphs and CUDA-graph pools never pile up) and each variant's raw figures go to
``<raw-dir>/step_gpu_<label>.json`` after every case; ``--merge`` combines those files into
``results/step_gpu.json`` with the ratios of the best variant (``benchmarks/gpu_check.sh``).

Variants (``--variant``) are opt-in ways to run the same step: eager (what ``clipa-train``
runs), ``torch.compile`` modes, CUDA graphs, compiling each residual block, a forced SDPA
backend, and pure bf16 weights (not exact: no fp32 master weights; a bound, never "best").
FLOPs are analytic (2 × multiply-adds of every matmul incl. attention and the patch embedding; a
training step = 3 × forward), as in the performance notes.

    .venv/bin/python -m benchmarks.bench_step            # CPU here; ViT-B/16 bf16 on a GPU host
    GPU_CHECK_PARTS=step bash benchmarks/gpu_check.sh    # every GPU variant, profile, merge
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import RESULTS_DIR, print_table, write_result
from clipa_data.core.atomic import write_json
from clipa_data.core.provenance import machine_info
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.flops import train_flops_per_sample
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
# Issue 11's targets on an H100/H200 (bf16, ViT-B/16).
TARGETS = {"mfu_224": 0.45, "mfu_112": 0.40, "t112_vs_t224": 3.5}


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


@dataclass(frozen=True)
class Variant:
    """One way to run the same training step."""

    compile_mode: str | None = None
    """``torch.compile`` mode (None: eager)."""
    scope: str = "model"
    """What is compiled: ``model`` (the CLIP forward, as one graph) or ``blocks`` (each residual
    block on its own: one small graph reused by every layer, much shorter compile)."""
    sdpa: str | None = None
    """Force one SDPA backend (``flash``, ``efficient``, ``cudnn``); None lets PyTorch choose."""
    pure_bf16: bool = False
    """bf16 weights and activations, no autocast and no fp32 master weights (not exact)."""

    @property
    def exact(self) -> bool:
        """Same numerics as the trainer's bf16 autocast step (up to rounding)."""
        return not self.pure_bf16

    @property
    def cudagraphs(self) -> bool:
        return self.compile_mode == "reduce-overhead"


VARIANTS = {
    "eager": Variant(),
    "compile": Variant("default"),
    "compile_cudagraphs": Variant("reduce-overhead"),
    "compile_autotune": Variant("max-autotune-no-cudagraphs"),
    "compile_blocks": Variant("default", scope="blocks"),
    "compile_flash": Variant("default", sdpa="flash"),
    "compile_efficient_attention": Variant("default", sdpa="efficient"),
    "compile_cudnn_attention": Variant("default", sdpa="cudnn"),
    "compile_cudagraphs_cudnn_attention": Variant("reduce-overhead", sdpa="cudnn"),
    "compile_pure_bf16": Variant("default", pure_bf16=True),
}


def peak_flops(device_name: str) -> float | None:
    return next((peak for fragment, peak in PEAKS if fragment in device_name), None)


def sdpa_context(name: str | None) -> contextlib.AbstractContextManager:
    """``sdpa_kernel`` restricted to one backend, or a no-op."""
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel(backends[name])


class _Bf16Images(nn.Module):
    """Casts the normalised fp32 images to bf16 for a model whose weights are bf16."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, text, patch_keep=None):
        return self.model(images.to(torch.bfloat16), text, patch_keep)


def compiled(model: nn.Module, step_model: nn.Module, variant: Variant, backend_name: str):
    """The module the step calls, compiled as ``variant`` says (``backend_name``: dynamo's)."""
    if variant.compile_mode is None:
        return step_model
    options = {"backend": backend_name}
    if backend_name == "inductor":
        options["mode"] = variant.compile_mode
    if variant.scope == "blocks":
        for block in [*model.visual.transformer.resblocks, *model.transformer.resblocks]:
            block.compile(**options)
        return step_model
    return torch.compile(step_model, **options)


class Runner:
    """One case: model, optimiser and a few pre-made host batches, stepped on the backend."""

    def __init__(
        self,
        case: Case,
        preset: str,
        batch: int,
        backend,
        variant: Variant,
        dynamo_backend="inductor",
    ) -> None:
        config = load_preset(preset).replace(
            image_size=case.image_size, context_length=case.text_length
        )
        torch.manual_seed(0)
        self.model = build_model(config)
        self.step_model = backend.prepare_model(self.model)
        if variant.pure_bf16:
            self.model.to(torch.bfloat16)
            self.step_model = _Bf16Images(self.step_model)
        self.step_model = compiled(self.model, self.step_model, variant, dynamo_backend)
        self.optim = OptimConfig(lr=1e-4, total_steps=1000)
        self.optimizer = build_optimizer(self.model, self.optim)
        self.loss_fn = build_loss("contrastive", backend)
        self.batches = _host_batches(case, batch, config, pin=backend.device.type == "cuda")
        first = self.batches[0]
        kept = first["patch_keep"].shape[1] if "patch_keep" in first else config.vision.num_patches
        self.flops = train_flops_per_sample(config, kept, case.text_length)
        self.batch, self.backend, self.variant, self.steps = batch, backend, variant, 0

    def step(self) -> torch.Tensor:
        """One training step; returns the loss (a device tensor, never read here)."""
        if self.variant.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with sdpa_context(self.variant.sdpa):
            batch = self.backend.to_device(self.batches[self.steps % 2])
            loss, _ = forward_backward(self.step_model, batch, self.loss_fn, self.backend)
        apply_update(self.model, self.optimizer, self.optim, self.backend)
        self.backend.step_boundary()
        self.steps += 1
        return loss.detach()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps, measured to the end of the device work."""
        _sync(self.backend)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.backend)
        return time.perf_counter() - start


def _host_batches(case: Case, batch: int, config: ModelConfig, pin: bool) -> list[dict]:
    source = SyntheticBatches(
        batch_size=batch,
        image_size=case.image_size,
        text_length=case.text_length,
        vocab_size=config.text.vocab_size,
        patch_size=config.vision.patch_size,
        mask=case.mask,
        mask_ratio=0.5,
    )
    return [
        {k: v.pin_memory() if pin and torch.is_tensor(v) else v for k, v in source.batch(i).items()}
        for i in range(2)
    ]


def _sync(backend) -> None:
    if backend.device.type == "cuda":
        torch.cuda.synchronize()


def case_figures(case: Case, runner: Runner, times: list[float], steps: int, peak) -> dict:
    """The raw figures of one case from its per-round seconds."""
    seconds = min(times) / steps
    samples_per_s = runner.batch / seconds
    achieved = samples_per_s * runner.flops
    return {
        "image_size": case.image_size,
        "text_length": case.text_length,
        "mask": case.mask,
        "batch": runner.batch,
        "step_ms": seconds * 1e3,
        "median_step_ms": statistics.median(times) / steps * 1e3,
        "samples_per_s": samples_per_s,
        "train_gflops_per_sample": runner.flops / 1e9,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
        "round_seconds": times,
    }


def case_rows(figures: dict) -> list[list[object]]:
    rows = []
    for name, f in figures.items():
        mfu = "n/a" if f["mfu"] is None else f"{f['mfu']:.1%}"
        row = [name, f["batch"], f["step_ms"], f["samples_per_s"], f["train_gflops_per_sample"]]
        rows.append([*row, f["achieved_tflops"], mfu, f.get("compile_s", "")])
    return rows


def ratios_of(figures: dict) -> dict[str, float]:
    """Throughput ratios against 224 px / T77 (those whose cases were measured)."""
    if "224px_T77" not in figures:
        return {}
    base = figures["224px_T77"]["samples_per_s"]
    names = {"t112_vs_t224": "112px_T16", "t64_vs_t224": "64px_T16"}
    names["mask0.5_vs_t224"] = "224px_mask0.5_T77"
    return {k: figures[c]["samples_per_s"] / base for k, c in names.items() if c in figures}


def free_runner() -> None:
    """Drop compiled graphs and CUDA-graph pools of the case just measured (the runner is gone)."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_interleaved(cases: list[Case], make_runner, args) -> dict:
    """Every case built first, then timed in interleaved rounds (the CPU path)."""
    runners = {}
    for case in cases:
        runners[case.name] = make_runner(case)
        runners[case.name].run(args.warmup)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            times[name].append(runner.run(args.steps))
    return {
        case.name: case_figures(case, runners[case.name], times[case.name], args.steps, args.peak)
        for case in cases
    }


def measure_sequential(cases: list[Case], make_runner, args, save) -> dict:
    """One case at a time (the GPU path): build, compile, time, profile, free, save."""
    figures = {}
    for case in cases:
        began = time.perf_counter()
        runner = make_runner(case)
        first = runner.run(1)  # compiles (and, for CUDA graphs, warms up) here
        runner.run(max(args.warmup - 1, 1))
        times = [runner.run(args.steps) for _ in range(args.rounds)]
        figures[case.name] = case_figures(case, runner, times, args.steps, args.peak)
        figures[case.name]["compile_s"] = round(first, 2)
        figures[case.name]["case_wall_s"] = round(time.perf_counter() - began, 2)
        if case.name in args.profile:
            text = profile_summary(runner, 5, f"{args.label} {case.name} batch {runner.batch}")
            path = Path(args.profile_dir) / f"profile_{args.label}_{case.name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(text, flush=True)
        del runner
        free_runner()
        save(figures)
        print(
            f"{args.label} {case.name}: {figures[case.name]['samples_per_s']:,.0f} samples/s, "
            f"compile {first:.1f} s",
            flush=True,
        )
    return figures


# Kernel families by name, first match wins (attention before gemm: flash kernels say cutlass).
KERNEL_GROUPS = [
    ("attention", ("flash", "fmha", "attention", "sdpa", "attn")),
    ("gemm/conv (triton template)", ("triton_tem",)),
    ("gemm/conv", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "wgmma", "conv", "implicit")),
    ("optimizer", ("adam", "multi_tensor")),
    ("triton fused (norm, gelu, adds)", ("triton",)),
    ("copy/memset", ("memcpy", "memset", "copy")),
    ("aten elementwise/reduce", ("elementwise", "vectorized", "reduce", "norm", "softmax")),
]
HOST_SYNCS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "aten::_local_scalar_dense",
    "cudaMemcpy",
)
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")


def kernel_group(name: str) -> str:
    lower = name.lower()
    return next((g for g, keys in KERNEL_GROUPS if any(k in lower for k in keys)), "other")


def profile_summary(runner: Runner, steps: int, title: str) -> str:
    """torch.profiler over ``steps`` steps: device busy share, time by kernel family, host syncs
    and launches per step, the top 25 kernels by device time."""
    from torch.profiler import ProfilerActivity, profile

    _sync(runner.backend)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            runner.step()
        _sync(runner.backend)
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    kernels = [a for a in averages if a.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda a: a.self_device_time_total, reverse=True)
    total_us = sum(a.self_device_time_total for a in kernels)
    per_step = lambda us: us / steps / 1e3  # noqa: E731 - ms per step
    lines = [
        f"Profile: {title}, {steps} steps",
        f"wall {wall / steps * 1e3:.2f} ms/step, kernel time {per_step(total_us):.2f} ms/step, "
        f"device busy {total_us / 1e6 / wall:.1%}",
        "",
        f"{'kernel family':34} {'ms/step':>9} {'share':>7}",
    ]
    groups: dict[str, float] = {}
    for a in kernels:
        groups[kernel_group(a.key)] = groups.get(kernel_group(a.key), 0) + a.self_device_time_total
    for group, us in sorted(groups.items(), key=lambda item: -item[1]):
        lines.append(f"{group:34} {per_step(us):9.2f} {us / max(total_us, 1):7.1%}")
    host = {a.key: a.count for a in averages if a.key in HOST_SYNCS + LAUNCHES}
    lines += ["", "host calls per step (the closing synchronize included): "]
    lines += [f"  {key}: {count / steps:.1f}" for key, count in sorted(host.items())]
    lines += ["", f"top 25 kernels by device time ({len(kernels)} distinct kernels)"]
    lines.append(f"{'ms/step':>8} {'share':>6} {'calls/step':>10}  name")
    for a in kernels[:25]:
        share = a.self_device_time_total / max(total_us, 1)
        lines.append(
            f"{per_step(a.self_device_time_total):8.2f} {share:6.1%} {a.count / steps:10.1f}  "
            f"{a.key[:150]}"
        )
    return "\n".join(lines) + "\n"


def _cuda_ms(function, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of ``function()`` timed with CUDA events."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# (batch, heads, tokens, head dim, causal) of the step's attention calls, per case and tower.
ATTENTION_SHAPES = {
    "vision_224_b256": (256, 12, 197, 64, False),
    "vision_112_b1024": (1024, 12, 50, 64, False),
    "vision_64_b2048": (2048, 12, 17, 64, False),
    "text_T77_b256": (256, 8, 77, 64, True),
    "text_T16_b1024": (1024, 8, 16, 64, True),
}


def attention_timings(shape: tuple) -> dict:
    """fwd+bwd ms of one SDPA call per backend (q/k/v strided as the model makes them)."""
    import torch.nn.functional as F

    batch, heads, tokens, dim, causal = shape
    qkv = torch.randn(batch, tokens, 3, heads, dim, device="cuda", dtype=torch.bfloat16)
    qkv.requires_grad_(True)
    grad = torch.randn(batch, heads, tokens, dim, device="cuda", dtype=torch.bfloat16)

    def call() -> None:
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(grad)
        qkv.grad = None

    q, k, v = qkv.detach().permute(2, 0, 3, 1, 4)
    from torch.nn.attention import SDPBackend

    try:  # the backend PyTorch picks by default
        result: dict = {
            "chosen": SDPBackend(torch._fused_sdp_choice(q, k, v, None, 0.0, causal)).name
        }
    except Exception as error:  # a private API; the timings still say enough
        result = {"chosen": f"unknown: {error}"[:120]}
    for name in (None, "flash", "efficient", "cudnn"):
        try:
            with sdpa_context(name):
                result[name or "default"] = round(_cuda_ms(call), 4)
        except Exception as error:  # any refusal means "not on this shape"
            result[name or "default"] = f"unavailable: {str(error).splitlines()[0][:120]}"
    return result


def probe() -> dict:
    """The machine, the bf16 matmul ceiling and the SDPA backends on the step's shapes."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    matmul_tflops = 2 * 8192**3 / _cuda_ms(lambda: a @ b) / 1e9
    properties = torch.cuda.get_device_properties(0)
    attention = {name: attention_timings(shape) for name, shape in ATTENTION_SHAPES.items()}
    totals: dict[str, float] = {}
    for timings in attention.values():
        for name in ("default", "flash", "efficient", "cudnn"):
            if isinstance(timings[name], float):
                totals[name] = totals.get(name, 0.0) + timings[name]
            else:
                totals[name] = float("inf")
    best = min(totals, key=totals.get)
    return {
        "gpu": torch.cuda.get_device_name(),
        "sm_count": properties.multi_processor_count,
        "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "host": machine_info(),
        "matmul_bf16_8192_tflops": round(matmul_tflops, 1),
        "attention_fwd_bwd_ms": attention,
        "attention_total_ms": {
            k: round(v, 4) if v < float("inf") else None for k, v in totals.items()
        },
        "suggested_sdpa": best if totals[best] < 0.95 * totals["default"] else None,
    }


def summary_of(figures: dict) -> dict:
    """MFU at 224/T77 and 112/T16, their throughputs and t112_vs_t224 (None where not run)."""
    get = lambda case, key: figures.get(case, {}).get(key)  # noqa: E731
    summary = {
        "mfu_224": get("224px_T77", "mfu"),
        "mfu_112": get("112px_T16", "mfu"),
        "samples_per_s_224": get("224px_T77", "samples_per_s"),
        "samples_per_s_112": get("112px_T16", "samples_per_s"),
    }
    summary.update(ratios_of(figures))
    return summary


def target_score(summary: dict) -> float:
    """Mean fraction of the two MFU targets reached (the best variant maximises it)."""
    if summary["mfu_224"] is None or summary["mfu_112"] is None:
        return -1.0
    return (summary["mfu_224"] / TARGETS["mfu_224"] + summary["mfu_112"] / TARGETS["mfu_112"]) / 2


def merge(raw_dir: Path) -> Path:
    """Combine ``raw_dir``'s variant files (and ``probe.json``) into ``results/step_gpu.json``
    (figures from a CPU, a dry run's: ``raw_dir/step_gpu.json``)."""
    runs = [json.loads(p.read_text()) for p in sorted(raw_dir.glob("step_gpu_*.json"))]
    if not runs:
        raise SystemExit(f"{raw_dir}: no variant results (step_gpu_<variant>.json) to merge")
    probe_path = raw_dir / "probe.json"
    machine_probe = json.loads(probe_path.read_text()) if probe_path.exists() else {}
    summaries = {run["label"]: summary_of(run["figures"]) for run in runs}
    exact = [run["label"] for run in runs if run["exact"]]
    best = max(exact, key=lambda label: target_score(summaries[label]), default=None)
    ratios = {}
    if best is not None:
        ratios = {k: v for k, v in summaries[best].items() if "samples" not in k and v is not None}
    device = runs[0]["device"]
    into = raw_dir if device == "cpu" else RESULTS_DIR  # a CPU dry run keeps the GPU's results
    path = write_result(
        "step_gpu",
        ratios=ratios,
        figures={run["label"]: run["figures"] for run in runs},
        config={
            "best_variant": best,
            "best_rule": "exact variants only; max mean of mfu_224/0.45 and mfu_112/0.40",
            "targets": TARGETS,
            "variants": {run["label"]: run["config"] for run in runs},
        },
        packages=["torch", "numpy"],
        command="GPU_CHECK_PARTS=step bash benchmarks/gpu_check.sh",
        into=into,
    )
    payload = json.loads(path.read_text())
    payload = {"device": device, "best_variant": best, **payload, "summary": summaries}
    payload["probe"] = machine_probe
    if machine_probe:  # the GPU host measured, not the machine that merged (they may differ)
        keys = ("gpu", "sm_count", "gpu_memory_gib", "torch", "cuda", "cudnn")
        payload["machine"] = {**machine_probe["host"], **{k: machine_probe[k] for k in keys}}
        payload["versions"] = {
            "clipa": payload["versions"]["clipa"],
            "torch": machine_probe["torch"],
        }
    write_json(path, payload)
    # Plain text (rich would squeeze six columns into a log's 80 characters).
    print(f"Training step variants on {device} (best: {best}); samples/s (MFU)")
    print(f"{'variant':36}" + "".join(f"{c.name:>20}" for c in CASES) + f"{'t112/t224':>11}")
    for label, run in zip(summaries, runs, strict=True):
        cells = "".join(f"{_cell(run['figures'].get(c.name)):>20}" for c in CASES)
        ratio = summaries[label].get("t112_vs_t224")
        print(f"{label:36}{cells}{'' if ratio is None else f'{ratio:.2f}':>11}")
    return path


def _cell(figure: dict | None) -> str:
    if figure is None:
        return "-"
    mfu = "" if figure["mfu"] is None else f" ({figure['mfu']:.1%})"
    return f"{figure['samples_per_s']:,.0f}{mfu}"


DEFAULT_RAW = Path(os.environ.get("TMPDIR", "/tmp")) / "clipa_step_gpu"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--rounds", type=int, default=0, help="timing rounds (0: 5 CPU, 3 GPU)")
    add("--steps", type=int, default=0, help="steps per round (0: 2 CPU, 10 GPU)")
    add(
        "--warmup", type=int, default=0, help="warm-up steps, compiling one incl. (0: 1 CPU, 5 GPU)"
    )
    add("--compile", action="store_true", help="shorthand for --variant compile")
    add("--variant", choices=sorted(VARIANTS), default="eager", help="how the step runs")
    add("--cases", default="", help="comma-separated case names (default: all four)")
    add("--batch-scale", type=int, default=1, help="multiply every case's batch by this")
    add("--batch", type=int, default=0, help="one batch size for every case (quick checks)")
    add("--preset", default="", help="model preset (default: ViT-B-16-CL16 GPU, clipa-small CPU)")
    add("--label", default="", help="this run's name in the merged file (default: variant[_bNx])")
    add("--raw-dir", default=str(DEFAULT_RAW), help="where the per-variant GPU files go")
    add("--profile", default="", help="comma-separated cases to profile after timing them")
    add("--profile-dir", default="", help="where profile summaries go (default: the raw dir)")
    add(
        "--dynamo-backend", default="inductor", help="torch.compile backend (aot_eager: CPU checks)"
    )
    add("--sequential", action="store_true", help="the GPU path on the CPU (tests of this script)")
    add("--probe", action="store_true", help="only probe the GPU: matmul ceiling, SDPA backends")
    add("--merge", action="store_true", help="only merge the raw dir into results/step_gpu.json")
    return parser.parse_args()


def settle_args(args: argparse.Namespace, on_gpu: bool) -> argparse.Namespace:
    """Fill the defaults that depend on the device and the variant."""
    variant = "compile" if args.compile else args.variant
    args.variant_name = variant
    args.steps = args.steps or (10 if on_gpu else 2)
    args.rounds = args.rounds or (3 if on_gpu else 5)
    args.warmup = args.warmup or (5 if on_gpu else 1)
    args.label = args.label or variant + (f"_b{args.batch_scale}x" if args.batch_scale > 1 else "")
    args.profile = set(filter(None, args.profile.split(",")))
    args.profile_dir = args.profile_dir or args.raw_dir
    selected = set(filter(None, args.cases.split(",")))
    unknown = selected - {case.name for case in CASES}
    if unknown:
        raise SystemExit(
            f"unknown case(s) {sorted(unknown)}; choose from {[c.name for c in CASES]}"
        )
    args.case_list = [case for case in CASES if not selected or case.name in selected]
    return args


def main() -> None:
    args = parse_args()
    on_gpu = torch.cuda.is_available()
    raw_dir = Path(args.raw_dir)
    if args.merge:
        print(f"wrote {merge(raw_dir)}")
        return
    if args.probe:
        result = probe()
        write_json(raw_dir / "probe.json", result)
        print(json.dumps(result, indent=1))
        return
    args = settle_args(args, on_gpu)
    variant = VARIANTS[args.variant_name]
    precision = "bf16" if on_gpu and not variant.pure_bf16 else "fp32"
    backend = create_backend(BackendConfig(name="cuda" if on_gpu else "cpu", precision=precision))
    preset = args.preset or ("ViT-B-16-CL16" if on_gpu else "clipa-small")
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    args.peak = peak_flops(device) if on_gpu else None
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def make_runner(case: Case) -> Runner:
        batch = args.batch or (case.gpu_batch if on_gpu else case.cpu_batch) * args.batch_scale
        return Runner(case, preset, batch, backend, variant, args.dynamo_backend)

    config = {
        "preset": preset,
        "precision": "bf16 (pure)" if variant.pure_bf16 else precision,
        "device": device,
        "peak_flops": args.peak,
        "variant": args.variant_name,
        **asdict(variant),
        "exact": variant.exact,
        "batch_scale": args.batch_scale,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "torch_compile": variant.compile_mode is not None,
        "threads": torch.get_num_threads(),
    }
    title = f"Training step ({args.label}): {preset}, {config['precision']}, {device}"
    if on_gpu or args.sequential:
        run_sequential(args, config, make_runner, raw_dir, title)
    else:
        run_interleaved(args, config, make_runner, title)


def run_sequential(args, config: dict, make_runner, raw_dir: Path, title: str) -> None:
    """The GPU path: one case at a time, the variant's file rewritten after each, then merge."""
    path = raw_dir / f"step_gpu_{args.label}.json"
    raw_dir.mkdir(parents=True, exist_ok=True)

    def save(figures: dict) -> None:
        payload = {"label": args.label, "exact": config["exact"], "device": config["device"]}
        write_json(path, {**payload, "config": config, "figures": figures})

    figures = measure_sequential(args.case_list, make_runner, args, save)
    columns = ["case", "batch", "step ms", "samples/s", "GFLOPs/sample", "TFLOP/s", "MFU"]
    print_table(title, [*columns, "compile s"], case_rows(figures))
    print(f"wrote {path}; merged into {merge(raw_dir)}")


def run_interleaved(args, config: dict, make_runner, title: str) -> None:
    """The CPU path: interleaved rounds; ``results/step.json`` only for the default run."""
    figures = measure_interleaved(args.case_list, make_runner, args)
    columns = ["case", "batch", "step ms", "samples/s", "GFLOPs/sample", "TFLOP/s", "MFU"]
    print_table(title, [*columns, ""], case_rows(figures))
    ratios = ratios_of(figures)
    print_table(
        "Ratios (samples/s vs 224 px / T77)", ["ratio", "value"], list(map(list, ratios.items()))
    )
    default = args.variant_name == "eager" and args.case_list == CASES
    if not default or args.batch or args.preset or args.batch_scale > 1:
        print("not written: results/step.json keeps the default run (all cases, eager, defaults)")
        return
    path = write_result(
        "step",
        ratios=ratios,
        figures=figures,
        config=config,
        packages=["torch", "numpy"],
        command="make setup && .venv/bin/python -m benchmarks.bench_step",
    )
    payload = json.loads(path.read_text())
    payload = {"device": config["device"], **payload}  # which machine the figures belong to
    write_json(RESULTS_DIR / path.name, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
