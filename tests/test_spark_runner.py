"""The pyspark distributor's parts that need no Spark: master forms, failure lines, the choice
list, and a missing pyspark (the Spark runs themselves are in test_spark.py)."""

from __future__ import annotations

import sys

import pytest
from clipa_cli.data_app import app
from typer.testing import CliRunner

from clipa_data.core.errors import ClipaError
from clipa_data.prepare import convert, download, runner, spark, tagging

SPARK_TRACE = """An exception was thrown from the Python worker:
Traceback (most recent call last):
  File "/x/pyspark/worker.py", line 4327, in invoke_udf
    run_process()
clipa_data.core.errors.ClipaError: /data/demo-train.tfrecord-00001-of-00003: truncated; fix it
 SQLSTATE: 38000"""


@pytest.mark.parametrize(
    ("master", "expected"),
    [
        ("local", "local[1,4]"),
        ("local[2]", "local[2,4]"),
        ("local[*]", "local[*,4]"),
        ("local[2,3]", "local[2,3]"),
        ("spark://host:7077", "spark://host:7077"),
        ("yarn", "yarn"),
    ],
)
def test_local_masters_get_task_retries(master, expected):
    assert spark.local_master(master) == expected


def test_failure_line_is_the_python_exception_of_the_last_attempt():
    assert spark.failure_line(RuntimeError(SPARK_TRACE)) == (
        "/data/demo-train.tfrecord-00001-of-00003: truncated; fix it"
    )
    other = SPARK_TRACE.replace("clipa_data.core.errors.ClipaError", "builtins.ValueError")
    assert spark.failure_line(RuntimeError(other)).startswith("ValueError: /data/demo-train")
    crashed = RuntimeError("Job aborted: Python worker exited unexpectedly (crashed)\n\tat org...")
    assert spark.failure_line(crashed) == "Job aborted: Python worker exited unexpectedly (crashed)"


def test_one_list_of_distributors():
    assert download.DISTRIBUTORS is runner.DISTRIBUTORS
    for config in (convert.ConvertConfig, tagging.TagConfig):
        hint = config.__dataclass_fields__["distributor"]
        assert hint.default == "multiprocessing"
    with pytest.raises(ClipaError, match="--distributor must be one of multiprocessing, pyspark"):
        tagging.TagConfig("builder", distributor="ray")


def test_bad_distributor_on_the_command_line(tmp_path):
    result = CliRunner().invoke(app, ["convert", str(tmp_path), str(tmp_path / "out"),
                                      "--distributor", "dask"])  # fmt: skip
    assert result.exit_code == 2
    assert "--distributor must be one of multiprocessing, pyspark" in result.output


def test_missing_pyspark_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # what `import pyspark` sees without it
    plan = runner.RunnerConfig("tagging", distributor="pyspark", show_progress=False)
    with pytest.raises(ClipaError, match=r"needs pyspark: pip install 'clipa\[spark\]'"):
        runner.map_shards(str, ["a", "b"], plan)


@pytest.mark.parametrize("master", ["bogus", "spark:/host:7077", "mesos://host:5050"])
def test_a_master_spark_does_not_know_is_one_line_before_any_java(master):
    """Spark started a JVM to say so in an 80-line traceback."""
    with pytest.raises(ClipaError, match=rf"--spark-master {master} is not a Spark master URL"):
        spark.spark_context(master, 1)
