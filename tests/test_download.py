"""``clipa-data download``: the real img2dataset against the real demo server, no mocks.

img2dataset's spawned workers take seconds to start, so one tfrecord download (3 shards) is
shared by the read-back tests, and each other run (resume, webdataset via the CLI, a failing
shard) is as small as it can be.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from clipa_cli.data_app import app
from clipa_cli.download_command import parse_passthrough, parse_value
from PIL import Image
from typer.testing import CliRunner

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.core.example import decode_example
from clipa_data.core.tfrecord import read_records
from clipa_data.demo import serve_demo_images, write_demo_metadata
from clipa_data.prepare.download import (
    DownloadConfig,
    UnfinishedShardsError,
    download,
    read_shard_stats,
)

ROWS = 40
PER_SHARD = 15  # 3 shards: 15 + 15 + 10
IMAGE_SIZE = 32
EXPECTED_ERRORS = {
    "HTTP Error 404: Not Found": 2,
    "<urlopen error [Errno 111] Connection refused>": 1,
    "Image decoding error": 1,
    "Use of image disallowed by X-Robots-Tag directive": 1,
}


@pytest.fixture(scope="module")
def base_url():
    with serve_demo_images() as url:
        yield url


@pytest.fixture(scope="module")
def metadata(base_url, tmp_path_factory):
    return write_demo_metadata(
        tmp_path_factory.mktemp("meta") / "demo.parquet", base_url, count=ROWS, seed=3
    )


def small_config(metadata, output: Path, **overrides) -> DownloadConfig:
    settings = dict(
        url_list=str(metadata.path),
        output_folder=str(output),
        image_size=IMAGE_SIZE,
        processes_count=1,
        thread_count=8,
        number_sample_per_shard=PER_SHARD,
    )
    settings.update(overrides)
    return DownloadConfig(**settings)


@pytest.fixture(scope="module")
def tfrecord_run(metadata, tmp_path_factory):
    config = small_config(metadata, tmp_path_factory.mktemp("tf") / "raw")
    return config, download(config)


def metadata_by_url(metadata) -> dict[str, dict]:
    return {row["URL"]: row for row in pq.read_table(metadata.path).to_pylist()}


# --- one real tfrecord download ----------------------------------------------------------------


def test_summary_counts_every_failure_kind_and_the_run_succeeds(tfrecord_run, metadata):
    _, summary = tfrecord_run
    assert [s.shard for s in summary.shards] == [0, 1, 2]
    assert summary.count == ROWS
    assert summary.successes == metadata.expected_successes == ROWS - 5
    assert summary.failed_to_download == 4  # two 404s, a dead port, the opt-out header
    assert summary.failed_to_resize == 1  # the HTML page served as .jpg
    assert dict(summary.error_kinds()) == EXPECTED_ERRORS
    assert summary.unfinished_shards == () and summary.resumed_shards == ()
    assert summary.samples_per_second is not None and summary.samples_per_second > 0


def test_summary_json_sits_where_img2dataset_resume_never_looks(tfrecord_run):
    config, summary = tfrecord_run
    output = Path(config.output_folder)
    path = layout.download_summary_path(output)
    assert Path(summary.summary_path) == path and path.parent.name == "_clipa"
    written = json.loads(path.read_text())
    assert written["summary"]["successes"] == summary.successes
    assert written["summary"]["error_kinds"] == EXPECTED_ERRORS
    assert written["config"]["number_sample_per_shard"] == PER_SHARD
    assert written["img2dataset_arguments"]["url_col"] == "URL"
    assert written["versions"]["img2dataset"]
    assert layout.resume_breaking_json(output) == []
    assert sorted(p.name for p in output.glob("*.json")) == [
        "00000_stats.json",
        "00001_stats.json",
        "00002_stats.json",
    ]


def test_records_read_back_without_tensorflow_have_captions_and_saved_columns(
    tfrecord_run, metadata
):
    config, summary = tfrecord_run
    rows = metadata_by_url(metadata)
    broken_urls = {pq.read_table(metadata.path)["URL"][i].as_py() for i, _ in metadata.broken}
    seen = set()
    for shard in sorted(Path(config.output_folder).glob("*.tfrecord")):
        for raw in read_records(shard, check_data_crc=True):
            record = decode_example(raw)
            url = record["url"][1][0].decode()
            row = rows[url]
            assert record["txt"][1][0].decode() == row["TEXT"]
            assert record["NSFW"] == ("bytes", [row["NSFW"].encode()])
            assert record["LICENSE"] == ("bytes", [row["LICENSE"].encode()])
            assert record["similarity"][0] == "float"
            assert record["similarity"][1][0] == pytest.approx(row["similarity"], rel=1e-6)
            assert record["original_width"][1] == [row["WIDTH"]]
            image = Image.open(io.BytesIO(record["jpg"][1][0]))
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
            seen.add(url)
    assert len(seen) == summary.successes
    assert seen == set(rows) - broken_urls


# --- resume ------------------------------------------------------------------------------------


def test_resume_redoes_only_the_shard_without_stats(tfrecord_run, tmp_path):
    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    # A run killed during shard 1 leaves its files but no 00001_stats.json.
    (output / "00001_stats.json").unlink()
    (output / "00001.tfrecord").write_bytes(b"partial")
    kept = {
        name: (output / name).stat().st_mtime_ns
        for name in ("00000.tfrecord", "00000_stats.json", "00002.tfrecord", "00002_stats.json")
    }

    summary = download(dataclasses.replace(config, output_folder=str(output)))

    assert summary.resumed_shards == (0, 2)
    assert summary.samples_this_run == PER_SHARD
    assert {name: (output / name).stat().st_mtime_ns for name in kept} == kept
    redone = list(read_records(output / "00001.tfrecord"))
    assert len(redone) == read_shard_stats(output)[1].successes > 0
    assert summary.count == ROWS and dict(summary.error_kinds()) == EXPECTED_ERRORS


def test_rerun_of_a_finished_download_touches_nothing(tfrecord_run, tmp_path):
    config, first = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir() if p.is_file()}

    summary = download(dataclasses.replace(config, output_folder=str(output)))

    assert summary.resumed_shards == (0, 1, 2)
    assert summary.samples_this_run == 0 and summary.samples_per_second is None
    assert summary.successes == first.successes
    assert {p.name: p.stat().st_mtime_ns for p in output.iterdir() if p.is_file()} == before


def test_rerun_of_a_finished_download_of_a_csv_list_starts_nothing(tfrecord_run, tmp_path):
    """A CSV list's shard count is unknown before img2dataset reads it; the last run's summary
    (not stopped, nothing unfinished) says it went through the list: img2dataset, seconds of
    start-up, is not started again."""
    from clipa_data.core import layout
    from clipa_data.prepare.download import _record_sharding

    config, first = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    urls = tmp_path / "urls.csv"
    pq.read_table(config.url_list).to_pandas().to_csv(urls, index=False)
    as_csv = dataclasses.replace(
        config, output_folder=str(output), url_list=str(urls), input_format="csv"
    )
    summary = layout.download_summary_path(output)
    written = summary.read_bytes()
    _record_sharding(as_csv)  # as if the download had been made from the CSV list
    summary.write_bytes(written)
    log = layout.download_log_path(output)
    before = log.read_bytes()

    rerun = download(as_csv)

    assert log.read_bytes() == before, "img2dataset was started again"
    assert rerun.resumed_shards == (0, 1, 2) and rerun.samples_this_run == 0
    assert rerun.successes == first.successes


def test_resume_with_another_shard_size_is_refused(tfrecord_run, tmp_path):
    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    changed = dataclasses.replace(config, output_folder=str(output), number_sample_per_shard=20)
    with pytest.raises(ClipaError, match="number_sample_per_shard=15"):
        download(changed)


def test_resume_with_other_image_settings_is_refused(tfrecord_run, tmp_path):
    """Shards of two image sizes in one folder would convert into one dataset without a word."""
    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    before = sorted(p.name for p in output.iterdir())
    changed = dataclasses.replace(
        config,
        output_folder=str(output),
        image_size=config.image_size * 2,
        resize_mode="center_crop",
    )
    with pytest.raises(ClipaError) as refused:
        download(changed)
    message = str(refused.value)
    assert f"--image-size {config.image_size}, --resize-mode border" in message
    assert f"--image-size {config.image_size * 2}" in message and "another OUTPUT_FOLDER" in message
    assert sorted(p.name for p in output.iterdir()) == before


def test_resume_with_other_i2d_shard_settings_is_refused(tfrecord_run, tmp_path):
    """``--i2d`` arguments that change what a shard holds are settings like --image-size; those
    that only change how the download runs (a W&B project, say) may differ on a resume."""
    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    before = sorted(p.name for p in output.iterdir())
    changed = dataclasses.replace(config, output_folder=str(output), extra={"encode_quality": 50})
    with pytest.raises(ClipaError) as refused:
        download(changed)
    message = str(refused.value)
    assert "was downloaded with no --i2d" in message and "gives --i2d encode_quality=50" in message
    assert sorted(p.name for p in output.iterdir()) == before
    runs_only = dataclasses.replace(config, output_folder=str(output), extra={"subjob_size": 7})
    download(runs_only)  # finished shards are skipped: nothing to refuse


def test_resume_after_a_file_joins_the_url_list_folder_is_refused(tfrecord_run, tmp_path):
    """img2dataset numbers shards across a folder's files in name order: a file added before
    the others would make the resume skip its rows and download the first file's again."""
    from clipa_data.core import layout
    from clipa_data.prepare.download import _record_sharding

    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    folder = tmp_path / "urls"
    folder.mkdir()
    shutil.copy(config.url_list, folder / "part-00001.parquet")
    from_folder = dataclasses.replace(config, output_folder=str(output), url_list=str(folder))
    summary = layout.download_summary_path(output)
    finished_run = summary.read_bytes()
    _record_sharding(from_folder)  # what the download from the folder recorded as it started
    summary.write_bytes(finished_run)  # ... and its summary when it ended
    shutil.copy(config.url_list, folder / "part-00000.parquet")
    with pytest.raises(ClipaError) as refused:
        download(from_folder)
    message = str(refused.value)
    assert "downloaded with URL_LIST files part-00000.parquet (absent);" in message
    assert "gives URL_LIST files part-00000.parquet (present))" in message
    assert "part-00001" not in message  # unchanged files are not listed
    # A file that sorts after the others only adds shards after theirs: a resume downloads it
    from clipa_data.prepare.download import _check_same_settings, _finished_before

    (folder / "part-00000.parquet").unlink()
    shutil.copy(config.url_list, folder / "part-00002.parquet")
    _check_same_settings(from_folder)
    assert not _finished_before(from_folder, {0, 1, 2})  # and it is not skipped as finished
    # A file written again with other URLs for the same images (the demo's new port) is the
    # same list: contents are not compared
    table = pq.read_table(folder / "part-00001.parquet").to_pandas()
    table["URL"] = table["URL"] + "?again"
    table.to_parquet(folder / "part-00001.parquet")
    _check_same_settings(from_folder)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_resume_after_rows_were_appended_to_the_url_list_is_refused(tfrecord_run, tmp_path, fmt):
    """img2dataset resumes by shard number: rows appended after a finished partial last shard
    were never downloaded (a finished CSV list said "nothing new"); the file is named."""
    from clipa_data.core import layout
    from clipa_data.prepare.download import _record_sharding

    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    table = pq.read_table(config.url_list).to_pandas()
    urls = tmp_path / f"urls.{fmt}"
    write = {"csv": lambda t: t.to_csv(urls, index=False), "parquet": lambda t: t.to_parquet(urls)}
    write[fmt](table)
    run = dataclasses.replace(config, output_folder=str(output), url_list=str(urls),
                              input_format=fmt)  # fmt: skip
    summary = layout.download_summary_path(output)
    finished_run = summary.read_bytes()
    _record_sharding(run)  # as if the download had been made from this list
    summary.write_bytes(finished_run)
    write[fmt](pd.concat([table, table.head(4)]))
    with pytest.raises(ClipaError) as refused:
        download(run)
    rows, unit = (len(table) + 1, "lines") if fmt == "csv" else (len(table), "rows")  # + header
    message = str(refused.value)
    assert f"downloaded from urls.{fmt} when it had {rows} {unit}; it has {rows + 4} now" in (
        message
    )
    assert "a file of their own" in message and "--incremental-mode extend" in message
    write[fmt](table)  # the list as it was: the resume has nothing to do
    assert download(run).samples_this_run == 0


