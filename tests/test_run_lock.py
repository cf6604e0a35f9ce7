"""A second ``convert`` or ``tag`` into the folder a running one writes is refused with one
line: a second convert deleted the first one's temporary files (which then failed, blaming a
source shard) and called itself "resumed"; a second tag with another --text-field replaced the
first one's sidecars, both exiting 0. Here the test holds the lock, as a running command does
(``flock`` on the folder); once it is released the same command runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from builders import Record, jpeg_bytes, make_builder_dir
from cli_checks import assert_one_line_error
from clipa_cli.data_app import app
from img2dataset_shards import write_source
from typer.testing import CliRunner

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.core.run_lock import only_run_in


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in (*args, "--no-progress", "--workers", 1)])


def test_a_convert_into_the_place_another_convert_writes_is_refused(tmp_path, monkeypatch):
    from clipa_data.prepare import convert

    src = write_source(tmp_path / "raw", {0: 4, 1: 3}, failures=0)
    out = tmp_path / "out"
    (out / "demo").mkdir(parents=True)
    inspected = []
    real_inspect = convert.inspect_sources
    monkeypatch.setattr(
        convert, "inspect_sources", lambda *a: inspected.append(1) or real_inspect(*a)
    )
    with only_run_in(out / "demo", "clipa-data convert"):
        refused = invoke("convert", src, out, "--name", "demo")
    assert_one_line_error(refused, f"{out / 'demo'}: another clipa-data convert is writing here")
    assert not layout.staging_dir(out, "demo", "1.0.0").exists()  # nothing of its own begun
    assert not inspected  # refused first, not after inspecting every shard
    done = invoke("convert", src, out, "--name", "demo")
    assert done.exit_code == 0, done.output
    assert "converted" in done.stdout  # not "resumed": nothing was interrupted


def test_a_convert_cannot_finish_between_anothers_look_at_out_and_its_publishing(
    tmp_path, monkeypatch
):
    """What OUT held was judged before the lock was taken (the lock was held only to publish):
    a convert that finished in between (here: while this one imports TensorFlow) was silently
    replaced, with --mode move the only copy of its shards. Now the look and the publishing
    are under one lock, and the convert that comes in between is refused."""
    from clipa_data.prepare import convert, tfds_metadata

    src = write_source(tmp_path / "raw", {0: 4, 1: 3}, failures=0)
    other = write_source(tmp_path / "other", {0: 2}, failures=0)
    out = tmp_path / "out"
    real_import, attempts = tfds_metadata.import_tensorflow, []

    def import_while_another_converts():
        if not attempts:
            attempts.append("started")  # the other convert imports TensorFlow too
            moved = convert.ConvertConfig(other, out, "demo", mode="move", show_progress=False)
            try:
                attempts.append(convert.convert(dataclasses.replace(moved, workers=1)).status)
            except ClipaError as error:
                attempts.append(str(error))
        return real_import()

    monkeypatch.setattr(tfds_metadata, "import_tensorflow", import_while_another_converts)
    done = invoke("convert", src, out, "--name", "demo")
    assert done.exit_code == 0, done.output
    assert "another clipa-data convert is writing here now" in attempts[1], attempts
    assert (other / "00000.tfrecord").is_file()  # not moved into a conversion then deleted
    builder = layout.builder_dir(out, "demo", "1.0.0")
    assert layout.read_split(builder, "train").num_records == 7


def test_a_tag_of_the_builder_another_tag_writes_is_refused(tmp_path):
    made = [
        Record(key=f"{i:09d}", jpg=jpeg_bytes(8, 8, seed=i), txt=f"a red car {i}") for i in range(6)
    ]
    builder = make_builder_dir(tmp_path / "demo" / "1.0.0", [made[:3], made[3:]])
    with only_run_in(Path(builder), "clipa-data tag"):
        refused = invoke("tag", builder)
    assert_one_line_error(refused, f"{builder}: another clipa-data tag is writing here")
    assert not list(Path(layout.sidecar_dir(builder)).glob("*.arrow"))
    done = invoke("tag", builder)
    assert done.exit_code == 0, done.output
    assert len(list(Path(layout.sidecar_dir(builder)).glob("*.arrow"))) == 2


def test_a_filesystem_without_flock_runs_unguarded(tmp_path, monkeypatch):
    """Lustre mounted without ``flock`` refuses the call itself (ENOSYS): the command must still
    run there, as it did before it took locks."""
    import errno
    import fcntl

    def no_flock(descriptor, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with only_run_in(tmp_path, "clipa-data convert") as descriptor:
        assert descriptor >= 0
