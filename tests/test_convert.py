"""clipa-data convert on shards written by img2dataset's own writers, read back by real TFDS."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from img2dataset_shards import make_samples, source_records, write_shard, write_source

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.prepare import convert as convert_module
from clipa_data.prepare.convert import ConvertConfig, convert

# Shard 2 is missing (a gap, as when img2dataset loses a whole shard); shard 4 has only failures.
LAYOUT = {0: 6, 1: 5, 3: 7, 4: 1}


@pytest.fixture(scope="session")
def pristine_source(tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("pristine") / "raw", LAYOUT, failures=1)


@pytest.fixture
def src(pristine_source, tmp_path) -> Path:
    target = tmp_path / "raw"
    shutil.copytree(pristine_source, target)
    return target


def config(src: Path, out: Path, **overrides) -> ConvertConfig:
    options = {"name": "laion_test", "workers": 1, "show_progress": False}
    options.update(overrides)
    return ConvertConfig(src=src, out=out, **options)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def tfds_records(builder: Path, split: str = "train") -> list[dict]:
    import tensorflow_datasets as tfds

    loaded = tfds.builder_from_directory(str(builder))
    dataset = loaded.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"jpg": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    return list(dataset.as_numpy_iterator())


def expected_records(src: Path, shard_ids) -> list[dict]:
    return [r for i in shard_ids for r in source_records(src / f"{i:05d}.tfrecord")]


def test_tfrecord_source_round_trips_through_tfds(src, tmp_path):
    before = snapshot(src)
    result = convert(config(src, tmp_path / "out", workers=2))

    builder = tmp_path / "out" / "laion_test" / "1.0.0"
    assert result.builder_dir == builder and result.status == "converted"
    names = sorted(p.name for p in builder.glob("laion_test-train.tfrecord-*"))
    assert names == [f"laion_test-train.tfrecord-{i:05d}-of-00003" for i in range(3)]
    assert snapshot(src) == before  # nothing written into, or changed in, SRC

    expected = expected_records(src, [0, 1, 3])
    loaded = tfds_records(builder)
    assert len(loaded) == len(expected) == 5 + 4 + 6
    for got, want in zip(loaded, expected, strict=True):
        assert got["key"] == want["key"][1][0]
        assert got["jpg"] == want["jpg"][1][0]
        assert got["txt"] == want["txt"][1][0]
        assert got["similarity"] == pytest.approx(want["similarity"][1][0])
        assert got["width"] == want["width"][1][0]

    import tensorflow_datasets as tfds

    info = tfds.builder_from_directory(str(builder)).info
    assert info.splits["train"].shard_lengths == [5, 4, 6]
    assert info.features["jpg"].encoding_format == "jpeg"
    decoded = tfds_records_decoded(builder)
    assert decoded["jpg"].shape == (24, 24, 3)

    manifest = json.loads((builder / layout.CONVERT_MANIFEST).read_text())
    assert [(s["source"], s["target"], s["records"]) for s in manifest["shards"]] == [
        ("00000.tfrecord", names[0], 5),
        ("00001.tfrecord", names[1], 4),
        ("00003.tfrecord", names[2], 6),
    ]
    assert [s["stats_successes"] for s in manifest["shards"]] == [5, 4, 6]
    assert [s["bytes"] for s in manifest["shards"]] == [
        (src / f"{i:05d}.tfrecord").stat().st_size for i in (0, 1, 3)
    ]
    assert manifest["dropped_empty"] == ["00004.tfrecord"]
    assert manifest["config"]["method"] == "hardlink"
    assert manifest["versions"]["tensorflow-datasets"]
    for shard in manifest["shards"]:  # hardlinked: same file, no copy
        assert os.path.samefile(builder / shard["target"], src / shard["source"])

    summary = json.loads((builder / layout.CONVERT_SUMMARY).read_text())
    assert summary["records"] == 15 and summary["shards"] == 3
    assert summary["empty_shards"] == ["00004.tfrecord"]
    assert summary["verification"] == {"shards": 3, "examples_decoded": 3}
    assert not list((tmp_path / "out" / "laion_test").glob(".*"))  # no staging folder left


def tfds_records_decoded(builder: Path) -> dict:
    import tensorflow_datasets as tfds

    dataset = tfds.builder_from_directory(str(builder)).as_dataset(split="train[:1]")
    return next(iter(dataset.as_numpy_iterator()))


def test_webdataset_source_is_re_encoded_like_the_tfrecord_writer(tmp_path):
    samples = {0: make_samples(0, 6, failures=1), 2: make_samples(2, 4)}
    for output_format in ("tfrecord", "webdataset"):
        for shard_id, rows in samples.items():
            write_shard(tmp_path / output_format, shard_id, rows, output_format=output_format)
    result = convert(config(tmp_path / "webdataset", tmp_path / "out"))
    assert result.method == "encode" and result.records == 9

    builder = result.builder_dir
    for index, shard_id in enumerate(samples):
        ours = source_records(builder / layout.shard_filename("laion_test", "train", index, 2))
        theirs = source_records(tmp_path / "tfrecord" / f"{shard_id:05d}.tfrecord")
        assert ours == theirs  # every feature, kind and value as img2dataset's tfrecord writer
    loaded = tfds_records(builder)
    assert [r["key"] for r in loaded] == [
        r["key"][1][0]
        for i in samples
        for r in source_records(tmp_path / "tfrecord" / f"{i:05d}.tfrecord")
    ]


@pytest.mark.parametrize("mode", ["copy", "symlink", "move"])
def test_placement_modes(src, tmp_path, mode):
    expected = expected_records(src, [0, 1, 3])
    result = convert(config(src, tmp_path / "out", mode=mode))
    targets = sorted(result.builder_dir.glob("laion_test-train.tfrecord-*"))
    first_source = src / "00000.tfrecord"
    if mode == "copy":
        assert not targets[0].is_symlink()
        assert not os.path.samefile(targets[0], first_source)
    elif mode == "symlink":
        assert all(t.is_symlink() for t in targets)
        assert Path(os.readlink(targets[0])) == first_source.resolve()
    else:
        assert not first_source.exists() and (src / "00000_stats.json").exists()
        assert (src / "00004.tfrecord").exists()  # the empty shard stays where it was
    assert [r["key"] for r in tfds_records(result.builder_dir)] == [
        r["key"][1][0] for r in expected
    ]


def test_auto_mode_copies_across_filesystems(src, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        out = Path(other) / "out"
        result = convert(config(src, out))
        assert result.method == "copy"
        with pytest.raises(ClipaError, match=r"different filesystems.*--mode copy"):
            convert(config(src, Path(other) / "out2", mode="hardlink"))
        assert not (Path(other) / "out2").exists()


def output_bytes(builder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(builder.iterdir())
        if p.name != layout.CONVERT_SUMMARY
    }


def test_interrupted_run_resumes_to_identical_output(src, tmp_path, monkeypatch):
    reference = convert(config(src, tmp_path / "reference", mode="copy"))

    real_place = convert_module.place_shard
    calls = []

    def killed_after_two(task):
        if len(calls) == 2:
            # What a SIGKILL mid-copy leaves behind: a half-written temporary file.
            temporary = Path(task.target).with_name(f".{Path(task.target).name}.tmp-99999")
            temporary.write_bytes(Path(task.source).read_bytes()[:100])
            raise KeyboardInterrupt
        calls.append(task)
        return real_place(task)

    monkeypatch.setattr(convert_module, "place_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        convert(config(src, tmp_path / "out", mode="copy"))
    staging = layout.staging_dir(tmp_path / "out", "laion_test", "1.0.0")
    assert staging.is_dir() and not (tmp_path / "out" / "laion_test" / "1.0.0").exists()
    monkeypatch.setattr(convert_module, "place_shard", real_place)

    resumed = convert(config(src, tmp_path / "out", mode="copy"))
    assert resumed.status == "resumed" and resumed.reused_shards == 2
    assert not staging.exists()
    assert output_bytes(resumed.builder_dir) == output_bytes(reference.builder_dir)

    again = convert(config(src, tmp_path / "out", mode="copy"))
    assert again.status == "up to date"
    assert output_bytes(again.builder_dir) == output_bytes(reference.builder_dir)


def test_interrupted_move_resumes(src, tmp_path, monkeypatch):
    expected = expected_records(src, [0, 1, 3])
    real_place = convert_module.place_shard
    calls = []

    def killed_after_one(task):
        if calls:
            raise KeyboardInterrupt
        calls.append(task)
        return real_place(task)

    monkeypatch.setattr(convert_module, "place_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        convert(config(src, tmp_path / "out", mode="move"))
    assert not (src / "00000.tfrecord").exists()  # already moved into the staging folder
    monkeypatch.setattr(convert_module, "place_shard", real_place)

    resumed = convert(config(src, tmp_path / "out", mode="move"))
    assert resumed.status == "resumed" and resumed.records == 15
    assert [r["key"] for r in tfds_records(resumed.builder_dir)] == [
        r["key"][1][0] for r in expected
    ]
    assert convert(config(src, tmp_path / "out", mode="move")).status == "up to date"


def test_salvaged_shard_is_copied_not_moved_and_resumes(src, tmp_path, monkeypatch):
    damaged = src / "00000.tfrecord"
    damaged.write_bytes(damaged.read_bytes()[:-7])  # its last record cut short
    damaged_bytes = damaged.read_bytes()
    real_place = convert_module.place_shard

    def killed_after_the_damaged_one(task):
        if Path(task.source).name != "00000.tfrecord":
            raise KeyboardInterrupt
        return real_place(task)

    monkeypatch.setattr(convert_module, "place_shard", killed_after_the_damaged_one)
    options = {"mode": "move", "skip_bad_shards": True}
    with pytest.raises(KeyboardInterrupt):
        convert(config(src, tmp_path / "out", **options))
    monkeypatch.setattr(convert_module, "place_shard", real_place)

    resumed = convert(config(src, tmp_path / "out", **options))
    assert resumed.status == "resumed" and resumed.reused_shards == 1 and resumed.records == 14
    (entry,) = resumed.damaged_shards
    assert (entry.source, entry.records, entry.damage.lost) == ("00000.tfrecord", 4, 1)
    assert damaged.read_bytes() == damaged_bytes  # the damaged source stays in SRC, unchanged
    assert not (src / "00001.tfrecord").exists()  # intact shards were moved
    assert len(tfds_records(resumed.builder_dir)) == 14
    assert convert(config(src, tmp_path / "out", **options)).status == "up to date"


def test_different_conversion_in_out_needs_overwrite(src, tmp_path):
    out = tmp_path / "out"
    convert(config(src, out))
    write_shard(src, 5, make_samples(5, 3))  # img2dataset downloaded more since
    with pytest.raises(
        ClipaError,
        match=r"another conversion \(different shards: SRC's shards changed since it was "
        r"converted\).*--overwrite",
    ):
        convert(config(src, out))
    result = convert(config(src, out, overwrite=True))
    assert result.status == "converted" and result.shards == 4 and result.records == 18


def test_a_conversion_with_other_options_names_them_and_the_tags_at_stake(src, tmp_path):
    """The refusal says which option differs (not just 'different config') and that
    --overwrite would take the builder's tag sidecars with it."""
    out = tmp_path / "out"
    first = convert(config(src, out))
    (first.builder_dir / "sidecars").mkdir()
    with pytest.raises(ClipaError) as refused:
        convert(config(src, out, verify="crc"))
    message = str(refused.value)
    assert "different config: --verify headers → crc" in message, message
    assert "re-run with its options" in message and "its sidecars/ tags included" in message


