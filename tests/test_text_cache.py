"""The zero-shot classifier cache of ``clipa-train eval`` (``clipa_train.text_cache``): a second
eval of a checkpoint reads its classifier from ``zeroshot_cache/`` in the run directory and scores
identically without running the text tower; a suite builds ImageNet's 1000-class classifier once
for IN-1K, -V2, -Sketch and -R; a cache made with another tokenizer is one error line; a corrupted
cache file is rebuilt with a warning.

Everything runs through the real command on a real (very small) checkpoint and generated folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from test_eval_suite import write_layout
from typer.testing import CliRunner

from clipa_train.model.clip import CLIP
from clipa_train.variants import variant_classes

SCORES = ("top1", "top5", "n", "classes")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory whose ``checkpoints/`` holds a very small clipa-tiny checkpoint."""
    from clipa_train.checkpoint import FORMAT
    from clipa_train.model import ModelConfig, build_model, load_preset

    architecture = load_preset("clipa-tiny").to_dict()
    architecture["embed_dim"] = 32
    architecture["vision"].update(image_size=32, width=32, layers=1, heads=2)
    architecture["text"].update(context_length=16, width=32, layers=1, heads=2)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(architecture))
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    state = {"format": FORMAT, "architecture": architecture, "model": model.state_dict()}
    torch.save(state, run / "checkpoints" / "step_00000001.pt")
    return run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """ImageNet val, ImageNetV2, ImageNet-R and -Sketch as downloaded; a one-template file."""
    root = tmp_path_factory.mktemp("data-root")
    data = variant_classes()
    write_layout(root / "imagenet" / "val", data["imagenet_wnids"], 4, seed=0)
    write_layout(
        root / "imagenetv2-matched-frequency-format-val", [str(n) for n in range(1000)], 3, seed=10
    )
    write_layout(root / "imagenet-r", data["imagenet-r"], 3, seed=20)
    write_layout(root / "imagenet-sketch" / "sketch", data["imagenet_wnids"], 3, seed=30)
    (root / "templates.txt").write_text("a photo of a {}.\n")
    return root


def checkpoint(run: Path) -> Path:
    return run / "checkpoints" / "step_00000001.pt"


def eval_imagenet(run: Path, data_root: Path, out: Path, *more: object):
    return invoke(
        "eval", "--checkpoint", checkpoint(run), "--imagenet-val", data_root / "imagenet",
        "--templates", data_root / "templates.txt", "--out", out, "--workers", 0, "--json", *more,
    )  # fmt: skip


def text_tower_refuses(monkeypatch) -> None:
    """From here on, running the text tower fails the eval (the check, not the thing tested)."""

    def refuse(self, text, normalize=True):
        raise AssertionError("the text tower ran")

    monkeypatch.setattr(CLIP, "encode_text", refuse)


def test_a_second_eval_reads_the_cached_classifier_and_scores_identically(
    run, data_root, tmp_path, monkeypatch
):
    first = eval_imagenet(run, data_root, tmp_path / "first.json")
    assert first.exit_code == 0, first.output
    [cached] = (run / "zeroshot_cache").iterdir()  # the default: in the run directory
    assert cached.name.startswith("1000-classes-")
    assert f"imagenet1k: zero-shot classifier built (1000 classes, cached in {cached})" in (
        first.stderr.replace("\n", "")
    )
    text_tower_refuses(monkeypatch)
    second = eval_imagenet(run, data_root, tmp_path / "second.json")
    assert second.exit_code == 0, second.output
    assert "zero-shot classifier read from" in second.stderr and cached.name in second.stderr
    before, after = json.loads(first.stdout), json.loads(second.stdout)
    assert {key: after[key] for key in SCORES} == {key: before[key] for key in SCORES}
    # Without the cache the text tower runs (so the check above is a real one).
    fresh = eval_imagenet(run, data_root, tmp_path / "fresh.json", "--no-text-cache")
    assert fresh.exit_code != 0 and "the text tower ran" in repr(fresh.exception)


def test_no_text_cache_writes_nothing_and_text_cache_picks_the_folder(run, data_root, tmp_path):
    alone = tmp_path / "alone"
    shutil.copytree(run / "checkpoints", alone / "checkpoints")
    result = eval_imagenet(alone, data_root, tmp_path / "a.json", "--no-text-cache")
    assert result.exit_code == 0, result.output
    assert "zero-shot classifier built (1000 classes)" in result.stderr
    assert not (alone / "zeroshot_cache").exists()
    chosen = eval_imagenet(alone, data_root, tmp_path / "b.json", "--text-cache", tmp_path / "tc")
    assert chosen.exit_code == 0, chosen.output
    assert len(list((tmp_path / "tc").glob("1000-classes-*.pt"))) == 1
    assert not (alone / "zeroshot_cache").exists()
    both = ["--text-cache", tmp_path / "tc", "--no-text-cache"]
    assert_one_line_error(
        eval_imagenet(alone, data_root, tmp_path / "c.json", *both),
        "--text-cache DIR or --no-text-cache, not both",
    )


def suite(run: Path, data_root: Path, out: Path, *more: object):
    return invoke(
        "eval", "--checkpoint", checkpoint(run), "--suite", "paper", "--data-root", data_root,
        "--templates", data_root / "templates.txt", "--out", out, "--workers", 0, "--json", *more,
    )  # fmt: skip


