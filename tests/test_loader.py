"""The batch source with real worker processes: coverage, order, resume and bad records."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from builders import Record, jpeg_bytes, make_builder_dir, make_records
from sidecars import write_sidecars

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.core.tfrecord import HEADER_SIZE
from clipa_data.core.tokenizer import SOT
from clipa_train.image import RECIPE_JITTER, ImageConfig
from clipa_train.loader import Loader
from clipa_train.reduce import PatchMaskConfig, TextReductionConfig
from clipa_train.stream import StreamConfig

SHARDS, PER_SHARD = 8, 6


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    """8 shards x 6 records of 40 px JPEGs, with real sidecars."""
    root = tmp_path_factory.mktemp("loader")
    shards = [make_records(PER_SHARD, start=PER_SHARD * i, size=40) for i in range(SHARDS)]
    path = make_builder_dir(root, shards)
    write_sidecars(path)
    return path


@pytest.fixture
def copy(builder, tmp_path):
    """A private copy of the builder directory, for tests that break it."""
    target = tmp_path / "copy"
    shutil.copytree(builder, target)
    return target


def config(data, **changes):
    fields = dict(
        data=str(data),
        batch_size=3,
        image=ImageConfig(size=32),
        patch_mask=PatchMaskConfig("random", 16, 0.5),
        text=TextReductionConfig("syntax", 8),
        workers=2,
        shuffle_buffer=4,
    )
    fields.update(changes)
    return StreamConfig(**fields)


def epoch_keys(loader):
    return [key for batch in loader.epoch_batches() for key in batch["key"]]


def snapshot(batch):
    return (
        tuple(batch["key"]),
        batch["image"].numpy().tobytes(),
        batch["text"].numpy().tobytes(),
        batch["patch_keep"].numpy().tobytes(),
    )


def test_two_ranks_by_two_workers_see_every_record_once_per_epoch(builder):
    loaders = [Loader(config(builder), rank=rank, world=2) for rank in range(2)]
    assert [len(loader) for loader in loaders] == [8, 8]
    for epoch in range(2):
        seen = Counter(key for loader in loaders for key in epoch_keys(loader))
        assert seen == Counter(f"{i:09d}" for i in range(SHARDS * PER_SHARD)), epoch
    assert all(loader.stats.batches == 16 for loader in loaders)


def test_batches_follow_the_contract(builder):
    loader = Loader(
        config(builder, text=TextReductionConfig("random", 8), workers=0), rank=0, world=1
    )
    batch = next(iter(loader))
    assert set(batch) == {"image", "patch_keep", "text", "key"}
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 32, 32, 3)
    assert batch["patch_keep"].dtype == torch.int16 and batch["patch_keep"].shape == (3, 2)
    assert batch["text"].dtype == torch.int64 and batch["text"].shape == (3, 8)
    assert (batch["text"][:, 0] == SOT).all()
    assert all(isinstance(key, str) for key in batch["key"])
    assert loader.shapes.patch_keep == (3, 2)
    assert not batch["image"].is_pinned()
    resize = Loader(config(builder, patch_mask=PatchMaskConfig("resize"), workers=0))
    assert "patch_keep" not in next(iter(resize))


def test_same_seed_same_order_new_epoch_new_order(builder):
    first, again = (Loader(config(builder), rank=1, world=2) for _ in range(2))
    epoch0 = [epoch_keys(first), epoch_keys(again)]
    epoch1 = epoch_keys(first)
    assert epoch0[0] == epoch0[1]
    assert epoch1 != epoch0[0]  # other shards, other order (coverage: test above)
    other_seed = Loader(config(builder, seed=1), rank=1, world=2)
    assert epoch_keys(other_seed) != epoch0[0]


@pytest.mark.parametrize("stop_after", [1, 4, 17])
def test_resume_mid_epoch_gives_the_same_remaining_batches(builder, stop_after):
    augmented = config(
        builder,
        image=ImageConfig(size=32, color_jitter=RECIPE_JITTER, grayscale_prob=0.2),
        patch_mask=PatchMaskConfig("block", 16, 0.5),
        text=TextReductionConfig("random", 6),
        samples_per_epoch=57,
    )
    steps = Loader(augmented).steps_per_epoch  # 19 steps: 30 + 27 positions > 24 records each
    expected = [snapshot(b) for b in itertools.islice(Loader(augmented), steps + 3)]

    stopped = Loader(augmented)
    for done, _ in enumerate(stopped, start=1):
        if done == stop_after:
            break
    state = stopped.state_dict()
    stopped.close()
    assert state["epoch"] == 0 and state["step"] == stop_after
    resumed = Loader(augmented)
    resumed.load_state_dict(state)
    rest = [snapshot(b) for b in itertools.islice(resumed, steps - stop_after + 3)]
    assert rest == expected[stop_after:]  # into the next epoch without a break


def test_epochs_shorter_than_the_data_draw_every_record_of_long_shards(tmp_path):
    """Each epoch read every shard from its first record: with an 8-sample epoch, a 4-record
    buffer and 40-record shards, records 11-39 of every shard were never drawn in any epoch."""
    shards = [make_records(40, start=40 * i, size=40) for i in range(2)]
    short = config(
        make_builder_dir(tmp_path, shards), batch_size=4, workers=0, samples_per_epoch=8,
        text=TextReductionConfig("truncate", 8),
    )  # fmt: skip
    loader = Loader(short)
    drawn = Counter()
    for _ in range(80):
        epoch = epoch_keys(loader)
        assert len(epoch) == len(set(epoch)) == 8
        drawn.update(epoch)
    assert set(drawn) == {f"{i:09d}" for i in range(80)}


def test_a_resume_reads_its_buffered_records_in_a_few_passes_over_the_shard(tmp_path, monkeypatch):
    """The records still in the shuffle buffer at the resumed step are read in shard order; a
    shard was opened again (its headers walked from the start) at every gap between them."""
    from clipa_data.core import tfrecord

    data = make_builder_dir(tmp_path / "data", [make_records(300, size=8)])
    one_shard = config(data, workers=0, batch_size=4, shuffle_buffer=128,
                       text=TextReductionConfig("truncate", 8))  # fmt: skip
    expected = [snapshot(b) for b in itertools.islice(Loader(one_shard), 40)]
    opened = []
    real_open = tfrecord.open_shard
    monkeypatch.setattr(tfrecord, "open_shard", lambda path: opened.append(path) or real_open(path))
    resumed = Loader(one_shard)
    resumed.load_state_dict({**resumed.state_dict(), "step": 30})
    assert [snapshot(b) for b in itertools.islice(resumed, 10)] == expected[30:]
    assert 1 <= len(opened) <= 3, len(opened)  # was 51 (one per gap); 0: not seen at all


def test_a_loader_nobody_closed_lets_python_exit(builder):
    """Its workers ignore SIGTERM, and at exit multiprocessing terminates and joins them: a
    loader still alive then (a caller that never closed it, a failed test's traceback) made
    Python wait forever."""
    script = (
        "import sys; from clipa_train.loader import Loader; "
        "from clipa_train.reduce import TextReductionConfig; "
        "from clipa_train.stream import StreamConfig; "
        f"kept = Loader(StreamConfig(data={str(builder)!r}, batch_size=4, workers=2, "
        "text=TextReductionConfig('truncate', 8))); "
        "next(iter(kept)); print('read', flush=True)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout == "read\n", done.stderr


def test_iteration_runs_on_across_epochs(builder):
    loader = Loader(config(builder, workers=0))
    steps = len(loader)
    endless = [batch["key"] for batch in itertools.islice(loader, 2 * steps + 1)]
    assert loader.state_dict()["epoch"] == 2 and loader.state_dict()["step"] == 1
    by_epoch = Loader(config(builder, workers=0))
    epochs = [[batch["key"] for batch in by_epoch.epoch_batches()] for _ in range(3)]
    assert endless == epochs[0] + epochs[1] + epochs[2][:1]


def test_end_of_epoch_state_resumes_at_the_next_epoch_under_any_settings(builder):
    loader = Loader(config(builder, workers=0))
    first = epoch_keys(loader)
    state = loader.state_dict()
    assert (state["epoch"], state["step"]) == (1, 0)
    second = epoch_keys(loader)
    other = Loader(config(builder, workers=2))
    other.load_state_dict(state)
    assert other.epoch == 1
    assert sorted(epoch_keys(other)) == sorted(second) == sorted(first)


def test_mid_epoch_state_with_other_settings_is_refused(builder):
    loader = Loader(config(builder, workers=0))
    next(iter(loader))
    with pytest.raises(ClipaError, match=r"middle of epoch 0 \(step 1\).*--workers \(0 .*1 -> 2"):
        Loader(config(builder, workers=2)).load_state_dict(loader.state_dict())
    # The same steps, but --samples-per-epoch given, which may start a worker's input at a
    # seeded record (another order)
    with pytest.raises(ClipaError, match=r"--samples-per-epoch None -> 48"):
        Loader(config(builder, workers=0, samples_per_epoch=48)).load_state_dict(
            loader.state_dict()
        )
    # A state an earlier clipa saved (no samples_per_epoch): no false "changed" line
    spe = Loader(config(builder, workers=0, samples_per_epoch=48))
    next(iter(spe))
    older = {k: v for k, v in spe.state_dict().items() if k != "samples_per_epoch"}
    with pytest.raises(ClipaError, match=r"saved by an earlier clipa.*--samples-per-epoch; resume"):
        Loader(config(builder, workers=0, samples_per_epoch=48)).load_state_dict(older)
    Loader(config(builder, workers=0)).load_state_dict(older)  # never given: the same order
    with pytest.raises(ClipaError, match="not a stream state"):
        loader.load_state_dict({"epoch": 0, "step": 0})


def test_ranks_get_equal_steps_when_shards_are_uneven(tmp_path):
    sizes = [7, 1, 3, 5, 2]
    shards, start = [], 0
    for size in sizes:
        shards.append(make_records(size, start=start, size=40))
        start += size
    data = make_builder_dir(tmp_path, shards)
    loaders = [
        Loader(config(data, text=TextReductionConfig("truncate", 8)), rank=r, world=2)
        for r in range(2)
    ]
    assert [len(loader) for loader in loaders] == [3, 3]  # 18 // (2 * 3)
    keys = [epoch_keys(loader) for loader in loaders]
    assert [len(k) for k in keys] == [9, 9]
    assert set(keys[0]).isdisjoint(keys[1])  # no shard is read by both ranks
    assert all(count <= 2 for count in Counter(keys[0] + keys[1]).values())


def odd_records():
    """One shard of odd images: each kind the stream must handle or skip."""
    kinds = {
        "jpeg": jpeg_bytes(40, 40, 1),
        "png": jpeg_bytes(40, 30, 2, mode="RGBA", fmt="PNG"),
        "cmyk": jpeg_bytes(40, 30, 3, mode="CMYK"),
        "gray": jpeg_bytes(40, 30, 4, mode="L"),
        "tiny": jpeg_bytes(1, 1, 5),
        "strip": jpeg_bytes(10000, 50, 6),
        "broken": jpeg_bytes(40, 40, 7)[:200],
        "jpeg2": jpeg_bytes(40, 40, 8),
    }
    return [Record(key=name, jpg=data, txt=f"a {name} picture") for name, data in kinds.items()]


def test_odd_images_are_decoded_and_a_broken_one_skipped_and_counted(tmp_path):
    data = make_builder_dir(tmp_path, [odd_records()])
    loader = Loader(
        config(data, text=TextReductionConfig("truncate", 8), batch_size=8, max_bad_fraction=0.2)
    )
    (batch,) = list(loader.epoch_batches())
    assert loader.stats.bad_images == 1 and loader.stats.filled == 1
    assert loader.stats.pillow == 1  # the PNG
    assert "broken" not in batch["key"] and len(set(batch["key"])) == 7
    assert "record 6 (key 'broken') of shard" in loader.stats.messages[0]
    assert batch["image"].shape == (8, 32, 32, 3)


def test_a_bad_record_whose_key_holds_a_colon_keeps_its_message(tmp_path):
    records = make_records(8, size=40)
    records[2] = Record(key="photo: 2", jpg=b"\xff\xd8 not really", txt="x")
    data = make_builder_dir(tmp_path, [records])
    loader = Loader(config(data, text=TextReductionConfig("truncate", 8), batch_size=8, workers=0,
                           max_bad_fraction=0.2))  # fmt: skip
    list(loader.epoch_batches())
    assert loader.stats.bad_images == 1
    assert len(loader.stats.messages) == 1 and "(key 'photo: 2')" in loader.stats.messages[0]


def test_too_many_bad_records_stop_the_run_with_the_record_named(tmp_path):
    data = make_builder_dir(tmp_path, [odd_records()])
    loader = Loader(
        config(data, text=TextReductionConfig("truncate", 8), batch_size=4, bad_grace=4)
    )
    with pytest.raises(ClipaError, match=r"1 of the [48] records read by worker 0 .*key 'broken'"):
        list(loader.epoch_batches())


def test_a_fully_bad_batch_borrows_the_next_good_record(tmp_path):
    records = make_records(4, size=40)
    records[0] = Record(key="bad", jpg=b"\xff\xd8 not really", txt="x")
    data = make_builder_dir(tmp_path, [records])
    loader = Loader(
        config(
            data,
            batch_size=1,
            workers=0,
            shuffle_buffer=1,
            text=TextReductionConfig("truncate", 8),
            max_bad_fraction=0.5,
            bad_grace=4,
        )
    )
    keys = epoch_keys(loader)
    assert keys == ["000000001", "000000001", "000000002", "000000003"]
    assert loader.stats.bad_images == 1 and loader.stats.filled == 1


def record_offset(path, index):
    data = Path(path).read_bytes()
    offset = 0
    for _ in range(index):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        offset += HEADER_SIZE + length + 4
    return offset


def test_truncated_shard_is_counted_or_stops_the_run(copy):
    path = Path(layout.read_split(copy, "train").shards[3].path)
    path.write_bytes(path.read_bytes()[: record_offset(path, 4) + 20])
    loader = Loader(config(copy, max_bad_fraction=0.1))
    assert len(epoch_keys(loader)) == 48
    assert loader.stats.unreadable == 2 and loader.stats.filled == 2
    assert any(
        f"of shard {path.name}" in m and "runs past the end" in m for m in loader.stats.messages
    )
    strict = Loader(config(copy, max_bad_fraction=0.01, bad_grace=10))
    with pytest.raises(ClipaError, match=rf"unusable: .*{path.name}"):
        list(strict.epoch_batches())


def test_bad_crc_is_found_when_checking(copy):
    path = Path(layout.read_split(copy, "train").shards[5].path)
    data = bytearray(path.read_bytes())
    offset = record_offset(path, 2)
    (length,) = struct.unpack("<Q", data[offset : offset + 8])
    data[offset + HEADER_SIZE + length // 2] ^= 0x55
    path.write_bytes(bytes(data))
    loader = Loader(config(copy, check_crc=True, max_bad_fraction=0.1))
    keys = epoch_keys(loader)
    assert loader.stats.unreadable == 1 and f"{PER_SHARD * 5 + 2:09d}" not in keys
    assert f"record 2 of shard {path.name}" in loader.stats.messages[0]
    assert "data checksum mismatch" in loader.stats.messages[0]


def test_sidecar_key_mismatch_stops_with_shard_and_record(copy):
    sidecars = sorted((Path(copy) / "sidecars").glob("*.arrow"))
    shutil.copy(sidecars[0], sidecars[1])  # same row count, other keys
    loader = Loader(config(copy, workers=2))
    with pytest.raises(ClipaError, match=r"row \d has key .* but record \d of shard .*00001-of"):
        list(loader.epoch_batches())


def test_missing_sidecars_and_syntax_without_them(copy):
    sidecars = sorted((Path(copy) / "sidecars").glob("*.arrow"))
    sidecars[2].unlink()
    with pytest.raises(ClipaError, match=rf"{sidecars[2]}: sidecar of shard .* is missing"):
        Loader(config(copy))
    shutil.rmtree(Path(copy) / "sidecars")
    with pytest.raises(ClipaError, match=rf"create them with: clipa-data tag {copy}"):
        Loader(config(copy))
    loader = Loader(config(copy, text=TextReductionConfig("block", 8), workers=0))
    assert not loader.reader.use_sidecars
    assert len(epoch_keys(loader)) == 48


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch size must be positive"),
        ({"max_bad_fraction": 1.0}, r"max bad fraction must be in \[0, 1\)"),
        ({"image": ImageConfig(size=40)}, "not a multiple of the patch size 16"),
        ({"text_source": "caption"}, "syntax text mask reads POS tags from sidecars"),
        ({"text_source": "tags"}, "unknown text source 'tags'"),
        ({"batch_size": 49}, "less than one global batch"),
    ],
)
def test_bad_stream_configs(builder, changes, message):
    with pytest.raises(ClipaError, match=message):
        Loader(config(builder, **changes))


def test_stats_count_samples(builder):
    loader = Loader(config(builder, workers=0, samples_per_epoch=12))
    assert len(loader) == 4
    list(loader.epoch_batches())
    assert loader.stats.batches == 4 and loader.stats.bad_images == 0
    assert loader.stats.filled == 0 and loader.stats.messages == []


def test_reading_never_imports_tensorflow_or_nltk(builder):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from clipa_train.loader import Loader\n"
        "from clipa_train.stream import StreamConfig\n"
        "from clipa_train.image import ImageConfig\n"
        "from clipa_train.reduce import TextReductionConfig\n"
        f"loader = Loader(StreamConfig(data={str(builder)!r}, batch_size=4, workers=0,\n"
        "    image=ImageConfig(size=32), text=TextReductionConfig('syntax', 8)))\n"
        "next(iter(loader))\n"
        "heavy = {'tensorflow', 'tensorflow_datasets', 'nltk', 'spacy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def _sleep() -> None:
    time.sleep(60)


def test_a_worker_pytorch_already_reaped_is_named_from_its_error():
    """PyTorch's ``is_alive`` check reaps a killed worker before the loader can read its exit
    status: the worker is then named from PyTorch's own messages, not lost in a traceback."""
    from clipa_train.loader import reaped_workers

    process = multiprocessing.get_context("fork").Process(target=_sleep)
    process.start()
    os.kill(process.pid, signal.SIGKILL)
    process.join()  # reaped, as DataLoader's is_alive() does
    cause = RuntimeError(f"DataLoader worker (pid {process.pid}) is killed by signal: Killed. ")
    try:
        raise RuntimeError(
            f"DataLoader worker (pid(s) {process.pid}) exited unexpectedly"
        ) from cause
    except RuntimeError as error:
        named = reaped_workers([0, process.pid], error)
        unrelated = reaped_workers([process.pid], RuntimeError("connection reset"))
    assert named == [f"loader worker 1 (pid {process.pid}) was killed by SIGKILL"]
    assert unrelated == []  # an error that names no worker stays as it is
