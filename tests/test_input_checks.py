"""Inputs a new user gets wrong, fed through the real commands in a subprocess: each is either
read as meant (``lr: 1e-3`` in YAML is a float) or refused with one line naming the file, the
thing and the fix, with a non-zero exit and nothing left behind.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import make_builder_dir, make_records
from clipa_cli.common import EXIT_BAD_INPUT

from clipa_data.demo import write_demo_validation

BIN = Path(sys.executable).parent


def run_cli(program: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``program args`` as a user runs it (one CPU thread: the test machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(BIN / program), *(str(arg) for arg in args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 and exactly one ``error:`` line on stderr holding every fragment; no traceback."""
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def builder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("input-checks")
    return make_builder_dir(root / "data", [make_records(16, start=i * 16) for i in range(2)])


def tiny_config(path: Path, builder: Path, out: Path, **values: object) -> Path:
    """A YAML config of a clipa-tiny run, written as a user types it (``lr: 1e-3``)."""
    base = {
        "data": builder, "out": out, "model": "clipa-tiny", "image_size": 32,
        "text_length": 8, "text_mask": "truncate", "workers": 1, "progress": "no",
    }  # fmt: skip
    # A config file may give each option once, so a value asked for replaces the base one.
    lines = [f"{key}: {value}" for key, value in {**base, **values}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(builder, tmp_path_factory) -> Path:
    """A run whose YAML config holds values PyYAML reads as text; its final checkpoint."""
    root = tmp_path_factory.mktemp("yaml-run")
    config = tiny_config(
        root / "run.yaml", builder, root / "run",
        lr="1e-3", samples="1.6e1", batch_size="'8'", color_jitter="0.1,0.1,0.1,0",
    )  # fmt: skip
    done = run_cli("clipa-train", "pretrain", "--config", config)
    assert done.returncode == 0, done.stderr[-3000:]
    options = json.loads((root / "run" / "config.json").read_text())["options"]
    assert (options["lr"], options["samples"], options["batch_size"]) == (0.001, 16, 8)
    assert options["color_jitter"] == [0.1, 0.1, 0.1, 0.0]
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    return Path(summary["checkpoint"])


def test_yaml_numbers_written_as_text_are_read_as_numbers(trained):
    assert trained.is_file()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("lr", "fast", "lr must be a number or null, got 'fast'"),
        ("batch_size", "2.5", "batch_size must be a whole number, got 2.5"),
        ("progress", "maybe", "progress must be true or false, got 'maybe'"),
        ("color_jitter", "[0.1, 0.2]", "color_jitter must be a list of 4 numbers or null"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_line(builder, tmp_path, key, value, expected):
    config = tiny_config(tmp_path / "run.yaml", builder, tmp_path / "run", **{key: value})
    done = run_cli("clipa-train", "pretrain", "--config", config)
    assert_one_error_line(done, str(config), expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kept", [0.5, 0.0])
def test_eval_of_a_truncated_checkpoint_says_so(trained, tmp_path, kept):
    """A checkpoint cut short (a copy that stopped, a full disk) is named as damaged with the
    fix, not mistaken for weights without an architecture."""
    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    damaged = tmp_path / trained.name
    data = trained.read_bytes()
    damaged.write_bytes(data[: int(len(data) * kept)])
    done = run_cli(
        "clipa-train", "eval", "--checkpoint", damaged, "--imagenet-val", val.root,
        "--classnames", val.classnames_path, "--workers", 1,
    )  # fmt: skip
    line = assert_one_error_line(
        done, f"checkpoint {damaged} is truncated or corrupt", "use an earlier checkpoint"
    )
    assert "holds no architecture" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", trained.name]


def test_an_eval_out_that_is_a_folder_is_refused_before_any_work(trained, tmp_path):
    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    done = run_cli(
        "clipa-train", "eval", "--checkpoint", trained, "--imagenet-val", val.root,
        "--classnames", val.classnames_path, "--out", tmp_path, "--text-cache", tmp_path / "tc",
    )  # fmt: skip
    assert_one_error_line(done, f"{tmp_path} is a folder", f"--out {tmp_path / 'eval.json'}")
    assert not (tmp_path / "tc").exists()


def test_an_image_that_does_not_decode_in_an_eval_worker_is_one_line(trained, tmp_path):
    """torch re-raises a worker's error with the worker's traceback as its message; the user
    gets the line it was raised with: the image and what is wrong with it."""
    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    broken = sorted(val.image_dir.rglob("*.*"))[0]
    broken.write_bytes(b"not an image")
    done = run_cli(
        "clipa-train", "eval", "--checkpoint", trained, "--imagenet-val", val.root,
        "--classnames", val.classnames_path, "--workers", 1,
    )  # fmt: skip
    assert_one_error_line(done, str(broken), "does not decode")
    assert "DataLoader worker" not in done.stderr


# --- clipa-data download: URL lists whose columns do not match the flags ----------------------

ROWS = [
    {"url": f"http://127.0.0.1:9/{i}.jpg", "caption": f"photo {i}", "NSFW": "UNLIKELY"}
    for i in range(3)
]


def write_url_list(path: Path, rows: list[dict], fmt: str) -> Path:
    """``rows`` as a real URL list of format ``fmt`` (csv, tsv, json, jsonl, txt, parquet,
    ±.gz)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = fmt.removesuffix(".gz")
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        lines = [sep.join(rows[0]), *(sep.join(str(v) for v in row.values()) for row in rows)]
        text = "\n".join(lines) + "\n"
    elif kind == "json":
        text = json.dumps(rows, indent=1)
    elif kind == "txt":  # one URL a line: nothing else can be in it
        text = "".join(row["url"] + "\n" for row in rows)
    else:
        text = "".join(json.dumps(row) + "\n" for row in rows)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    return path


def img2dataset_columns(path: Path, fmt: str) -> list[str]:
    """The columns img2dataset's reader sees in ``path`` (its own calls, img2dataset/reader.py)."""
    import gzip

    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as csv_pa
    import pyarrow.json as json_pa

    with open(path, "rb") as raw:
        file = gzip.GzipFile(fileobj=raw) if fmt.endswith(".gz") else raw
        kind = fmt.removesuffix(".gz")
        if kind == "csv":
            return csv_pa.read_csv(file).column_names
        if kind == "tsv":
            options = csv_pa.ParseOptions(delimiter="\t")
            return csv_pa.read_csv(file, parse_options=options).column_names
        if kind == "json":
            return pa.Table.from_pandas(pd.read_json(file)).column_names
        return json_pa.read_json(file).column_names


@pytest.mark.parametrize("fmt", ["csv", "tsv.gz", "json", "json.gz", "jsonl", "jsonl.gz"])
def test_url_list_columns_are_read_as_img2dataset_reads_them(tmp_path, fmt):
    from clipa_data.prepare.url_list import header_columns

    path = write_url_list(tmp_path / f"urls.{fmt}", ROWS, fmt)
    assert header_columns(path, fmt) == img2dataset_columns(path, fmt) == list(ROWS[0])


DOWNLOAD_CASES = {
    "csv with the LAION defaults": (
        "csv", [],
        ["has no column 'URL', 'TEXT', 'similarity', 'LICENSE'",
         "(columns found: url, caption, NSFW)", "pass --url-col url; --caption-col caption; "
         "--save-additional-columns with columns it has"],
    ),
    "tsv.gz without the extra columns": (
        "tsv.gz", ["--url-col", "url", "--caption-col", "caption"],
        ["has no column 'similarity', 'LICENSE'", "--save-additional-columns"],
    ),
    "json with a wrong caption column": (
        "json", ["--url-col", "url", "--caption-col", "TEXT", "--save-additional-columns", ""],
        ["has no column 'TEXT'", "--caption-col caption"],
    ),
    "jsonl.gz with a wrong url column": (
        "jsonl.gz", ["--url-col", "link", "--caption-col", "caption",
                     "--save-additional-columns", "NSFW"],
        ["has no column 'link'", "; pass --url-col url"],
    ),
    "parquet says the same": (
        "parquet", ["--url-col", "url", "--caption-col", "caption"],
        ["has no column 'similarity', 'LICENSE'", "(columns found: url, caption, NSFW)"],
    ),
    "tsv read as csv": (
        "tsv", ["--input-format", "csv"], ["looks tab-separated", "pass --input-format tsv"],
    ),
    "txt asked for captions": (
        "txt.gz", ["--url-col", "url"],
        ["holds only URLs, one a line, so --caption-col TEXT and --save-additional-columns "
         "NSFW,similarity,LICENSE cannot be read from it", "--caption-col ''"],
    ),
    "a DataComp recipe's face boxes": (
        "parquet", ["--dataset", "datacomp-small", "--url-col", "url", "--caption-col", "caption"],
        ["has no column 'uid', 'face_bboxes'", "; --i2d bbox_col with the column holding the face"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DOWNLOAD_CASES))
def test_download_with_columns_the_url_list_lacks_fails_at_once(tmp_path, case):
    fmt, flags, fragments = DOWNLOAD_CASES[case]
    (tmp_path / "meta").mkdir()
    urls = write_url_list(tmp_path / "meta" / f"urls.{fmt}", ROWS, fmt)
    before = {p.name: p.read_bytes() for p in (tmp_path / "meta").iterdir()}
    out = tmp_path / "out"
    done = run_cli(
        "clipa-data", "download", urls, out, "--input-format", fmt, "--processes", 1, *flags,
        timeout=60,
    )  # fmt: skip
    assert_one_error_line(done, str(urls), *fragments)
    assert not out.exists(), "nothing (no _tmp/) may be written before the checks pass"
    assert {p.name: p.read_bytes() for p in (tmp_path / "meta").iterdir()} == before


def test_an_empty_url_list_and_a_spaced_header_are_named_as_such(tmp_path):
    """An empty CSV has no columns to choose from: it is said to be empty. A header written
    "url, caption" has a column " caption": the fix names it, quoted as the shell needs."""
    from clipa_data.core.errors import ClipaError
    from clipa_data.prepare.url_list import check_columns, header_columns

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    wanted = {"url": "--url-col", "caption": "--caption-col"}
    with pytest.raises(ClipaError, match=r"empty.csv is empty \(no header line"):
        check_columns(empty, header_columns(empty, "csv"), wanted)
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("url, caption\nhttp://127.0.0.1/a.jpg, a cat\n")
    with pytest.raises(ClipaError) as refused:
        check_columns(spaced, header_columns(spaced, "csv"), wanted)
    assert "has no column 'caption'" in str(refused.value)
    assert "pass --caption-col ' caption'" in str(refused.value)


def test_file_urls_are_checked_as_the_paths_they_name(tmp_path):
    urls = write_url_list(tmp_path / "urls.parquet", ROWS, "parquet")
    out = tmp_path / "out"
    done = run_cli("clipa-data", "download", urls.as_uri(), out.as_uri(), timeout=60)
    assert_one_error_line(done, str(urls), "has no column 'URL'", "pass --url-col url")
    assert not out.exists()


def test_download_checks_every_file_of_a_folder(tmp_path):
    """A folder of CSVs whose second file lacks a column: that file is named."""
    (tmp_path / "meta").mkdir()
    write_url_list(tmp_path / "meta" / "a.csv", ROWS, "csv")
    short = [{"url": row["url"], "caption": row["caption"]} for row in ROWS]
    second = write_url_list(tmp_path / "meta" / "b.csv", short, "csv")
    done = run_cli(
        "clipa-data", "download", tmp_path / "meta", tmp_path / "out", "--input-format", "csv",
        "--url-col", "url", "--caption-col", "caption", "--save-additional-columns", "NSFW",
        timeout=60,
    )  # fmt: skip
    assert_one_error_line(done, f"{second} has no column 'NSFW'", "(columns found: url, caption)")
    assert not (tmp_path / "out").exists()


# --- --help shows every default ---------------------------------------------------------------


def help_line(program: str, command: str, flag: str) -> str:
    """The ``--help`` row of ``flag`` (wide enough that no row wraps)."""
    env = {**os.environ, "COLUMNS": "300"}
    done = subprocess.run(
        [str(BIN / program), command, "--help"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # The option's own row starts with it (another row's help text may mention it).
    rows = [line for line in done.stdout.splitlines() if line.lstrip("│ ").startswith(f"{flag} ")]
    assert len(rows) == 1, done.stdout
    return rows[0]


@pytest.mark.parametrize(
    ("flag", "default"),
    [
        ("--batch-size", "256"),
        ("--log-every", "10"),
        ("--checkpoint-every", "1000"),
        ("--workers", "2"),
        ("--progress", "progress"),
    ],
)
def test_training_help_shows_the_defaults(flag, default):
    assert help_line("clipa-train", "pretrain", flag).count(f"[default: {default}]") == 1


def test_workers_of_data_commands_name_one_default():
    """Workers defaulting to every core say so once, with no stale number beside it."""
    for command in ("tag", "convert"):
        line = help_line("clipa-data", command, "--workers")
        assert "(default: " in line and "[default:" not in line, line


def test_an_untyped_default_does_not_contradict_the_recipe(tmp_path):
    """Shown as defaults, the options still count as given only when typed: the recipe's batch
    is taken, and typing the default against it is the usual one-line conflict."""
    args = ["pretrain", "--recipe", "clipa-b16-i50-t16", "--data", tmp_path / "nope"]
    args += ["--out", tmp_path / "run"]
    assert_one_error_line(run_cli("clipa-train", *args), "nope does not exist")
    typed = run_cli("clipa-train", *args, "--batch-size", 256)
    assert_one_error_line(typed, "sets --batch-size 65536 for pretrain; drop --batch-size 256")


def test_a_json_url_list_of_columns_is_read_like_pandas(tmp_path):
    """pandas' default orientation ({column: {row: value}}) has its columns as the keys."""
    from clipa_data.prepare.url_list import header_columns

    columns = {name: {str(i): row[name] for i, row in enumerate(ROWS)} for name in ROWS[0]}
    path = tmp_path / "urls.json"
    path.write_text(json.dumps(columns))
    seen = [c for c in img2dataset_columns(path, "json") if not c.startswith("__index_level")]
    assert header_columns(path, "json") == seen == list(ROWS[0])  # (pandas adds its row index)


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        (
            "csv.gz",
            b"not gzip",
            "is not gzip-compressed, but --input-format csv.gz "
            "decompresses it (img2dataset would fail on it): pass --input-format csv",
        ),
        # gzip named like a plain list: img2dataset reads by --input-format, not by the name
        (
            "csv",
            gzip.compress(b"url,caption\nhttp://x/a.jpg,c\n", mtime=0),
            "is gzip-compressed, but "
            "--input-format csv reads it as plain text (img2dataset would fail on it): pass "
            "--input-format csv.gz",
        ),
        ("txt", gzip.compress(b"http://x/a.jpg\n", mtime=0), "pass --input-format txt.gz"),
        ("csv.gz", gzip.compress(b"\x00\xff", mtime=0), "is not a readable csv.gz file"),
        ("jsonl", b'{"url": 1\n', "is not a readable jsonl file"),
        ("json", b"[1, 2]", "a JSON URL list must hold records"),
        # one JSON Lines record read as json: pandas cannot build a table of scalar columns
        ("json", b'{"URL": "http://x/a.jpg", "TEXT": "c"}\n', "for one record per line pass"),
    ],
)
def test_an_unreadable_url_list_is_one_line(tmp_path, fmt, content, message):
    path = tmp_path / f"urls.{fmt}"
    path.write_bytes(content)
    flags = ["--caption-col", "", "--save-additional-columns", ""] if fmt == "txt" else []
    done = run_cli("clipa-data", "download", path, tmp_path / "out", "--input-format", fmt, *flags)
    assert_one_error_line(done, str(path), message)
    assert not (tmp_path / "out").exists()


def test_img2dataset_failing_is_said_by_its_first_exception():
    """Its worker processes die of the first error with tracebacks of their own (e.g. a
    SemLock FileNotFoundError); the line names the first."""
    from clipa_data.prepare.download import first_error

    log = """Starting the downloading of this file
Traceback (most recent call last):
  File "reader.py", line 102, in _save_to_arrow
    df = pa.Table.from_pandas(pd.read_json(file))
ValueError: If using all scalar values, you must pass an index
Traceback (most recent call last):
  File "spawn.py", line 132, in _main
FileNotFoundError: [Errno 2] No such file or directory"""
    assert first_error(log.splitlines()) == (
        "ValueError: If using all scalar values, you must pass an index"
    )
    assert first_error(["downloaded 3 shards", "killed"]) == "killed"
    assert first_error([]) == "no output"


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        # whole first record (the column check reads only it), broken after it
        ("json", b'[{"URL": "http://x/a.jpg", "TEXT": "a"}, {"URL": "http://x/b.jpg", "TE'),
        ("csv.gz", gzip.compress(b"URL,TEXT\n" + b"http://x/a.jpg,a\n" * 2000, mtime=0)[:-40]),
    ],
    ids=["json broken after its first record", "csv.gz cut short"],
)
def test_a_url_list_damaged_past_its_header_is_one_line(tmp_path, fmt, content):
    """Counting a list's rows (a resume compares them) reads it all: damage past the header
    is named before img2dataset starts (a JSON traceback; for gzip a bare "Aborted.")."""
    path = tmp_path / f"urls.{fmt}"
    path.write_bytes(content)
    done = run_cli(
        "clipa-data", "download", path, tmp_path / "out", "--input-format", fmt,
        "--save-additional-columns", "",
    )  # fmt: skip
    assert_one_error_line(done, str(path), f"is not a readable {fmt} file")
