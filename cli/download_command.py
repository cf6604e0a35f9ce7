"""``clipa-data download URL_LIST OUTPUT_FOLDER``: img2dataset with the LAION-400M recipe."""

from __future__ import annotations

import ast
import dataclasses
import json
import shlex
from dataclasses import dataclass
from typing import Annotated, Any

from clipa_cli.common import reports_errors, stdout
from clipa_cli.options import command, config_arguments, config_options, config_values
from clipa_cli.tables import download_table
from rich.markup import escape

from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_data.prepare.datasets import DATASETS, RECIPES, recipe
from clipa_data.prepare.download import (
    POSITIONAL_ARGUMENTS,
    DownloadConfig,
    UnfinishedShardsError,
    download,
)

HELP = (
    "Download images with img2dataset into tfrecord (or webdataset) shards.\n\n"
    "The defaults are the LAION-400M recipe: parquet metadata with URL/TEXT columns, 256 px "
    "images padded to a square (border), NSFW/similarity/LICENSE kept in every record. "
    "A re-run skips the shards that finished (those with NNNNN_stats.json), so an interrupted "
    "download resumes where it stopped. Any other img2dataset argument goes through "
    "--i2d KEY=VALUE. Ends with a summary table and writes "
    "OUTPUT_FOLDER/_clipa/download_summary.json.\n\n"
    "Datasets (--dataset NAME):\n\n" + "\n\n".join(f"{r.name}: {r.summary}." for r in RECIPES)
)
"""The command's --help text (one line per paragraph: the app renders help as rich markup)."""


def parse_value(text: str) -> Any:
    """A passthrough value: JSON, else a Python literal, else ``inf``, else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.strip().lower() in {"inf", "+inf", "infinity", "-inf", "-infinity"}:
        return float(text)
    return text


def parse_passthrough(pairs: list[str]) -> dict[str, Any]:
    """``["encode_quality=90", ...]`` -> ``{"encode_quality": 90, ...}``."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ClipaError(
                f"--i2d expects KEY=VALUE (e.g. --i2d encode_quality=90); got {pair!r}"
            )
        if name in parsed:
            raise ClipaError(f"--i2d {name} is given twice; keep one")
        parsed[name] = parse_value(value)
    return parsed


@dataclass(frozen=True)
class DownloadRequest:
    """What ``clipa-data download`` takes besides ``DownloadConfig``."""

    dataset: Annotated[
        str,
        Doc(
            "Recipe (columns, image size, resize mode, saved columns) of the dataset whose "
            "metadata URL_LIST holds; options given here override it."
        ),
        Choices(DATASETS),
    ] = "laion400m"


RECIPE_FIELDS = tuple(name for name in DATASETS["laion400m"].settings() if name != "extra")
"""The options a recipe sets: "not given" on the command line means "the recipe's" (its extra
img2dataset arguments merge with --i2d)."""

OPTIONS = config_options(
    DownloadConfig,
    [
        f.name
        for f in dataclasses.fields(DownloadConfig)
        if f.name not in POSITIONAL_ARGUMENTS and f.name not in RECIPE_FIELDS
    ],
    flags={
        "processes_count": ("--processes-count", "--processes"),
        "thread_count": ("--thread-count", "--threads"),
        "number_sample_per_shard": ("--number-sample-per-shard", "--samples-per-shard"),
        "extra": "--i2d",
    },
    extra_help={
        "save_additional_columns": 'Comma-separated; "" keeps none.',
        "extra": "Repeatable; VALUE is read as JSON or a Python literal, else as text "
        "(e.g. --i2d encode_quality=90).",
    },
    repeated=("extra",),
    metavars={"extra": "KEY=VALUE"},
)
RECIPE_OPTIONS = config_options(
    DownloadConfig,
    RECIPE_FIELDS,
    extra_help={
        "save_additional_columns": 'Comma-separated; "" keeps none. Default: the --dataset '
        "recipe's (LAION-400M's shown).",
        **{
            name: "Default: the --dataset recipe's (LAION-400M's shown)."
            for name in RECIPE_FIELDS
            if name != "save_additional_columns"
        },
    },
    unset=True,
)


def recipe_values(dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    """The config values: the recipe's, then every option the user gave."""
    settings = recipe(dataset).settings()
    given = {name: value for name, value in options.items() if value is not None}
    values = {**settings, **config_values(DownloadConfig, given)}
    if "caption_col" in given:
        values["caption_col"] = given["caption_col"] or None  # "" stores no caption
    values["extra"] = {**settings["extra"], **parse_passthrough(options["extra"] or [])}
    return values


@reports_errors
def download_options(dataset: str, **options: Any) -> None:
    """Download images with img2dataset (LAION-400M recipe by default); resumable."""
    # URL_LIST and OUTPUT_FOLDER stay strings: pathlib would turn gs://bucket into gs:/bucket.
    config = DownloadConfig(**recipe_values(dataset, options))
    console = stdout()
    try:
        summary = download(config)
    except UnfinishedShardsError as error:
        console.print(download_table(error.summary))
        raise
    console.print(download_table(summary))
    folder = escape(shlex.quote(config.output_folder))
    console.print(f"next: clipa-data convert {folder} OUT --name NAME --split train")


download_command = command(
    download_options,
    [
        *config_arguments(DownloadConfig, POSITIONAL_ARGUMENTS),
        *config_options(DownloadRequest),
        *RECIPE_OPTIONS,
        *OPTIONS,
    ],
    empty_allowed=("caption_col", "save_additional_columns"),  # "": no caption, no columns
)
"""The ``clipa-data download`` command."""
