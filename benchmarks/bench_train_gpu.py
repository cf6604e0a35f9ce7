"""A fed GPU: the real ``clipa-train pretrain`` against the synthetic compiled step, same run.

For each case (112 px / T16 and 64 px / T16, syntax mask, ViT-B/16, batch 1024, compiled), the
end-to-end run is the real command in a subprocess: the real loader with ``--workers`` processes
over a real builder directory (64 shards of 256 records, 256 px photo-like JPEGs, spaCy syntax
sidecars), RandomResizedCrop, the compiled step, all its steps in one epoch
(``--samples-per-epoch``: the workers read their shards again rather than drain at an epoch
boundary every 16 steps, which a LAION-size epoch does once). Its rate and data-wait share come
from the steady-state windows of its ``metrics.jsonl`` (the first windows, which hold the
compile, are dropped). The synthetic run is ``bench_step``'s compiled step on pre-made batches
in this process. ``"ratios"``: ``e2e_vs_synthetic_112`` and ``e2e_vs_synthetic_64`` (target
≥ 0.95 at 112 px with ≤ 8 workers on a 16-core host).

The builder directory is made on the CPU machine (spaCy tags it) and packed into an xz archive
small enough to carry (its 16,384 records draw their JPEGs from a pool of 1,024, so the archive
is about the pool's size; the loader still decodes every record):

    .venv/bin/python -m benchmarks.bench_train_gpu --prepare      # CPU machine, ~2 minutes
    python3 -m benchmarks.bench_train_gpu                          # CUDA host (gpu_check.sh)
    .venv/bin/python -m benchmarks.bench_train_gpu --dry-run       # the whole path on the CPU

Writes ``benchmarks/results/train_gpu.json`` on a CUDA host (a dry run writes nothing there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import print_table, write_result

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / ".bench" / "train_gpu_data.tar.xz"
WORK = ROOT / "benchmarks" / "work"


@dataclass(frozen=True)
class DataShape:
    """The builder directory the end-to-end run reads."""

    shards: int
    """tfrecord shards (each worker opens several per epoch)."""
    per_shard: int
    """Records per shard."""
    distinct_images: int
    """Distinct JPEGs the records draw from (keeps the archive small)."""


FULL_DATA = DataShape(shards=64, per_shard=256, distinct_images=1024)
DRY_DATA = DataShape(shards=4, per_shard=32, distinct_images=16)
CASES = {"112": 112, "64": 64}
"""Case name -> image size; both use 16 text tokens (syntax mask) as CLIPA's recipes do."""
TEXT_LENGTH = 16


def build_data(shape: DataShape) -> Path:
    """The builder directory (cached under benchmarks/work/), with spaCy sidecars."""
    from benchmarks import loader_data

    return loader_data.build(
        WORK,
        shards=shape.shards,
        per_shard=shape.per_shard,
        distinct_images=shape.distinct_images,
    )


def pack(builder: Path) -> Path:
    """xz archive of the builder's root (64 MiB dictionary: repeated JPEGs compress away)."""
    root = builder.parent.parent
    ARCHIVE.parent.mkdir(parents=True, exist_ok=True)
    partial = ARCHIVE.with_suffix(".partial")
    with tarfile.open(partial, "w:xz", preset=9) as archive:
        archive.add(root, arcname=root.name)
    partial.replace(ARCHIVE)
    return ARCHIVE


def unpack(archive: Path) -> Path:
    """The builder directory inside ``archive``, extracted under benchmarks/work/ once."""
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        builder = WORK / top / "laionlike" / "1.0.0"
        if not (builder / "dataset_info.json").exists():
            tar.extractall(WORK, filter="data")
    return builder


