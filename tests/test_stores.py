"""convert/tag outputs given as URLs (issue 15 item 2): ``file://`` is the plain path; any other
fsspec store, here fsspec's real in-memory filesystem ``memory://``, gets the same bytes through
local staging and publishing (temporary key, then copy), with the manifest as the commit point;
a scheme whose fsspec package is missing is refused in one line naming it.

TFDS's reader cannot read ``memory://``: the store's bytes are compared with a plain-path
conversion of the same source, which the other convert tests prove with that reader."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import fsspec
import nltk_data
import pytest
from builders import make_builder_dir, make_records
from clipa_cli.data_app import app
from img2dataset_shards import write_source
from typer.testing import CliRunner

from clipa_data.core import tfrecord
from clipa_data.core.errors import ClipaError
from clipa_data.prepare.convert import ConvertConfig, convert
from clipa_data.prepare.stores import local_path, output_location
from clipa_data.prepare.tagging import TagConfig, tag_builder

nltk_data_dir, nltk_env = nltk_data.nltk_data_dir, nltk_data.nltk_env
runner = CliRunner()


def files(folder):
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "summary" not in p.name
    }


def test_convert_to_a_file_url_gives_the_plain_path_bytes(tmp_path):
    src = write_source(tmp_path / "raw", {0: 4, 1: 3}, failures=0)
    options = {"name": "demo", "workers": 1, "show_progress": False, "mode": "copy"}
    plain = convert(ConvertConfig(src, tmp_path / "plain", **options)).builder_dir
    url = convert(ConvertConfig(src, f"file://{tmp_path}/url", **options)).builder_dir
    assert url == tmp_path / "url" / "demo" / "1.0.0"
    assert files(plain) == files(url)


def test_tag_on_a_file_url_gives_the_plain_path_bytes(tmp_path, nltk_env):
    plain = make_builder_dir(tmp_path / "a", [make_records(6), make_records(5, start=6)])
    copy = tmp_path / "b" / "demo" / "1.0.0"
    shutil.copytree(plain, copy)
    tag_builder(TagConfig(plain, tagger="nltk", workers=1, show_progress=False))
    tag_builder(TagConfig(f"file://{copy}", tagger="nltk", workers=1, show_progress=False))
    assert files(plain / "sidecars") == files(copy / "sidecars")


def test_a_store_without_its_fsspec_package_is_one_line(tmp_path):
    if importlib.util.find_spec("s3fs") or importlib.util.find_spec("gcsfs"):
        pytest.skip("s3fs or gcsfs is installed here")
    with pytest.raises(ClipaError, match=r"the s3:// filesystem needs its fsspec package .*s3fs"):
        local_path("s3://bucket/laion", "OUT")
    # Typer's Path argument turns gs://bucket/x into gs:/bucket/x: still recognised.
    result = runner.invoke(app, ["convert", str(tmp_path), "gs://bucket/laion"])
    assert result.exit_code == 2
    assert "gs:// filesystem needs its fsspec package" in result.output and "gcsfs" in result.output
    for command in ("info", "preview"):  # they read builder directories on stores too
        result = runner.invoke(app, [command, "gs://bucket/laion/1.0.0"])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "gs:// filesystem needs its fsspec package" in result.output, result.output
    with pytest.raises(ClipaError, match=r"SRC memory://x: must be a local folder or a file://"):
        local_path("memory://x", "SRC")
    assert str(local_path("file:///tmp/x", "OUT")) == "/tmp/x"
    assert output_location("memory:/bucket/x", "OUT") == "memory://bucket/x"  # Typer's form
    assert output_location("file:///tmp/x", "OUT") == Path("/tmp/x")


# --- fsspec stores: memory:// -------------------------------------------------------------------

OPTIONS = {"name": "demo", "workers": 1, "show_progress": False, "mode": "copy"}


@pytest.fixture
def bucket(tmp_path):
    """A fresh memory:// folder (the memory filesystem is one per process: removed after)."""
    memory = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}"
    yield f"memory://{tmp_path.name}"
    if memory.exists(root):
        memory.rm(root, recursive=True)


def stored(url):
    """Relative key -> bytes of every file under a memory:// folder (summaries apart)."""
    memory, root = fsspec.filesystem("memory"), url.removeprefix("memory://")
    return {
        key.removeprefix(f"/{root}/"): memory.cat_file(key)
        for key in sorted(memory.find(f"/{root}"))
        if "summary" not in key
    }


