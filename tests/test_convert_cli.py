"""``clipa-data convert`` on bad input: one clear line, a non-zero exit, nothing left in OUT."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from cli_checks import assert_one_line_error
from clipa_cli.data_app import app
from img2dataset_shards import make_samples, write_shard, write_source
from typer.testing import CliRunner

from clipa_data.core import tfrecord


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("cli") / "raw", {0: 4, 1: 5, 2: 3}, failures=0)


@pytest.fixture
def src(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path / "raw")
    return tmp_path / "raw"


def run(*args: str):
    return CliRunner().invoke(app, ["convert", *map(str, args), "--no-progress", "--workers", "1"])


def test_bracketed_folder_names_are_printed_as_they_are(src, tmp_path):
    """Paths are text, not Rich markup: "[dedup]" is kept and "[/x]" is no markup error."""
    out = tmp_path / "tfds[dedup]" / "q[/x]"
    wide = {"COLUMNS": "400"}  # every path on one line
    args = ["convert", str(src), str(out), "--name", "demo", "--no-progress", "--workers", "1"]
    result = CliRunner().invoke(app, args, env=wide)
    assert result.exit_code == 0, result.output
    builder = out / "demo" / "1.0.0"
    assert f"summary: {builder / 'clipa_convert_summary.json'}" in result.stdout
    assert f"│ {builder} " in result.stdout, result.stdout  # the builder directory row
    info = CliRunner().invoke(app, ["info", str(builder)], env=wide)
    assert info.exit_code == 0, info.output
    assert f" {builder} " in info.stdout, info.stdout


def test_a_mode_that_cannot_apply_is_refused_before_any_shard_is_read(tmp_path):
    """Inspecting reads every shard (hours at LAION scale): a --mode the source format cannot
    take is refused first, here before the damaged shard the inspection would find."""
    src = write_source(tmp_path / "wds", {0: 4, 1: 5}, output_format="webdataset", failures=0)
    tar = src / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:700])
    line = assert_one_line_error(run(src, tmp_path / "out", "--mode", "hardlink"))
    assert "--mode hardlink does not apply" in line and "00001.tar" not in line, line
    assert_nothing_in(tmp_path / "out")


def test_info_on_an_unfinished_conversion_says_to_finish_it(src, tmp_path):
    """A convert stopped before it published leaves only NAME/.VERSION.partial."""
    from clipa_data.core import layout

    out = tmp_path / "out"
    staging = Path(layout.staging_dir(out, "demo", "1.0.0"))
    staging.mkdir(parents=True)
    for command in ("info", "tag"):
        result = CliRunner().invoke(app, [command, str(out)])
        assert_one_line_error(result, str(staging), "re-run the same clipa-data convert")


def assert_nothing_in(out: Path) -> None:
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_converts_and_prints_a_summary(src, tmp_path):
    result = run(src, tmp_path / "out", "--name", "demo")
    assert result.exit_code == 0, result.output
    assert "clipa-data convert: converted" in result.stdout
    assert "12" in result.stdout and "clipa-data info" in result.stdout


def test_missing_src(tmp_path):
    result = run(tmp_path / "nope", tmp_path / "out")
    assert_one_line_error(result, str(tmp_path / "nope"), "does not exist", "clipa-data download")
    assert_nothing_in(tmp_path / "out")


def test_empty_src(tmp_path):
    (tmp_path / "raw").mkdir()
    result = run(tmp_path / "raw", tmp_path / "out")
    assert_one_line_error(result, str(tmp_path / "raw"), "is empty", "download")
    assert_nothing_in(tmp_path / "out")


def test_src_without_shards(src, tmp_path):
    moved = run(src, tmp_path / "first", "--mode", "move")
    assert moved.exit_code == 0, moved.output
    # The shards went into the first builder directory; their stats files stayed behind.
    again = run(src, tmp_path / "out")
    assert_one_line_error(again, str(src), "3 shards' *_stats.json", "--mode move took them")
    assert_nothing_in(tmp_path / "out")
    # Into the same OUT again, without --mode move: it said the shards were missing, to
    # download them again or delete their stats files.
    same = run(src, tmp_path / "first")
    assert_one_line_error(same, f"{src}: 3 of its shards were moved into", "again with --mode move")
    up_to_date = run(src, tmp_path / "first", "--mode", "move")
    assert up_to_date.exit_code == 0 and "up to date" in up_to_date.stdout, up_to_date.output
    assert "summary (of the run that converted): " in up_to_date.stdout  # not this run's
    for stats in src.glob("*_stats.json"):
        stats.unlink()
    result = run(src, tmp_path / "out")
    assert_one_line_error(result, str(src), "holds no img2dataset shards", "00000.tfrecord")
    assert "swap" not in result.output
    assert_nothing_in(tmp_path / "out")
    swapped = run(tmp_path / "first", tmp_path / "raw-again")  # the builder given as SRC
    assert_one_line_error(swapped, "holds a converted builder directory: did you swap SRC and OUT")


def test_out_inside_src(src):
    before = sorted(p.name for p in src.iterdir())
    result = run(src, src / "tfds")
    assert_one_line_error(result, "inside SRC", "elsewhere")
    assert sorted(p.name for p in src.iterdir()) == before


def test_hyphenated_name(src, tmp_path):
    result = run(src, tmp_path / "out", "--name", "laion-400m")
    assert_one_line_error(result, "'laion-400m'", "--name laion_400m")
    assert_nothing_in(tmp_path / "out")


def test_bad_data_crc(src, tmp_path):
    shard = src / "00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF  # inside the first record's payload
    shard.write_bytes(bytes(data))
    # The header walk alone cannot see it; --verify crc checks every data CRC.
    line = assert_one_line_error(
        run(src, tmp_path / "out", "--verify", "crc"),
        str(shard),
        "at byte 0",
        "data checksum mismatch",
        "--skip-bad-shards",
    )
    assert "corrupt TFRecord" in line
    assert_nothing_in(tmp_path / "out")


def test_bad_crc_found_by_the_header_walk_too(src, tmp_path):
    shard = src / "00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[3] ^= 0x01  # the first record's length field: its CRC no longer matches
    shard.write_bytes(bytes(data))
    assert_one_line_error(
        run(src, tmp_path / "out"), str(shard), "at byte 0", "length checksum mismatch"
    )
    assert_nothing_in(tmp_path / "out")


def test_truncated_shard(src, tmp_path):
    shard = src / "00001.tfrecord"
    data = shard.read_bytes()
    last = len(data) - (16 + len(list(tfrecord.read_records(shard))[-1]))  # last record's start
    shard.write_bytes(data[:-10])
    assert_one_line_error(
        run(src, tmp_path / "out"), str(shard), f"at byte {last}", "runs past the end"
    )
    assert_nothing_in(tmp_path / "out")


def test_column_changing_type(tmp_path):
    src = tmp_path / "raw"
    write_shard(src, 0, make_samples(0, 5))
    write_shard(src, 1, make_samples(1, 5, missing_similarity=(2,)))
    assert_one_line_error(
        run(src, tmp_path / "out"),
        "column 'similarity' changes type",
        "00001.tfrecord record",
        "empty bytes",
        "--drop-column similarity",
    )
    assert_nothing_in(tmp_path / "out")
    assert run(src, tmp_path / "out", "--drop-column", "similarity").exit_code == 0


def test_stats_disagree_with_the_shard(src, tmp_path):
    stats = src / "00002_stats.json"
    stats.write_text(stats.read_text().replace('"successes": 3', '"successes": 4'))
    assert_one_line_error(
        run(src, tmp_path / "out"),
        str(src / "00002.tfrecord"),
        "holds 3 records but 00002_stats.json reports 4",
    )
    assert_nothing_in(tmp_path / "out")


def test_unfinished_shard_without_stats(src, tmp_path):
    (src / "00001_stats.json").unlink()
    assert_one_line_error(
        run(src, tmp_path / "out"),
        str(src / "00001.tfrecord"),
        "no 00001_stats.json",
        "--skip-bad-shards",
    )
    assert_nothing_in(tmp_path / "out")


def test_a_shard_gone_but_counted_by_its_stats_is_named_not_dropped(src, tmp_path):
    (src / "00001.tfrecord").unlink()  # e.g. a half-finished copy of the download folder
    assert_one_line_error(
        run(src, tmp_path / "out"),
        str(src / "00001.tfrecord"),
        "is missing, but 00001_stats.json says img2dataset wrote 5 records",
        "--skip-bad-shards",
    )
    assert_nothing_in(tmp_path / "out")
    result = run(src, tmp_path / "out", "--skip-bad-shards")
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "out" / "laion400m" / "1.0.0" / "clipa_convert_summary.json").read_text()
    assert '"00001.tfrecord"' in summary and '"records": 7' in summary


def test_shards_a_stopped_download_never_started_are_named_not_dropped(src, tmp_path):
    """A download stopped after shards 0-2 leaves no file at all for shards 3 and 4: only its
    summary knows them. Convert names them (and converts without them on request)."""
    from clipa_data.core.atomic import write_json
    from clipa_data.core.layout import download_summary_path
    from clipa_data.prepare.download import DownloadSummary, read_shard_stats

    summary = DownloadSummary(
        output_folder=str(src), output_format="tfrecord", shards=tuple(read_shard_stats(src)),
        resumed_shards=(), unfinished_shards=(3, 4), stopped=True, expected_shards=5,
        wall_seconds=1.0, summary_path=str(download_summary_path(src)),
    )  # fmt: skip
    write_json(download_summary_path(src), {"summary": summary.to_json()})  # as download writes
    line = assert_one_line_error(
        run(src, tmp_path / "out"),
        str(src / "00003.tfrecord"),
        "lists this shard as unfinished",
        "re-run the same clipa-data download",
        "--skip-bad-shards",
    )
    assert line.count("--skip-bad-shards") == 1, line
    assert_nothing_in(tmp_path / "out")
    result = run(src, tmp_path / "out", "--skip-bad-shards")
    assert result.exit_code == 0, result.output
    written = (tmp_path / "out" / "laion400m" / "1.0.0" / "clipa_convert_summary.json").read_text()
    assert '"00003.tfrecord"' in written and '"00004.tfrecord"' in written
    assert '"records": 12' in written


def test_a_download_stopped_in_a_list_of_unknown_size_names_the_next_shard(src, tmp_path):
    """A CSV (not parquet) list has no known shard count: a download stopped after shards 0-2
    lists no unfinished shard, yet 3 and later may be missing. Convert names shard 3, and how
    to finish the download (an extend run cannot simply be re-run)."""
    from clipa_data.core.atomic import write_json
    from clipa_data.core.layout import download_start_path, download_summary_path
    from clipa_data.prepare.download import DownloadSummary, read_shard_stats

    summary = DownloadSummary(
        output_folder=str(src), output_format="tfrecord", shards=tuple(read_shard_stats(src)),
        resumed_shards=(), unfinished_shards=(), stopped=True, expected_shards=None,
        wall_seconds=1.0, summary_path=str(download_summary_path(src)),
    )  # fmt: skip
    write_json(download_summary_path(src), {"summary": summary.to_json()})
    assert_one_line_error(
        run(src, tmp_path / "out"),
        str(src / "00003.tfrecord"),
        "stopped before the end of its URL list",
        "re-run the same clipa-data download",
    )
    # The stopped run extended the download from shard 2: re-running it would add its list again
    start = {"incremental_mode": "extend", "first_shard": 2, "number_sample_per_shard": 4}
    write_json(download_start_path(src), start)
    assert_one_line_error(
        run(src, tmp_path / "out"), "an extend run cannot resume",
        "delete the shards it wrote, 00002 and later",
    )  # fmt: skip
    write_json(download_start_path(src), {**start, "first_shard": 0})  # extended an empty one
    assert_one_line_error(run(src, tmp_path / "out"), "--incremental-mode incremental to resume")
    download_start_path(src).unlink()
    finished = dataclasses.replace(summary, stopped=False)  # ran to its end: nothing missing
    write_json(download_summary_path(src), {"summary": finished.to_json()})
    assert run(src, tmp_path / "out").exit_code == 0


def test_a_stats_file_of_an_empty_shard_without_its_shard_is_fine(src, tmp_path):
    (src / "00001.tfrecord").unlink()
    stats = src / "00001_stats.json"
    stats.write_text(stats.read_text().replace('"successes": 5', '"successes": 0'))
    assert run(src, tmp_path / "out").exit_code == 0


def test_a_truncated_shard_of_a_finished_conversion_is_not_up_to_date(src, tmp_path):
    assert run(src, tmp_path / "out", "--mode", "copy").exit_code == 0  # not a link to SRC
    shard = tmp_path / "out" / "laion400m" / "1.0.0" / "laion400m-train.tfrecord-00001-of-00003"
    size = shard.stat().st_size
    with open(shard, "r+b") as handle:
        handle.truncate(size - 10)  # its first records still decode
    assert_one_line_error(
        run(src, tmp_path / "out", "--mode", "copy"),
        f"shard {shard.name} is {size - 10} bytes",
        f"says {size};",
    )


def test_an_out_below_a_file_is_refused_before_any_work(src, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(
        run(src, tmp_path / "afile" / "out"), f"{tmp_path / 'afile'} is a file, not a folder"
    )


def test_out_holds_a_different_conversion(src, tmp_path):
    assert run(src, tmp_path / "out").exit_code == 0
    builder = tmp_path / "out" / "laion400m" / "1.0.0"
    before = {p.name: p.stat().st_mtime_ns for p in builder.iterdir()}
    result = run(src, tmp_path / "out", "--drop-column", "exif")
    assert_one_line_error(result, str(builder), "another conversion", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in builder.iterdir()} == before


def test_out_holds_something_else(src, tmp_path):
    foreign = tmp_path / "out" / "laion400m" / "1.0.0"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    result = run(src, tmp_path / "out", "--overwrite")
    assert_one_line_error(result, str(foreign), "not written by clipa-data convert")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_console_scripts_end_to_end(src, tmp_path):
    """The installed scripts as a user runs them: a worker pool, progress bar, then info."""
    import json
    import subprocess
    import sys

    bindir = Path(sys.executable).parent
    converted = subprocess.run(
        [
            bindir / "clipa-data",
            "convert",
            src,
            tmp_path / "out",
            "--name",
            "demo",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert converted.returncode == 0, converted.stderr
    assert "inspecting" in converted.stderr  # the progress bar
    assert "clipa-data convert: converted" in converted.stdout
    report = subprocess.run(
        [bindir / "clipa-data", "info", tmp_path / "out", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(report.stdout)
    assert data["splits"]["train"]["examples"] == 12 and data["overview"]["shards"] == 3