def test_a_conversion_checked_more_thoroughly_is_up_to_date_for_lighter_checks(src, tmp_path):
    """--verify and --schema-records choose only what a run checks: a conversion checked with
    crc over every record is what a headers run over 5 records would write (it asked for
    --overwrite, which converts everything again); a stronger check than the stored one is
    still another conversion."""
    out = tmp_path / "out"
    first = convert(config(src, out, verify="crc", schema_records=0))
    before = snapshot(first.builder_dir)
    again = convert(config(src, out, verify="headers", schema_records=5))
    assert again.status == "up to date" and snapshot(first.builder_dir) == before
    lighter = convert(config(src, tmp_path / "light", verify="headers", schema_records=5))
    with pytest.raises(ClipaError, match=r"--schema-records 5 → 0"):
        convert(config(src, tmp_path / "light", verify="headers", schema_records=0))
    assert lighter.status == "converted"


def test_skip_bad_shards_leaves_them_out_and_reports_them(src, tmp_path):
    shard = src / "00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:7])  # not one whole record to salvage
    result = convert(config(src, tmp_path / "out", skip_bad_shards=True))
    assert result.shards == 2 and result.records == 11 and result.damaged_shards == ()
    ((source, problem),) = result.bad_shards
    assert source == "00001.tfrecord" and "corrupt TFRecord at byte 0" in problem
    assert "no whole record before it" in problem
    assert "delete it and 00001_stats.json, then re-run clipa-data download" in problem
    manifest = json.loads((result.builder_dir / layout.CONVERT_MANIFEST).read_text())
    assert manifest["skipped_bad"] == [{"source": source, "problem": problem}]
    summary = json.loads((result.builder_dir / layout.CONVERT_SUMMARY).read_text())
    assert summary["bad_shards"] == [{"source": source, "problem": problem}]


