"""Checks run once before a training stage starts: will it fit, and will it learn anything.

``check_memory`` compares the estimated peak memory (``memory_estimate``) of one training
process with the free memory of its device and refuses a run that cannot fit with one line
naming what would: a batch size (or ``--accum-steps auto --micro-batch N``, which keeps the
batch), fewer ``--workers`` (on the CPU), ``--grad-checkpointing``, or a smaller preset.
``--no-memory-check`` skips it.
``small_data_warnings`` gives a line when an epoch is under 10 steps or when the whole batches
of an epoch leave more than 5 % of the records out (only whole batches are drawn);
``uneven_ranks_warnings`` when a rank's share of whole shards is under half the mean.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from clipa_data.core.errors import ClipaError
from clipa_train.memory_estimate import (
    AVAILABLE_ENV,
    MemoryEstimate,
    MemoryShape,
    estimate_memory,
    gib,
    parameter_count,
    parse_size,
)

if TYPE_CHECKING:
    from clipa_train.model import ModelConfig
    from clipa_train.reduce import TextReductionConfig
    from clipa_train.resolved_stage import ResolvedStage

MIN_EPOCH_STEPS = 10
"""Fewer optimiser steps per epoch than this get a warning."""

MAX_LEFT_OUT = 0.05
"""A larger share of records left out of every epoch by the last partial batch gets a warning."""

MAX_REPEAT_SKEW = 2.0
"""A rank whose share of records is this many times under the mean gets a warning (its records
are read as many times as often per epoch)."""


def small_data_warnings(
    num_records: int, batch_size: int, in_epochs: bool = True, samples_per_epoch: int | None = None
) -> list[str]:
    """One line per problem of an epoch (``samples_per_epoch``, else ``num_records`` records) in
    batches of ``batch_size`` (none when not even one batch fits: the loader refuses that).
    Short epochs are only said when the stage's length is in epochs (``--samples`` sets it on
    purpose); records left out only when an epoch is one pass over the records."""
    epoch = samples_per_epoch or num_records
    steps = epoch // batch_size
    if steps < 1:
        return []
    lines = []
    if steps < MIN_EPOCH_STEPS and in_epochs:
        unit = "samples" if samples_per_epoch else "records"
        lines.append(
            f"warning: an epoch of {epoch} {unit} is {steps} step{'s' * (steps > 1)} of "
            f"--batch-size {batch_size} (under {MIN_EPOCH_STEPS}); a smaller --batch-size gives "
            "more steps per epoch"
        )
    left = num_records - steps * batch_size
    if samples_per_epoch is None and left > MAX_LEFT_OUT * num_records:
        lines.append(
            f"warning: --batch-size {batch_size} leaves {left} of {num_records} records "
            f"({left / num_records:.0%}) out of every epoch (only whole batches are drawn); "
            f"a batch size that divides {num_records} more evenly leaves out fewer"
        )
    return lines


def uneven_ranks_warnings(
    shard_lengths: tuple[int, ...], world: int, steps: int, seed: int
) -> list[str]:
    """A line when the shards, dealt whole to ``world`` ranks that all take ``steps`` batches
    an epoch, leave a rank with under half the mean share in epoch 0: its few records fill as
    many batch slots as the others', so each is read ``MAX_REPEAT_SKEW`` or more times as often
    (the same pairs in every global batch) while records of the other ranks wait an epoch."""
    if world < 2 or steps < 1:
        return []
    shares = [
        sum(shard_lengths[s] for s in group) for group in _epoch0_ranks(shard_lengths, world, seed)
    ]
    smallest = min(shares)
    mean = sum(shard_lengths) / world
    if smallest == 0 or mean / smallest < MAX_REPEAT_SKEW:
        return []  # a rank with no records is refused by the loader
    rank = shares.index(smallest)
    return [
        f"warning: the {len(shard_lengths)} shards, dealt whole to {world} ranks, leave rank "
        f"{rank} with {smallest} of the {sum(shard_lengths)} records for the same {steps} steps an "
        f"epoch as the others: it reads each about {mean / smallest:.0f}x as often as the mean "
        "(the same pairs in every global batch); use fewer processes, or data in more shards "
        "of equal size (img2dataset --number_sample_per_shard)"
    ]


def _epoch0_ranks(shard_lengths: tuple[int, ...], world: int, seed: int) -> list[list[int]]:
    """The shards each rank reads in epoch 0 (``epoch_plan``'s deal, as the loader makes it)."""
    from clipa_train import epoch_plan

    order = [int(s) for s in epoch_plan.shard_order(seed, 0, len(shard_lengths))]
    return epoch_plan.balance(order, list(shard_lengths), world)


def idle_workers_notes(
    shard_lengths: tuple[int, ...], world: int, workers: int, seed: int
) -> list[str]:
    """A line when a rank holds fewer non-empty shards than ``--workers`` in epoch 0: shards are
    dealt whole to workers, so the others sit idle (processes and memory for nothing)."""
    groups = _epoch0_ranks(shard_lengths, world, seed)
    fewest = min(sum(1 for shard in group if shard_lengths[shard]) for group in groups)
    if not 0 < fewest < workers:
        return []  # a rank with no records is refused by the loader
    which, idle = "a" if world > 1 else "the", workers - fewest
    return [
        f"note: --workers {workers}, but {which} process has only {fewest} non-empty shard"
        f"{'s' * (fewest > 1)} to read in an epoch (shards are read whole: "
        f"{len(shard_lengths)} over {world} process{'es' * (world > 1)}), so {idle} of its "
        f"workers {'sit' if idle > 1 else 'sits'} idle; --workers {fewest} reads as fast"
    ]


SIZE_PROBE_RECORDS = 16
"""Records whose image headers say how large the data's images are (an upsampling note)."""


def upsampling_notes(builder: str, split: str, image_size: int) -> list[str]:
    """A line when the data's images (the first records of the first non-empty shard) are
    smaller than the stage's image size: every crop is upsampled, so the stage pays for
    resolution the data does not have (a 224 px fine-tune of a 64 px download). Only the
    image bytes are read (no caption field, no sidecar); a shard it cannot read says nothing
    here (the loader names it)."""
    import io
    import itertools

    from PIL import Image

    from clipa_data.core import layout, tfrecord
    from clipa_data.core.example import bytes_value, parse_message
    from clipa_train.shards import Fields

    shards = [shard for shard in layout.read_split(builder, split).shards if shard.num_records]
    if not shards:
        return []
    sides = []
    try:
        for raw in itertools.islice(tfrecord.read_records(shards[0].path), SIZE_PROBE_RECORDS):
            image = bytes_value(parse_message(raw), Fields().image) or b""
            try:
                sides.append(min(Image.open(io.BytesIO(image)).size))
            except (OSError, ValueError, Image.DecompressionBombError):  # not an image, huge
                continue  # the loader counts bad images itself
    except Exception:  # a damaged shard or record: the loader names it, with its fix
        pass
    if not sides or max(sides) >= image_size:
        return []
    side = sorted(sides)[len(sides) // 2]
    return [
        f"note: the data's images are about {side} px on their shorter side (the first "
        f"{len(sides)} of {posixpath.basename(shards[0].path)}), under --image-size "
        f"{image_size}: every crop is upsampled about {image_size / side:.1f}x, which costs "
        "compute and adds no detail (download at a larger --image-size, or train at a "
        "smaller one)"
    ]


def reference_tagger_notes(builder: str, split: str, text: TextReductionConfig) -> list[str]:
    """A line when a ``--reference-exact`` syntax mask reads sidecars another tagger than
    NLTK made: the original tags with NLTK's perceptron, and ``clipa-data tag --tagger auto``
    falls back to spaCy where NLTK's data is missing, so the run was not the original's."""
    from clipa_data.core import layout, sidecar

    if not (text.reference_exact and text.needs_sidecars):
        return []
    shards = layout.read_split(builder, split).shards
    try:
        info, _ = sidecar.read_header(layout.sidecar_path(builder, shards[0].path))
    except ClipaError:
        return []  # the loader's own checks name an unreadable sidecar
    if info.tagger == "nltk":
        return []
    return [
        f"note: --reference-exact, but the sidecars were tagged with {info.tagger} "
        f"({info.tagger_model}), not NLTK as the original: for its tags, run clipa-data tag "
        f"{shlex.quote(builder)} --tagger nltk --overwrite (NLTK's tagger data installed)"
    ]


def samples_warnings(samples: int | None, batch_size: int, total_steps: int) -> list[str]:
    """A line when ``--samples`` is not a whole number of global batches: the stage trains
    whole batches only, so it sees fewer samples than asked (or, below one batch, more)."""
    if samples is None or samples % batch_size == 0:
        return []
    trained = total_steps * batch_size
    return [
        f"warning: --samples {samples} is not a multiple of --batch-size {batch_size}: the "
        f"stage trains {total_steps} step{'s' * (total_steps > 1)} of whole batches, "
        f"{trained} samples ({'more' if trained > samples else 'fewer'} than asked); give a "
        "multiple of the batch size"
    ]


def warmup_warnings(given: int | None, total_steps: int) -> list[str]:
    """A line when ``--warmup-steps`` (``given``) reaches past the stage's ``total_steps``: the
    schedule caps it there, so the learning rate climbs to its peak at the last step and never
    decays, which a warm-up copied from a longer run would do without a word."""
    if given is None or given < total_steps:
        return []
    return [
        f"warning: --warmup-steps {given} is not less than the stage's {total_steps} steps: "
        "the learning rate warms up over all of them and never decays; give fewer "
        "--warmup-steps or more --samples/--epochs"
    ]


def stage_shape(
    stage: ResolvedStage,
    world: int,
    *,
    micro_batch: int | None = None,
    model: ModelConfig | None = None,
    grad_checkpointing: bool | None = None,
) -> MemoryShape:
    """What one device of ``stage`` runs per step, with any of the three overridden."""
    from clipa_train.accumulation import fewest_micro_batches
    from clipa_train.image_masks import IMAGE_MASK_STRATEGIES
    from clipa_train.sharding import sharding_choice

    optim = stage.config.optim
    model = model or stage.model
    if micro_batch is None:
        per_rank = max(1, optim.batch_size // world)
        accum = optim.accum_steps
        parts = fewest_micro_batches(per_rank, optim.micro_batch) if accum == "auto" else accum
        micro_batch = max(1, per_rank // parts)
    grid = model.vision.grid
    keep = IMAGE_MASK_STRATEGIES[stage.patch_mask.strategy](grid, stage.patch_mask.ratio).keep
    return MemoryShape(
        model=model,
        micro_batch=micro_batch,
        image_tokens=(keep or grid * grid) + 1,  # + the class token
        text_tokens=min(stage.text.length, model.text.context_length),
        precision=stage.backend.precision,
        grad_checkpointing=(
            stage.config.model.grad_checkpointing
            if grad_checkpointing is None
            else grad_checkpointing
        ),
        shards=world if sharding_choice(optim.sharding).shards_state else 1,
        device=stage.backend.name,
        workers=stage.config.run.workers,
    )


def available_memory(device: str) -> tuple[int, str] | None:
    """(free bytes for this process's device, where the figure comes from); None when it
    cannot be read (XLA, no /proc/meminfo)."""
    given = os.environ.get(AVAILABLE_ENV)
    if given:
        return parse_size(given), AVAILABLE_ENV
    if device == "cpu":
        return _host_available()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None  # the backend says so, in its own words
        index = int(os.environ.get("LOCAL_RANK", "0"))
        free, _ = torch.cuda.mem_get_info(index)
        return free, f"free memory of cuda:{index}"
    return None


def _host_available() -> tuple[int, str] | None:
    """MemAvailable, lowered to the cgroup's limit minus its usage when that is smaller."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    if "MemAvailable" not in fields:
        return None
    available, source = int(fields["MemAvailable"].split()[0]) * 1024, "available RAM"
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        used = int((cgroup / "memory.current").read_text())
    except (OSError, ValueError):
        return available, source
    if limit.isdigit() and int(limit) - used < available:
        return int(limit) - used, "the container's free memory"
    return available, source


def check_memory(stage: ResolvedStage, world: int) -> MemoryEstimate | None:
    """Refuse ``stage`` with one line when its estimated peak exceeds the free memory of its
    device (several processes on one host's CPU share it); the estimate (None: not checked)."""
    if not stage.config.optim.memory_check:
        return None
    shape = stage_shape(stage, world)
    free = available_memory(shape.device)
    if free is None:
        return None
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if shape.device == "cpu" else 1
    estimate = estimate_memory(shape)
    if estimate.total * sharing <= free[0]:
        return estimate
    fits = lambda candidate: estimate_memory(candidate).total * sharing <= free[0]  # noqa: E731
    raise ClipaError(_refusal(stage, world, shape, estimate, free, sharing, fits))


def _refusal(stage, world, shape, estimate, free, sharing, fits) -> str:
    """The one line: what was asked, what it needs, what is free, and what would fit."""
    config = stage.config
    name = config.model.name or ("the checkpoint's model" if config.model.from_checkpoint else "")
    if not name:
        from clipa_train.run_config import DEFAULT_MODEL

        name = DEFAULT_MODEL
    settings = [
        f"{stage.image.size} px",
        f"{shape.image_tokens} image + {shape.text_tokens} text tokens",
        shape.precision,
    ]
    if shape.grad_checkpointing:
        settings.append("grad checkpointing")
    processes = f" × {sharing} processes" if sharing > 1 else ""
    return (
        f"{name} at --batch-size {config.optim.batch_size} ({', '.join(settings)}) needs about "
        f"{gib(estimate.total)}{processes} on {shape.device} (activations "
        f"{gib(estimate.activations)}) but {gib(free[0])} is free ({free[1]}); "
        f"{_suggestions(stage, world, shape, fits)}, or --no-memory-check to try anyway"
    )


def _suggestions(stage: ResolvedStage, world: int, shape: MemoryShape, fits) -> str:
    """``use --batch-size N (or ...), --workers W, --grad-checkpointing or --model P`` for
    what fits."""
    import dataclasses

    options = []
    batch = _smaller_batch(stage, world, shape, fits)
    if batch is not None:
        options.append(batch)
    workers = _largest(lambda w: fits(dataclasses.replace(shape, workers=w)), shape.workers - 1)
    if workers is None and shape.workers > 0 and fits(dataclasses.replace(shape, workers=0)):
        workers = 0
    if workers is not None:
        options.append(f"--workers {workers}")
    if batch is None and workers is None and shape.workers > 0:  # CPU: only both together fit
        both = _smaller_batch(stage, world, dataclasses.replace(shape, workers=0), fits)
        if both is not None:
            options.append(f"{both} together with --workers 0")
    if not shape.grad_checkpointing and not stage.config.recipe:  # a recipe sets it
        checkpointed = dataclasses.replace(shape, grad_checkpointing=True)
        if fits(checkpointed):
            total = estimate_memory(checkpointed).total
            options.append(f"--grad-checkpointing (about {gib(total)})")
    fixed_model = stage.config.model.from_checkpoint or stage.config.recipe  # not the user's
    preset = None if fixed_model else _smaller_preset(shape, fits)
    if preset is not None:
        options.append(f"--model {preset}")
    if not options:
        return "nothing smaller fits on this device: use a machine with more memory"
    return "use " + ", ".join(options[:-1]) + (" or " if len(options) > 1 else "") + options[-1]


def _smaller_batch(stage: ResolvedStage, world: int, shape: MemoryShape, fits) -> str | None:
    """``--batch-size N (or keep B with --accum-steps auto --micro-batch M)`` (or
    ``--micro-batch M`` under ``--accum-steps auto``) for the largest micro-batch that fits."""
    import dataclasses

    optim = stage.config.optim
    micro = _largest(
        lambda m: fits(dataclasses.replace(shape, micro_batch=m)), shape.micro_batch - 1
    )
    if micro is None:
        return None
    if micro >= 16:
        micro -= micro % 8  # a round number: the estimate is not that exact
    if optim.accum_steps == "auto":
        return f"--micro-batch {micro}"
    if stage.config.recipe:  # the recipe fixes the global batch: only accumulation fits it
        return f"--accum-steps auto --micro-batch {micro}"
    return (
        f"--batch-size {micro * world * optim.accum_steps} (or keep {optim.batch_size} with "
        f"--accum-steps auto --micro-batch {micro})"
    )


def _largest(fits_at, high: int) -> int | None:
    """The largest n in 1..``high`` with ``fits_at(n)`` (true up to some n, false above: memory
    grows with n), by bisection: a --batch-size of a billion is refused at once."""
    if high < 1 or not fits_at(1):
        return None
    low = 1
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits_at(middle) else (low, middle - 1)
    return low


def _smaller_preset(shape: MemoryShape, fits) -> str | None:
    """The largest bundled preset smaller than ``shape.model`` that fits at this batch, image
    size (where its patch size divides it) and text length."""
    import dataclasses

    from clipa_train.model import load_preset, preset_names

    current = parameter_count(shape.model)
    candidates = []
    for name in preset_names():
        base = load_preset(name)
        size = shape.model.vision.image_size
        model = base.replace(
            image_size=size if size % base.vision.patch_size == 0 else None,
            context_length=max(shape.text_tokens, 3),
        )
        if model.text.vocab_size != shape.model.text.vocab_size:
            continue  # another tokenizer (test-tiny's 512 ids): not a drop-in replacement
        count = parameter_count(model)
        scale = (model.vision.grid / shape.model.vision.grid) ** 2
        tokens = max(2, round((shape.image_tokens - 1) * scale) + 1)
        candidate = dataclasses.replace(shape, model=model, image_tokens=tokens)
        if count < current and fits(candidate):
            candidates.append((count, name))
    return max(candidates)[1] if candidates else None
