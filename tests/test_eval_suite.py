"""``clipa-train eval --suite paper --data-root DIR``: finds each set of the paper's table under
DIR by its conventional folder name, skips (and names) the absent ones, prints one table in the
paper's column order or one JSON line per set, writes eval.json; bad input is one error line.

The real command runs on real weights (a clipa-tiny model, real CLIP vocabulary) and small
generated folders in each set's download layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import jpeg_bytes
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from typer.testing import CliRunner

from clipa_train.variants import variant_classes

PAPER_ORDER = [
    "imagenet1k",
    "imagenetv2",
    "imagenet-a",
    "imagenet-r",
    "objectnet",
    "imagenet-sketch",
    "coco",
    "flickr30k",
]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A clipa checkpoint of a very small model with the real CLIP vocabulary (clipa-tiny with
    one narrow block per tower: 1000 classes of prompts encode in seconds on a shared CPU)."""
    from clipa_train.checkpoint import FORMAT
    from clipa_train.model import ModelConfig, build_model, load_preset

    architecture = load_preset("clipa-tiny").to_dict()
    architecture["embed_dim"] = 32
    architecture["vision"].update(image_size=32, width=32, layers=1, heads=2)
    architecture["text"].update(context_length=16, width=32, layers=1, heads=2)
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(architecture))
    path = tmp_path_factory.mktemp("weights") / "step_1.pt"
    torch.save({"format": FORMAT, "architecture": architecture, "model": model.state_dict()}, path)
    return path


def write_layout(root: Path, folders: list[str], images: int, seed: int) -> Path:
    """Every class folder of a layout, ``images`` images spread over the first folders."""
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(images):
        jpg = jpeg_bytes(40, 36, seed=seed + index)
        (root / folders[index * 7 % len(folders)] / f"image_{index}.jpg").write_bytes(jpg)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """ImageNet val, ImageNetV2, ImageNet-R and ObjectNet as downloaded; no -A, no -Sketch."""
    root = tmp_path_factory.mktemp("data-root")
    data = variant_classes()
    write_layout(root / "imagenet" / "val", data["imagenet_wnids"], 4, seed=0)
    write_layout(
        root / "imagenetv2-matched-frequency-format-val", [str(n) for n in range(1000)], 3, seed=10
    )
    write_layout(root / "imagenet-r", data["imagenet-r"], 3, seed=20)
    objectnet = [entry["folder"] for entry in data["objectnet"]] + ["air_freshener"]
    images = write_layout(root / "objectnet" / "objectnet-1.0" / "images", objectnet, 3, seed=30)
    # a folder with no ImageNet class: its image is not scored
    (images / "air_freshener" / "image_9.jpg").write_bytes(jpeg_bytes(40, 36, seed=39))
    (root / "templates.txt").write_text("a photo of a {}.\n")
    return root


def suite_args(weights: Path, data_root: Path, out: Path, *more: object) -> list[object]:
    return [
        "eval", "--checkpoint", weights, "--suite", "paper", "--data-root", data_root,
        "--templates", data_root / "templates.txt", "--out", out,
        "--workers", 0, "--batch-size", 8, *more,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def suite_json(weights, data_root, tmp_path_factory):
    """One ``--json`` run of the suite and the eval.json it wrote."""
    out = tmp_path_factory.mktemp("suite") / "eval.json"
    result = invoke(*suite_args(weights, data_root, out, "--json"))
    assert result.exit_code == 0, result.output
    return result, out


def test_suite_json_lines_follow_the_paper_order_and_match_eval_json(data_root, suite_json):
    result, out = suite_json
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["set"] for line in lines] == PAPER_ORDER
    by_set = {line.pop("set"): line for line in lines}
    assert "imagenet-a" in by_set["imagenet-a"]["skipped"]
    assert "imagenet-sketch/sketch" in by_set["imagenet-sketch"]["skipped"]
    assert "skipped imagenet-a: not found under" in result.stderr
    assert "imagenet-r" in result.stderr and "3/3" in result.stderr  # its progress bar
    saved = json.loads(out.read_text())
    assert saved["suite"] == "paper" and saved["image_size"] == 32
    assert set(saved["sets"]) == {"imagenet1k", "imagenetv2", "imagenet-r", "objectnet"}
    assert set(saved["skipped"]) == {"imagenet-a", "imagenet-sketch", "coco", "flickr30k"}
    for name, scores in saved["sets"].items():
        assert by_set[name] == scores
    expected = {
        "imagenet1k": (4, 1000), "imagenetv2": (3, 1000), "imagenet-r": (3, 200),
        "objectnet": (3, 113),
    }  # fmt: skip
    for name, (images, classes) in expected.items():
        assert (saved["sets"][name]["n"], saved["sets"][name]["classes"]) == (images, classes)
    assert saved["sets"]["imagenet-r"]["dataset"] == str(data_root / "imagenet-r")


