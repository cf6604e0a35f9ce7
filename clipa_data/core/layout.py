"""Every path and shard-name rule of the project lives here and nowhere else.

Stages talk only through files whose names come from this module:

- img2dataset output (``clipa-data download``): ``00000.tfrecord|.tar``, ``00000.parquet``,
  ``00000_stats.json`` and our own ``_clipa/download_summary.json`` (kept out of the top level:
  img2dataset's resume parses every top-level ``*.json`` name as a shard number);
- a TFDS builder directory (``clipa-data convert``): ``<out>/<name>/<version>/`` holding
  ``<name>-<split>.tfrecord-XXXXX-of-NNNNN``, ``dataset_info.json``, ``features.json``,
  ``clipa_convert_manifest.json`` and ``clipa_convert_summary.json``, built in the hidden
  staging folder ``<out>/<name>/.<version>.partial`` and renamed into place when verified;
- Arrow sidecars (``clipa-data tag``): ``<builder>/sidecars/<shard file name>.arrow`` plus
  ``sidecars/tag_summary.json``.

Paths may be local (``str``/``Path``) or fsspec URLs (``gs://``, ``s3://``) on the read side.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core.errors import ClipaError

# --- img2dataset output -------------------------------------------------------------------------

RAW_SHARD_PATTERN = re.compile(r"^(?P<id>\d+)\.(?P<format>tfrecord|tar)$")
CLIPA_SUBDIR = "_clipa"
DOWNLOAD_SUMMARY = "download_summary.json"
DOWNLOAD_LOG = "img2dataset.log"
DOWNLOAD_START = "sharding.json"


def raw_shard_id(path: str | Path) -> int | None:
    """The img2dataset shard number of ``00012.tfrecord`` / ``00012.tar``, else None."""
    match = RAW_SHARD_PATTERN.match(Path(path).name)
    return int(match["id"]) if match else None


def raw_shard_format(path: str | Path) -> str | None:
    """``tfrecord`` or ``tar`` for an img2dataset shard file, else None."""
    match = RAW_SHARD_PATTERN.match(Path(path).name)
    return match["format"] if match else None


def raw_stats_path(shard: Path) -> Path:
    """img2dataset's per-shard statistics file (``00012_stats.json``) next to ``shard``."""
    return shard.with_name(f"{shard.name.split('.')[0]}_stats.json")


RAW_STATS_PATTERN = re.compile(r"^(?P<id>\d+)_stats\.json$")


def raw_stats_shard_id(path: str | Path) -> int | None:
    """The shard number of an img2dataset statistics file ``00012_stats.json``, else None."""
    match = RAW_STATS_PATTERN.match(Path(path).name)
    return int(match["id"]) if match else None


def resume_breaking_json(output_folder: Path) -> list[Path]:
    """Top-level ``*.json`` files that img2dataset's resume cannot parse as a shard number.

    Its incremental mode globs ``<output>/*.json`` and runs ``int(name.split("_")[0])`` on each,
    so any other JSON there (e.g. ``dataset_info.json``) crashes every re-run.
    """
    breaking = []
    for path in sorted(Path(output_folder).glob("*.json")):
        try:
            int(path.name.split("_")[0])
        except ValueError:
            breaking.append(path)
    return breaking


def download_summary_path(output_folder: Path) -> Path:
    """Where ``clipa-data download`` writes its summary (a subfolder img2dataset never globs)."""
    return Path(output_folder) / CLIPA_SUBDIR / DOWNLOAD_SUMMARY


def download_start_path(output_folder: Path) -> Path:
    """Where ``clipa-data download`` records its shard size and settings before img2dataset
    starts: with no summary beside it, the last run in the folder never finished."""
    return Path(output_folder) / CLIPA_SUBDIR / DOWNLOAD_START


def download_log_path(output_folder: Path) -> Path:
    """Where ``clipa-data download`` keeps img2dataset's own output (the console gets one bar)."""
    return Path(output_folder) / CLIPA_SUBDIR / DOWNLOAD_LOG


def find_raw_shards(folder: Path) -> list[Path]:
    """img2dataset shards (``*.tfrecord``, ``*.tar``) directly in ``folder``, by shard number."""
    shards = [
        entry
        for entry in Path(folder).iterdir()
        if raw_shard_id(entry) is not None and entry.is_file()
    ]
    return sorted(shards, key=lambda shard: (raw_shard_id(shard), shard.name))


# --- TFDS builder directory --------------------------------------------------------------------