def test_extend_with_the_url_list_already_read_is_refused(tfrecord_run, tmp_path):
    """``extend`` numbers new shards after the last one: with the list the folder was
    downloaded from it downloads every row twice; after an extend run, an incremental resume
    numbers from 0 and skips the earlier list's shards. Both are refused with what to do."""
    from clipa_data.prepare.download import _check_extend_runs, _record_sharding, resume_advice

    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    before = sorted(p.name for p in output.iterdir())
    extend = dataclasses.replace(config, output_folder=str(output), incremental_mode="extend")
    with pytest.raises(ClipaError, match="re-run with --incremental-mode incremental"):
        download(extend)
    assert sorted(p.name for p in output.iterdir()) == before
    other = tmp_path / "other.parquet"
    shutil.copy(config.url_list, other)
    _check_extend_runs(dataclasses.replace(extend, url_list=str(other)))  # a new list: fine
    _record_sharding(extend)  # as an extend run records it when it starts (shards 0-2 there)
    assert "delete the shards it wrote, 00003 and later" in resume_advice(extend)
    with pytest.raises(ClipaError, match=r"delete the shards it wrote \(00003 and later"):
        download(extend)
    resume = dataclasses.replace(extend, incremental_mode="incremental")
    with pytest.raises(ClipaError, match="would number from shard 0"):
        download(resume)
    assert "--incremental-mode incremental" in resume_advice(
        dataclasses.replace(extend, incremental_mode="overwrite")
    )
    # An extend into an empty folder numbered its shards from 0, as an incremental run does:
    # the incremental re-run resumes it.
    fresh = dataclasses.replace(extend, output_folder=str(tmp_path / "fresh"))
    _record_sharding(fresh)
    shutil.copy(output / "00000_stats.json", tmp_path / "fresh")  # one shard finished
    _check_extend_runs(dataclasses.replace(fresh, incremental_mode="incremental"))
    assert "re-run it with --incremental-mode incremental" in resume_advice(fresh)