def type_changing_source(folder: Path) -> Path:
    """Shard 1's record 3 lacks similarity: img2dataset writes it as b'' (a bytes_list)."""
    write_shard(folder, 0, make_samples(0, 4))
    write_shard(folder, 1, make_samples(1, 6, missing_similarity=(3,)))
    return folder


def test_a_damaged_shard_img2dataset_never_finished_is_fetched_by_finishing_the_download(
    src, tmp_path
):
    """A shard a killed download left half-written has no stats file: the advice told the user
    to delete one that does not exist."""
    shard = src / "00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:7])
    (src / "00001_stats.json").unlink()
    result = convert(config(src, tmp_path / "out", skip_bad_shards=True))
    ((source, problem),) = result.bad_shards
    assert source == "00001.tfrecord" and "00001_stats.json, then" not in problem
    assert "img2dataset never finished it (no 00001_stats.json): re-run the same" in problem


def test_column_changing_type_is_named_and_can_be_dropped(tmp_path):
    src = type_changing_source(tmp_path / "raw")
    key = next(
        r["key"][1][0].decode()
        for r in source_records(src / "00001.tfrecord")
        if r["similarity"][0] == "bytes"
    )
    with pytest.raises(ClipaError) as caught:
        convert(config(src, tmp_path / "out"))
    message = str(caught.value)
    assert "column 'similarity' changes type" in message and "00001.tfrecord record" in message
    assert f"(key {key})" in message and "--drop-column similarity" in message
    assert not (tmp_path / "out").exists()

    result = convert(config(src, tmp_path / "out", drop_columns=("similarity",)))
    assert result.schema.dropped == ("similarity",)
    loaded = tfds_records(result.builder_dir)  # every record parses: the whole split is read
    assert len(loaded) == 10 and "similarity" not in loaded[0]


