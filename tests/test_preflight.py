"""Before training, through the real CLI: a run that cannot fit in memory is refused at once
with one line naming what fits; small data gets a warning per problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from builders import make_builder_dir, make_records
from cli_checks import assert_one_line_error

from clipa_train.preflight import (
    idle_workers_notes,
    reference_tagger_notes,
    samples_warnings,
    small_data_warnings,
    uneven_ranks_warnings,
    upsampling_notes,
    warmup_warnings,
)

CLIPA_TRAIN = str(Path(sys.executable).parent / "clipa-train")


@pytest.fixture(scope="module")
def builder(tmp_path_factory) -> Path:
    """299 records in two shards (a user's own few hundred images)."""
    root = tmp_path_factory.mktemp("preflight")
    return make_builder_dir(root / "data", [make_records(150), make_records(149, start=150)])


def clipa_train(*args: object, available: str | None = None):
    env = dict(os.environ)
    env.pop("CLIPA_MEMORY_AVAILABLE", None)
    if available is not None:
        env["CLIPA_MEMORY_AVAILABLE"] = available
    done = subprocess.run(
        [CLIPA_TRAIN, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )
    return types.SimpleNamespace(
        exit_code=done.returncode, stderr=done.stderr, output=done.stdout + done.stderr
    )


def test_the_zero_option_pretrain_is_refused_with_what_fits(builder, tmp_path):
    """ViT-B/16, 224 px, batch 256, fp32 on a 16 GiB machine: one line, exit 2, nothing written."""
    out = tmp_path / "run"
    result = clipa_train("pretrain", "--data", builder, "--out", out, available="16G")
    line = assert_one_line_error(
        result,
        "ViT-B-16-CL16 at --batch-size 256",
        "224 px, 197 image + 16 text tokens, fp32",
        "but 16.0 GiB is free (CLIPA_MEMORY_AVAILABLE)",
        "--grad-checkpointing (about",
        "--model clipa-small",
        "--no-memory-check",
    )
    assert "--batch-size " in line.split("use ", 1)[1] and "--micro-batch" in line
    assert not out.exists()


def test_no_memory_check_trains_and_small_data_warns(builder, tmp_path):
    tiny = [
        "pretrain", "--data", builder, "--model", "clipa-tiny", "--image-size", 32,
        "--text-length", 8, "--text-mask", "truncate", "--batch-size", 256, "--workers", 1,
        "--no-progress",
    ]  # fmt: skip
    refused = clipa_train(*tiny, "--out", tmp_path / "refused", available="100M")
    assert_one_line_error(refused, "but 0.1 GiB is free", "nothing smaller fits")
    assert not (tmp_path / "refused").exists()

    result = clipa_train(*tiny, "--out", tmp_path / "run", "--no-memory-check", available="100M")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == small_data_warnings(299, 256)
    assert "an epoch of 299 records is 1 step of --batch-size 256 (under 10)" in warnings[0]
    assert "leaves 43 of 299 records (14%) out of every epoch" in warnings[1]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_small_data_warnings_thresholds():
    assert small_data_warnings(1000, 10) == []  # 100 steps, nothing left out
    assert small_data_warnings(299, 300) == []  # not one batch: the loader refuses that
    (few,) = small_data_warnings(90, 10)  # 9 steps, nothing left out
    assert "9 steps" in few
    assert small_data_warnings(90, 10, in_epochs=False) == []  # --samples sets the length
    assert small_data_warnings(1050, 100) == []  # 10 steps, 50 left out (4.8 %)
    (left,) = small_data_warnings(1099, 100)  # 10 steps, 99 left out (9 %)
    assert "leaves 99 of 1099 records (9%)" in left
    # --samples-per-epoch: the epoch's steps count, and the records are read pass after pass
    assert small_data_warnings(48, 20, samples_per_epoch=400) == []  # 20 steps, none left out
    (short,) = small_data_warnings(1099, 100, samples_per_epoch=500)
    assert "an epoch of 500 samples is 5 steps" in short


def test_samples_that_are_not_whole_batches_are_said():
    assert samples_warnings(None, 8, 3) == [] and samples_warnings(24, 8, 3) == []
    (fewer,) = samples_warnings(20, 8, 2)
    assert "--samples 20 is not a multiple of --batch-size 8" in fewer
    assert "2 steps of whole batches, 16 samples (fewer than asked)" in fewer
    (more,) = samples_warnings(4, 8, 1)
    assert "1 step of whole batches, 8 samples (more than asked)" in more


def test_samples_a_recipe_fixes_are_not_warned_about(builder, tmp_path):
    """The warning is for --samples the user gave: a recipe's own length (the v2 recipes' are
    not whole batches) is its authors', and neither flag is the user's to change."""
    stage = {"stage": "pretrain", "model": "clipa-tiny", "image_size": 32, "text_length": 8,
             "text_mask": "truncate", "global_batch": 8, "lr": 1e-3, "warmup_steps": 1,
             "samples": 20, "pos_embed": "sin_cos_2d", "precision": "fp32",
             "grad_checkpointing": False}  # fmt: skip
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"name": "r", "description": "r", "stages": [stage]}))
    common = ["pretrain", "--data", builder, "--workers", 1, "--no-progress"]
    by_recipe = clipa_train(*common, "--recipe", recipe, "--out", tmp_path / "a")
    assert by_recipe.exit_code == 0, by_recipe.output
    assert "--samples" not in by_recipe.stderr, by_recipe.stderr
    tiny = ["--model", "clipa-tiny", "--image-size", 32, "--text-length", 8, "--text-mask",
            "truncate", "--batch-size", 8, "--samples", 20]  # fmt: skip
    by_hand = clipa_train(*common, *tiny, "--out", tmp_path / "b")
    assert by_hand.exit_code == 0, by_hand.output
    assert samples_warnings(20, 8, 2)[0] in by_hand.stderr.splitlines()


