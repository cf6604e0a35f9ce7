"""``--distributor pyspark``: download, convert and tag on a real Spark ``local[2]`` session.

One SparkSession serves the module (a session takes seconds to start). Its Python workers get
the test-built NLTK data through ``NLTK_DATA``, set before the JVM starts (workers inherit the
JVM's environment, not later changes). Download is the real img2dataset pyspark distributor
against the demo server on 127.0.0.1. Run with ``make test-spark``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nltk_data
import pytest
from builders import make_builder_dir, make_records
from clipa_cli.data_app import app
from typer.testing import CliRunner

from clipa_data.core import layout
from clipa_data.core.example import decode_example
from clipa_data.core.tfrecord import read_records
from clipa_data.demo import serve_demo_images, write_demo_metadata
from clipa_data.prepare.convert import ConvertConfig, convert
from clipa_data.prepare.download import DownloadConfig, download
from clipa_data.prepare.tagging import TagConfig, tag_builder

pytest.importorskip("pyspark")
pytestmark = pytest.mark.spark

nltk_data_dir, nltk_env = nltk_data.nltk_data_dir, nltk_data.nltk_env
runner = CliRunner()
TIMING = {
    "seconds",
    "tagging_seconds",
    "captions_per_second",
    "distributor",
    "workers",
    "builder_dir",
}


@pytest.fixture(scope="module")
def spark(nltk_data_dir):
    """The module's SparkSession context (``local[2]``, made ``local[2,4]`` by the runner)."""
    from pyspark.sql import SparkSession

    from clipa_data.prepare.spark import spark_context

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NLTK_DATA", str(nltk_data_dir))
        patch.setenv("PYSPARK_PYTHON", sys.executable)
        context = spark_context("local[2]", 2)
        assert context.master == "local[2,4]"
        yield context
        SparkSession.builder.getOrCreate().stop()


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    with serve_demo_images() as url:
        yield write_demo_metadata(tmp_path_factory.mktemp("meta") / "demo.parquet", url, 30, 3)


def download_config(metadata, output: Path, distributor: str) -> DownloadConfig:
    return DownloadConfig(
        url_list=str(metadata.path),
        output_folder=str(output),
        image_size=32,
        processes_count=2 if distributor == "pyspark" else 1,
        thread_count=8,
        number_sample_per_shard=10,
        distributor=distributor,
    )


@pytest.fixture(scope="module")
def raw_spark(spark, metadata, tmp_path_factory):
    """A download by img2dataset's pyspark distributor on the module's session."""
    output = tmp_path_factory.mktemp("spark") / "raw"
    download(download_config(metadata, output, "pyspark"))
    return output


def records_by_shard(folder: Path) -> dict[str, list[str]]:
    """Every shard's records, decoded and sorted: img2dataset writes them in completion order,
    and a tf.Example's feature map has no fixed order in its bytes."""
    return {
        path.name: sorted(
            repr(sorted(decode_example(record).items())) for record in read_records(str(path))
        )
        for path in sorted(folder.glob("*.tfrecord"))
    }


def files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in skip
    }


def without(summary: dict, keys=TIMING) -> dict:
    summary = {k: v for k, v in summary.items() if k not in keys}
    summary["shards"] = [{k: v for k, v in s.items() if k != "seconds"} for s in summary["shards"]]
    return summary


def test_download_convert_tag_on_spark_match_multiprocessing(
    spark, metadata, raw_spark, tmp_path, nltk_env
):
    raw_local = tmp_path / "raw_local"
    download(download_config(metadata, raw_local, "multiprocessing"))
    assert records_by_shard(raw_spark) == records_by_shard(raw_local)
    assert len(records_by_shard(raw_spark)) == 3

    builders = {}
    for distributor in ("pyspark", "multiprocessing"):
        builders[distributor] = convert(
            ConvertConfig(
                raw_spark,
                tmp_path / distributor,
                name="demo",
                mode="copy",  # placement copies bytes: it runs on Spark too
                workers=1,
                show_progress=False,
                distributor=distributor,
            )
        ).builder_dir
        tag_builder(
            TagConfig(builders[distributor], tagger="nltk", workers=1, show_progress=False,
                      distributor=distributor)
        )  # fmt: skip
    summaries = (layout.CONVERT_SUMMARY, layout.TAG_SUMMARY)  # timings and options
    spark_files = files(builders["pyspark"], skip=summaries)
    local_files = files(builders["multiprocessing"], skip=summaries)
    assert spark_files == local_files  # records, metadata, manifest, sidecars
    assert any(name.endswith(".arrow") for name in spark_files)
    tagged = [
        json.loads(layout.tag_summary_path(builders[d]).read_text()) for d in sorted(builders)
    ]
    assert without(tagged[0]) == without(tagged[1])
    assert {s["distributor"] for s in tagged} == {"pyspark", "multiprocessing"}

    # Mixing distributors: the multiprocessing output is up to date for a pyspark re-run.
    again = ConvertConfig(
        raw_spark, tmp_path / "multiprocessing", name="demo", mode="copy", workers=1,
        show_progress=False, distributor="pyspark",
    )  # fmt: skip
    assert convert(again).status == "up to date"


def test_overwrite_on_spark_downloads_the_folder_again(spark, metadata, raw_spark, tmp_path):
    """img2dataset's own overwrite deletes the whole folder, its _tmp included, after creating
    it: on pyspark every shard failed writing there and the run ended with the folder empty."""
    output = tmp_path / "raw"
    shutil.copytree(raw_spark, output)
    (output / "00001.tfrecord").write_bytes(b"a shard of another download")
    config = download_config(metadata, output, "pyspark")
    summary = download(dataclasses.replace(config, incremental_mode="overwrite"))
    assert len(summary.shards) == 3 and summary.resumed_shards == ()
    assert records_by_shard(output) == records_by_shard(raw_spark)
    assert download(config).samples_this_run == 0  # recorded as started: it resumes