@pytest.mark.parametrize("output_format", ["tfrecord", "webdataset"])
def test_convert_to_memory_gives_the_plain_path_bytes(tmp_path, bucket, output_format):
    src = write_source(tmp_path / "raw", {0: 4, 1: 3, 2: 2}, output_format=output_format)
    plain = convert(ConvertConfig(src, tmp_path / "plain", **OPTIONS)).builder_dir
    result = convert(ConvertConfig(src, f"{bucket}/tfds", **OPTIONS))
    assert result.builder_dir == f"{bucket}/tfds/demo/1.0.0"
    assert result.status == "converted" and result.verification.shards == 3
    assert stored(result.builder_dir) == files(plain)  # nothing else: no plan, no temporaries
    assert stored(bucket).keys() == {f"tfds/demo/1.0.0/{name}" for name in files(plain)}
    summary = fsspec.filesystem("memory").cat_file(f"/{bucket[9:]}/tfds/demo/1.0.0/{SUMMARY}")
    assert b'"status": "converted"' in summary
    # Killed between the commit and dropping the plan: the re-run reuses it and drops the plan.
    memory, root = fsspec.filesystem("memory"), bucket.removeprefix("memory://")
    manifest = f"/{root}/tfds/demo/1.0.0/clipa_convert_manifest.json"
    memory.copy(manifest, f"/{root}/tfds/demo/.1.0.0.partial/clipa_convert_manifest.json")
    again = convert(ConvertConfig(src, f"{bucket}/tfds", **OPTIONS))
    assert again.status == "up to date" and again.reused_shards == 3
    assert not memory.exists(f"/{root}/tfds/demo/.1.0.0.partial/clipa_convert_manifest.json")


SUMMARY = "clipa_convert_summary.json"


def fail_once(monkeypatch, method, shard):
    """Make the memory store's ``method`` fail once for a key of ``shard``."""
    memory_class = type(fsspec.filesystem("memory"))
    real, failed = getattr(memory_class, method), []

    def flaky(self, *args, **kwargs):
        if not failed and shard in args[-1]:
            failed.append(args[-1])
            raise OSError("connection reset by the store")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(memory_class, method, flaky)
    return failed


@pytest.mark.parametrize(
    ("method", "output_format"),
    [("put_file", "tfrecord"), ("copy", "tfrecord"), ("copy", "webdataset")],
)
def test_a_failed_publish_leaves_no_final_key_and_a_rerun_completes(
    tmp_path, bucket, monkeypatch, method, output_format
):
    src = write_source(tmp_path / "raw", {0: 4, 1: 3, 2: 2}, output_format=output_format)
    plain = convert(ConvertConfig(src, tmp_path / "plain", **OPTIONS)).builder_dir
    out, shard = f"{bucket}/tfds", "demo-train.tfrecord-00001-of-00003"
    failed = fail_once(monkeypatch, method, shard)
    with pytest.raises(ClipaError, match=rf"cannot write {out}/demo/1.0.0/{shard}: connection"):
        convert(ConvertConfig(src, out, **OPTIONS))
    assert failed
    keys = set(stored(bucket))
    assert keys == {
        "tfds/demo/.1.0.0.partial/clipa_convert_manifest.json",  # the plan
        "tfds/demo/1.0.0/demo-train.tfrecord-00000-of-00003",  # published before the failure
    }  # no key of shard 1, no temporary, no metadata, no manifest
    result = convert(ConvertConfig(src, out, **OPTIONS))
    assert (result.status, result.reused_shards) == ("resumed", 1)
    assert stored(result.builder_dir) == files(plain)


def test_the_manifest_is_published_after_every_shard(tmp_path, bucket, monkeypatch):
    src = write_source(tmp_path / "raw", {0: 4, 1: 3, 2: 2})
    memory_class = type(fsspec.filesystem("memory"))
    real_copy, published = memory_class.copy, []

    def recording_copy(self, path1, path2, **kwargs):
        published.append(path2.rsplit("/", 1)[-1])
        return real_copy(self, path1, path2, **kwargs)

    monkeypatch.setattr(memory_class, "copy", recording_copy)
    convert(ConvertConfig(src, f"{bucket}/tfds", **OPTIONS))
    plan = published.index("clipa_convert_manifest.json")  # the plan, in the staging prefix
    shards = [i for i, name in enumerate(published) if ".tfrecord-" in name]
    commit = published.index("clipa_convert_manifest.json", plan + 1)
    assert plan < min(shards) and max(shards) < published.index("dataset_info.json") < commit
    assert published[commit + 1 :] == [SUMMARY]