def test_extend_of_a_folder_with_unfinished_shards_is_refused(tfrecord_run, tmp_path):
    """``extend`` numbers its shards after the last finished one: a shard the earlier download
    left unfinished (stopped, killed, failed) could never be downloaded after it."""
    from clipa_data.prepare.download import _check_nothing_left_to_finish

    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    other = tmp_path / "other.parquet"
    shutil.copy(config.url_list, other)
    extend = dataclasses.replace(
        config, url_list=str(other), output_folder=str(output), incremental_mode="extend"
    )
    _check_nothing_left_to_finish(extend)  # the download finished: extend away

    for leftover in output.glob("00001*"):
        leftover.unlink()  # as a stopped run leaves the shard in flight
    before = sorted(p.name for p in output.iterdir())
    with pytest.raises(ClipaError) as refused:
        download(extend)
    assert "shards 00001 of an earlier download never finished" in str(refused.value)
    assert "after the last finished one (00002)" in str(refused.value)
    assert "To finish that download: re-run its command to resume" in str(refused.value)
    assert sorted(p.name for p in output.iterdir()) == before

    shutil.copytree(config.output_folder, output, dirs_exist_ok=True)
    layout.download_summary_path(output).unlink()  # killed before it wrote its summary
    with pytest.raises(ClipaError, match=r"it wrote no summary: it was killed, failed, or is"):
        download(extend)

    # Stopped before the end of a list of unknown size (CSV): no shard is listed as unfinished.
    summary_path = layout.download_summary_path(config.output_folder)
    written = json.loads(summary_path.read_text())
    written["summary"].update(stopped=True, expected_shards=None, unfinished_shards=[])
    layout.download_summary_path(output).write_text(json.dumps(written))
    with pytest.raises(ClipaError, match="stopped before the end of its URL list"):
        download(extend)