DATASET_NAME_PATTERN = re.compile(r"[a-zA-Z]\w*")
SPLIT_NAME_PATTERN = re.compile(r"(\w|-)+")
VERSION_PATTERN = re.compile(r"\d+\.\d+\.\d+")
DATASET_INFO = "dataset_info.json"
FEATURES = "features.json"
CONVERT_MANIFEST = "clipa_convert_manifest.json"
CONVERT_SUMMARY = "clipa_convert_summary.json"
STAGING_SUFFIX = ".partial"
FILE_FORMAT = "tfrecord"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def check_dataset_name(name: str) -> str:
    """Reject names TFDS cannot parse back from a file name (e.g. with hyphens)."""
    if not DATASET_NAME_PATTERN.fullmatch(name):
        suggestion = re.sub(r"\W", "_", name)
        if not suggestion[:1].isalpha():
            suggestion = "d" + suggestion
        raise ClipaError(
            f"dataset name {name!r} is not valid for TFDS (letters, digits and underscores, "
            f"starting with a letter); use e.g. --name {suggestion}"
        )
    return name


def check_split_name(split: str) -> str:
    """Reject split names TFDS's file-name template cannot match."""
    if not SPLIT_NAME_PATTERN.fullmatch(split):
        raise ClipaError(f"split name {split!r} is not valid for TFDS (letters, digits, _ and -)")
    return split


def check_version(version: str) -> str:
    """Reject versions that are not X.Y.Z (TFDS infers the version from the folder name)."""
    if not VERSION_PATTERN.fullmatch(version):
        raise ClipaError(f"version {version!r} must look like 1.0.0")
    return version


def builder_dir(out: str | Path, name: str, version: str) -> str | Path:
    """``<out>/<name>/<version>``: the folder ``tfds.builder_from_directory`` loads."""
    return join(out, check_dataset_name(name), check_version(version))


def staging_dir(out: str | Path, name: str, version: str) -> str | Path:
    """``<out>/<name>/.<version>.partial``: where convert builds a builder dir before renaming it.

    Hidden and not ``X.Y.Z``, so TFDS never mistakes it for a version; a killed run leaves it
    behind and the next run resumes from it.
    """
    return join(out, check_dataset_name(name), f".{check_version(version)}{STAGING_SUFFIX}")


def convert_manifest_path(builder: str | Path) -> str | Path:
    """The manifest ``clipa-data convert`` writes into a builder directory (shard map, counts)."""
    return join(builder, CONVERT_MANIFEST)


def convert_summary_path(builder: str | Path) -> str | Path:
    """The run summary ``clipa-data convert`` writes next to its output."""
    return join(builder, CONVERT_SUMMARY)


def shard_index_width(num_shards: int) -> int:
    """TFDS zero-pads shard numbers to ``max(5, len(str(num_shards)))`` digits."""
    return max(5, len(str(num_shards)))


def format_template(
    template: str, *, name: str, split: str, index: int, num_shards: int, file_format: str
) -> str:
    """Fill a TFDS file-name template (the variables of ``tfds.core.naming``)."""
    width = shard_index_width(num_shards)
    index_text = f"{index:0{width}d}"
    total_text = f"{num_shards:0{width}d}"
    return (
        template.replace("{DATASET}", name)
        .replace("{SPLIT}", split)
        .replace("{FILEFORMAT}", file_format)
        .replace("{SHARD_X_OF_Y}", f"{index_text}-of-{total_text}")
        .replace("{SHARD_INDEX}", index_text)
        .replace("{NUM_SHARDS}", total_text)
    )


def shard_filename(name: str, split: str, index: int, num_shards: int) -> str:
    """``<name>-<split>.tfrecord-XXXXX-of-NNNNN``, the TFDS default naming."""
    return format_template(
        DEFAULT_TEMPLATE,
        name=name,
        split=split,
        index=index,
        num_shards=num_shards,
        file_format=FILE_FORMAT,
    )


# --- sidecars ------------------------------------------------------------------------------------

SIDECAR_SUBDIR = "sidecars"
SIDECAR_SUFFIX = ".arrow"
TAG_SUMMARY = "tag_summary.json"


DEFAULT_TEXT_FIELD = "txt"
"""The record feature img2dataset writes captions to (``clipa-data tag --text-field``)."""