def test_a_store_takes_only_copies_and_keeps_other_conversions(tmp_path, bucket, monkeypatch):
    src = write_source(tmp_path / "raw", {0: 4, 1: 3})
    for mode in ("hardlink", "symlink", "move"):
        with pytest.raises(ClipaError, match=rf"--mode {mode}: OUT {bucket}/t is an fsspec store"):
            ConvertConfig(src, f"{bucket}/t", **{**OPTIONS, "mode": mode})
    auto = convert(ConvertConfig(src, f"{bucket}/t", **{**OPTIONS, "mode": "auto"}))
    assert auto.method == "copy"
    other = {**OPTIONS, "split": "validation"}
    with pytest.raises(ClipaError, match=r"holds another conversion \(different dataset"):
        convert(ConvertConfig(src, f"{bucket}/t", **other))
    replaced = convert(ConvertConfig(src, f"{bucket}/t", **other, overwrite=True))
    assert replaced.status == "converted"
    assert any("validation" in key for key in stored(replaced.builder_dir))
    fail_once(monkeypatch, "copy", "tfrecord-00001")  # leaves an unfinished conversion in v
    with pytest.raises(ClipaError, match="cannot write"):
        convert(ConvertConfig(src, f"{bucket}/v", **OPTIONS))
    with pytest.raises(ClipaError, match=r"holds an unfinished conversion \(different dataset"):
        convert(ConvertConfig(src, f"{bucket}/v", **other))
    convert(ConvertConfig(src, f"{bucket}/v", **other, overwrite=True))
    assert not [key for key in stored(f"{bucket}/v") if "-train." in key or ".partial" in key]
    fsspec.filesystem("memory").pipe_file(f"/{bucket[9:]}/u/demo/1.0.0/notes.txt", b"mine")
    with pytest.raises(ClipaError, match=r"exists but was not written by clipa-data convert"):
        convert(ConvertConfig(src, f"{bucket}/u", **OPTIONS))


def test_tag_on_a_memory_builder_gives_the_plain_path_sidecars(tmp_path, bucket, nltk_env):
    plain = make_builder_dir(tmp_path / "a", [make_records(6), make_records(5, start=6)])
    url = f"{bucket}/demo/1.0.0"
    fsspec.filesystem("memory").put(f"{plain}/", url.removeprefix("memory://"), recursive=True)
    options = {"tagger": "nltk", "workers": 1, "show_progress": False}
    tag_builder(TagConfig(plain, **options))
    summary = tag_builder(TagConfig(url, **options))
    assert summary.builder_dir == url and len(summary.tagged) == 2
    sidecars = {k[9:]: v for k, v in stored(url).items() if k.startswith("sidecars/")}
    assert sidecars == files(plain / "sidecars")
    assert fsspec.filesystem("memory").exists(f"{url[9:]}/sidecars/tag_summary.json")
    again = tag_builder(TagConfig(url, **options))
    assert [result.status for result in again.shards] == ["skipped", "skipped"]


def test_the_cli_converts_to_a_store_and_refuses_links_there(tmp_path, bucket):
    src = write_source(tmp_path / "raw", {0: 4, 1: 3})
    plain = convert(ConvertConfig(src, tmp_path / "plain", **OPTIONS)).builder_dir
    base = ["convert", str(src), f"memory:/{bucket[9:]}/cli", "--name", "demo", "--workers", "1"]
    refused = runner.invoke(app, [*base, "--mode", "hardlink"])
    assert refused.exit_code == 2, refused.output
    assert "where shards can only be copied" in refused.output and not stored(bucket)
    result = runner.invoke(app, [*base, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert stored(f"{bucket}/cli/demo/1.0.0") == files(plain)


def test_a_salvaged_shard_reaches_the_store_as_its_intact_part(tmp_path, bucket):
    """--skip-bad-shards on a store: a shard cut short is published as its whole records only,
    the same bytes as the plain-path salvage (not the damaged source file)."""
    src = write_source(tmp_path / "raw", {0: 4, 1: 3})
    damaged = sorted(src.glob("*.tfrecord"))[0]
    whole = len(list(tfrecord.read_records(str(damaged))))
    damaged.write_bytes(damaged.read_bytes()[:-20])
    options = {**OPTIONS, "skip_bad_shards": True}
    plain = convert(ConvertConfig(src, tmp_path / "plain", **options)).builder_dir
    result = convert(ConvertConfig(src, f"{bucket}/tfds", **options))
    assert stored(result.builder_dir) == files(plain)
    salvaged = len(list(tfrecord.read_records(str(next(Path(plain).glob("*-00000-of-*"))))))
    assert salvaged == whole - 1  # the last record was cut
    again = convert(ConvertConfig(src, f"{bucket}/tfds", **options))
    assert again.status == "up to date"


def test_a_pool_cannot_write_to_memory_and_is_refused_before_any_work(bucket, tmp_path):
    """memory:// lives in one process: shards written by pool workers would vanish, and the
    manifest would then stand for a builder without them."""
    src = write_source(tmp_path / "raw", {0: 3, 1: 2}, failures=0)
    with pytest.raises(ClipaError, match=r"memory:// lives inside one process.*--workers 1"):
        convert(ConvertConfig(src, bucket, **{**OPTIONS, "workers": 2}))
    assert stored(bucket) == {}
    with pytest.raises(ClipaError, match=r"BUILDER_DIR memory://.*--workers 1"):
        tag_builder(TagConfig(f"{bucket}/demo/1.0.0", tagger="nltk", workers=2))
