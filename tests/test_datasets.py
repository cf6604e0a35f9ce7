"""``clipa-data download --dataset NAME``: the dataset recipes, as data, through the real CLI."""

from __future__ import annotations

import dataclasses

import pytest
from clipa_cli.data_app import app
from typer.testing import CliRunner

from clipa_data.demo import write_demo_metadata
from clipa_data.prepare.datasets import DATASETS, recipe
from clipa_data.prepare.download import DownloadConfig

runner = CliRunner()


def test_download_defaults_are_the_laion400m_recipe():
    defaults = DownloadConfig("meta", "out")
    for name, value in DATASETS["laion400m"].settings().items():
        assert getattr(defaults, name) == value, name


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_recipe_is_a_valid_download_config(name):
    config = DownloadConfig("meta", "out", **recipe(name).settings())
    assert config.url_col and config.caption_col and config.image_size == 256


def test_help_lists_every_dataset():
    result = runner.invoke(app, ["download", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in DATASETS:
        assert f"{name}:" in result.output
    assert "--dataset" in result.output


@pytest.fixture
def laion_like(tmp_path):
    """LAION-400M-style metadata (URL/TEXT columns); nothing is downloaded from it."""
    return write_demo_metadata(tmp_path / "meta.parquet", "http://127.0.0.1:9", 10).path


def test_a_recipe_sets_the_columns_and_options_override_it(laion_like, tmp_path):
    out = str(tmp_path / "out")
    result = runner.invoke(app, ["download", str(laion_like), out, "--dataset", "datacomp-small"])
    assert result.exit_code == 2
    assert "has no column 'url', 'text'" in result.output  # DataComp's columns

    result = runner.invoke(
        app,
        ["download", str(laion_like), out, "--dataset", "datacomp-small",
         "--url-col", "URL", "--caption-col", "TEXT"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "has no column 'uid'" in result.output  # the recipe's saved column is still asked


def test_unknown_dataset_names_the_choices():
    from clipa_data.core.errors import ClipaError

    with pytest.raises(ClipaError, match="--dataset 'laion5b': choose one of laion400m"):
        recipe("laion5b")
    assert dataclasses.is_dataclass(DATASETS["datacomp-large"])
    assert DATASETS["datacomp-large"].extra == {"bbox_col": "face_bboxes"}
