"""The columns of a URL list, read from its header alone, and the check that the download's
column flags name columns it has.

img2dataset reads each input file whole and only then selects the configured columns: a
missing one is a ``KeyError`` deep in a worker, after retries, with ``_tmp/`` left behind.
Reading the header (CSV/TSV), the first records (JSON Lines, a JSON array) or the footer
(parquet) finds it at once, for any file size.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from clipa_data.core.errors import ClipaError

JSONL_PROBE_LINES = 1000
"""JSON Lines records whose keys are read (pyarrow infers the columns from the first block)."""
JSON_CHUNK = 1 << 16
"""Characters read at a time while looking for the first record of a JSON array."""

FLAG_HINTS = {
    "--url-col": "the column holding the image URLs",
    "--caption-col": 'the column holding the captions ("" for none)',
    "--save-additional-columns": 'columns it has, comma-separated ("" keeps none)',
    "--i2d bbox_col": "the column holding the face boxes to blur (or a metadata file that has it)",
}
"""What each column flag should be set to, for the error message."""
USUAL_NAMES = {
    "--url-col": ("url", "image_url", "img_url", "link"),
    "--caption-col": ("caption", "text", "title", "alt", "description"),
}
"""Column names URL lists commonly use, suggested (any case) when the configured one is absent."""


GZIP_MAGIC = b"\x1f\x8b"


def _check_compression(path: Path, input_format: str) -> None:
    """img2dataset decompresses a list exactly when its ``--input-format`` ends in ``.gz``,
    whatever the file's name: a mismatch fails inside img2dataset after it started."""
    with path.open("rb") as handle:
        gzipped = handle.read(2) == GZIP_MAGIC
    kind = input_format.removesuffix(".gz")
    if gzipped and input_format == kind:
        raise ClipaError(
            f"{path} is gzip-compressed, but --input-format {input_format} reads it as plain "
            f"text (img2dataset would fail on it): pass --input-format {kind}.gz"
        )
    if not gzipped and input_format != kind:
        raise ClipaError(
            f"{path} is not gzip-compressed, but --input-format {input_format} decompresses it "
            f"(img2dataset would fail on it): pass --input-format {kind}"
        )


def _open_text(path: Path, input_format: str) -> io.TextIOBase:
    """The file as text (gunzipped for a ``.gz`` format; a UTF-8 byte-order mark is dropped)."""
    if input_format.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return path.open(encoding="utf-8-sig", newline="")


def _first_json_array_record(stream: io.TextIOBase, path: Path) -> list[str]:
    """Keys of the first object of a JSON array (``[{...}, ...]``; the ``[`` already read),
    reading only as far as that object."""
    decoder, text = json.JSONDecoder(), ""
    while True:
        chunk = stream.read(JSON_CHUNK)
        text += chunk
        start = 0
        while start < len(text) and text[start].isspace():
            start += 1
        if text[start : start + 1] == "]":
            return []
        try:
            record, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            if not chunk:
                raise
            continue
        if not isinstance(record, dict):
            raise ClipaError(f"{path}: a JSON URL list must hold records ({{column: value}})")
        return list(record)


def _json_columns(stream: io.TextIOBase, path: Path) -> list[str]:
    """A JSON array of records, or an object of columns (pandas' default orientation)."""
    head = stream.read(1)
    while head.isspace():
        head = stream.read(1)
    if head == "[":
        return _first_json_array_record(stream, path)
    if head == "{":
        columns = json.loads(head + stream.read())
        if not all(isinstance(values, (list, dict)) for values in columns.values()):
            raise ClipaError(
                f"{path}: a JSON object must map each column to its values (a list, or "
                "{row: value}); for one record per line pass --input-format jsonl"
            )
        return list(columns)
    raise ClipaError(f"{path}: not a JSON array or object; pass --input-format with its format")