def train_command(builder: Path, out: Path, image_size: int, args) -> list[str]:
    """The ``clipa-train pretrain`` command line of one end-to-end case."""
    entry = "from clipa_cli.train_app import main; main()"
    options = {
        "--data": builder, "--out": out, "--model": args.preset, "--image-size": image_size,
        "--text-length": TEXT_LENGTH, "--text-mask": "syntax", "--batch-size": args.batch,
        "--samples": args.batch * args.steps, "--workers": args.workers,
        # One epoch for the whole run: the 16,384 records are 16 steps, and every epoch boundary
        # drains and refills the workers' pipeline (a bubble a LAION-size epoch has once).
        "--samples-per-epoch": args.batch * args.steps,
        "--log-every": args.log_every, "--compile": args.compile, "--precision": args.precision,
    }  # fmt: skip
    if args.compile == "on":  # a backend without compiling is refused (it would be ignored)
        options["--compile-backend"] = args.dynamo_backend
    flat = [str(part) for pair in options.items() for part in pair]
    return [sys.executable, "-c", entry, "pretrain", *flat, "--no-progress"]


def steady_state(metrics: Path, skip: int) -> dict:
    """Samples/s and data-wait share over the windows after the first ``skip`` (equal windows:
    the rate is their harmonic mean, the share their time-weighted mean)."""
    windows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    windows = [w for w in windows if "samples_per_s" in w][skip:]
    if not windows:
        raise SystemExit(f"{metrics}: no steady-state windows; raise --steps")
    seconds = [1 / w["samples_per_s"] for w in windows]
    return {
        "samples_per_s": len(windows) / sum(seconds),
        "data_wait_share": sum(
            w["data_wait_share"] * s for w, s in zip(windows, seconds, strict=True)
        )
        / sum(seconds),
        "windows": len(windows),
        "torch_compiles": windows[-1].get("torch_compiles"),  # constant if nothing recompiled
        "per_window_samples_per_s": [round(w["samples_per_s"], 1) for w in windows],
    }


def end_to_end(builder: Path, image_size: int, args) -> dict:
    """One real ``clipa-train pretrain`` run; its steady-state figures."""
    out = WORK / f"train_gpu_run_{image_size}_{time.time_ns()}"
    began = time.perf_counter()
    done = subprocess.run(train_command(builder, out, image_size, args), cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"clipa-train pretrain failed (exit {done.returncode}) at {image_size} px")
    figures = steady_state(out / "metrics.jsonl", args.skip_windows)
    return {**figures, "wall_s": round(time.perf_counter() - began, 1), "run_dir": str(out)}


def synthetic(image_size: int, args) -> dict:
    """``bench_step``'s compiled (or eager) step on pre-made batches, in this process."""
    import torch

    from benchmarks import bench_step
    from clipa_train.backend import BackendConfig, create_backend

    on_gpu = torch.cuda.is_available()
    case = bench_step.Case(f"{image_size}px_T{TEXT_LENGTH}", image_size, TEXT_LENGTH, None, 0, 0)
    variant = bench_step.VARIANTS["compile" if args.compile == "on" else "eager"]
    device = "cuda" if on_gpu else "cpu"
    backend = create_backend(BackendConfig(name=device, precision=args.precision))
    runner = bench_step.Runner(case, args.preset, args.batch, backend, variant, args.dynamo_backend)
    runner.run(args.warmup)
    # The median of 3 windows, as the end-to-end side's mean over its windows: the best of 3
    # set a bar no run keeps and made the ratio read low.
    seconds = statistics.median(runner.run(args.log_every) for _ in range(3)) / args.log_every
    del runner
    bench_step.free_runner()
    return {"samples_per_s": args.batch / seconds, "step_ms": seconds * 1e3}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--prepare", action="store_true", help="build and pack the data (CPU machine), then stop")
    add("--dry-run", action="store_true", help="tiny model and data on the CPU; writes no result")
    add("--cases", default="112,64", help="comma-separated image sizes (112, 64)")
    add("--preset", default="ViT-B-16-CL16", help="model preset")
    add("--batch", type=int, default=1024, help="global batch (one GPU)")
    add("--workers", type=int, default=8, help="loader worker processes")
    add("--steps", type=int, default=80, help="optimiser steps of each end-to-end run")
    add("--log-every", type=int, default=10, help="steps per metrics window")
    add("--skip-windows", type=int, default=2, help="first windows dropped (compile, warm-up)")
    add("--warmup", type=int, default=5, help="synthetic warm-up steps (the compile included)")
    add("--compile", default="on", choices=("on", "off"), help="compile both steps")
    add("--precision", default="bf16", help="training precision")
    add("--dynamo-backend", default="inductor", help="torch.compile backend (aot_eager: CPU runs)")
    add("--copy-to", type=Path, help="also copy the result JSON here after each case ($OUT)")
    if parser.parse_known_args()[0].dry_run:  # small defaults; flags given still win
        parser.set_defaults(preset="clipa-tiny", batch=16, workers=1, steps=8, log_every=2,
                            skip_windows=1, warmup=1, compile="off", precision="fp32")  # fmt: skip
    args = parser.parse_args()
    return args