def test_resume_with_another_shard_size_is_refused_after_a_hard_stop(tfrecord_run, tmp_path):
    """A run stopped hard (second Ctrl-C, kill) leaves finished shards but no summary; the shard
    size recorded before img2dataset started still refuses another one."""
    from clipa_data.core import layout

    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    layout.download_summary_path(output).unlink()
    changed = dataclasses.replace(config, output_folder=str(output), number_sample_per_shard=20)
    with pytest.raises(ClipaError, match="number_sample_per_shard=15"):
        download(changed)


# --- a shard that cannot be written -------------------------------------------------------------


def test_a_shard_that_fails_is_reported_and_the_rest_is_kept(metadata, tmp_path):
    output = tmp_path / "raw"
    output.mkdir()
    (output / "00001.tar").mkdir()  # img2dataset cannot open its shard file for writing
    config = small_config(metadata, output, output_format="webdataset", retries=0)

    with pytest.raises(UnfinishedShardsError, match=r"1 shard\(s\) did not finish .*\(1\)"):
        download(config)

    written = json.loads(layout.download_summary_path(output).read_text())["summary"]
    assert written["unfinished_shards"] == [1]
    assert [s["shard"] for s in written["per_shard"]] == [0, 2]


# --- the CLI ------------------------------------------------------------------------------------