def test_a_warm_up_as_long_as_the_stage_is_said(builder, tmp_path):
    assert warmup_warnings(None, 10) == [] and warmup_warnings(9, 10) == []
    tiny = [
        "pretrain", "--data", builder, "--model", "clipa-tiny", "--image-size", 32,
        "--text-length", 8, "--text-mask", "truncate", "--batch-size", 8, "--workers", 1,
        "--no-progress", "--samples", 24, "--warmup-steps", 50, "--out", tmp_path / "run",
    ]  # fmt: skip
    result = clipa_train(*tiny)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == warmup_warnings(50, 3)
    assert "--warmup-steps 50 is not less than the stage's 3 steps" in warnings[0]


def test_what_the_refusal_names_fits(builder, tmp_path, monkeypatch):
    """The batch, the micro-batch and --grad-checkpointing named fit by the same estimate;
    the run as given does not."""
    import re

    from clipa_data.core.errors import ClipaError
    from clipa_train.memory_estimate import GIB, estimate_memory
    from clipa_train.preflight import check_memory, stage_shape
    from clipa_train.resolved_stage import resolve_stage
    from clipa_train.run_config import resolve

    monkeypatch.setenv("CLIPA_MEMORY_AVAILABLE", "16G")
    stage = resolve_stage(resolve("pretrain", {"data": str(builder), "out": str(tmp_path / "r")}))
    with pytest.raises(ClipaError) as refused:
        check_memory(stage, world=1)
    line = str(refused.value)
    batch = int(re.search(r"use --batch-size (\d+)", line).group(1))
    micro = int(re.search(r"--micro-batch (\d+)", line).group(1))
    assert batch == micro and batch % 8 == 0
    assert estimate_memory(stage_shape(stage, 1)).total > 16 * GIB
    assert estimate_memory(stage_shape(stage, 1, micro_batch=batch)).total <= 16 * GIB
    assert estimate_memory(stage_shape(stage, 1, micro_batch=batch + 8)).total > 16 * GIB
    assert estimate_memory(stage_shape(stage, 1, grad_checkpointing=True)).total <= 16 * GIB
    off = resolve_stage(
        resolve("pretrain", {"data": str(builder), "out": str(tmp_path / "r"),
                             "memory_check": False})
    )  # fmt: skip
    assert check_memory(off, world=1) is None


def test_free_memory_is_read_from_the_host_unless_given(monkeypatch):
    from clipa_train.preflight import available_memory

    monkeypatch.delenv("CLIPA_MEMORY_AVAILABLE", raising=False)
    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    free, source = available_memory("cpu")
    assert 0 < free <= total and source in ("available RAM", "the container's free memory")
    assert available_memory("xla") is None  # no free-memory figure before the devices start
    monkeypatch.setenv("CLIPA_MEMORY_AVAILABLE", "3G")
    assert available_memory("cuda") == (3 * 1024**3, "CLIPA_MEMORY_AVAILABLE")


def _refusal_line(builder, tmp_path, monkeypatch, available: str, **options) -> str:
    from clipa_data.core.errors import ClipaError
    from clipa_train.preflight import check_memory
    from clipa_train.resolved_stage import resolve_stage
    from clipa_train.run_config import resolve

    monkeypatch.setenv("CLIPA_MEMORY_AVAILABLE", available)
    given = {"data": str(builder), "out": str(tmp_path / "r"), "text_mask": "truncate", **options}
    with pytest.raises(ClipaError) as refused:
        check_memory(resolve_stage(resolve("pretrain", given)), world=1)
    return str(refused.value)


