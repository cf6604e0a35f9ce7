"""The memory estimate against measured peaks of real CPU training steps, and its arithmetic."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clipa_train.image_masks import IMAGE_MASK_STRATEGIES
from clipa_train.memory_estimate import (
    GIB,
    MemoryShape,
    estimate_memory,
    parameter_count,
    parse_size,
)
from clipa_train.model import load_preset

WORKER = Path(__file__).with_name("memory_worker.py")

MEASURED = [
    # preset, image size, text length, batch, image mask, grad checkpointing
    ("clipa-tiny", 64, 32, 32, "resize", False),
    ("clipa-tiny", 64, 32, 256, "resize", True),
    ("clipa-tiny", 64, 32, 256, "resize", False),
    ("clipa-small", 224, 16, 16, "random", False),
]


def shape_of(preset, size, length, batch, mask, ckpt, precision="fp32") -> MemoryShape:
    model = load_preset(preset).replace(image_size=size, context_length=length)
    grid = model.vision.grid
    keep = IMAGE_MASK_STRATEGIES[mask](grid, 0.5).keep or grid * grid
    return MemoryShape(model, batch, keep + 1, length, precision, ckpt)


def measured_peak(tmp_path: Path, preset, size, length, batch, mask, ckpt) -> int:
    """Peak resident memory of a fresh process that trains two real steps of the config."""
    run = tmp_path / f"{preset}-{size}-{batch}-{mask}-{int(ckpt)}"
    args = [preset, size, length, batch, mask, int(ckpt), run]
    done = subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak"]


def test_estimate_is_within_a_stated_factor_of_measured_peaks_and_orders_them(tmp_path):
    measured = [measured_peak(tmp_path, *config) for config in MEASURED]
    estimated = [estimate_memory(shape_of(*config)).total for config in MEASURED]
    for config, peak, estimate in zip(MEASURED, measured, estimated, strict=True):
        assert 0.75 <= estimate / peak <= 1.5, (config, peak / GIB, estimate / GIB)
    # Configs whose measured peaks differ by more than a fifth are ordered alike.
    for i in range(len(MEASURED)):
        for j in range(len(MEASURED)):
            if measured[i] > 1.2 * measured[j]:
                assert estimated[i] > estimated[j], (MEASURED[i], MEASURED[j])


@pytest.mark.parametrize("preset", ["test-tiny", "clipa-tiny", "clipa-small"])
@pytest.mark.parametrize("loss", ["contrastive", "sigmoid"])
def test_parameter_count_is_the_built_models(preset, loss):
    from clipa_train.model import build_model

    config = load_preset(preset).replace(loss=loss)
    model = build_model(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_the_zero_option_pretrain_on_a_cpu_needs_more_than_24_gib():
    """ViT-B/16 at 224 px, batch 256, fp32 (what grew to 23 GB and was killed)."""
    default = estimate_memory(shape_of("ViT-B-16-CL16", 224, 16, 256, "resize", False))
    assert default.total > 24 * GIB
    assert default.activations > default.parameters + default.gradients + default.optimizer


def test_checkpointing_accumulation_masks_bf16_and_fsdp_lower_the_estimate():
    base = shape_of("ViT-B-16-CL16", 224, 16, 64, "resize", False)
    total = estimate_memory(base).total
    lower = [
        dataclasses.replace(base, grad_checkpointing=True),
        dataclasses.replace(base, micro_batch=32),
        dataclasses.replace(base, image_tokens=50),
        dataclasses.replace(base, precision="bf16"),
        dataclasses.replace(base, shards=4),
    ]
    for shape in lower:
        assert estimate_memory(shape).total < total, shape
    workers = dataclasses.replace(base, workers=4)
    assert estimate_memory(workers).total > total


def test_sizes_parse_in_binary_units_and_bad_ones_are_refused():
    from clipa_data.core.errors import ClipaError

    assert parse_size("16G") == 16 * GIB
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("1000") == 1000
    with pytest.raises(ClipaError, match="CLIPA_MEMORY_AVAILABLE"):
        parse_size("lots")