def test_a_suite_set_scores_as_the_same_set_evaluated_alone(
    weights, data_root, suite_json, tmp_path
):
    suite, _ = suite_json
    alone = invoke(
        "eval", "--checkpoint", weights,
        "--imagenet-val", data_root / "imagenetv2-matched-frequency-format-val",
        "--templates", data_root / "templates.txt", "--out", tmp_path / "alone.json",
        "--json", "--workers", 0,
    )  # fmt: skip
    assert suite.exit_code == 0 and alone.exit_code == 0, suite.output + alone.output
    v2 = next(json.loads(line) for line in suite.stdout.splitlines() if '"imagenetv2"' in line)
    single = json.loads(alone.stdout)
    keys = ("top1", "top5", "n", "classes")
    assert {k: v2[k] for k in keys} == {k: single[k] for k in keys}


def test_a_result_replaced_is_said_and_an_out_below_a_file_is_refused_first(
    weights, data_root, tmp_path
):
    one_set = [
        "eval", "--checkpoint", weights,
        "--imagenet-val", data_root / "imagenetv2-matched-frequency-format-val",
        "--templates", data_root / "templates.txt", "--workers", 0,
    ]  # fmt: skip
    out = tmp_path / "eval.json"
    first = invoke(*one_set, "--out", out)
    assert first.exit_code == 0 and "replaced" not in first.stderr, first.output
    second = invoke(*one_set, "--out", out)
    assert second.exit_code == 0, second.output
    assert f"replaced the earlier result in {out}" in second.stderr
    assert "--out FILE keeps" not in second.stderr  # given: no advice to give it
    folder = invoke(*one_set, "--out", f"{tmp_path / 'new'}/")  # a folder, made if need be
    assert folder.exit_code == 0, folder.output
    written = json.loads((tmp_path / "new" / "eval.json").read_text())
    earlier = json.loads(out.read_text())
    assert (written["top1"], written["n"]) == (earlier["top1"], earlier["n"])
    from clipa_train.probe import ProbeConfig  # probe reads --out the same way

    probe = ProbeConfig(checkpoint="c.pt", train="t", val="v", out=f"{tmp_path / 'p'}/")
    assert probe.result_path() == tmp_path / "p" / "probe.json"
    (tmp_path / "file").write_text("")
    for mode in (["--suite", "paper", "--data-root", data_root], one_set[3:5]):
        refused = invoke(*one_set[:3], *mode, "--out", tmp_path / "file" / "eval.json")
        assert_one_line_error(refused, f"{tmp_path / 'file'} is a file, not a folder")