def tag_command(builder: str | Path, text_field: str = DEFAULT_TEXT_FIELD, overwrite=False) -> str:
    """The ``clipa-data tag`` command that (re-)creates ``builder``'s sidecars, quoted for a
    shell: a non-default ``--text-field`` is carried, since a tag without it would tag another
    field (and then be refused for the field it holds)."""
    import shlex

    command = f"clipa-data tag {shlex.quote(str(builder))}"
    if text_field != DEFAULT_TEXT_FIELD:
        command += f" --text-field {shlex.quote(text_field)}"
    return command + " --overwrite" * bool(overwrite)


def sidecar_dir(builder: str | Path) -> str | Path:
    """The folder holding the Arrow sidecars of a builder directory."""
    return join(builder, SIDECAR_SUBDIR)


def sidecar_path(builder: str | Path, shard_file: str) -> str | Path:
    """The sidecar of one shard: ``sidecars/<shard file name>.arrow``."""
    return join(builder, SIDECAR_SUBDIR, posixpath.basename(str(shard_file)) + SIDECAR_SUFFIX)


def tag_summary_path(builder: str | Path) -> str | Path:
    """The summary JSON that ``clipa-data tag`` writes next to the sidecars."""
    return join(builder, SIDECAR_SUBDIR, TAG_SUMMARY)


# --- reading a builder directory without TensorFlow ---------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    """One tfrecord file of a split, as ``dataset_info.json`` declares it."""

    path: str
    """Full path or URL of the shard file."""
    index: int
    """Position of the shard in the split (0-based)."""
    num_records: int
    """Exact number of records, from the split's ``shardLengths``."""


@dataclass(frozen=True)
class SplitInfo:
    """A split of a builder directory: its name and shards in order."""

    name: str
    """Split name, e.g. ``train``."""
    shards: tuple[ShardInfo, ...]
    """Shard files in index order (empty shards included, with ``num_records == 0``)."""

    @property
    def num_records(self) -> int:
        """Total number of records in the split."""
        return sum(shard.num_records for shard in self.shards)


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is an fsspec URL such as ``gs://bucket/x`` rather than a local path."""
    return "://" in str(path)


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/+(.*)", re.DOTALL)  # 2+ letters: not C:/x


def split_url(path: str | Path) -> tuple[str, str] | None:
    """``(scheme, rest)`` of a URL: ``gs://b/x``, or ``gs:/b/x`` as Typer's Path argument
    leaves it (both ``("gs", "b/x")``); None for a local path."""
    match = _URL.fullmatch(str(path))
    return (match.group(1).lower(), match.group(2)) if match else None


def check_local(path: str | Path | None, what: str, read: bool = False) -> None:
    """Refuse a URL where a local folder or file is written (``gs:/b/x`` would otherwise become
    a local folder named ``gs:`` that the user believes is in the bucket), or, with ``read``,
    where only a local file is read (one line, the fix)."""
    url = None if path is None else split_url(path)
    if url is None:
        return
    scheme, rest = url
    if scheme in ("file", "local"):
        fix = f"give the local path /{rest.lstrip('/')}"
    elif read:
        fix = "copy it to a local file first (e.g. gsutil cp)"
    else:
        fix = "write it to a local folder, then copy it to the store"
    done = "read" if read else "written"
    raise ClipaError(f"{what} {scheme}://{rest}: only a local path is {done} here; {fix}")


def filesystem(url: str | Path):
    """The fsspec filesystem of ``url`` and the path within it; a missing fsspec package of
    its scheme (gcsfs, s3fs, ...) is one line, not an ImportError traceback."""
    import fsspec.core

    try:
        fs, resolved = fsspec.core.url_to_fs(str(url))
    except ImportError as error:
        scheme = str(url).split(":", 1)[0]
        raise ClipaError(
            f"{url}: the {scheme}:// filesystem needs its fsspec package ({error}); install it, "
            "or copy the data to a local folder"
        ) from None
    return fs, resolved


def join(base: str | Path, *parts: str) -> str | Path:
    """Join path parts, keeping URLs as strings and local paths as ``Path``."""
    if is_url(base):
        return posixpath.join(str(base), *parts)
    return Path(base).joinpath(*parts)


def read_text(path: str | Path) -> str:
    """Read a small text file from a local path or an fsspec URL."""
    if is_url(path):
        fs, resolved = filesystem(path)
        with fs.open(resolved, "r") as handle:
            return handle.read()
    return Path(path).read_text()


def exists(path: str | Path) -> bool:
    """Whether a local path or fsspec URL exists."""
    if is_url(path):
        fs, resolved = filesystem(path)
        return fs.exists(resolved)
    return Path(path).exists()


