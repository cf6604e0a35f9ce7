"""``clipa-data download URL_LIST OUTPUT_FOLDER``: img2dataset with the LAION-400M recipe."""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Annotated, Any

import typer
from clipa_cli.common import reports_errors, stdout
from rich.markup import escape

from clipa_data.core.errors import ClipaError
from clipa_data.prepare.download import (
    DISTRIBUTORS,
    INCREMENTAL_MODES,
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    RESIZE_MODES,
    DownloadConfig,
    UnfinishedShardsError,
    download,
    summary_table,
)

HELP = (
    "Download images with img2dataset into tfrecord (or webdataset) shards.\n\n"
    "The defaults are the LAION-400M recipe: parquet metadata with URL/TEXT columns, 256 px "
    "images padded to a square (border), NSFW/similarity/LICENSE kept in every record. "
    "A re-run skips the shards that finished (those with NNNNN_stats.json), so an interrupted "
    "download resumes where it stopped. Any other img2dataset argument goes through "
    "--i2d KEY=VALUE. Ends with a summary table and writes "
    "OUTPUT_FOLDER/_clipa/download_summary.json."
)
"""The command's --help text (one line per paragraph: the app renders help as rich markup)."""

DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(DownloadConfig)}
"""DownloadConfig's defaults, so the CLI and the library never disagree."""


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(values)


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


def _columns(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


@reports_errors
def download_command(
    url_list: Annotated[
        str,
        typer.Argument(
            help="Metadata with image URLs and captions: a file, or a folder of files of "
            "--input-format (LAION-400M: the folder of its parquet files).",
            metavar="URL_LIST",
            show_default=False,
        ),
    ],
    output_folder: Annotated[
        str,
        typer.Argument(
            help="Folder for the shards (created if missing; a re-run resumes in it).",
            metavar="OUTPUT_FOLDER",
            show_default=False,
        ),
    ],
    input_format: Annotated[
        str, typer.Option(help=f"Format of the metadata files: {_choices(INPUT_FORMATS)}.")
    ] = DEFAULTS["input_format"],
    url_col: Annotated[str, typer.Option(help="Column holding the image URL.")] = DEFAULTS[
        "url_col"
    ],
    caption_col: Annotated[
        str, typer.Option(help='Column holding the caption; "" stores no caption.')
    ] = DEFAULTS["caption_col"],
    save_additional_columns: Annotated[
        str,
        typer.Option(help='Comma-separated metadata columns kept in every record; "" keeps none.'),
    ] = ",".join(DEFAULTS["save_additional_columns"]),
    image_size: Annotated[
        int, typer.Option(help="Side of the stored images, in pixels.")
    ] = DEFAULTS["image_size"],
    resize_mode: Annotated[
        str,
        typer.Option(
            help=f"How images are resized: {_choices(RESIZE_MODES)} (border fits the longer "
            "side and pads to a square)."
        ),
    ] = DEFAULTS["resize_mode"],
    output_format: Annotated[
        str,
        typer.Option(
            help=f"Shard format: {_choices(OUTPUT_FORMATS)} (tfrecord is what clipa-data "
            "convert reads fastest)."
        ),
    ] = DEFAULTS["output_format"],
    processes_count: Annotated[
        int | None,
        typer.Option(
            "--processes-count",
            "--processes",
            help="Download processes (default: every core of this machine).",
            show_default=False,
        ),
    ] = None,
    thread_count: Annotated[
        int,
        typer.Option(
            "--thread-count",
            "--threads",
            help="Download threads per process (more than ~64 mostly overloads DNS).",
        ),
    ] = DEFAULTS["thread_count"],
    number_sample_per_shard: Annotated[
        int,
        typer.Option(
            "--number-sample-per-shard",
            "--samples-per-shard",
            help="Input rows per shard; keep it unchanged when resuming.",
        ),
    ] = DEFAULTS["number_sample_per_shard"],
    retries: Annotated[
        int, typer.Option(help="Extra attempts per URL after a failed download.")
    ] = DEFAULTS["retries"],
    timeout: Annotated[int, typer.Option(help="Seconds to wait for one URL.")] = DEFAULTS[
        "timeout"
    ],
    incremental_mode: Annotated[
        str,
        typer.Option(
            help=f"{_choices(INCREMENTAL_MODES)}: incremental skips finished shards, overwrite "
            "deletes OUTPUT_FOLDER first, extend adds new shards after the last one."
        ),
    ] = DEFAULTS["incremental_mode"],
    distributor: Annotated[
        str,
        typer.Option(
            help=f"{_choices(DISTRIBUTORS)}: pyspark uses the active SparkSession, or starts a "
            "local one (bring your own cluster session from Python, see the README)."
        ),
    ] = DEFAULTS["distributor"],
    i2d: Annotated[
        list[str] | None,
        typer.Option(
            "--i2d",
            metavar="KEY=VALUE",
            help="Any other img2dataset.download argument, repeatable; VALUE is read as JSON "
            "or a Python literal, else as text (e.g. --i2d encode_quality=90).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download images with img2dataset (LAION-400M recipe by default); resumable."""
    # URL_LIST and OUTPUT_FOLDER stay strings: pathlib would turn gs://bucket into gs:/bucket.
    optional = {} if processes_count is None else {"processes_count": processes_count}
    config = DownloadConfig(
        url_list=url_list,
        output_folder=output_folder,
        input_format=input_format,
        url_col=url_col,
        caption_col=caption_col or None,
        save_additional_columns=_columns(save_additional_columns),
        image_size=image_size,
        resize_mode=resize_mode,
        output_format=output_format,
        thread_count=thread_count,
        number_sample_per_shard=number_sample_per_shard,
        retries=retries,
        timeout=timeout,
        incremental_mode=incremental_mode,
        distributor=distributor,
        extra=parse_passthrough(i2d or []),
        **optional,
    )
    console = stdout()
    try:
        summary = download(config)
    except UnfinishedShardsError as error:
        console.print(summary_table(error.summary))
        raise
    console.print(summary_table(summary))
    console.print(f"next: clipa-data convert {escape(output_folder)} OUT --name NAME --split train")