def test_suite_table_has_the_paper_columns_in_order(weights, data_root, tmp_path):
    result = invoke(*suite_args(weights, data_root, tmp_path / "eval.json"))
    assert result.exit_code == 0, result.output
    headers = ["IN-1K", "IN-V2", "IN-A", "IN-R", "ObjectNet", "IN-Sketch", "COCO I→T", "Flickr T→I"]
    places = [result.stdout.index(header) for header in headers]
    assert places == sorted(places), result.stdout
    assert "—" in result.stdout and str(tmp_path / "eval.json") in result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--suite", "paper"], ["--suite needs --data-root DIR"]),
        (["--data-root", "{root}"], ["--imagenet-val DIR or a suite with --suite paper"]),
        ([], ["give one set with --imagenet-val DIR or a suite"]),
        (["--suite", "paper", "--data-root", "{root}", "--imagenet-val", "{root}"], ["not both"]),
        (["--suite", "bogus", "--data-root", "{root}"], ["unknown suite 'bogus'", "paper"]),
        (["--suite", "paper", "--data-root", "{empty}"], ["holds none of the suite's sets"]),
        (["--suite", "paper", "--data-root", "{nope}"], ["--data-root", "folder not found"]),
        (
            ["--suite", "paper", "--data-root", "{root}", "--max-missing", "2"],
            ["--max-missing within [0, 1]"],
        ),
    ],
)
def test_suite_bad_options(weights, data_root, tmp_path, args, fragments):
    (tmp_path / "empty").mkdir()
    places = {"root": data_root, "empty": tmp_path / "empty", "nope": tmp_path / "nope"}
    filled = [arg.format(**places) for arg in args]
    result = invoke("eval", "--checkpoint", weights, *filled)
    assert_one_line_error(result, *fragments)


def test_a_suite_set_with_missing_classes_fails_before_any_evaluation(weights, data_root, tmp_path):
    broken = tmp_path / "root"
    shutil.copytree(data_root / "imagenet-r", broken / "imagenet-r")
    shutil.copytree(data_root / "imagenet", broken / "imagenet")
    shutil.copy(data_root / "templates.txt", broken)
    shutil.rmtree(broken / "imagenet-r" / variant_classes()["imagenet-r"][-1])
    result = invoke(*suite_args(weights, broken, tmp_path / "eval.json"))
    assert_one_line_error(
        result, "imagenet-r is missing 1 of its 200 class folders", "n12267677",
        after_warnings=True,  # the fixture's ImageNet has images of 4 classes only
    )  # fmt: skip
    assert not (tmp_path / "eval.json").exists()


def test_an_imagenet_folder_of_another_size_names_the_suites_fix(weights, tmp_path):
    """The fix said was --classnames FILE, which --suite refuses."""
    root = tmp_path / "root"
    write_layout(root / "imagenet" / "val", [f"class_{n:02d}" for n in range(20)], 20, seed=0)
    result = invoke(*suite_args(weights, root, tmp_path / "eval.json")[:7], "--workers", 0)
    assert_one_line_error(
        result, "has 20 classes, not ImageNet-1K's 1000", "move that set out of --data-root"
    )


def test_imagenet_as_a_tfds_builder_is_found_by_its_name(tmp_path):
    """``DIR/imagenet2012/<version>`` (a TFDS data dir as ``--data-root``) is ImageNet-1K."""
    from test_train_cli import write_imagenet_like

    from clipa_train.eval_suite import PAPER, SetOptions, find_sets

    write_imagenet_like(tmp_path, [(jpeg_bytes(40, 36, seed=1), 7), (jpeg_bytes(40, 36, 2), 9)])
    found, skipped = find_sets(PAPER, tmp_path / "tfds", SetOptions())
    [(entry, path, zset)] = found
    assert entry.name == "imagenet1k" and path == tmp_path / "tfds" / "imagenet2012"
    assert zset.kind == "tfds" and zset.num_images == 2 and len(zset.task.classnames) == 1000
    assert list(skipped) == PAPER_ORDER[1:]


