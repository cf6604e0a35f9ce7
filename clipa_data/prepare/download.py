"""``clipa-data download``: a thin, well-configured wrapper over ``img2dataset.download``.

We configure img2dataset (the LAION-400M recipe by default), check the inputs it would otherwise
trip over mid-run, guard its spawn-based process pool, and summarise its per-shard
``*_stats.json`` files; the downloading itself is img2dataset's.

Python callers: img2dataset starts its workers with ``spawn``, which re-imports your main script
in every worker. Call ``download`` under ``if __name__ == "__main__":``; an unguarded call
raises ``ClipaError`` before any worker starts (instead of img2dataset's endless hang).

Distributors: ``multiprocessing`` (default, one machine) or ``pyspark``. For pyspark, bring your
own session (create the ``SparkSession`` before calling ``download``) or name its master with
``spark_master``; img2dataset uses the active session, and without either we start a local one
whose Python workers run this interpreter (``clipa_data.prepare.spark``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import json
import math
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clipa_data.core import layout
from clipa_data.core.atomic import write_json
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.provenance import package_versions
from clipa_data.core.run_lock import only_run_in
from clipa_data.prepare import download_start, spark, stores
from clipa_data.prepare.download_start import read_start
from clipa_data.prepare.interrupts import Interrupted, ShardStop
from clipa_data.prepare.runner import DISTRIBUTORS, default_workers
from clipa_data.prepare.schema import IMAGE_FORMATS
from clipa_data.prepare.source_format import SOURCE_FORMATS
from clipa_data.prepare.spawn import check_spawn_safe
from clipa_data.prepare.url_list import check_columns, header_columns, list_rows, row_unit

INPUT_FORMATS = (
    "parquet",
    "txt",
    "txt.gz",
    "csv",
    "csv.gz",
    "tsv",
    "tsv.gz",
    "json",
    "json.gz",
    "jsonl",
    "jsonl.gz",
)
OUTPUT_FORMATS = tuple(SOURCE_FORMATS)
"""img2dataset output formats: the source formats ``clipa-data convert`` reads."""
RESIZE_MODES = ("border", "keep_ratio", "keep_ratio_largest", "center_crop", "no")
INCREMENTAL_MODES = ("incremental", "overwrite", "extend")
# img2dataset writes these itself (main.py arguments_validator).
RESERVED_COLUMNS = frozenset(
    {"key", "caption", "url", "width", "height", "original_width", "original_height", "status"}
    | {"error_message", "exif", "md5", "sha256", "sha512"}
    # The names of a sample's own fields: img2dataset writes saved columns over them (a column
    # "txt" replaced every caption, "jpg" every image).
    | {"txt", "json", *IMAGE_FORMATS}
)
COLUMN_ARGUMENTS = ("bbox_col",)
"""img2dataset arguments (through ``--i2d`` or a dataset recipe) whose value is an input column
(DataComp's recipes blur faces from ``face_bboxes``)."""
PARTIAL_SHARD_FILE = re.compile(r"^(?P<id>\d+)\.(tfrecord|tar|parquet)$")
"""What img2dataset writes for a shard before its ``_stats.json`` (which marks it finished)."""
# The CLI's positional arguments; every other field is the CLI option --<field-with-dashes>.
POSITIONAL_ARGUMENTS = ("url_list", "output_folder")


@functools.cache
def img2dataset_parameters() -> tuple[str, ...]:
    """The argument names of the installed ``img2dataset.download``."""
    return tuple(inspect.signature(import_img2dataset().download).parameters)


def import_img2dataset():
    """Import img2dataset without albumentations' network update check (the variable is
    inherited by img2dataset's spawned workers, which import it again)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import img2dataset

    return img2dataset


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ClipaError(f"{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")


def _flag(name: str) -> str:
    """The command-line flag of the ``DownloadConfig`` field ``name``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class DownloadConfig:
    """What to download and how; the defaults are the LAION-400M recipe."""

    url_list: Annotated[
        str,
        Doc(
            "Metadata with image URLs and captions: a file, or a folder of files of the input "
            "format (LAION-400M: the folder of its parquet files); local path or fsspec URL."
        ),
    ]
    output_folder: Annotated[
        str,
        Doc(
            "Folder for the shards (00000.tfrecord|.tar, .parquet, _stats.json); created if "
            "missing, a re-run resumes in it."
        ),
    ]
    input_format: Annotated[
        str, Doc("Format of the metadata files (optionally .gz)."), Choices(INPUT_FORMATS)
    ] = "parquet"
    url_col: Annotated[str, Doc("Column holding the image URL (LAION-400M: URL).")] = "URL"
    caption_col: Annotated[
        str | None,
        Doc(
            'Column holding the caption (LAION-400M: TEXT); None ("" on the command line) stores '
            "no caption."
        ),
    ] = "TEXT"
    save_additional_columns: Annotated[
        tuple[str, ...],
        Doc("Metadata columns copied into every record, next to the image and caption."),
    ] = ("NSFW", "similarity", "LICENSE")
    image_size: Annotated[int, Doc("Side of the stored images, in pixels.")] = 256
    resize_mode: Annotated[
        str,
        Doc("How images are resized (border fits the longer side and pads to a square)."),
        Choices(RESIZE_MODES),
    ] = "border"
    output_format: Annotated[
        str,
        Doc("Shard format (tfrecord is what clipa-data convert reads fastest)."),
        Choices(OUTPUT_FORMATS),
    ] = "tfrecord"
    processes_count: Annotated[
        int, Doc("Download processes (default: every core of this machine).")
    ] = field(default_factory=default_workers)
    thread_count: Annotated[
        int,
        Doc(
            "Download threads per process (img2dataset's default 256 overloads most DNS resolvers)."
        ),
    ] = 64
    number_sample_per_shard: Annotated[
        int, Doc("Input rows per shard; keep it unchanged when resuming.")
    ] = 10_000
    retries: Annotated[
        int,
        Doc(
            "Extra attempts per URL after a failed download (img2dataset retries without backoff)."
        ),
    ] = 0
    timeout: Annotated[int, Doc("Seconds to wait for one URL.")] = 10
    incremental_mode: Annotated[
        str,
        Doc(
            "incremental skips finished shards (those with _stats.json), overwrite deletes the "
            "output folder first, extend adds new shards after the last one."
        ),
        Choices(INCREMENTAL_MODES),
    ] = "incremental"
    distributor: Annotated[
        str,
        Doc(
            "multiprocessing (this machine) or pyspark (uses the active SparkSession, or builds "
            "one with --spark-master, default local[PROCESSES_COUNT]; see the README)."
        ),
        Choices(DISTRIBUTORS),
    ] = "multiprocessing"
    spark_master: Annotated[
        str | None,
        Doc(
            "Master of the SparkSession built for --distributor pyspark when none is active, "
            "e.g. local[4] or spark://host:7077 (local[N] becomes local[N,4]: 4 attempts/task)."
        ),
    ] = None
    extra: Annotated[
        Mapping[str, Any],
        Doc("Any other img2dataset.download argument, by name."),
    ] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A file:// URL is read as the local path it names, so that every check applies to it.
        for name in ("url_list", "output_folder"):
            location = str(getattr(self, name))
            if location.startswith("file:"):
                location = str(stores.local_path(location, name.replace("_", " ")))
            object.__setattr__(self, name, location)
        object.__setattr__(self, "save_additional_columns", tuple(self.save_additional_columns))
        object.__setattr__(self, "extra", dict(self.extra))
        if not self.url_list:
            raise ClipaError("the URL list is empty; pass a metadata file or folder")
        if not self.output_folder:
            raise ClipaError("the output folder is empty; pass a folder for the shards")
        _check_choice("input_format", self.input_format, INPUT_FORMATS)
        _check_choice("output_format", self.output_format, OUTPUT_FORMATS)
        _check_choice("resize_mode", self.resize_mode, RESIZE_MODES)
        _check_choice("incremental_mode", self.incremental_mode, INCREMENTAL_MODES)
        _check_choice("distributor", self.distributor, DISTRIBUTORS)
        for name in ("image_size", "processes_count", "thread_count", "number_sample_per_shard"):
            if getattr(self, name) < 1:
                raise ClipaError(f"{_flag(name)} must be at least 1; got {getattr(self, name)}")
        if self.retries < 0:
            raise ClipaError(f"--retries must be ≥ 0; got {self.retries}")
        if self.timeout <= 0:
            raise ClipaError(f"--timeout must be a positive number of seconds; got {self.timeout}")
        reserved = sorted(RESERVED_COLUMNS & set(self.save_additional_columns))
        if reserved:
            raise ClipaError(
                f"save_additional_columns may not use {', '.join(reserved)}: img2dataset writes "
                "those itself (a saved column would replace them in every record); drop them "
                "from the list, or rename the column in the URL list"
            )
        self._check_saved_columns()
        self._check_extra()

    def _check_saved_columns(self) -> None:
        """img2dataset renames the URL and caption columns before it picks the saved ones, and
        refuses a column picked twice: both failed only after its start-up (over a minute)."""
        saved = self.save_additional_columns
        twice = sorted({name for name in saved if saved.count(name) > 1})
        if twice:
            raise ClipaError(
                f"save_additional_columns names {', '.join(twice)} more than once; name each "
                "column once"
            )
        stored = {self.url_col: "url", self.caption_col: "caption"}
        for name in saved:
            if name in stored:
                raise ClipaError(
                    f"save_additional_columns may not name {name}: img2dataset stores it as "
                    f"'{stored[name]}' already; drop it from the list"
                )

    def _check_extra(self) -> None:
        """Every passthrough name must be an img2dataset argument that has no field here."""
        if not self.extra:
            return
        own = {f for f in self.__dataclass_fields__ if f != "extra"}
        for name in self.extra:
            if name in own:
                where = (
                    f"the {name.upper()} argument"
                    if name in POSITIONAL_ARGUMENTS
                    else "--" + name.replace("_", "-")
                )
                raise ClipaError(
                    f"img2dataset argument {name!r} has its own setting (DownloadConfig.{name}, "
                    f"CLI {where}); set it there, not through the passthrough"
                )
            known = img2dataset_parameters()
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ClipaError(
                    f"unknown img2dataset argument {name!r}; {hint}the installed img2dataset "
                    f"accepts: {', '.join(known)}"
                )

    def img2dataset_arguments(self) -> dict[str, Any]:
        """The keyword arguments for ``img2dataset.download``."""
        arguments = {name: getattr(self, name) for name in self.__dataclass_fields__}
        arguments.pop("extra")
        arguments.pop("spark_master")  # ours: the session exists before img2dataset starts
        arguments["save_additional_columns"] = list(self.save_additional_columns) or None
        arguments.update(self.extra)
        return arguments


# --- summary of img2dataset's *_stats.json ---------------------------------------------------


@dataclass(frozen=True)
class ShardStats:
    """One finished shard, from its ``NNNNN_stats.json``."""

    shard: int
    """Shard number."""
    count: int
    """Input rows of the shard."""
    successes: int
    """Rows stored with their image."""
    failed_to_download: int
    """Rows whose download failed (HTTP errors, timeouts, opt-out headers...)."""
    failed_to_resize: int
    """Rows downloaded but not decodable or filtered by size."""
    duration: float
    """Seconds img2dataset spent on the shard."""
    status: dict[str, int]
    """img2dataset's ``status_dict``: ``success`` and every error message, with counts."""


@dataclass(frozen=True)
class DownloadSummary:
    """What a download run left in the output folder."""

    output_folder: str
    """The output folder."""
    output_format: str
    """``tfrecord`` or ``webdataset``."""
    shards: tuple[ShardStats, ...]
    """Every finished shard (with ``_stats.json``), by shard number."""
    resumed_shards: tuple[int, ...]
    """Shards finished by an earlier run and left alone by this one."""
    unfinished_shards: tuple[int, ...]
    """Shards without ``_stats.json``: expected from the input (parquet) or, when that is
    unknown, those with a shard file."""
    stopped: bool
    """The run was stopped (Ctrl-C, SIGTERM) before img2dataset reached the end of the input."""
    expected_shards: int | None
    """Shards the input makes (parquet: from its row counts); None where its size is unknown,
    so that a stopped run's never-started shards are in no list."""
    wall_seconds: float
    """Wall-clock time of this run, worker start-up included."""
    summary_path: str
    """Where the summary JSON was written."""

    @property
    def count(self) -> int:
        """Input rows over all finished shards."""
        return sum(s.count for s in self.shards)

    @property
    def successes(self) -> int:
        """Images stored over all finished shards."""
        return sum(s.successes for s in self.shards)

    @property
    def failed_to_download(self) -> int:
        """Rows whose download failed, over all finished shards."""
        return sum(s.failed_to_download for s in self.shards)

    @property
    def failed_to_resize(self) -> int:
        """Rows that could not be decoded/resized, over all finished shards."""
        return sum(s.failed_to_resize for s in self.shards)

    def error_kinds(self) -> list[tuple[str, int]]:
        """Every failure message with its count, most frequent first."""
        status: Counter[str] = Counter()
        for shard in self.shards:
            status.update(shard.status)
        status.pop("success", None)
        return status.most_common()

    @property
    def samples_this_run(self) -> int:
        """Input rows of the shards this run finished."""
        resumed = set(self.resumed_shards)
        return sum(s.count for s in self.shards if s.shard not in resumed)

    @property
    def samples_per_second(self) -> float | None:
        """Rows per wall-clock second in this run; None when it downloaded nothing."""
        if not self.samples_this_run or self.wall_seconds <= 0:
            return None
        return self.samples_this_run / self.wall_seconds

    def to_json(self) -> dict[str, Any]:
        """The machine-readable form (totals first, then every shard)."""
        return {
            "output_folder": self.output_folder,
            "output_format": self.output_format,
            "shards": len(self.shards),
            "count": self.count,
            "successes": self.successes,
            "failed_to_download": self.failed_to_download,
            "failed_to_resize": self.failed_to_resize,
            "error_kinds": dict(self.error_kinds()),
            "resumed_shards": list(self.resumed_shards),
            "unfinished_shards": list(self.unfinished_shards),
            "stopped": self.stopped,
            "expected_shards": self.expected_shards,
            "samples_this_run": self.samples_this_run,
            "wall_seconds": round(self.wall_seconds, 3),
            "samples_per_second": self.samples_per_second,
            "per_shard": [asdict(s) for s in self.shards],
        }


def read_shard_stats(output_folder: str | Path) -> list[ShardStats]:
    """Parse every ``NNNNN_stats.json`` at the top of ``output_folder``, by shard number."""
    found = []
    for path in sorted(Path(output_folder).glob("*_stats.json")):
        shard = layout.raw_stats_shard_id(path)
        if shard is None:
            continue
        try:
            stats = json.loads(path.read_text())
            found.append(
                ShardStats(
                    shard=shard,
                    count=int(stats["count"]),
                    successes=int(stats["successes"]),
                    failed_to_download=int(stats["failed_to_download"]),
                    failed_to_resize=int(stats["failed_to_resize"]),
                    duration=float(stats["duration"]),
                    status={str(k): int(v) for k, v in stats.get("status_dict", {}).items()},
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ClipaError(
                f"{path}: not an img2dataset stats file ({error!r}); delete it and re-run to "
                "download that shard again"
            ) from None
    return sorted(found, key=lambda s: s.shard)


def finished_shard_ids(output_folder: str | Path) -> set[int]:
    """Shards of ``output_folder`` that have a ``_stats.json`` (img2dataset's 'done')."""
    ids = (layout.raw_stats_shard_id(p) for p in Path(output_folder).glob("*_stats.json"))
    return {i for i in ids if i is not None}


def shard_file_ids(output_folder: str | Path) -> set[int]:
    """Shards of ``output_folder`` that have a ``.tfrecord``/``.tar`` file (finished or not)."""
    ids = (layout.raw_shard_id(p) for p in Path(output_folder).iterdir())
    return {i for i in ids if i is not None}


class UnfinishedShardsError(ClipaError):
    """Some shards have no ``_stats.json`` after the run; ``summary`` says what did finish."""

    def __init__(self, message: str, summary: DownloadSummary) -> None:
        super().__init__(message)
        self.summary = summary


# --- checks before img2dataset starts ---------------------------------------------------------


def _input_files(config: DownloadConfig) -> list[Path]:
    """The local metadata files img2dataset will read (it globs ``*.<format>`` in a folder)."""
    path = Path(config.url_list)
    if not path.exists():
        raise ClipaError(
            f"URL list {path} does not exist; pass a {config.input_format} file or a folder of "
            "them (--input-format sets the format)"
        )
    if path.is_dir():
        files = sorted(path.glob(f"*.{config.input_format}"))
        if not files:
            raise ClipaError(
                f"URL list folder {path} has no *.{config.input_format} files; add some or pass "
                "--input-format to match the files there"
            )
        return files
    return [path]


def _note_other_formats(config: DownloadConfig) -> None:
    """One line naming the files of a URL-list folder in another list format: img2dataset reads
    only ``*.<--input-format>``, and a folder of mixed lists was downloaded in part, exit 0."""
    folder = Path(config.url_list)
    if not folder.is_dir():
        return
    others = sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file()
        and not path.name.endswith(f".{config.input_format}")
        and any(path.name.endswith(f".{kind}") for kind in INPUT_FORMATS)
    )
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        print(
            f"note: {folder} also holds {shown}, which --input-format {config.input_format} "
            "leaves out (img2dataset reads one format a run)",
            file=sys.stderr,
        )


def wanted_columns(config: DownloadConfig) -> dict[str, str]:
    """The input columns img2dataset will select, each with the flag that names it."""
    wanted = {config.url_col: "--url-col"}
    if config.caption_col:
        wanted[config.caption_col] = "--caption-col"
    for name in config.save_additional_columns:
        wanted.setdefault(name, "--save-additional-columns")
    for argument in COLUMN_ARGUMENTS:  # img2dataset arguments that name an input column
        if config.extra.get(argument):
            wanted.setdefault(str(config.extra[argument]), f"--i2d {argument}")
    return wanted


def _parquet_rows(config: DownloadConfig, files: list[Path]) -> list[int]:
    """Row counts of the parquet inputs, after checking they have the configured columns."""
    import pyarrow.parquet as pq

    rows = []
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, ValueError) as error:  # ArrowInvalid (not parquet) is a ValueError
            raise ClipaError(
                f"{path} is not a readable parquet file ({error}); fix the file or pass "
                "--input-format with its real format"
            ) from None
        check_columns(path, parquet.schema_arrow.names, wanted_columns(config))
        rows.append(parquet.metadata.num_rows)
    return rows


def _check_columns(config: DownloadConfig, files: list[Path]) -> None:
    """Text URL lists (CSV/TSV/JSON/JSON Lines): the header or first records hold the columns."""
    for path in files:
        columns = header_columns(path, config.input_format)
        if columns is not None:
            _check_separator(path, columns, config.input_format)
            check_columns(path, columns, wanted_columns(config))


def _check_separator(path: Path, columns: list[str], input_format: str) -> None:
    """A TSV read as CSV (or the other way round) has one column holding the whole header:
    the fix is the format, not the column flags the column check would name."""
    kind = input_format.removesuffix(".gz")
    other = {"csv": ("\t", "tsv", "tab"), "tsv": (",", "csv", "comma")}.get(kind)
    if other and len(columns) == 1 and other[0] in columns[0]:
        gz = ".gz" if input_format.endswith(".gz") else ""
        raise ClipaError(
            f"{path} looks {other[2]}-separated (its header is one {kind} column: "
            f"{columns[0][:80]!r}); pass --input-format {other[1]}{gz}"
        )


def _check_output(config: DownloadConfig) -> None:
    output = Path(config.output_folder)
    url = layout.split_url(config.output_folder)  # gs:/b/x too, as Typer's Path leaves it
    if url is not None:
        raise ClipaError(
            f"output folder {url[0]}://{url[1]} is remote; download to a local folder, then "
            "copy the shards (e.g. gsutil -m cp -r)"
        )
    if output.exists() and not output.is_dir():
        raise ClipaError(f"output folder {output} is a file; pass a folder path")
    _check_list_folder_apart(config)
    if config.incremental_mode == "overwrite":
        _check_overwritable(config)
    if output.is_dir() and config.incremental_mode != "overwrite":
        breaking = layout.resume_breaking_json(output)
        if breaking:
            raise ClipaError(
                f"{breaking[0]} would crash img2dataset's resume (it reads every top-level *.json "
                f"as a shard's stats); move it out of {output}"
            )
        _check_same_sharding(config)
        _check_same_settings(config)
        _check_same_rows(config)
        _check_extend_runs(config)
        _check_nothing_left_to_finish(config)


def _check_list_folder_apart(config: DownloadConfig) -> None:
    """A URL-list folder that is the output folder gets img2dataset's per-shard ``.parquet``
    files: the next run read them as URL lists (and a stop deleted its unfinished ones)."""
    given = Path(config.url_list)
    if layout.is_url(config.url_list) or not given.is_dir():
        return
    if given.resolve() == Path(config.output_folder).resolve():
        raise ClipaError(
            f"the URL-list folder {config.url_list} is the output folder: img2dataset writes "
            "each shard's own .parquet and _stats.json there, which a re-run would read as "
            "URL lists (parquet or json input); pass another output folder"
        )


def _check_overwritable(config: DownloadConfig) -> None:
    """``--incremental-mode overwrite`` deletes the whole output folder: refuse a folder that
    holds files but is not an earlier download's output (a typo such as ``--output-folder ~``
    must not delete a home folder), or one that holds the URL list."""
    output = Path(config.output_folder)
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not layout.is_url(config.url_list):
        given = Path(config.url_list).absolute()  # a link in the folder goes too
        inside = (given.resolve(), given.parent.resolve() / given.name)
        if any(path.is_relative_to(output.resolve()) for path in inside):
            raise ClipaError(
                f"--incremental-mode overwrite would delete the URL list {config.url_list}, "
                f"which is inside the output folder {output}; move it out of the folder first"
            )
    if (output / layout.CLIPA_SUBDIR).is_dir() or any(output.glob("*_stats.json")):
        return
    raise ClipaError(
        f"--incremental-mode overwrite would delete {output}, which holds files but is not a "
        "clipa-data download output (no _clipa/ folder, no *_stats.json); pass the download's "
        "own folder, or an empty or new one"
    )


def _sharding_path(output_folder: str | Path) -> Path:
    """Where the shard size is recorded before img2dataset starts: a run stopped hard (a second
    Ctrl-C, a kill) leaves finished shards but no summary."""
    return layout.download_start_path(Path(output_folder))


SHARD_CONTENT_SETTINGS = (
    "url_list", "input_format", "url_col", "caption_col", "save_additional_columns",
    "image_size", "resize_mode", "output_format", "extra", "url_files",
)  # fmt: skip
"""The settings that decide what a shard holds: a resume with any of them changed would leave
shards of two kinds in one folder (``extend`` mode adds shards from another URL list). ``extra``
is the ``--i2d`` arguments but those in ``EXTRAS_OUTSIDE_SHARDS``; ``url_files`` the names of
the local URL list's files (img2dataset numbers shards across them in name order, so a file
removed from a folder, or added before others, moves every shard after it). Their contents are
not compared: a list written again with other URLs for the same images (the demo serves them on
a new port each run) is the same list."""

EXTRAS_OUTSIDE_SHARDS = (
    "enable_wandb", "wandb_project", "subjob_size", "max_shard_retry", "user_agent_token",
)  # fmt: skip
"""img2dataset arguments that change how a download runs or reports, not what its shards hold
(encode quality, minimum size, bounding boxes … do): a resume may change them."""


def _content_settings(config: DownloadConfig) -> dict[str, Any]:
    settings = {name: getattr(config, name, None) for name in SHARD_CONTENT_SETTINGS}
    settings["save_additional_columns"] = list(config.save_additional_columns)
    in_shards = {k: v for k, v in config.extra.items() if k not in EXTRAS_OUTSIDE_SHARDS}
    # As config.json will read it back (tuples as lists), so an unchanged value compares equal.
    settings["extra"] = json.loads(json.dumps(dict(sorted(in_shards.items())), default=str))
    if not layout.is_url(config.url_list):  # the same list, however the path was spelled
        settings["url_list"] = str(Path(config.url_list).resolve())
        files = _input_files(config)
        settings["url_files"] = [path.name for path in files]
    return settings


def _record_sharding(config: DownloadConfig) -> None:
    """Record the shard size and settings, and remove the earlier run's summary: a run killed
    before it writes its own must not leave the earlier one describing the folder (``convert``
    reads a start record without a summary as a download that did not finish)."""
    layout.download_summary_path(Path(config.output_folder)).unlink(missing_ok=True)
    write_json(
        _sharding_path(config.output_folder),
        {
            "number_sample_per_shard": config.number_sample_per_shard,
            "settings": _content_settings(config),
            "url_rows": _url_rows(config),
            "incremental_mode": config.incremental_mode,
            "first_shard": _first_new_shard(config),
        },
    )


def _first_new_shard(config: DownloadConfig) -> int:
    """The first shard this run writes: after the last finished one in ``extend`` mode (as
    img2dataset numbers them), else 0."""
    if config.incremental_mode != "extend" or not Path(config.output_folder).is_dir():
        return 0
    return max(finished_shard_ids(config.output_folder), default=-1) + 1


def resume_advice(config: DownloadConfig) -> str:
    """How to finish this download if it stops (see ``download_start.resume_advice``)."""
    return download_start.resume_advice(config.incremental_mode, read_start(config.output_folder))


def _check_extend_runs(config: DownloadConfig) -> None:
    """The URL list the folder's last run read, again: ``extend`` would download it twice, and
    after an ``extend`` run ``incremental`` would number its shards from 0 (img2dataset's
    resume) and skip those of the earlier lists instead."""
    recorded = read_start(config.output_folder)
    settings = recorded.get("settings")
    if config.incremental_mode == "overwrite" or not isinstance(settings, dict):
        return
    now = _content_settings(config)
    if any(settings.get(name) != now[name] for name in ("url_list", "url_files")):
        return
    first = download_start.extended_from(recorded)
    written = f"{first:05d} and later" if first is not None else ""
    if config.incremental_mode == "incremental" and first is not None:
        raise ClipaError(
            f"{config.output_folder}: its last run extended it with URL_LIST {config.url_list}, "
            "which an incremental resume would number from shard 0 and so skip the earlier "
            f"lists' shards instead; if that run stopped, delete the shards it wrote ({written}, "
            "each with its _stats.json and .parquet) and extend again"
        )
    if config.incremental_mode != "extend":
        return
    if first is not None:
        fix = (
            f"if that run stopped, delete the shards it wrote ({written}, each with its "
            "_stats.json and .parquet) and extend again"
        )
    else:
        fix = "to finish a stopped download of it, re-run with --incremental-mode incremental"
    raise ClipaError(
        f"{config.output_folder} was last downloaded from URL_LIST {config.url_list} already; "
        f"extending with it again would download its rows a second time: extend with a new URL "
        f"list, or {fix}"
    )


def _check_nothing_left_to_finish(config: DownloadConfig) -> None:
    """``extend`` numbers its shards after the last finished one: shards an earlier run left
    unfinished (stopped, killed, failed) could then never be downloaded (a resume of their list
    is refused once another list extended the folder). Refuse it, naming them and the fix."""
    output = Path(config.output_folder)
    finished = finished_shard_ids(output)
    if config.incremental_mode != "extend" or not finished:
        return
    last = max(finished)
    unfinished = set(range(last)) - finished
    summary = download_start.read_summary(output)
    unlisted = None  # why shards after the last finished one may be missing too
    if summary is None and layout.download_start_path(output).is_file():
        unlisted = "it wrote no summary: it was killed, failed, or is still running"
    elif summary is not None:
        with contextlib.suppress(TypeError, ValueError):
            unfinished |= {int(shard) for shard in summary.get("unfinished_shards") or ()}
        if summary.get("stopped") is True and summary.get("expected_shards", 0) is None:
            unlisted = "it was stopped before the end of its URL list, whose size was unknown"
    if not unfinished and unlisted is None:
        return
    shown = [f"{shard:05d}" for shard in sorted(unfinished)]
    listed = ", ".join(shown[:10]) + (f" and {len(shown) - 10} more" if len(shown) > 10 else "")
    what = f"shards {listed} of an earlier download never finished" if unfinished else ""
    if unlisted is not None:
        what += ("; " if what else "") + f"its last download may have left shards ({unlisted})"
    recorded = read_start(output)
    advice = download_start.resume_advice(recorded.get("incremental_mode", "incremental"), recorded)
    raise ClipaError(
        f"{output}: {what}; an extend run numbers its shards after the last finished one "
        f"({last:05d}), so those could never be downloaded. To finish that download: "
        f"{advice.replace('the same command', 'its command')}; then extend"
    )


def _check_same_settings(config: DownloadConfig) -> None:
    """Resuming with other image or column settings (or, except in ``extend`` mode, another
    URL list) silently mixes two kinds of shards: refuse it, naming what changed."""
    if not finished_shard_ids(config.output_folder):
        return
    recorded = read_start(config.output_folder).get("settings")
    if not isinstance(recorded, dict):
        return  # an output of an older clipa: only its shard size is known
    now = _content_settings(config)
    names = [
        n
        for n in SHARD_CONTENT_SETTINGS
        if config.incremental_mode != "extend" or n not in ("url_list", "url_files")
    ]
    changed = [n for n in names if n in recorded and recorded[n] != now[n]]
    if "url_files" in changed and _appended(recorded["url_files"], now["url_files"]):
        changed.remove("url_files")  # new files after the others: new shards after the others
    if "url_files" in changed and recorded["url_files"] and now["url_files"]:
        # Name only the files that differ: a folder may hold hundreds.
        was_files, now_files = set(recorded["url_files"]), set(now["url_files"])
        differ = was_files ^ now_files
        recorded = {**recorded, "url_files": _only(was_files, differ)}
        now = {**now, "url_files": _only(now_files, differ)}
    if changed:
        was = ", ".join(_as_flag(n, recorded[n]) for n in changed)
        given = ", ".join(_as_flag(n, now[n]) for n in changed)
        raise ClipaError(
            f"{config.output_folder} was downloaded with {was}; resume with the same settings "
            f"(this command gives {given}), or download into another OUTPUT_FOLDER (or pass "
            "--incremental-mode overwrite to start this one again)"
        )


def _url_rows(config: DownloadConfig) -> dict[str, int] | None:
    """Rows of each local URL-list file (None: a remote list, read by img2dataset only)."""
    if layout.is_url(config.url_list):
        return None
    return {path.name: list_rows(path, config.input_format) for path in _input_files(config)}


def _check_some_rows(config: DownloadConfig) -> None:
    """A URL list without a single row: img2dataset started (seconds) to download nothing, and
    the summary sent the user on to a convert that could only fail."""
    header = 1 if config.input_format.removesuffix(".gz") in ("csv", "tsv") else 0
    rows = _url_rows(config) or {}
    if rows and all(count <= header for count in rows.values()):
        held = "only a header" if header else "nothing"
        what = f"its files hold {held}" if len(rows) > 1 else f"it holds {held}"
        raise ClipaError(
            f"URL list {config.url_list} has no rows ({what}); give a list with one row per image"
        )


def _check_same_rows(config: DownloadConfig) -> None:
    """A URL-list file whose rows changed since the folder was downloaded from it: img2dataset
    resumes by shard number, so rows appended after a finished partial last shard were never
    downloaded (and inserted ones shift every later shard). Refuse it, naming the file."""
    if config.incremental_mode == "extend" or not finished_shard_ids(config.output_folder):
        return
    recorded = read_start(config.output_folder).get("url_rows")
    if not isinstance(recorded, dict):
        return  # a remote list, or an output of an older clipa
    now = _url_rows(config) or {}
    changed = [name for name in sorted(recorded) if name in now and now[name] != recorded[name]]
    if changed:
        name, unit = changed[0], row_unit(config.input_format)
        raise ClipaError(
            f"{config.output_folder} was downloaded from {name} when it had {recorded[name]} "
            f"{unit}; it has {now[name]} now (resuming would skip or shift rows): restore the "
            "file and put new rows in a file of their own (added after the others in a URL-list "
            "folder, or downloaded with --incremental-mode extend), or start again with "
            "--incremental-mode overwrite"
        )


def _as_flag(name: str, value: Any) -> str:
    """A download setting as the user gives it: ``--image-size 256``, ``URL_LIST urls.parquet``."""
    if name == "url_files":
        return _as_url_files(value)
    if name == "extra":
        pairs = [f"--i2d {shlex.quote(f'{key}={item}')}" for key, item in value.items()]
        return " ".join(pairs) or "no --i2d"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    shown = shlex.quote(str(value if value is not None else ""))
    return f"URL_LIST {shown}" if name == "url_list" else f"--{name.replace('_', '-')} {shown}"


def _appended(was: list[str] | None, now: list[str] | None) -> bool:
    """Whether the URL-list folder only gained files that sort after all of its earlier ones:
    img2dataset numbers their shards after the earlier files' shards, so the finished shards
    stay what they were and a resume downloads the new ones."""
    if not was or not now or not set(was) <= set(now):
        return False
    return all(name > max(was) for name in set(now) - set(was))


def _only(files: set[str], names: set[str]) -> dict[str, bool]:
    """Whether each of ``names`` is among ``files``."""
    return {name: name in files for name in sorted(names)}


def _as_url_files(files: dict[str, bool] | None) -> str:
    """``URL_LIST files a.parquet (absent), b.parquet (present)``: what a resume compares."""
    if files is None:
        return "a remote URL_LIST"
    shown = [f"{name} ({'present' if there else 'absent'})" for name, there in files.items()]
    more = f", … {len(shown) - 4} more" if len(shown) > 4 else ""
    return f"URL_LIST files {', '.join(shown[:4])}{more}"


def _recorded_sharding(output_folder: str | Path) -> int | None:
    """The shard size of the earlier run in ``output_folder`` (its record, else its summary)."""
    summary = layout.download_summary_path(Path(output_folder))
    for path, keys in ((_sharding_path(output_folder), ()), (summary, ("config",))):
        try:
            recorded = json.loads(path.read_text())
            for key in keys:
                recorded = recorded[key]
            return int(recorded["number_sample_per_shard"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _check_same_sharding(config: DownloadConfig) -> None:
    """Resuming with another shard size silently mixes two shardings: refuse it."""
    if not finished_shard_ids(config.output_folder):
        return
    previous = _recorded_sharding(config.output_folder)
    if previous is None:
        return
    if previous != config.number_sample_per_shard and config.incremental_mode == "incremental":
        raise ClipaError(
            f"{config.output_folder} was downloaded with number_sample_per_shard={previous}; "
            f"resume with the same value (got {config.number_sample_per_shard}) or use "
            "--incremental-mode overwrite"
        )


def _check_plain_text_columns(config: DownloadConfig) -> None:
    """A ``txt`` list is one URL a line: img2dataset reads that one column and ignores the
    caption and extra columns it was given, so the shards would hold images without captions
    (useless for CLIP) without a word. Say so unless none were asked for."""
    if config.input_format.removesuffix(".gz") != "txt":
        return
    asked = [f"--caption-col {config.caption_col}"] * bool(config.caption_col) + [
        f"--save-additional-columns {','.join(config.save_additional_columns)}"
    ] * bool(config.save_additional_columns)
    if asked:
        raise ClipaError(
            f"--input-format {config.input_format} ({config.url_list}) holds only URLs, one a "
            f"line, so {' and '.join(asked)} cannot be read from it; give a csv, tsv, jsonl or "
            "parquet list with those columns, or pass --caption-col '' "
            "--save-additional-columns '' to download images alone"
        )


def check_inputs(config: DownloadConfig) -> range | None:
    """Check what img2dataset would trip over mid-run; return the shard numbers it will write.

    The shard numbers are known only for local parquet input (row counts come from the
    footers) outside ``extend`` mode; otherwise None.
    """
    _check_plain_text_columns(config)
    files = None if layout.is_url(config.url_list) else _input_files(config)
    rows = _parquet_rows(config, files) if files and config.input_format == "parquet" else None
    if files and config.input_format != "parquet":
        _check_columns(config, files)
    if files:
        _check_some_rows(config)
    _check_output(config)
    if files:  # once nothing refuses the run: a note, then a refusal, would be two lines
        _note_other_formats(config)
    if config.distributor == "pyspark":
        spark.import_pyspark()
    if rows is None or config.incremental_mode == "extend":
        return None
    return range(sum(math.ceil(n / config.number_sample_per_shard) for n in rows))


# --- the run ----------------------------------------------------------------------------------


def _clear_for_overwrite(config: DownloadConfig) -> None:
    """``--incremental-mode overwrite``: empty the output folder (checked by
    ``_check_overwritable``), keeping the folder itself, which holds this run's lock."""
    if config.incremental_mode != "overwrite":
        return
    for entry in Path(config.output_folder).iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _run_arguments(config: DownloadConfig) -> dict[str, Any]:
    """img2dataset's arguments for this run: its overwrite would delete the output folder (with
    our log, lock and its own ``_tmp`` in it), so an overwrite runs incrementally in the folder
    ``_clear_for_overwrite`` emptied."""
    arguments = config.img2dataset_arguments()
    if config.incremental_mode == "overwrite":
        arguments["incremental_mode"] = "incremental"
    return arguments


def _run_img2dataset(config: DownloadConfig) -> None:
    """Call img2dataset in this process (pyspark: it uses this process's SparkSession); a
    Ctrl-C stays an interrupt (img2dataset's handler would exit 0)."""
    img2dataset = import_img2dataset()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT)
    try:
        img2dataset.download(**_run_arguments(config))
    except SystemExit:
        # img2dataset installs a SIGINT handler that calls sys.exit(0); an interrupted download
        # must not look like a finished one.
        raise KeyboardInterrupt(f"download interrupted; {resume_advice(config)}") from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)


def _start_worker(config: DownloadConfig, log: Any, lock: int) -> subprocess.Popen:
    """img2dataset in a child process (``download_worker``), its output into ``log``.

    Its own session: a terminal's Ctrl-C reaches only us, and we pass on a stop request. It
    inherits the folder's ``lock`` (a child that outlives us keeps it: no second download
    starts beside it) and is asked to stop when we die (``download_worker.PARENT_ENV``).
    """
    from clipa_data.prepare.download_worker import PARENT_ENV

    env = {
        **os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1",
        PARENT_ENV: str(os.getpid()),
    }  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-m", "clipa_data.prepare.download_worker"],
        stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True, pass_fds=(lock,),
    )  # fmt: skip
    arguments = _run_arguments(config)
    with child.stdin:  # type: ignore[union-attr]
        child.stdin.write(pickle.dumps(arguments))  # type: ignore[union-attr]
    return child