def cli(*args: str):
    return CliRunner().invoke(app, ["download", *args])


def test_cli_end_to_end_webdataset_with_passthrough(metadata, tmp_path):
    output = tmp_path / "wds"
    command = [
        str(Path(sys.executable).parent / "clipa-data"),
        "download",
        str(metadata.path),
        str(output),
        "--output-format",
        "webdataset",
        "--image-size",
        str(IMAGE_SIZE),
        "--processes",
        "1",
        "--threads",
        "8",
        "--samples-per-shard",
        str(ROWS),
        "--i2d",
        "disallowed_header_directives=[]",
        "--i2d",
        "encode_quality=80",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "download summary" in done.stdout and "successes" in done.stdout

    # With the opt-out check switched off through the passthrough, that image is downloaded.
    summary = json.loads(layout.download_summary_path(output).read_text())
    assert summary["img2dataset_arguments"]["encode_quality"] == 80
    assert summary["summary"]["successes"] == ROWS - 4
    assert (
        "Use of image disallowed by X-Robots-Tag directive" not in summary["summary"]["error_kinds"]
    )
    rows = metadata_by_url(metadata)
    with tarfile.open(output / "00000.tar") as tar:
        names = tar.getnames()
        keys = {name.split(".")[0] for name in names}
        assert len(keys) == ROWS - 4
        for key in keys:
            meta = json.load(tar.extractfile(f"{key}.json"))
            caption = tar.extractfile(f"{key}.txt").read().decode()
            assert caption == rows[meta["url"]]["TEXT"]
            assert meta["NSFW"] == rows[meta["url"]]["NSFW"]
            assert meta["LICENSE"] == rows[meta["url"]]["LICENSE"]


def test_cli_help_documents_every_option():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "clipa-data"), "download", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    for option in (
        "--input-format",
        "--url-col",
        "--caption-col",
        "--save-additional-columns",
        "--image-size",
        "--resize-mode",
        "--output-format",
        "--processes-count",
        "--thread-count",
        "--number-sample-per-shard",
        "--retries",
        "--timeout",
        "--incremental-mode",
        "--distributor",
        "--i2d",
    ):
        assert option in done.stdout, option
    assert "LAION-400M" in done.stdout and "KEY=VALUE" in done.stdout