def test_a_later_sets_failure_keeps_the_sets_finished_before_it(weights, data_root, tmp_path):
    """One COCO image that does not decode, after ImageNet was scored (an hour on the real
    set): the failure threw every finished set away. Now each finished set is in eval.json at
    once (marked incomplete) and the error line says where."""
    from test_retrieval import write_karpathy

    root = tmp_path / "root"
    shutil.copytree(data_root / "imagenet", root / "imagenet")
    _, images = write_karpathy(root / "coco", 6)
    (images / "val2014").rename(root / "coco" / "val2014")
    bad = sorted((root / "coco" / "val2014").iterdir())[-1]
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "suite.json"
    args = ["--suite", "paper", "--data-root", root, "--out", out, "--workers", 0, "--json"]
    result = invoke("eval", "--checkpoint", weights, *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{bad}: image does not decode" in errors[0], result.stderr
    assert errors[0].endswith(f"(the sets evaluated before it, imagenet1k, are in {out})")
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and list(saved["sets"]) == ["imagenet1k"]
    assert saved["sets"]["imagenet1k"]["n"] == 4


def test_suite_scores_coco_retrieval_as_eval_retrieval_does(weights, data_root, tmp_path):
    """A Karpathy COCO split under the root joins the table: the same recalls as the standalone
    ``eval --retrieval coco`` on the same files; Flickr30k, absent, is skipped and named."""
    from test_retrieval import write_karpathy

    root = tmp_path / "root"
    shutil.copytree(data_root / "imagenet", root / "imagenet")
    annotations, images = write_karpathy(root / "coco", 6)
    (images / "val2014").rename(root / "coco" / "val2014")  # COCO's layout: coco/val2014/*.jpg
    common = ["--out", tmp_path / "suite.json", "--workers", 0, "--batch-size", 4, "--json"]
    args = ["--suite", "paper", "--data-root", root, *common]
    suite = invoke("eval", "--checkpoint", weights, *args)
    assert suite.exit_code == 0, suite.output
    lines = {line["set"]: line for line in map(json.loads, suite.stdout.splitlines())}
    assert list(lines) == PAPER_ORDER
    assert "not found" in lines["flickr30k"]["skipped"] and "imagenetv2" in lines
    alone = invoke(
        "eval", "--checkpoint", weights, "--retrieval", "coco", "--annotations", annotations,
        "--images", root / "coco", "--out", tmp_path / "alone.json", "--workers", 0,
        "--batch-size", 4, "--json",
    )  # fmt: skip
    assert alone.exit_code == 0, alone.output
    standalone = json.loads(alone.stdout)
    for key in ("image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@10", "captions"):
        assert lines["coco"][key] == standalone[key]
    assert lines["coco"]["images"] == 6 and lines["coco"]["captions"] == 30
    assert "lists 6 test images, not the 5000" in suite.stderr
    # An image gone: the suite names where it looks (its rows take no --images)
    gone = sorted((root / "coco" / "val2014").iterdir())[0]
    gone.unlink()
    missing = invoke("eval", "--checkpoint", weights, *args)
    assert_one_line_error(
        missing, f"put them in {root / 'coco'}", "--max-missing", after_warnings=True
    )
    assert "--images at" not in missing.stderr
    # --max-missing and --chunk-size reach the suite's retrieval rows, as they do alone
    allowed = ["--max-missing", 0.2, "--chunk-size", 2]
    skipping = invoke("eval", "--checkpoint", weights, *args, *allowed)
    assert skipping.exit_code == 0, skipping.output
    assert f"1 of 6 images of {annotations} are missing and skipped" in skipping.stderr
    assert gone.name in skipping.stderr
    lines = {line["set"]: line for line in map(json.loads, skipping.stdout.splitlines())}
    alone = invoke(
        "eval", "--checkpoint", weights, "--retrieval", "coco", "--annotations", annotations,
        "--images", root / "coco", "--out", tmp_path / "alone.json", "--workers", 0,
        "--batch-size", 4, "--json", *allowed,
    )  # fmt: skip
    assert alone.exit_code == 0, alone.output
    standalone = json.loads(alone.stdout)
    assert lines["coco"]["images"] == standalone["images"] == 5
    for key in ("image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@10"):
        assert lines["coco"][key] == standalone[key]


def test_imagenet_folders_not_named_by_wordnet_id_name_the_suites_fix(weights, tmp_path):
    """1000 folders of other names were scored against ImageNet's names in sorted order."""
    root = tmp_path / "root"
    write_layout(root / "imagenet" / "val", [f"class_{n:04d}" for n in range(1000)], 4, seed=0)
    result = invoke(*suite_args(weights, root, tmp_path / "eval.json")[:7], "--workers", 0)
    line = assert_one_line_error(
        result, "1000 of its 1000 class folders are not ImageNet-1K WordNet ids",
        "the suite reads", "name its folders by WordNet id",
        after_warnings=True,  # the layout puts images in 4 of the folders
    )  # fmt: skip
    assert "--classnames" not in line