def _progress(show: bool, total: int | None) -> tuple[Progress, Any]:
    """Our one progress bar for the shards of this run (img2dataset's output goes to the log)."""
    progress = Progress(
        TextColumn("[bold]downloading"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not show,
    )  # fmt: skip
    return progress, progress.add_task("downloading", total=total, rate="")


def _watch(child: subprocess.Popen, output: Path, resumed: set[int], total: int | None, show: bool):
    """Wait for the child, advancing the bar as shards get their ``_stats.json``."""
    progress, task = _progress(show, total)
    counted: dict[int, int] = {}
    started = time.perf_counter()
    with progress:
        while True:
            running = child.poll() is None
            for path in output.glob("*_stats.json"):
                shard = layout.raw_stats_shard_id(path)
                if shard is None or shard in resumed or shard in counted:
                    continue
                try:  # only new files are read: a LAION download has tens of thousands
                    counted[shard] = int(json.loads(path.read_text())["count"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # being written right now: next round
            rate = sum(counted.values()) / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=len(counted), rate=f"{rate:,.0f} samples/s")
            if not running:
                return child.returncode
            time.sleep(0.5)


def remove_unfinished_shards(config: DownloadConfig) -> list[Path]:
    """Delete what a killed img2dataset left half-written: the files of shards without
    ``_stats.json`` (a re-run downloads them again) and its ``_tmp`` folder."""
    output = Path(config.output_folder)
    removed = []
    for stats in output.glob("*_stats.json"):
        try:
            json.loads(stats.read_text())
        except (OSError, ValueError):  # cut off while written: the shard is not finished
            stats.unlink()
            removed.append(stats)
    finished = finished_shard_ids(output)
    for path in output.iterdir() if output.is_dir() else []:
        match = PARTIAL_SHARD_FILE.match(path.name)
        if match and int(match["id"]) not in finished and path != Path(config.url_list):
            path.unlink()
            removed.append(path)
    shutil.rmtree(output / "_tmp", ignore_errors=True)
    return removed


def _run_worker(
    config: DownloadConfig, resumed: set[int], total: int | None, show: bool, lock: int
) -> bool:
    """img2dataset in a child process, watched; returns whether a stop was requested.

    The first SIGINT/SIGTERM asks the child to finish its shards in flight; a second kills its
    whole process group at once and removes the half-written shards (``StopNow``).
    """
    output = Path(config.output_folder)
    _clear_for_overwrite(config)
    log_path = layout.download_log_path(output)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _record_sharding(config)
    with open(log_path, "ab") as log:
        child = _start_worker(config, log, lock)
        stop = ShardStop(on_first=lambda: child.send_signal(signal.SIGINT))
        try:
            with stop:
                returncode = _watch(child, output, resumed, total, show)
        except BaseException:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            remove_unfinished_shards(config)
            raise
    if returncode != 0 and not stop.requested:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        raise ClipaError(
            f"img2dataset failed (exit {returncode}): {first_error(lines)}; "
            f"its whole output is in {log_path}"
        )
    if stop.requested:
        remove_unfinished_shards(config)
    return stop.requested


def first_error(lines: list[str]) -> str:
    """The exception line of the first traceback in img2dataset's output (the later ones are
    often its worker processes dying of the first), else its last line."""
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            return line
    return lines[-1] if lines else "no output"


def _all_finished(config: DownloadConfig, expected: range | None, finished: set[int]) -> bool:
    """Whether a resume has nothing left to do (img2dataset's worker start-up alone costs
    seconds per process, so skip it)."""
    return (
        config.incremental_mode == "incremental"
        and expected is not None
        and len(expected) > 0
        and set(expected) <= finished
    )


def _finished_before(config: DownloadConfig, finished: set[int]) -> bool:
    """Whether the last run in the folder went through its whole URL list (its summary: not
    stopped, no unfinished shard) and the same shards are still finished: with the settings and
    list unchanged (checked before), a resume has nothing left to do. For a list of unknown
    size (not parquet) this is the only way to know it without starting img2dataset. A remote
    list may have grown under the same name: img2dataset reads it again."""
    if config.incremental_mode != "incremental" or not finished or layout.is_url(config.url_list):
        return False
    summary = download_start.read_summary(config.output_folder)
    try:
        shards = {int(shard["shard"]) for shard in summary["per_shard"]}
        files = read_start(config.output_folder)["settings"]["url_files"]
    except (ValueError, KeyError, TypeError):  # no summary, or an older clipa's
        return False
    if files != _content_settings(config)["url_files"]:  # files added to the folder since
        return False
    return (
        summary.get("stopped") is False
        and not summary.get("unfinished_shards")
        and (shards == finished)
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def download(config: DownloadConfig, show_progress: bool = True) -> DownloadSummary:
    """Run img2dataset with ``config``, then summarise the shards and write the summary JSON.

    With the multiprocessing distributor img2dataset runs in a child process whose output goes
    to ``_clipa/img2dataset.log``; the console shows one progress bar (``show_progress``).
    Raises ``ClipaError`` for bad input (before anything starts), for a call outside a
    ``__main__`` guard, and when shards remain unfinished (after writing the summary): re-run
    the same call to retry them; finished shards are skipped. A first Ctrl-C/SIGTERM finishes
    the shards in flight and raises ``Interrupted`` (after writing the summary); a second stops
    at once (``StopNow``).
    """
    check_spawn_safe("clipa_data.prepare.download.download()")
    output = Path(config.output_folder)
    expected = check_inputs(config)
    output.mkdir(parents=True, exist_ok=True)
    with only_run_in(output, "clipa-data download") as lock:
        return _download(config, expected, lock, show_progress)


def _download(
    config: DownloadConfig, expected: range | None, lock: int, show_progress: bool
) -> DownloadSummary:
    """``download`` once the output folder is this process's (``lock``: its descriptor)."""
    output = Path(config.output_folder)
    resumed = (
        finished_shard_ids(output)
        if output.is_dir() and config.incremental_mode != "overwrite"
        else set()
    )
    started = time.perf_counter()
    stopped = False
    if _all_finished(config, expected, resumed) or _finished_before(config, resumed):
        pass
    elif config.distributor == "multiprocessing":
        total = len(set(expected) - resumed) if expected is not None else None
        stopped = _run_worker(config, resumed, total, show_progress, lock)
    else:  # pyspark: img2dataset runs in this process, on this session
        spark.spark_context(config.spark_master, config.processes_count)
        _clear_for_overwrite(config)
        _record_sharding(config)
        _run_img2dataset(config)
    wall_seconds = time.perf_counter() - started

    shards = read_shard_stats(output)
    finished = {s.shard for s in shards}
    unfinished = set(expected) if expected is not None else shard_file_ids(output)
    summary = DownloadSummary(
        output_folder=str(output),
        output_format=config.output_format,
        shards=tuple(shards),
        resumed_shards=tuple(sorted(resumed & finished)),
        unfinished_shards=tuple(sorted(unfinished - finished)),
        stopped=stopped,
        expected_shards=len(expected) if expected is not None else None,
        wall_seconds=wall_seconds,
        summary_path=str(layout.download_summary_path(output)),
    )
    write_json(
        Path(summary.summary_path),
        {
            "summary": summary.to_json(),
            "config": _jsonable(asdict(config)),
            "img2dataset_arguments": _jsonable(config.img2dataset_arguments()),
            "versions": package_versions(["img2dataset", "pyarrow", "numpy"]),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    if stopped:
        left = f", {len(summary.unfinished_shards)} left" if expected is not None else ""
        raise Interrupted(
            f"stopped: {len(finished)} shard(s) finished in {output}{left}; {resume_advice(config)}"
        )
    if summary.unfinished_shards:
        listed = ", ".join(str(i) for i in summary.unfinished_shards[:10])
        where = (
            f"see img2dataset's log {layout.download_log_path(output)}"
            if config.distributor == "multiprocessing"
            else "see img2dataset's messages above"
        )
        raise UnfinishedShardsError(
            f"{len(summary.unfinished_shards)} shard(s) did not finish in {output} ({listed}); "
            f"{where}, then {resume_advice(config).replace(' to resume', ' to retry them')}",
            summary,
        )
    return summary