def test_a_suite_builds_the_1000_class_classifier_once(run, data_root, tmp_path):
    cache = tmp_path / "cache"
    result = suite(run, data_root, tmp_path / "eval.json", "--text-cache", cache)
    assert result.exit_code == 0, result.output
    err = result.stderr.replace("\n", "")
    assert err.count("zero-shot classifier built") == 1, result.stderr
    assert "imagenet1k: zero-shot classifier built (1000 classes" in err
    assert "imagenetv2: zero-shot classifier reused from this run" in err
    assert "imagenet-r: zero-shot classifier of its 200 classes taken from this run's 1000" in err
    assert "imagenet-sketch: zero-shot classifier reused from this run" in err
    assert [path.name[:13] for path in cache.iterdir()] == ["1000-classes-"]
    lines = {line["set"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert lines["imagenet-r"]["classes"] == 200 and lines["imagenet-sketch"]["classes"] == 1000
    # ImageNet-R's columns taken from the 1000-class classifier score as its own 200-class one.
    only_r = tmp_path / "only-r"
    shutil.copytree(data_root / "imagenet-r", only_r / "imagenet-r")
    shutil.copy(data_root / "templates.txt", only_r)
    alone = suite(run, only_r, tmp_path / "r.json", "--no-text-cache")
    assert alone.exit_code == 0, alone.output
    assert "imagenet-r: zero-shot classifier built (200 classes)" in alone.stderr
    r_alone = next(line for line in map(json.loads, alone.stdout.splitlines()) if "top1" in line)
    assert {key: r_alone[key] for key in SCORES} == {
        key: lines["imagenet-r"][key] for key in SCORES
    }


def train_wordpiece(folder: Path) -> Path:
    from test_wordpiece import CAPTIONS, train_vocabulary

    return train_vocabulary(folder, [*CAPTIONS, "a photo of a dog."])


def test_a_cache_made_with_another_tokenizer_is_one_error_line(run, data_root, tmp_path):
    cache = tmp_path / "cache"
    made = eval_imagenet(run, data_root, tmp_path / "bpe.json", "--text-cache", cache)
    assert made.exit_code == 0, made.output
    [cached] = cache.iterdir()
    vocabulary = train_wordpiece(tmp_path / "wordpiece") / "tokenizer.json"
    other = eval_imagenet(
        run, data_root, tmp_path / "wp.json", "--text-cache", cache, "--tokenizer", vocabulary
    )
    line = assert_one_line_error(
        other,
        str(cached),
        "made with tokenizer clip-bpe (vocabulary sha256",
        f"this eval uses wordpiece {vocabulary}",
        "pass --tokenizer clip-bpe",
        f"else delete {cached}",
        after_warnings=True,  # the fixture's ImageNet has images of 4 classes only
    )
    assert line.count("vocabulary sha256") == 2
    assert not (tmp_path / "wp.json").exists()


def test_a_corrupted_cache_file_is_rebuilt_with_a_warning(run, data_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    made = eval_imagenet(run, data_root, tmp_path / "a.json", "--text-cache", cache)
    assert made.exit_code == 0, made.output
    [cached] = cache.iterdir()
    cached.write_bytes(cached.read_bytes()[:300])  # an eval killed mid-copy, a full disk
    rebuilt = eval_imagenet(run, data_root, tmp_path / "b.json", "--text-cache", cache)
    assert rebuilt.exit_code == 0, rebuilt.output
    err = rebuilt.stderr.replace("\n", "")
    assert f"warning: {cached}: not a readable zero-shot cache" in err and "rebuilding it" in err
    assert "zero-shot classifier built (1000 classes" in err
    before, after = json.loads(made.stdout), json.loads(rebuilt.stdout)
    assert {key: after[key] for key in SCORES} == {key: before[key] for key in SCORES}
    text_tower_refuses(monkeypatch)  # the rewritten file reads back
    again = eval_imagenet(run, data_root, tmp_path / "c.json", "--text-cache", cache)
    assert again.exit_code == 0 and "read from" in again.stderr, again.output


def test_a_cache_entry_of_another_key_is_not_used(run, data_root, tmp_path):
    """A file whose recorded key is not the eval's (hand-copied, renamed) is rebuilt, never used."""
    cache = tmp_path / "cache"
    made = eval_imagenet(run, data_root, tmp_path / "a.json", "--text-cache", cache)
    assert made.exit_code == 0, made.output
    [cached] = cache.iterdir()
    saved = torch.load(cached, weights_only=True)
    saved["key"]["size"] += 1
    torch.save(saved, cached)
    rebuilt = eval_imagenet(run, data_root, tmp_path / "b.json", "--text-cache", cache)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "its key is not this eval's" in rebuilt.stderr.replace("\n", "")
    assert torch.load(cached, weights_only=True)["key"]["size"] == saved["key"]["size"] - 1


def test_a_cache_folder_that_takes_no_files_warns_and_the_eval_goes_on(run, data_root, tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder\n")
    result = eval_imagenet(run, data_root, tmp_path / "a.json", "--text-cache", taken)
    assert result.exit_code == 0, result.output
    err = result.stderr.replace("\n", "")
    assert "warning: zero-shot classifier not cached" in err and "--no-text-cache" in err
    assert "zero-shot classifier built (1000 classes)" in err
    assert json.loads(result.stdout)["n"] == 4 and taken.read_text() == "not a folder\n"
