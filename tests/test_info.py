"""``clipa-data info`` on a converted builder directory, on a foreign one, and on bad paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clipa_cli.data_app import app
from img2dataset_shards import write_source
from typer.testing import CliRunner

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.prepare import info
from clipa_data.prepare.convert import ConvertConfig, convert


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("info")
    src = write_source(root / "raw", {0: 4, 2: 6, 3: 1}, failures=1)
    config = ConvertConfig(src=src, out=root / "out", name="demo", workers=1, show_progress=False)
    return convert(config).builder_dir


def test_report_sections(converted):
    report = info.report(converted.parent.parent)  # OUT works as well as the builder dir
    data = report.to_json()
    assert data["builder"] == str(converted)
    assert [s.key for s in report.sections] == [
        "overview",
        "splits",
        "features",
        "provenance",
        "sidecars",
    ]
    assert data["overview"]["shards"] == 2 and data["overview"]["examples"] == 8
    size = sum(p.stat().st_size for p in converted.glob("demo-train.tfrecord-*"))
    assert data["splits"]["train"] == {
        "shards": 2,
        "examples": 8,
        "bytes": size,
        "empty_shards": 0,
        "missing_files": 0,
        "wrong_size_files": 0,
    }
    assert data["features"]["jpg"] == {
        "type": "Image",
        "dtype": "uint8",
        "shape": [None, None, 3],
        "encoding": "jpeg",
    }
    assert data["features"]["txt"]["type"] == "Text"
    assert data["features"]["width"] == {"type": "Scalar", "dtype": "int64", "shape": []}
    provenance = data["provenance"]
    assert provenance["source_format"] == "tfrecord" and provenance["method"] == "hardlink"
    assert provenance["empty_shards_left_out"] == ["00003.tfrecord"]
    assert provenance["versions"]["tensorflow-datasets"]


def test_cli_json_and_tables(converted):
    result = CliRunner().invoke(app, ["info", str(converted), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["overview"]["examples"] == 8
    tables = CliRunner().invoke(app, ["info", str(converted)])
    assert tables.exit_code == 0
    for text in ("splits", "features", "Image (jpeg)", "provenance", "hardlink", "clipa-data tag"):
        assert text in tables.stdout


def test_missing_shard_file_and_foreign_builder(converted, tmp_path):
    copy = tmp_path / "demo" / "1.0.0"
    shutil.copytree(converted, copy)
    (copy / layout.CONVERT_MANIFEST).unlink()  # as if written by another tool
    (copy / "demo-train.tfrecord-00001-of-00002").unlink()
    data = info.report(copy).to_json()
    assert data["splits"]["train"]["missing_files"] == 1
    assert data["splits"]["train"]["wrong_size_files"] is None  # no manifest to compare with
    assert data["provenance"] is None


def test_a_shard_cut_short_since_the_conversion_is_counted(converted, tmp_path):
    """A shard file whose size is not the manifest's (cut short, replaced) was reported as a
    healthy builder: "missing files 0", the smaller byte count without comment."""
    copy = tmp_path / "demo" / "1.0.0"
    shutil.copytree(converted, copy)
    shard = copy / "demo-train.tfrecord-00000-of-00002"
    shard.write_bytes(shard.read_bytes()[:-100])
    result = CliRunner().invoke(app, ["info", str(copy), "--json"])
    assert result.exit_code == 0, result.output
    train = json.loads(result.stdout)["splits"]["train"]
    assert (train["missing_files"], train["wrong_size_files"]) == (0, 1)
    assert "wrong size" in CliRunner().invoke(app, ["info", str(copy)]).stdout


def test_a_new_section_is_one_function(converted):
    def shard_count(builder: info.Builder) -> info.Section:
        count = len(builder.splits[0].shards)
        return info.Section("extra", "extra", ("", ""), (("shards", str(count)),), count)

    report = info.report(converted, sections=(*info.SECTIONS, shard_count))
    assert report.to_json()["extra"] == 2


def test_not_a_builder_directory(tmp_path):
    with pytest.raises(ClipaError, match=r"not a builder directory.*clipa-data convert"):
        info.report(tmp_path)
    result = CliRunner().invoke(app, ["info", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