def _jsonl_columns(stream: io.TextIOBase) -> list[str]:
    """The keys of the first records of a JSON Lines file, in first-seen order."""
    columns: dict[str, None] = {}
    for number, line in enumerate(stream):
        if number >= JSONL_PROBE_LINES:
            break
        if line.strip():
            record = json.loads(line)
            columns.update(dict.fromkeys(record if isinstance(record, dict) else []))
    return list(columns)


def header_columns(path: Path, input_format: str) -> list[str] | None:
    """The columns of the URL list ``path`` (None for plain text: one URL a line)."""
    kind = input_format.removesuffix(".gz")
    try:
        _check_compression(path, input_format)
        if kind == "txt":
            return None
        with _open_text(path, input_format) as stream:
            if kind in ("csv", "tsv"):
                reader = csv.reader(stream, delimiter="," if kind == "csv" else "\t")
                return next(reader, [])
            if kind == "jsonl":
                return _jsonl_columns(stream)
            return _json_columns(stream, path)
    except (OSError, EOFError, UnicodeDecodeError, ValueError, csv.Error) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ClipaError(
            f"{path} is not a readable {input_format} file ({detail}); fix the file or pass "
            "--input-format with its real format"
        ) from None


def check_columns(path: Path, columns: list[str], wanted: Mapping[str, str]) -> None:
    """Every column of ``wanted`` (column -> the flag that names it) is in ``columns``, or one
    line naming the file, the missing columns, the columns found and the flags to change."""
    missing = [name for name in wanted if name not in columns]
    if not missing:
        return
    if not columns:
        raise ClipaError(
            f"{path} is empty (no header line naming its columns, no rows); give a URL list "
            "with a header line and one row per image"
        )
    # "url, caption" has a column " caption": match names however they are cased or spaced.
    lowered = {column.strip().lower(): column for column in columns}
    fixes = []
    for flag in dict.fromkeys(wanted[name] for name in missing):
        names = [name.strip().lower() for name in missing if wanted[name] == flag]
        usual = [lowered[n] for n in (*names, *USUAL_NAMES.get(flag, ())) if n in lowered]
        if flag in USUAL_NAMES and usual:
            fixes.append(f"{flag} {shlex.quote(usual[0])}")
        else:
            fixes.append(f"{flag} with {FLAG_HINTS[flag]}")
    found = ", ".join(columns) if columns else "none"
    raise ClipaError(
        f"{path} has no column {', '.join(map(repr, missing))} (columns found: {found}); "
        f"pass {'; '.join(fixes)}"
    )


def row_unit(input_format: str) -> str:
    """What ``list_rows`` counts in a list of ``input_format``: rows or (text lists) lines."""
    return "rows" if input_format.removesuffix(".gz") in ("parquet", "json") else "lines"


def list_rows(path: Path, input_format: str) -> int:
    """How many rows the URL list ``path`` holds, as a resume compares them: parquet's row
    count; the lines of a CSV/TSV/TXT/JSON Lines file (a header counts too: only changes
    matter); the records of a JSON array. A file that cannot be read is one line."""
    try:
        state = Path(path).stat()
        return _count_rows_once(str(path), state.st_mtime_ns, state.st_size, input_format)
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ClipaError(
            f"{path} is not a readable {input_format} file ({detail}); fix the file or pass "
            "--input-format with its real format"
        ) from None


@functools.lru_cache(maxsize=64)
def _count_rows_once(path: str, mtime_ns: int, size: int, input_format: str) -> int:
    """``_count_rows`` once per file version: a resume checks the rows, then records them (a
    text list of LAION's size takes seconds to count)."""
    return _count_rows(Path(path), input_format)


def _count_rows(path: Path, input_format: str) -> int:
    import pyarrow.parquet as pq

    if input_format == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if input_format.endswith(".gz") else open
    if input_format.removesuffix(".gz") == "json":
        with opener(path, "rt", encoding="utf-8-sig") as stream:
            records = json.load(stream)
        return len(records) if isinstance(records, list) else len(next(iter(records.values()), []))
    lines, last = 0, b"\n"
    with opener(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            lines, last = lines + chunk.count(b"\n"), chunk[-1:]
    return lines + (last != b"\n")  # a last line without its newline