def test_a_huge_batch_is_refused_at_once(builder, tmp_path, monkeypatch):
    """The fitting micro-batch is found by bisection, not by trying every size below 10**9."""
    import time

    started = time.monotonic()
    line = _refusal_line(builder, tmp_path, monkeypatch, "16G", batch_size=10**9)
    assert time.monotonic() - started < 30, "the suggestion search walked every batch size"
    assert "use --batch-size 104 (or keep 1000000000 with --accum-steps auto" in line


def test_too_many_loader_workers_are_named(builder, tmp_path, monkeypatch):
    """64 loader workers on the host need more than 2 GiB however small the batch: the line
    names the largest --workers that fits, which does."""
    import re

    from clipa_train.memory_estimate import GIB, estimate_memory
    from clipa_train.preflight import stage_shape
    from clipa_train.resolved_stage import resolve_stage
    from clipa_train.run_config import resolve

    options = {"model": "clipa-tiny", "image_size": 32, "batch_size": 64, "workers": 64}
    line = _refusal_line(builder, tmp_path, monkeypatch, "2G", **options)
    workers = int(re.search(r"use --workers (\d+),", line).group(1))
    assert 0 < workers < 64 and "--batch-size" not in line.split("free")[1]
    for count, fits in ((workers, True), (workers + 1, False)):
        given = {"data": str(builder), "out": str(tmp_path / "r"), "text_mask": "truncate"}
        stage = resolve_stage(resolve("pretrain", {**given, **options, "workers": count}))
        assert (estimate_memory(stage_shape(stage, 1)).total <= 2 * GIB) is fits


def test_a_smaller_batch_with_no_workers_is_named_when_neither_alone_fits(
    builder, tmp_path, monkeypatch
):
    """16 loader workers (4 GiB) do not fit in 3 GiB at any batch, nor does the batch with
    fewer workers: the line names the batch that fits with --workers 0, which does."""
    import re

    from clipa_train.memory_estimate import GIB, estimate_memory
    from clipa_train.preflight import stage_shape
    from clipa_train.resolved_stage import resolve_stage
    from clipa_train.run_config import resolve

    options = {"model": "clipa-tiny", "image_size": 32, "batch_size": 2**16, "workers": 16}
    line = _refusal_line(builder, tmp_path, monkeypatch, "3G", **options)
    batch = int(re.search(r"--micro-batch (\d+)\) together with --workers 0", line).group(1))
    given = {"data": str(builder), "out": str(tmp_path / "r"), "text_mask": "truncate"}
    for count, micro, fits in ((0, batch, True), (16, 1, False), (0, 2**16, False)):
        settings = {**given, **options, "workers": count, "batch_size": micro}
        stage = resolve_stage(resolve("pretrain", settings))
        assert (estimate_memory(stage_shape(stage, 1)).total <= 3 * GIB) is fits


def test_under_a_recipe_the_refusal_names_only_what_the_recipe_allows(
    builder, tmp_path, monkeypatch
):
    """The recipe fixes the global batch and the model: the line names accumulation (which
    keeps the batch), never another --batch-size or --model the recipe would refuse."""
    from clipa_data.core.errors import ClipaError
    from clipa_train.preflight import check_memory
    from clipa_train.resolved_stage import resolve_stage
    from clipa_train.run_config import resolve

    monkeypatch.setenv("CLIPA_MEMORY_AVAILABLE", "16G")
    given = {"data": str(builder), "out": str(tmp_path / "r"), "recipe": "clipa-b16-i50-t16"}
    with pytest.raises(ClipaError) as refused:
        check_memory(resolve_stage(resolve("pretrain", given)), world=1)
    line = str(refused.value)
    assert "use --accum-steps auto --micro-batch " in line, line
    suggestions = line.split(" free ")[1]
    assert "--batch-size" not in suggestions and "--model" not in suggestions, line
    # A recipe file that turns gradient checkpointing off fixes that too: not suggested
    import json

    from clipa_train.recipes import stage_recipe

    stage = {**stage_recipe("clipa-b16-i50-t16", "pretrain").__dict__, "grad_checkpointing": False}
    stage["global_batch"] = 1024  # small enough that checkpointing alone would fit
    stage["color_jitter"] = None
    (tmp_path / "r.json").write_text(json.dumps({"stages": [stage]}))
    with pytest.raises(ClipaError) as refused:
        check_memory(
            resolve_stage(resolve("pretrain", {**given, "recipe": str(tmp_path / "r.json")})),
            world=1,
        )
    line = str(refused.value)
    assert (
        "--accum-steps auto --micro-batch " in line
        and "--grad-checkpointing" not in line.split(" free ")[1]
    ), line


