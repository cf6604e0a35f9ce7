"""``clipa-train probe``: the logistic-regression head separates separable features, the L2
strength is chosen on a held-out split, features are cached and reused, ImageFolder and TFDS
sets give the same features, and bad input is one line."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import write_checkpoint
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from PIL import Image
from typer.testing import CliRunner

from clipa_train.logistic import fit_head, fit_probe, holdout_split
from clipa_train.probe import cached_features

COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
"""Class folders (sorted names = labels) of the generated sets: one colour each, plus noise."""


def separable(classes: int, dim: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features around well-separated class means (distance ≫ noise): linearly separable."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 4
    labels = torch.randint(0, classes, (count,), generator=generator)
    return means[labels] + 0.5 * torch.randn(count, dim, generator=generator), labels


# --- the head -------------------------------------------------------------------------------


def test_probe_on_separable_features_reaches_99_percent():
    train, train_labels = separable(10, 24, 600, seed=0)
    val, val_labels = separable(10, 24, 400, seed=1)
    fit = fit_probe(train, train_labels, 10, (1e-4, 1e-2, 1.0), holdout=0.25, max_iter=100)
    assert fit.head.top1(val, val_labels) >= 0.99
    assert set(fit.holdout_top1) == {1e-4, 1e-2, 1.0} and fit.l2 in fit.holdout_top1


def test_the_l2_strength_is_chosen_on_held_out_data():
    # Labels that are noise: every L2 fits the training part; the strongest generalises no
    # worse on the held-out part, and a tie goes to the stronger one.
    features = torch.randn(80, 40, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 2, (80,), generator=torch.Generator().manual_seed(1))
    fit = fit_probe(features, labels, 2, (1e-6, 1e3), max_iter=50)
    best = max(fit.holdout_top1.values())
    assert fit.holdout_top1[fit.l2] == best
    if fit.holdout_top1[1e3] == best:
        assert fit.l2 == 1e3
    weak = fit_head(features, labels, 2, 1e-6, max_iter=50)
    strong = fit_head(features, labels, 2, 1e3, max_iter=50)
    assert strong.weight.norm() < weak.weight.norm() / 10


def test_holdout_split_is_seeded_disjoint_and_never_empty():
    fit_rows, held = holdout_split(10, 0.2, seed=3)
    assert sorted([*fit_rows.tolist(), *held.tolist()]) == list(range(10)) and len(held) == 2
    assert torch.equal(held, holdout_split(10, 0.2, seed=3)[1])
    assert [len(part) for part in holdout_split(2, 0.01, 0)] == [1, 1]
    assert [len(part) for part in holdout_split(2, 0.99, 0)] == [1, 1]


def test_cached_features_are_reused_without_running_the_model(tmp_path):
    path = tmp_path / "features.pt"
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 0])

    first = cached_features(path, compute)
    assert not first.reused and path.is_file() and calls == [1]

    def must_not_run():
        raise AssertionError("the model ran although the features were cached")

    second = cached_features(path, must_not_run)
    assert second.reused and torch.equal(second.features, first.features)
    assert torch.equal(second.labels, first.labels)
    path.write_bytes(b"damaged")  # a broken cache is recomputed, not trusted
    assert not cached_features(path, compute).reused and calls == [1, 1]


# --- the command ------------------------------------------------------------------------------


def colour_image(rgb: tuple[int, int, int], rng: np.random.Generator, jpeg: bool) -> bytes:
    pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG" if jpeg else "PNG")
    return buffer.getvalue()


def colour_images(per_class: int, seed: int, jpeg: bool = False) -> list[tuple[bytes, int]]:
    rng = np.random.default_rng(seed)
    return [
        (colour_image(rgb, rng, jpeg), label)
        for label, rgb in enumerate(COLOURS.values())
        for _ in range(per_class)
    ]


def write_folder(root: Path, images: list[tuple[bytes, int]], suffix: str) -> Path:
    names = list(COLOURS)
    for index, (data, label) in enumerate(images):
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        (root / names[label] / f"{index:03d}{suffix}").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe")
    write_folder(root / "colours" / "train", colour_images(8, seed=0), ".png")
    write_folder(root / "colours" / "val", colour_images(4, seed=1), ".png")
    return {
        "colours": root / "colours",
        "checkpoint": write_checkpoint(root / "run", pool="tok"),
    }


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def probe(checkpoint: Path, train: Path, val: Path, *more: object):
    return invoke(
        "probe", "--checkpoint", checkpoint, "--train", train, "--val", val, "--workers", 0,
        "--max-iter", 20, *more,
    )  # fmt: skip


def test_probe_with_model_named_keeps_the_sizes_of_the_weights(sets, tmp_path):
    """As eval: a 32 px / 8-token export probed with --model clipa-tiny ran at the preset's
    64 px, its positional embeddings resized without a word."""
    checkpoint = write_checkpoint(
        tmp_path / "run", preset="clipa-tiny", image_size=32, context_length=8
    )
    out = tmp_path / "model.safetensors"
    assert invoke("export", checkpoint, out, "--format", "safetensors").exit_code == 0
    cache = ["--cache-dir", tmp_path / "cache"]
    for named in ([], ["--model", "clipa-tiny"]):
        result = probe(out, sets["colours"], sets["colours"], *named, *cache, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["image_size"] == 32, named


def test_probe_end_to_end_then_the_feature_cache_is_reused(sets, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "probe.json"
    args = (sets["checkpoint"], sets["colours"], sets["colours"], "--cache-dir", cache)
    first = probe(*args, "--out", out, "--json")
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert result == json.loads(out.read_text())
    assert (result["n_train"], result["n_val"], result["classes"]) == (24, 12, 3)
    assert result["feature_dim"] == 32 and result["image_size"] == 32
    assert result["top1"] >= 0.9  # three flat colours: separable even for a random tower
    assert not any(entry["reused"] for entry in result["cache"].values())
    files = sorted(cache.iterdir())
    assert len(files) == 2
    written = {path: path.stat().st_mtime_ns for path in files}
    time.sleep(0.01)

    second = probe(*args, "--out", out)  # the table this time
    assert second.exit_code == 0, second.output
    assert f"replaced the earlier result in {out}" in " ".join(second.stderr.split())
    assert "are the same images" not in second.stderr  # DIR/train and DIR/val were found
    same = probe(sets["checkpoint"], sets["colours"] / "val", sets["colours"] / "val", "--json",
                 "--cache-dir", tmp_path / "other-cache")  # fmt: skip
    assert same.exit_code == 0 and "--train and --val are the same images" in same.stderr
    assert same.stderr.count("reused cache") == 1  # extracted once, for --train
    assert len(list((tmp_path / "other-cache").iterdir())) == 1
    assert second.stderr.count("reused cache") == 2, second.stderr
    assert "top-1" in second.stdout and f"{result['top1']:.2%}" in second.stdout
    assert {path: path.stat().st_mtime_ns for path in cache.iterdir()} == written
    assert json.loads(out.read_text())["cache"]["val"]["reused"] is True

    third = probe(*args, "--image-size", 16, "--json")  # other image settings: new features
    assert third.exit_code == 0, third.output
    assert len(list(cache.iterdir())) == 4

    # Another architecture over the same weights (here GAP instead of the class token): new
    # features, not the first model's.
    from clipa_train.checkpoint import base_architecture

    other = base_architecture(None, str(sets["checkpoint"]), "clipa-tiny").to_dict()
    other["vision"]["pool"] = "avg_all"
    (tmp_path / "gap.json").write_text(json.dumps(other))
    fourth = probe(*args, "--model", tmp_path / "gap.json", "--json")
    assert fourth.exit_code == 0, fourth.output
    assert "reused cache" not in fourth.stderr and len(list(cache.iterdir())) == 6


def test_an_image_replaced_under_the_same_name_is_not_served_from_the_cache(sets, tmp_path):
    colours = tmp_path / "colours"
    shutil.copytree(sets["colours"], colours)
    args = (sets["checkpoint"], colours, colours, "--cache-dir", tmp_path / "cache", "--json")
    assert probe(*args).exit_code == 0
    assert probe(*args).stderr.count("reused cache") == 2
    image = sorted(path for path in colours.rglob("*") if path.is_file())[0]
    image.write_bytes(colour_images(1, seed=99)[0][0])
    again = probe(*args)
    assert again.exit_code == 0, again.output
    role = image.relative_to(colours).parts[0]  # the set (train or val) the image is in
    lines = [line for line in again.stderr.splitlines() if line.startswith(("train", "val"))]
    assert [line.split()[0] for line in lines if "reused cache" not in line] == [role], lines


def write_tfds(root: Path, splits: dict[str, list[tuple[bytes, int]]]) -> Path:
    """A TFDS classification builder (``image`` + ``label``) with the given splits."""
    import tensorflow_datasets as tfds

    from clipa_data.core import layout
    from clipa_data.core.example import encode_example
    from clipa_data.core.tfrecord import write_records

    builder = layout.builder_dir(root, "colours", "1.0.0")
    builder.mkdir(parents=True)
    infos = []
    for split, images in splits.items():
        with open(builder / layout.shard_filename("colours", split, 0, 1), "wb") as handle:
            records = (
                encode_example({"image": ("bytes", [jpg]), "label": ("int64", [label])})
                for jpg, label in images
            )
            write_records(handle, records)
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder, template=layout.DEFAULT_TEMPLATE, dataset_name="colours",
            split=split, filetype_suffix=layout.FILE_FORMAT,
        )  # fmt: skip
        infos.append(
            tfds.core.SplitInfo(
                name=split, shard_lengths=[len(images)], num_bytes=0, filename_template=template
            )
        )
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=len(COLOURS)),
        }
    )
    tfds.folder_dataset.write_metadata(
        data_dir=builder, features=features, split_infos=infos, check_data=False
    )
    return builder


def test_a_tfds_builder_probes_like_the_same_images_in_folders(sets, tmp_path):
    train, test = colour_images(6, seed=2, jpeg=True), colour_images(3, seed=3, jpeg=True)
    builder = write_tfds(tmp_path / "tfds", {"train": train, "test": test})
    write_folder(tmp_path / "folders" / "train", train, ".jpg")
    write_folder(tmp_path / "folders" / "val", test, ".jpg")
    results = {}
    for name, train_set, val_set in [
        ("tfds", builder, builder),
        ("folders", tmp_path / "folders", tmp_path / "folders"),
    ]:
        cache = tmp_path / f"cache-{name}"
        outcome = probe(sets["checkpoint"], train_set, val_set, "--cache-dir", cache, "--json")
        assert outcome.exit_code == 0, outcome.output
        results[name] = json.loads(outcome.stdout)
        results[name]["features"] = {
            role: torch.load(entry["path"], weights_only=True)
            for role, entry in results[name]["cache"].items()
        }
    for role in ("train", "val"):
        tfds_set, folder_set = (
            results["tfds"]["features"][role],
            results["folders"]["features"][role],
        )
        assert torch.equal(tfds_set["labels"], folder_set["labels"])
        assert torch.allclose(tfds_set["features"], folder_set["features"], atol=1e-5)
    assert results["tfds"]["top1"] == results["folders"]["top1"]


def test_the_worker_count_does_not_change_the_features_order_or_the_result(sets, tmp_path):
    """Workers decode interleaved slices of the files, so the rows arrived in an order that
    followed --workers, and the seeded held-out split (rows by position) took other images:
    three worker counts gave three top-1s. Now the rows are in the set's order."""
    results = {}
    for workers in (0, 2, 3):
        cache = tmp_path / f"cache-{workers}"
        args = (sets["checkpoint"], sets["colours"], sets["colours"], "--cache-dir", cache)
        outcome = probe(*args, "--json", "--workers", workers, "--batch-size", 5)
        assert outcome.exit_code == 0, outcome.output
        result = json.loads(outcome.stdout)
        saved = torch.load(result["cache"]["train"]["path"], weights_only=True)
        results[workers] = (result["top1"], result["l2"], saved["labels"], saved["features"])
    top1, l2, labels, features = results[0]
    assert labels.tolist() == sorted(labels.tolist())  # class folders in order, files in order
    for workers in (2, 3):
        assert results[workers][:2] == (top1, l2), workers
        assert torch.equal(results[workers][2], labels)
        assert torch.allclose(results[workers][3], features, atol=1e-6)


