"""Convert's last step, proving the result with TFDS (``tfds_metadata.verify``), on damaged output.

A conversion that succeeded is copied and then damaged the way a disk, a user or a half-finished
copy can damage it; verifying the copy against its manifest must fail with one ``ClipaError``
line that names the folder, the shard (where there is one) and the fix. Every failure branch of
``verify`` has a case here, and re-running ``clipa-data convert`` on a damaged result says the
same through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from clipa_cli.common import EXIT_BAD_INPUT
from clipa_cli.data_app import app
from img2dataset_shards import write_source
from typer.testing import CliRunner

from clipa_data.core import layout, tfrecord
from clipa_data.core.errors import ClipaError
from clipa_data.core.example import decode_example, encode_example
from clipa_data.prepare.convert import ConvertConfig, convert, verify_manifest
from clipa_data.prepare.manifest import read_manifest

NAME = "demo"
LAYOUT = {0: 6, 1: 5, 2: 7}  # one failed row each: 5, 4 and 6 records


def shard_name(index: int) -> str:
    return layout.shard_filename(NAME, "train", index, len(LAYOUT))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A verified conversion (copied shards, so damaging them never touches the source)."""
    root = tmp_path_factory.mktemp("verify")
    src = write_source(root / "raw", LAYOUT, failures=1)
    result = convert(
        ConvertConfig(
            src=src, out=root / "out", name=NAME, mode="copy", workers=1, show_progress=False
        )
    )
    assert [s.records for s in read_manifest(result.builder_dir).shards] == [5, 4, 6]
    return result.builder_dir


@pytest.fixture
def builder(pristine, tmp_path) -> Path:
    copy = tmp_path / NAME / "1.0.0"
    shutil.copytree(pristine, copy)
    return copy


# --- the damages ---------------------------------------------------------------------------------