@pytest.mark.parametrize(("encode_format", "pil_format"), [("png", "PNG"), ("webp", "WEBP")])
def test_png_and_webp_images(tmp_path, encode_format, pil_format):
    samples = make_samples(0, 3, fmt=pil_format)
    write_shard(tmp_path / "raw", 0, samples, encode_format=encode_format)
    result = convert(config(tmp_path / "raw", tmp_path / "out"))
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(result.builder_dir))
    feature = builder.info.features[encode_format]
    (example,) = builder.as_dataset(split="train[:1]").as_numpy_iterator()
    if encode_format == "png":  # decoded by TFDS
        assert feature.encoding_format == "png" and example["png"].shape == (24, 24, 3)
    else:  # TFDS cannot decode webp: the encoded bytes are declared and kept
        source = {
            r["key"][1][0]: r["webp"][1][0]
            for r in source_records(tmp_path / "raw" / "00000.tfrecord")
        }
        assert example["webp"] == source[example["key"]]


def test_dropping_key_and_exif(src, tmp_path):
    result = convert(config(src, tmp_path / "out", drop_columns=("key", "exif")))
    loaded = tfds_records(result.builder_dir)
    assert len(loaded) == 15 and "key" not in loaded[0] and "exif" not in loaded[0]


def test_webdataset_shards_cannot_be_linked(tmp_path):
    write_shard(tmp_path / "raw", 0, make_samples(0, 2), output_format="webdataset")
    with pytest.raises(ClipaError, match="re-encoded to tfrecord, so --mode symlink"):
        convert(config(tmp_path / "raw", tmp_path / "out", mode="symlink"))
    assert not (tmp_path / "out").exists()


def test_an_up_to_date_rerun_keeps_the_converting_runs_summary(src, tmp_path):
    """The summary records the run that converted (its phases and speed); a re-run that found
    everything up to date replaced it with its own near-zero figures."""
    first = convert(config(src, tmp_path / "out", mode="copy"))
    summary = layout.convert_summary_path(first.builder_dir)
    written = summary.read_bytes()
    assert convert(config(src, tmp_path / "out", mode="copy")).status == "up to date"
    assert summary.read_bytes() == written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_an_up_to_date_conversion_in_a_read_only_folder_is_checked_not_refused(src, tmp_path):
    first = convert(config(src, tmp_path / "out", mode="copy"))
    folders = [tmp_path / "out", *(p for p in (tmp_path / "out").rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        assert convert(config(src, tmp_path / "out", mode="copy")).status == "up to date"
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert first.builder_dir.is_dir()