def test_a_rank_dealt_a_small_share_of_whole_shards_is_warned_of(tmp_path):
    """Shards of 100, 100, 100 and 5 records on 4 ranks (img2dataset's partial last shard, as
    many shards as GPUs): the rank holding the 5 fills its 19 steps of 4 with them, 15x the
    mean; the warning names it, and the loader of that rank reads each record about so often."""
    from collections import Counter

    from clipa_train.loader import Loader
    from clipa_train.reduce import TextReductionConfig
    from clipa_train.stream import StreamConfig

    lengths = (100, 100, 100, 5)
    (line,) = uneven_ranks_warnings(lengths, world=4, steps=19, seed=0)
    rank = int(line.split("leave rank ")[1].split()[0])
    assert f"leave rank {rank} with 5 of the 305 records for the same 19 steps" in line
    assert "about 15x as often as the mean" in line and "fewer processes" in line

    shards = [make_records(n, start=1000 * i, size=8) for i, n in enumerate(lengths)]
    data = make_builder_dir(tmp_path, shards)
    config = StreamConfig(data=str(data), batch_size=4, text=TextReductionConfig("truncate", 8),
                          workers=0, shuffle_buffer=8)  # fmt: skip
    loader = Loader(config, rank=rank, world=4)
    assert len(loader) == 19
    reads = Counter(key for batch in loader.epoch_batches() for key in batch["key"])
    assert len(reads) == 5 and min(reads.values()) >= 15

    assert uneven_ranks_warnings((100, 100, 100, 60), world=4, steps=18, seed=0) == []  # 1.5x
    assert uneven_ranks_warnings((100, 5), world=1, steps=26, seed=0) == []


def test_more_workers_than_shards_is_a_note_naming_the_worker_count_that_reads_as_fast():
    """Shards are read whole: the workers beyond a rank's non-empty shards started, held
    memory and read nothing, and nobody said so."""
    (line,) = idle_workers_notes((10, 0, 10), world=1, workers=4, seed=0)
    assert line.startswith("note: --workers 4, but the process has only 2 non-empty shards")
    assert "so 2 of its workers sit idle; --workers 2 reads as fast" in line
    (line,) = idle_workers_notes((10, 10, 10), world=2, workers=2, seed=0)
    assert "a process has only 1 non-empty shard to read" in line
    assert "1 of its workers sits idle" in line
    assert idle_workers_notes((10, 10, 10, 10), world=2, workers=2, seed=0) == []
    assert idle_workers_notes((10,), world=1, workers=0, seed=0) == []  # read in the process


def test_data_smaller_than_the_image_size_is_a_note_before_training(tmp_path):
    """A 224 px fine-tune of a 64 px download upsampled every crop 3.5x, unsaid."""
    from builders import make_builder_dir, make_records

    builder = make_builder_dir(tmp_path, [[], make_records(4, size=40)])  # a first empty shard
    (line,) = upsampling_notes(str(builder), "train", 160)
    assert line.startswith("note: the data's images are about 40 px on their shorter side")
    assert "(the first 4 of " in line and "upsampled about 4.0x" in line
    assert upsampling_notes(str(builder), "train", 40) == []
    # Captions in another field (--text-field caption): the note reads images only (it read
    # the records with the default caption field and stopped every such run)
    from builders import Record, jpeg_bytes

    records = [
        Record(key=f"{i:09d}", jpg=jpeg_bytes(40, 40, seed=i), txt=None,
               extra={"caption": ("bytes", [b"a red square"])})
        for i in range(2)
    ]  # fmt: skip
    other = make_builder_dir(tmp_path / "other", [records])
    assert "about 40 px" in upsampling_notes(str(other), "train", 160)[0]


def test_a_reference_exact_syntax_run_on_spacy_sidecars_says_they_are_not_the_originals(
    tmp_path,
):
    """tag --tagger auto falls back to spaCy where NLTK's data is missing; a --reference-exact
    run then trained on other tags than the original, unsaid."""
    from builders import make_builder_dir, make_records
    from sidecars import write_sidecars

    from clipa_train.reduce import TextReductionConfig

    builder = make_builder_dir(tmp_path, [make_records(4)])
    write_sidecars(builder)  # spaCy
    exact = TextReductionConfig("syntax", 8, reference_exact=True)
    (line,) = reference_tagger_notes(str(builder), "train", exact)
    assert line.startswith("note: --reference-exact, but the sidecars were tagged with spacy (")
    assert "--tagger nltk --overwrite" in line
    fast = TextReductionConfig("syntax", 8)
    assert reference_tagger_notes(str(builder), "train", fast) == []
    truncate = TextReductionConfig("truncate", 8, reference_exact=True)
    assert reference_tagger_notes(str(builder), "train", truncate) == []