@pytest.mark.parametrize(
    ("case", "extra", "fragments"),
    [
        ("other classes", [], ["only in --val: purple", "same class folders"]),
        ("missing train", [], ["--train", "no such folder"]),
        ("bad holdout", ["--holdout", "1.5"], ["--holdout must be between 0 and 1"]),
        ("run directory", [], ["is a run directory", "step_00000003.pt"]),
        ("out below a file", [], ["is a file, not a folder", "probe.json"]),
        ("cache below a file", [], ["is a file, not a folder", "the feature cache"]),
        ("out a folder", [], ["is a folder where the result file goes", "probe.json"]),
        (
            "a set's parent",
            [],
            ["class folders but no images", "set's parent: give ", "/colours instead"],
        ),
    ],
)
def test_probe_bad_input(sets, tmp_path, case, extra, fragments):
    train, val, checkpoint = sets["colours"], sets["colours"], sets["checkpoint"]
    if case == "other classes":
        val = write_folder(tmp_path / "val", colour_images(1, seed=5), ".png")
        (val / "purple").mkdir()
        (val / "purple" / "0.png").write_bytes(colour_images(1, seed=6)[0][0])
    elif case == "missing train":
        train = tmp_path / "nope"
    elif case == "run directory":
        checkpoint = checkpoint.parent.parent
    elif case == "a set's parent":  # ROOT/colours/train/CLASS/: ROOT is a level too high
        train = train.parent
    (tmp_path / "file").write_text("")
    if case == "out below a file":
        extra = ["--out", tmp_path / "file" / "probe.json"]
    if case == "out a folder":
        extra = ["--out", tmp_path]
    cache = tmp_path / ("file/cache" if case == "cache below a file" else "cache")
    result = probe(checkpoint, train, val, "--cache-dir", cache, *extra)
    assert_one_line_error(result, *fragments)
    assert not cache.exists()  # refused before any feature was extracted