def test_cli_missing_url_list(tmp_path):
    result = cli(str(tmp_path / "nope.parquet"), str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "nope.parquet does not exist" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_url_list_folder_without_files_of_the_format(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "urls.csv").write_text("URL,TEXT\n")
    result = cli(str(tmp_path / "meta"), str(tmp_path / "out"))
    assert result.exit_code == 2 and "has no *.parquet files" in result.output


def test_cli_url_list_that_is_not_parquet(tmp_path):
    (tmp_path / "urls.parquet").write_text("URL,TEXT\nhttp://x/1.jpg,one\n")
    result = cli(str(tmp_path / "urls.parquet"), str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "not a readable parquet file" in result.output and "--input-format" in result.output


def test_cli_missing_column_names_the_option(metadata, tmp_path):
    result = cli(str(metadata.path), str(tmp_path / "out"), "--caption-col", "caption")
    assert result.exit_code == 2
    assert "no column 'caption'" in result.output and "--caption-col" in result.output


def test_cli_output_folder_that_is_a_file(metadata, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    result = cli(str(metadata.path), str(tmp_path / "out"))
    assert result.exit_code == 2 and "is a file" in result.output


def test_cli_refuses_json_that_would_crash_img2dataset_resume(metadata, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "dataset_info.json").write_text("{}")
    result = cli(str(metadata.path), str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "dataset_info.json would crash img2dataset's resume" in result.output


def test_cli_unknown_passthrough_argument_names_it(metadata, tmp_path):
    result = cli(str(metadata.path), str(tmp_path / "out"), "--i2d", "encode_qualty=90")
    assert result.exit_code == 2
    assert "unknown img2dataset argument 'encode_qualty'" in result.output
    assert "did you mean 'encode_quality'" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("encode_quality", "--i2d expects KEY=VALUE"),
        ("thread_count=8", "has its own setting (DownloadConfig.thread_count, CLI --thread-count)"),
        ("output_folder=/tmp/x", "CLI the OUTPUT_FOLDER argument"),
    ],
)
def test_cli_bad_passthrough(metadata, tmp_path, pair, message):
    result = cli(str(metadata.path), str(tmp_path / "out"), "--i2d", pair)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--output-format", "files", "--output-format must be one of tfrecord, webdataset"),
        ("--resize-mode", "stretch", "--resize-mode must be one of"),
        ("--save-additional-columns", "NSFW,status", "may not use status"),
        ("--save-additional-columns", "NSFW,txt", "may not use txt: img2dataset writes"),
        ("--save-additional-columns", "jpg", "would replace them in every record"),
        ("--save-additional-columns", "NSFW,NSFW", "names NSFW more than once"),
        ("--save-additional-columns", "TEXT", "may not name TEXT: img2dataset stores it as 'c"),
        ("--save-additional-columns", "NSFW,URL", "may not name URL: img2dataset stores it as 'u"),
        ("--distributor", "ray", "--distributor must be one of multiprocessing, pyspark"),
        ("--processes", "0", "--processes-count must be at least 1"),
        ("--image-size", "0", "--image-size must be at least 1"),
        ("--input-format", "xml", "--input-format must be one of parquet"),
        ("--incremental-mode", "append", "--incremental-mode must be one of"),
        ("--timeout", "0", "--timeout must be a positive number of seconds"),
        ("--retries", "-1", "--retries must be ≥ 0"),
    ],
)
def test_cli_bad_settings(metadata, tmp_path, option, value, message):
    result = cli(str(metadata.path), str(tmp_path / "out"), option, value)
    assert result.exit_code == 2 and message in result.output