def main() -> None:
    args = parse_args()
    shape = DRY_DATA if args.dry_run else FULL_DATA
    if args.prepare:
        print(f"packed {pack(build_data(shape))}")
        return
    builder = build_data(shape) if args.dry_run else unpack(ARCHIVE)
    figures, failed = {}, {}
    for name in filter(None, args.cases.split(",")):
        # A failed side is recorded and the next case runs: device time is scarce.
        e2e = measured = None
        try:
            e2e = end_to_end(builder, CASES[name], args)
            measured = synthetic(CASES[name], args)
        except (SystemExit, Exception) as failure:
            side = "end to end" if e2e is None else "synthetic"
            failed[name] = {"failed": f"{side}: {type(failure).__name__}: {failure}", "e2e": e2e}
            print(f"!! case {name}: {failed[name]['failed']}", flush=True)
            if not args.dry_run:
                save(figures, failed, shape, args)
            continue
        figures[name] = {"e2e": e2e, "synthetic": measured}
        figures[name]["ratio"] = e2e["samples_per_s"] / figures[name]["synthetic"]["samples_per_s"]
        print(f"case {name}: {json.dumps(figures[name])}", flush=True)
        if not args.dry_run:  # after each case: a run cut short keeps the cases it finished
            save(figures, failed, shape, args)
    rows = [
        [f"{name} px / T{TEXT_LENGTH}", f["e2e"]["samples_per_s"], f["synthetic"]["samples_per_s"],
         f["ratio"], f"{f['e2e']['data_wait_share']:.1%}"]
        for name, f in figures.items()
    ]  # fmt: skip
    columns = ["case", "e2e samples/s", "synthetic samples/s", "e2e / synthetic", "data wait"]
    title = f"Fed GPU ({args.preset}, batch {args.batch}, {args.workers} workers)"
    print_table(title, columns, rows)
    if failed:
        raise SystemExit(f"{len(failed)} case(s) failed: {', '.join(failed)}")


def save(figures: dict, failed: dict, shape: DataShape, args) -> None:
    """``results/train_gpu.json`` with the cases measured so far (and those that failed), also
    copied to ``--copy-to``: a device call cut short returns what it finished."""
    path = write_result(
        "train_gpu",
        ratios={f"e2e_vs_synthetic_{name}": f["ratio"] for name, f in figures.items()},
        figures={**figures, **failed},
        config={
            **{k: v for k, v in vars(args).items() if k not in ("prepare", "dry_run", "copy_to")},
            "data": asdict(shape),
            "device": _device_name(),
        },
        packages=[
            *("torch", "numpy", "simplejpeg", "opencv-python-headless", "opencv-python"),
            *("google-crc32c", "instant-clip-tokenizer"),
        ],
        command="python3 -m benchmarks.bench_train_gpu (benchmarks/gpu_check.sh)",
    )
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, args.copy_to / path.name)


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