# --- bad input: a killed worker, a shard that fails in every attempt, mixed distributors -------


def heavy_builder(root: Path) -> Path:
    """Three shards big enough that tagging one takes a while (a worker can be killed in it)."""
    shards = [make_records(1500, start=i * 1500, size=8) for i in range(3)]
    return make_builder_dir(root, shards)


@pytest.fixture(scope="module")
def heavy(tmp_path_factory, nltk_data_dir):
    """A builder directory and its sidecars from a clean multiprocessing run."""
    builder = heavy_builder(tmp_path_factory.mktemp("heavy"))
    clean = tmp_path_factory.mktemp("clean") / "demo" / "1.0.0"
    shutil.copytree(builder, clean)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NLTK_DATA", str(nltk_data_dir))
        tag_builder(TagConfig(clean, tagger="nltk", workers=1, show_progress=False))
    return builder, files(clean / "sidecars", skip=(layout.TAG_SUMMARY,))


def pyspark_workers() -> dict[int, int]:
    """pid -> CPU ticks of every Python worker (a child of a ``pyspark.daemon`` process)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if b"pyspark.daemon" not in (entry / "cmdline").read_bytes():
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return {pid: ticks for pid, (parent, ticks) in found.items() if parent in found}


def kill_a_busy_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Python worker seen using CPU (one running a task; idle ones sleep)."""
    before = pyspark_workers()
    while not stop.is_set() and not killed:
        time.sleep(0.05)
        now = pyspark_workers()
        busy = [pid for pid, ticks in now.items() if ticks > before.get(pid, ticks)]
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            killed.append(busy[0])
        before = now


def test_a_worker_killed_mid_shard_is_retried_to_identical_output(spark, heavy, tmp_path, nltk_env):
    pristine, clean = heavy
    builder = tmp_path / "demo" / "1.0.0"
    shutil.copytree(pristine, builder)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_busy_worker, args=(stop, killed))
    killer.start()
    try:
        summary = tag_builder(
            TagConfig(builder, tagger="nltk", show_progress=False, distributor="pyspark")
        )
    finally:
        stop.set()
        killer.join()
    assert killed, "no busy pyspark worker was seen"
    assert [s.status for s in summary.shards] == ["tagged"] * 3
    assert files(builder / "sidecars", skip=(layout.TAG_SUMMARY,)) == clean


def test_a_shard_failing_every_attempt_is_named_and_the_rest_kept(spark, heavy, tmp_path, nltk_env):
    pristine, clean = heavy
    builder = tmp_path / "demo" / "1.0.0"
    shutil.copytree(pristine, builder)
    broken = builder / "demo-train.tfrecord-00001-of-00003"
    broken.write_bytes(broken.read_bytes()[:5000])  # truncated mid-record
    result = runner.invoke(
        app, ["tag", str(builder), "--tagger", "nltk", "--no-progress", "--distributor", "pyspark"]
    )
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "1 of 3 shards failed in every Spark task attempt" in line
    assert "demo-train.tfrecord-00001-of-00003" in line
    sidecars = files(builder / "sidecars")
    assert sorted(sidecars) == [n for n in sorted(clean) if "00001" not in n]
    assert all(sidecars[name] == clean[name] for name in sidecars)

    # Mixing: the fixed shard is tagged by a multiprocessing re-run, the rest are kept.
    shutil.copy(pristine / broken.name, broken)
    summary = tag_builder(TagConfig(builder, tagger="nltk", workers=1, show_progress=False))
    assert [s.status for s in summary.shards] == ["skipped", "tagged", "skipped"]
    assert files(builder / "sidecars", skip=(layout.TAG_SUMMARY,)) == clean


def test_a_first_stop_starts_no_shard_that_was_still_waiting(spark):
    """A stop requested while the first shards run: they finish, and no driver thread starts a
    waiting shard afterwards (each took its next one as soon as its last ended, before the main
    thread could cancel the waiting ones)."""
    from clipa_data.prepare.spark import run_on_spark

    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()  # while the first two (of 2 driver threads) run
    finished = []
    run_on_spark(
        lambda item: (time.sleep(2), item)[1],
        list(range(6)),
        "testing stop",
        spark,
        lambda index, result: finished.append(result),
        str,
        stop.is_set,
    )
    assert spark.defaultParallelism == 2 and sorted(finished) == [0, 1]


def test_a_session_spark_cannot_start_is_one_line(tmp_path):
    """A master Spark refuses to start on (yarn without its configuration here; an unreachable
    spark:// master the same after Spark's minute of retries) ended in Java and Python
    tracebacks."""
    script = (
        "from clipa_data.core.errors import ClipaError\n"
        "from clipa_data.prepare.spark import spark_context\n"
        "try:\n    spark_context('yarn', 1)\nexcept ClipaError as error:\n    print(error)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HADOOP_CONF_DIR", "YARN_CONF_DIR")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("cannot start a Spark session on yarn (") and (
        "check --spark-master, or leave it out" in done.stdout
    ), done.stdout
    # No --spark-master: the local session's own fix (a driver that cannot bind its address)
    local = script.replace("spark_context('yarn', 1)", "spark_context(None, 1)")
    done = subprocess.run(
        [sys.executable, "-c", local], env={**env, "SPARK_LOCAL_IP": "10.255.255.1"},
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.stdout.startswith("cannot start a Spark session on local[1,4] ("), done.stdout
    assert "--spark-master" not in done.stdout and "SPARK_LOCAL_IP=127.0.0.1" in done.stdout