def find_builder_dirs(path: Path, depth: int = 2) -> list[Path]:
    """Builder directories (folders with ``dataset_info.json``) at most ``depth`` levels below."""
    found = []
    if (path / DATASET_INFO).is_file():
        return [path]
    if depth > 0 and path.is_dir():
        # Hidden folders are convert's unfinished staging dirs, never a result to report.
        children = (p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        for child in sorted(children):
            found.extend(find_builder_dirs(child, depth - 1))
    return found


def resolve_builder_dir(path: str | Path) -> str | Path:
    """Accept ``<out>``, ``<out>/<name>`` or ``<out>/<name>/<version>`` when unambiguous."""
    if is_url(path):
        if not exists(join(path, DATASET_INFO)):
            raise ClipaError(f"{path} is not a builder directory: no {DATASET_INFO} there")
        return path
    path = Path(path)
    if not path.exists():
        raise ClipaError(f"{path} does not exist; pass the folder that clipa-data convert wrote")
    candidates = find_builder_dirs(path)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        unfinished = sorted(path.glob(f"*{STAGING_SUFFIX}")) + sorted(
            path.glob(f"*/*{STAGING_SUFFIX}")
        )
        if unfinished:  # a convert stopped before it published the builder directory
            raise ClipaError(
                f"{path} holds no builder directory yet, only the unfinished conversion "
                f"{unfinished[0]}; re-run the same clipa-data convert command to finish it"
            )
        if path.is_dir() and find_raw_shards(path):  # the download's: convert comes between
            raise ClipaError(
                f"{path} holds img2dataset shards, not a builder directory; convert them first: "
                f"clipa-data convert {shlex.quote(str(path))} OUT --name NAME, then pass OUT"
            )
        raise ClipaError(
            f"{path} is not a builder directory (no {DATASET_INFO} in it or two levels below); "
            "create one with: clipa-data convert SRC OUT"
        )
    listed = ", ".join(str(c) for c in candidates[:5])
    raise ClipaError(f"{path} holds several builder directories; pass one of: {listed}")


def read_dataset_info(builder: str | Path) -> dict:
    """The parsed ``dataset_info.json`` of a builder directory."""
    info_path = join(builder, DATASET_INFO)
    try:
        info = json.loads(read_text(info_path))
    except FileNotFoundError:
        raise ClipaError(
            f"{builder} is not a builder directory: {DATASET_INFO} is missing; "
            "create one with: clipa-data convert SRC OUT"
        ) from None
    except json.JSONDecodeError as error:
        raise ClipaError(f"{info_path}: not valid JSON ({error})") from None
    splits = info.get("splits", []) if isinstance(info, dict) else None
    if not (
        isinstance(info.get("name") if isinstance(info, dict) else None, str)
        and isinstance(splits, list)
        and all(isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in splits)
    ):
        raise ClipaError(
            f"{info_path}: not a TFDS dataset_info.json (it needs a name and a list of splits; "
            "a Hugging Face datasets folder has another one); convert the data into a builder "
            "directory with: clipa-data convert SRC OUT"
        )
    return info


def read_split(builder: str | Path, split: str) -> SplitInfo:
    """Shard paths and exact lengths of ``split``, from ``dataset_info.json`` (no TensorFlow)."""
    info = read_dataset_info(builder)
    splits = {entry["name"]: entry for entry in info.get("splits", [])}
    if split not in splits:
        raise ClipaError(
            f"{builder}: no split {split!r}; available: {', '.join(sorted(splits)) or 'none'}"
        )
    entry = splits[split]
    lengths = [int(n) for n in entry.get("shardLengths", [])]
    template = entry.get("filepathTemplate") or DEFAULT_TEMPLATE
    file_format = info.get("fileFormat") or FILE_FORMAT
    shards = tuple(
        ShardInfo(
            path=str(
                join(
                    builder,
                    format_template(
                        template,
                        name=info["name"],
                        split=split,
                        index=index,
                        num_shards=len(lengths),
                        file_format=file_format,
                    ),
                )
            ),
            index=index,
            num_records=length,
        )
        for index, length in enumerate(lengths)
    )
    return SplitInfo(name=split, shards=shards)


def split_names(builder: str | Path) -> list[str]:
    """Names of the splits declared in a builder directory."""
    return [entry["name"] for entry in read_dataset_info(builder).get("splits", [])]