def edit_dataset_info(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(builder: Path) -> None:
        path = builder / layout.DATASET_INFO
        info = json.loads(path.read_text())
        edit(info)
        path.write_text(json.dumps(info))

    return damage


def rewrite_first_record(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """Shard 1 rewritten as valid TFRecord framing (good CRCs) with its first Example edited."""

    def damage(builder: Path) -> None:
        path = builder / shard_name(1)
        records = list(tfrecord.read_records(path))
        features = decode_example(records[0])
        edit(features)
        with open(path, "wb") as handle:
            tfrecord.write_records(handle, [encode_example(features), *records[1:]])

    return damage


def truncate(size: int) -> Callable[[Path], None]:
    def damage(builder: Path) -> None:
        path = builder / shard_name(1)
        path.write_bytes(path.read_bytes()[:size])

    return damage


def swap_shards_0_and_1(builder: Path) -> None:
    first, second, parked = builder / shard_name(0), builder / shard_name(1), builder / "parked"
    os.rename(first, parked)
    os.rename(second, first)
    os.rename(parked, second)


def set_shard_lengths(*lengths: int) -> Callable[[Path], None]:
    return edit_dataset_info(
        lambda info: info["splits"][0].update(shardLengths=[str(n) for n in lengths])
    )


DAMAGES = {
    "features.json deleted": (
        lambda b: (b / layout.FEATURES).unlink(),
        ["TFDS cannot load the result"],
    ),
    "dataset_info.json not JSON": (
        lambda b: (b / layout.DATASET_INFO).write_text('{"name": "demo",'),
        ["TFDS cannot load the result", "JSON"],
    ),
    "split renamed": (
        edit_dataset_info(lambda info: info["splits"][0].update(name="validation")),
        ["TFDS cannot load the result", "Unknown split 'train'"],
    ),
    "a declared length changed": (
        set_shard_lengths(5, 5, 6),
        ["declares 5 records for shard 1", shard_name(1), "convert counted 4"],
    ),
    "a declared shard dropped": (
        set_shard_lengths(5, 10),
        ["declares 2 shards for split train but convert wrote 3"],
    ),
    "a shard file missing": (
        lambda b: (b / shard_name(2)).unlink(),
        [f"shard {shard_name(2)} is missing"],
    ),
    "a shard file emptied (shorter than declared)": (
        truncate(0),
        [f"cannot read the first example of shard 1 ({shard_name(1)})", "contained only 0"],
    ),
    "a shard file cut inside its first record": (
        truncate(40),
        [f"cannot read the first example of shard 1 ({shard_name(1)})", "truncated record"],
    ),
    "a shard file cut inside its last record (its first still reads)": (
        lambda b: os.truncate(b / shard_name(1), (b / shard_name(1)).stat().st_size - 10),
        [f"shard {shard_name(1)} is ", "bytes but clipa_convert_manifest.json says"],
    ),
    "the first image is not a JPEG": (
        rewrite_first_record(lambda f: f.update(jpg=("bytes", [b"<html>not found</html>"]))),
        [f"cannot read the first example of shard 1 ({shard_name(1)}): Unknown image file format"],
    ),
    "the first record's width is text (not what features.json declares)": (
        rewrite_first_record(lambda f: f.update(width=("bytes", [b"24"]))),
        [
            f"cannot read the first example of shard 1 ({shard_name(1)}): Key: width.",
            "Data types don't match",
        ],
    ),
    "two shard files swapped": (
        swap_shards_0_and_1,
        [f"shard 0 ({shard_name(0)}) starts with key '00001", "its source starts with '00000"],
    ),
}


def assert_one_clear_line(message: str, builder: Path, fragments: list[str]) -> None:
    assert "\n" not in message, message
    assert message.startswith(f"{builder}: "), message
    assert message.endswith(f"; delete {builder} and re-run clipa-data convert"), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_undamaged_copy_verifies(builder):
    verification = verify_manifest(builder, read_manifest(builder))
    assert verification.shards == verification.examples_decoded == 3


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damage_is_named_with_its_shard_and_fix(builder, damage):
    apply, fragments = DAMAGES[damage]
    manifest = read_manifest(builder)
    apply(builder)
    with pytest.raises(ClipaError) as raised:
        verify_manifest(builder, manifest)
    assert_one_clear_line(str(raised.value), builder, fragments)


def test_rerun_on_a_damaged_result_fails_with_one_error_line(tmp_path):
    """The "up to date" path re-verifies the stored result; the CLI prints one error line."""
    src = write_source(tmp_path / "raw", LAYOUT, failures=1)
    args = ["convert", str(src), str(tmp_path / "out"), "--name", NAME, "--mode", "copy"]
    args += ["--no-progress", "--workers", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    builder = layout.builder_dir(tmp_path / "out", NAME, "1.0.0")
    truncate(40)(builder)

    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert_one_clear_line(lines[0].removeprefix("error: "), builder, [f"shard 1 ({shard_name(1)})"])


def test_a_damaged_move_conversion_says_to_move_the_shards_back_first(tmp_path):
    """Its shards are the only copy: the fix must not be "delete it"."""
    src = write_source(tmp_path / "raw", LAYOUT, failures=1)
    config = ConvertConfig(
        src=src, out=tmp_path / "out", name=NAME, mode="move", workers=1, show_progress=False
    )
    builder = convert(config).builder_dir
    assert not list(src.glob("*.tfrecord"))  # moved
    # The shards themselves are still what convert counted (a re-run inspects them again);
    # the declared metadata is not.
    set_shard_lengths(5, 5, 6)(builder)

    with pytest.raises(ClipaError) as raised:
        convert(config)  # the "up to date" path re-verifies the stored result
    message = str(raised.value)
    assert "\n" not in message and f"declares 5 records for shard 1 ({shard_name(1)})" in message
    assert f"moved here out of {src.resolve()}; move them back" in message
    assert message.endswith(f"then delete {builder} and re-run clipa-data convert")


@pytest.mark.parametrize("verify", ["headers", "crc"])
def test_a_source_record_tfds_cannot_read_names_the_source_not_a_rerun(tmp_path, verify):
    """Convert copies records as they are: a first record TFDS cannot decode came from its
    source, and deleting the partial result to convert again failed the same way forever."""
    src = write_source(tmp_path / "raw", LAYOUT, failures=1)
    source = src / "00001.tfrecord"
    records = list(tfrecord.read_records(source))
    features = decode_example(records[0])
    features["jpg"] = ("bytes", [b"<html>not found</html>"])
    with open(source, "wb") as handle:  # valid framing and checksums: only TFDS notices
        tfrecord.write_records(handle, [encode_example(features), *records[1:]])
    config = ConvertConfig(src=src, out=tmp_path / "out", name=NAME, mode="copy", workers=1,
                           show_progress=False, verify=verify)  # fmt: skip
    for _ in range(2):  # the same advice when the advice is followed... or not
        with pytest.raises(ClipaError) as raised:
            convert(config)
        message = str(raised.value)
        assert f"cannot read the first example of shard 1 ({shard_name(1)})" in message
        assert f"the record comes from {source} as it is" in message, message
        assert "re-run clipa-data convert" not in message
        assert ("convert with --verify crc" in message) == (verify == "headers")
        assert ("passed its checksum" in message) == (verify == "crc")