def test_overwrite_refuses_a_folder_that_is_not_a_download(metadata, tmp_path):
    """--incremental-mode overwrite deletes the folder: a typo'd path holding other files
    (a home folder, a project) is refused before anything is touched."""
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "thesis" / "draft.tex").write_text("years of work")
    result = cli(str(metadata.path), str(home), "--incremental-mode", "overwrite")
    assert result.exit_code == 2, result.output
    assert f"--incremental-mode overwrite would delete {home}" in result.output
    assert (home / "thesis" / "draft.tex").read_text() == "years of work"


def test_overwrite_refuses_a_folder_that_holds_the_url_list(tfrecord_run, tmp_path):
    """The list kept beside its shards (out/meta.parquet) was deleted with them, and the run
    then failed for want of it."""
    config, _ = tfrecord_run
    output = tmp_path / "raw"
    shutil.copytree(config.output_folder, output)
    url_list = output / "meta.parquet"
    shutil.copy(config.url_list, url_list)
    before = sorted(path.name for path in output.iterdir())
    result = cli(str(url_list), str(output), "--incremental-mode", "overwrite")
    assert result.exit_code == 2, result.output
    assert "would delete the URL list" in result.output and "move it out" in result.output
    assert sorted(path.name for path in output.iterdir()) == before
    url_list.unlink()  # a link in the folder to a list outside it is deleted the same way
    url_list.symlink_to(config.url_list)
    linked = cli(str(url_list), str(output), "--incremental-mode", "overwrite")
    assert linked.exit_code == 2 and "would delete the URL list" in linked.output, linked.output
    assert url_list.is_symlink()


def test_a_url_list_without_rows_is_refused_before_img2dataset_starts(tmp_path):
    """It ran img2dataset for nothing, exit 0, and named convert as the next step."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header_only = tmp_path / "empty.csv"
    header_only.write_text("url,caption\n")
    columns = ["--url-col", "url", "--caption-col", "caption", "--save-additional-columns", ""]
    result = cli(str(header_only), str(tmp_path / "out"), "--input-format", "csv", *columns)
    assert result.exit_code == 2, result.output
    assert "empty.csv has no rows (it holds only a header)" in result.output
    no_rows = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"URL": pa.array([], pa.string()), "TEXT": pa.array([], pa.string())}), no_rows
    )
    result = cli(str(no_rows), str(tmp_path / "out"), "--save-additional-columns", "")
    assert result.exit_code == 2 and "empty.parquet has no rows (it holds nothing)" in result.output
    assert not (tmp_path / "out").exists()


def test_a_url_list_folder_of_mixed_formats_names_the_files_left_out(tmp_path, capsys):
    """Two of three lists were skipped, exit 0, and nothing said so."""
    from clipa_data.prepare.download import DownloadConfig, check_inputs

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.csv", "b.tsv", "c.csv.gz", "README.md"):
        (folder / name).write_text("url,caption\nhttp://127.0.0.1:9/x.jpg,x\n")
    config = DownloadConfig(
        url_list=str(folder), output_folder=str(tmp_path / "out"), input_format="csv",
        url_col="url", caption_col="caption", save_additional_columns=(),
    )  # fmt: skip
    check_inputs(config)
    note = capsys.readouterr().err
    assert f"note: {folder} also holds b.tsv, c.csv.gz, which --input-format csv leaves" in note


def test_a_url_list_folder_that_is_the_output_folder_is_refused(metadata, tmp_path):
    """It downloaded once; the re-run then read img2dataset's own shard .parquet files as URL
    lists and told the user to pass --url-col url."""
    folder = tmp_path / "same"
    folder.mkdir()
    shutil.copy(metadata.path, folder / "part-a.parquet")
    result = cli(str(folder), str(folder))
    assert result.exit_code == 2, result.output
    assert "is the output folder" in result.output and "another output folder" in result.output
    assert sorted(path.name for path in folder.iterdir()) == ["part-a.parquet"]


def test_cli_remote_output_folder_is_refused_not_mangled(metadata, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a mangled gs:/bucket/laion would be written
    result = cli(str(metadata.path), "gs://bucket/laion")
    assert result.exit_code == 2
    assert "output folder gs://bucket/laion is remote" in result.output
    # Typer's Path argument leaves gs:/bucket/laion: downloaded into ./gs:/bucket/laion before.
    result = cli(str(metadata.path), "gs:/bucket/laion")
    assert result.exit_code == 2 and "output folder gs://bucket/laion is remote" in result.output
    assert not (tmp_path / "gs:").exists()


@pytest.mark.skipif(importlib.util.find_spec("pyspark") is not None, reason="pyspark installed")
def test_cli_pyspark_without_pyspark(metadata, tmp_path):
    result = cli(str(metadata.path), str(tmp_path / "out"), "--distributor", "pyspark")
    assert result.exit_code == 2 and "pip install pyspark" in result.output


def test_empty_paths_are_refused():
    with pytest.raises(ClipaError, match="URL list is empty"):
        DownloadConfig("", "out")
    with pytest.raises(ClipaError, match="output folder is empty"):
        DownloadConfig("urls.parquet", "")


def test_a_broken_stats_file_is_named(tmp_path):
    (tmp_path / "00000_stats.json").write_text('{"count": 3}')
    with pytest.raises(ClipaError, match=r"00000_stats.json: not an img2dataset stats file"):
        read_shard_stats(tmp_path)


def test_passthrough_values_are_json_or_python_literals():
    assert parse_passthrough(["encode_quality=90", "disallowed_header_directives=[]"]) == {
        "encode_quality": 90,
        "disallowed_header_directives": [],
    }
    assert parse_value("['md5', 'sha256']") == ["md5", "sha256"]
    assert parse_value("None") is None and parse_value("true") is True
    assert parse_value("inf") == float("inf")
    assert parse_value("mybot") == "mybot"
    with pytest.raises(ClipaError, match="given twice"):
        parse_passthrough(["retries=1", "retries=2"])


# --- the spawn guard -----------------------------------------------------------------------------


def test_an_unguarded_script_fails_fast_instead_of_hanging(metadata, tmp_path):
    script = tmp_path / "unguarded.py"
    output = tmp_path / "out"
    script.write_text(
        "from clipa_data.prepare.download import DownloadConfig, download\n"
        f"download(DownloadConfig({str(metadata.path)!r}, {str(output)!r}))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"called at top level of {script}:2" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert not output.exists()


def test_a_url_list_is_counted_once_per_version_of_the_file(tmp_path, monkeypatch):
    """A resume compares the list's rows with the record, then records them again: a LAION-size
    text list was read twice."""
    from clipa_data.prepare import url_list

    counted = []
    real_count = url_list._count_rows
    monkeypatch.setattr(url_list, "_count_rows", lambda *a: counted.append(a) or real_count(*a))
    path = tmp_path / "urls.csv"
    path.write_text("url,caption\nhttp://127.0.0.1/a.jpg,a\n")
    assert url_list.list_rows(path, "csv") == url_list.list_rows(path, "csv") == 2
    assert len(counted) == 1
    path.write_text("url,caption\nhttp://127.0.0.1/a.jpg,a\nhttp://127.0.0.1/b.jpg,b\n")
    assert url_list.list_rows(path, "csv") == 3 and len(counted) == 2  # a changed file: again
