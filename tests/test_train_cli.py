"""``clipa-train pretrain|finetune|eval``: bad input stops before training with one clear line;
a real SIGTERM stop and ``--resume auto`` continue exactly; eval reads ImageFolder and TFDS sets.

Everything runs the real commands on real builder directories (TFDS metadata, Arrow sidecars
from spaCy) with the real streaming loader.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from builders import Record, jpeg_bytes, make_builder_dir, make_records
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from forward_sizes import assert_micro_batches, model_batch_sizes
from sidecars import write_sidecars
from typer.testing import CliRunner

from clipa_data.demo import write_demo_validation

RECORDS_PER_SHARD = 24


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A builder without sidecars, a tagged copy, and a 20-class zero-shot folder."""
    root = tmp_path_factory.mktemp("train-cli")
    shards = [make_records(RECORDS_PER_SHARD, start=i * RECORDS_PER_SHARD) for i in range(2)]
    plain = make_builder_dir(root / "plain", shards)
    tagged = shutil.copytree(plain.parent.parent, root / "tagged") / "demo" / "1.0.0"
    write_sidecars(tagged)
    val = write_demo_validation(root / "eval", per_class=1, seed=0)
    return {"plain": plain, "tagged": tagged, "eval": val.root, "classnames": val.classnames_path}


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def tiny(data, out: Path, *more: object) -> list[object]:
    """pretrain options of a clipa-tiny run on the tagged builder."""
    return [
        "pretrain", "--data", data["tagged"], "--out", out, "--model", "clipa-tiny",
        "--image-size", 32, "--text-length", 8, "--batch-size", 8, "--workers", 1,
        "--no-progress", *more,
    ]  # fmt: skip


BAD_TRAINING = {
    "not a builder": (["--data", "{tmp}"], ["is not a builder directory", "clipa-data convert"]),
    "syntax without sidecars": (
        ["--data", "{plain}", "--text-mask", "syntax"],
        ["has no sidecars", "clipa-data tag"],
    ),
    "image size vs patch": (["--image-size", 36], ["not a multiple of the patch size 8"]),
    "mask ratio 1": (["--image-mask", "random", "--mask-ratio", 1.0], ["[0, 1)"]),
    "mask ratio negative": (["--mask-ratio", -0.1], ["[0, 1)"]),
    "ImageNet folder with 20 classes": (
        ["--zeroshot", "{eval}"],
        ["has 20 classes but ImageNet-1K has 1000", "--classnames"],
    ),
    "eval folder without class folders": (["--zeroshot", "{empty}"], ["has no class folders"]),
    "class folders without images": (["--zeroshot", "{hollow}"], ["no images in them"]),
    "one class folder": (
        ["--zeroshot", "{single}"],
        ["has one class folder (red_circle)", "2 or more"],
    ),
    "class names file of another size": (
        ["--zeroshot", "{eval}", "--classnames", "{three_names}"],
        ["has 3 class names but", "has 20 classes"],
    ),
    "wandb options without wandb": (
        ["--wandb-id", "abc", "--wandb-tags", "x,y"],
        ["--wandb-tags, --wandb-id without --log wandb would be ignored", "add --log wandb"],
    ),
    "eval every without a set": (["--eval-every", 2], ["--eval-every 2 needs --zeroshot DIR"]),
    "empty resume": (["--resume", ""], ["--resume is empty; give a value or leave it out"]),
    "empty from": (["--from", ""], ["--from is empty"]),
    "empty out": (["--out", " "], ["--out is empty"]),
    "mask ratio without a ratio mask": (
        ["--image-mask", "grid", "--mask-ratio", 0.3],
        ["--mask-ratio 0.3 would be ignored without --image-mask random or block"],
    ),
    "jitter probability without jitter": (
        ["--color-jitter-prob", 0.5],
        ["--color-jitter-prob 0.5 would be ignored without --color-jitter"],
    ),
    "compile backend without compiling": (
        ["--compile", "off", "--compile-backend", "eager"],
        ["--compile-backend eager would be ignored without --compile on"],
    ),
    "compile backend where auto does not compile": (
        ["--compile-backend", "aot_eager"],
        ["--compile-backend aot_eager would be ignored: --compile auto does not compile on cpu"],
    ),
    "unknown compile backend, not compiling": (
        ["--compile-backend", "nonsense"],
        ["unknown --compile-backend 'nonsense'"],
    ),
    "eval batch size without a set": (
        ["--eval-batch-size", 64],
        ["--eval-batch-size 64 would be ignored without --zeroshot DIR"],
    ),
    "wandb project without wandb": (
        ["--wandb-project", "x"],
        ["--wandb-project x would be ignored without --log wandb"],
    ),
    "templates without a set": (["--templates", "{three_names}"], ["--templates needs --zeroshot"]),
    "resume auto without checkpoints": (["--resume", "auto"], ["no checkpoint"]),
    "keep checkpoints negative": (["--keep-checkpoints", -1], ["--keep-checkpoints must be ≥ 0"]),
    "out where no folder can be made": (
        ["--out", "/proc/clipa-no-such/run", "--samples", 80],  # --samples: no short-epoch note
        ["/proc/clipa-no-such: No such file or directory", "the operating system refused it"],
    ),
    "out on a store": (
        ["--out", "gs://bucket/run"],
        ["--out gs://bucket/run: only a local path is written here", "copy it to the store"],
    ),
    "out on a store as Typer's Path spells it": (
        ["--out", "gs:/bucket/run"],  # was a local folder ./gs:/bucket/run, said to be gs://
        ["--out gs://bucket/run: only a local path is written here"],
    ),
    "out as a file URL": (["--out", "file:///tmp/run"], ["give the local path /tmp/run"]),
    "resume from a store": (["--resume", "gs://b/ck.pt"], ["--resume gs://b/ck.pt: only a local"]),
    "weights from a store": (
        ["--from", "gs://b/ck.pt", "--samples", 80],  # --samples: no short-epoch note
        ["weights file gs://b/ck.pt: only a local path is read here", "gsutil cp"],
    ),
    "fsdp in one process": (
        ["--sharding", "fsdp"],
        ["--sharding fsdp needs at least 2 processes", "torchrun", "--sharding ddp"],
    ),
    "fsdp on xla": (
        ["--sharding", "fsdp", "--backend", "xla"],
        ["--sharding fsdp is for the torch backends", "use --sharding ddp with --backend xla"],
    ),
    "unknown sharding": (["--sharding", "zero3"], ["--sharding must be one of ddp, fsdp"]),
    "accum steps not dividing the batch": (
        ["--accum-steps", 3],
        ["--accum-steps 3 does not divide --batch-size 8", "use a divisor"],
    ),
    "accum steps 0": (["--accum-steps", 0], ["--accum-steps must be a whole number ≥ 1 or auto"]),
    "accum steps auto without micro batch": (
        ["--accum-steps", "auto"],
        ["--accum-steps auto needs --micro-batch N"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_TRAINING))
def test_bad_training_input_stops_before_training(data, tmp_path, case, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out (" ") that got through would land here
    (tmp_path / "empty").mkdir()
    for name in ("red_circle", "blue_star"):
        (tmp_path / "hollow" / name).mkdir(parents=True)
    (tmp_path / "three_names.txt").write_text("a\nb\nc\n")
    images = data["eval"] / ("val" if (data["eval"] / "val").is_dir() else "") / "red_circle"
    single = shutil.copytree(images, tmp_path / "single" / "red_circle")
    places = {"tmp": tmp_path / "empty", "empty": tmp_path / "empty", **data}
    places |= {"hollow": tmp_path / "hollow", "three_names": tmp_path / "three_names.txt"}
    places |= {"single": single.parent}
    flags, fragments = BAD_TRAINING[case]
    flags = [str(flag).format(**places) if isinstance(flag, str) else flag for flag in flags]
    out = tmp_path / "run"
    assert_one_line_error(invoke(*tiny(data, out), *flags), *fragments)
    assert not out.exists(), "nothing may be written before the checks pass"
    assert not (tmp_path / " ").exists() and not (tmp_path / "gs:").exists()
    assert not (tmp_path / "file:").exists()


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs installed")
@pytest.mark.parametrize("command", ["pretrain", "eval"])
def test_a_data_store_without_its_fsspec_package_is_one_line(data, tmp_path, command):
    """An ImportError traceback through fsspec before: info/tag/preview said it in one line."""
    if command == "pretrain":
        args = tiny(data, tmp_path / "run")
        args[args.index("--data") + 1] = "gs://bucket/laion/1.0.0"
    else:
        args = ["eval", "--checkpoint", tmp_path / "none.pt", "--imagenet-val", "gs://bucket/val"]
        (tmp_path / "none.pt").write_bytes(b"")
    assert_one_line_error(invoke(*args), "gs:// filesystem needs its fsspec package", "gcsfs")


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_flag_that_contradicts_the_recipe(data, tmp_path, stage):
    fixed = {"pretrain": 112, "finetune": 224}[stage]
    result = invoke(
        stage, "--data", data["tagged"], "--out", tmp_path / "run", "--from", tmp_path / "x.pt",
        "--recipe", "clipa-b16-i50-t16", "--image-size", 64,
    )  # fmt: skip
    assert_one_line_error(
        result, f"--recipe clipa-b16-i50-t16 sets --image-size {fixed} for {stage}",
        "drop --image-size 64 or the recipe",
    )  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_finetune_needs_a_checkpoint(data, tmp_path):
    result = invoke("finetune", "--data", data["tagged"], "--out", tmp_path / "run")
    assert_one_line_error(result, "finetune needs --from CHECKPOINT")
    result = invoke(
        "finetune", "--data", data["tagged"], "--out", tmp_path / "run", "--from", tmp_path / "x.pt"
    )
    assert_one_line_error(result, "x.pt")
    assert not (tmp_path / "run").exists()


def test_finetune_trains_with_the_checkpoints_loss_unless_told(data, tmp_path):
    """A SigLIP (sigmoid) pre-training fine-tunes with the sigmoid loss by default (its
    logit_bias was refused as an unknown architecture); another loss is one line with the fix."""
    pre = tmp_path / "pre"
    result = invoke(*tiny(data, pre, "--samples", 8, "--loss", "sigmoid"))
    assert result.exit_code == 0, result.output
    checkpoint = next((pre / "checkpoints").glob("step_*.pt"))
    finetune = ["finetune", "--data", data["tagged"], "--from", checkpoint, "--image-size", 32,
                "--text-length", 8, "--batch-size", 8, "--samples", 8, "--workers", 1,
                "--no-progress"]  # fmt: skip
    result = invoke(*finetune, "--out", tmp_path / "ft")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["options"]["loss"] == "sigmoid" and config["given"]["loss"] is None
    assert config["model"]["init_logit_bias"] is not None
    # A preset named for the checkpoint still takes its loss (every recipe stage names one).
    result = invoke(*finetune, "--out", tmp_path / "ft-preset", "--model", "clipa-tiny")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "ft-preset" / "config.json").read_text())
    assert config["options"]["loss"] == "sigmoid"
    result = invoke(*finetune, "--out", tmp_path / "ft2", "--loss", "contrastive")
    assert_one_line_error(
        result, "was trained with the sigmoid loss (it has logit_bias)",
        "built for --loss contrastive", "drop --loss",
    )  # fmt: skip
    pre_config = json.loads((pre / "config.json").read_text())
    assert pre_config["options"]["loss"] == "sigmoid"
    plain = tmp_path / "plain"
    assert invoke(*tiny(data, plain, "--samples", 8)).exit_code == 0
    assert json.loads((plain / "config.json").read_text())["options"]["loss"] == "contrastive"


def test_config_file_gives_options_and_flags_override_it(data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data: {data['tagged']}\nmodel: clipa-tiny\nimage-size: 32\ntext_length: 8\n"
        "batch-size: 8\nsamples: 16\nworkers: 1\nprogress: false\ntext-mask: syntax\n"
    )
    result = invoke("pretrain", "--config", config, "--out", tmp_path / "run", "--samples", 24)
    assert result.exit_code == 0, result.output
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["options"]["samples"] == 24 and resolved["derived"]["total_steps"] == 3
    assert resolved["options"]["text_mask"] == "syntax"
    assert resolved["model"]["vision"]["image_size"] == 32
    assert "pretrain summary" in result.stdout
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000003.pt"]


def test_the_tag_command_named_for_a_path_with_a_space_can_be_pasted(data, tmp_path):
    import shlex

    spaced = shutil.copytree(data["plain"].parent.parent, tmp_path / "my data") / "demo" / "1.0.0"
    result = invoke(*tiny(data, tmp_path / "run"), "--data", spaced, "--text-mask", "syntax")
    line = assert_one_line_error(result, "has no sidecars")
    assert shlex.split(line.split("create them with: ")[1]) == ["clipa-data", "tag", str(spaced)]


def test_home_in_a_config_file_and_in_flag_equals_is_expanded(data, tmp_path, monkeypatch):
    """``~`` in a config file's value and in ``--out=~/...`` (which no shell expands) is the
    home folder, not a folder named ``~`` in the current one."""
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    shutil.copytree(data["tagged"].parent.parent, home / "tagged")
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    config = tmp_path / "run.yaml"
    config.write_text(
        "data: ~/tagged/demo/1.0.0\nmodel: clipa-tiny\nimage-size: 32\ntext_length: 8\n"
        "batch-size: 8\nsamples: 8\nworkers: 1\nprogress: false\n"
    )
    result = invoke("pretrain", "--config", config, "--out=~/run")
    assert result.exit_code == 0, result.output
    assert (home / "run" / "summary.json").is_file() and not any(elsewhere.iterdir())
    resolved = json.loads((home / "run" / "config.json").read_text())
    assert resolved["options"]["data"] == str(home / "tagged" / "demo" / "1.0.0")


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("twice.yaml", "lr: 0.1\nbatch-size: 8\nlr: 0.2\n", "lr given more than once"),
        ("twice.json", '{"lr": 0.1, "lr": 0.2}', "lr given more than once"),
        ("spelled.yaml", "text-mask: syntax\ntext_mask: truncate\n", "text-mask and text_mask"),
        # PyYAML's message is a problem, a snippet and a caret over several lines
        (
            "broken.yaml",
            "image-size: [32\n",
            "cannot parse config file (expected ',' or ']', "
            "but got '<stream end>' at line 2, column 1)",
        ),
    ],
)
def test_an_option_given_twice_in_a_config_file_is_refused(data, tmp_path, name, text, said):
    config = tmp_path / name
    config.write_text(text)
    result = invoke("pretrain", "--config", config, "--data", data["tagged"], "--out", tmp_path)
    assert_one_line_error(result, str(config), said)


def test_a_folder_given_for_the_config_file_is_named_as_such(data, tmp_path):
    result = invoke("pretrain", "--config", tmp_path, "--data", data["tagged"], "--out", tmp_path)
    assert_one_line_error(result, f"{tmp_path} is a folder; --config takes a YAML or JSON file")


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_more_workers_than_shards_is_said_before_training(data, tmp_path):
    done = invoke(*tiny(data, tmp_path / "run", "--samples", 8), "--workers", 3)
    assert done.exit_code == 0, done.output
    assert "note: --workers 3, but the process has only 2 non-empty shards" in done.output


def test_sigterm_stop_then_resume_auto_continues_exactly(data, tmp_path):
    """A preempted run (SIGTERM) resumed with --resume auto logs the same losses, step for step,
    as an uninterrupted run: same batches from the real loader (2 workers), same updates."""
    more = ["--samples", 8 * 30, "--workers", 2, "--log-every", 1, "--text-mask", "syntax"]
    whole = invoke(*tiny(data, tmp_path / "whole", *more))
    assert whole.exit_code == 0, whole.output

    program = [str(Path(sys.executable).parent / "clipa-train")]
    args = [str(arg) for arg in tiny(data, tmp_path / "stopped", *more)]
    process = subprocess.Popen(program + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "run ended too early"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130, process.stderr.read().decode()[-2000:]
    stopped = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert stopped["stopped"] and 3 <= stopped["steps"] < 30, stopped

    resumed = invoke(*tiny(data, tmp_path / "stopped", *more), "--resume", "auto")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["start_step"] == stopped["steps"] and summary["steps"] == 30
    assert losses(tmp_path / "stopped") == losses(tmp_path / "whole")  # bit-identical on CPU


def test_a_resume_with_another_batch_size_is_refused(data, tmp_path):
    """Steps, schedule and samples seen are counted in the run's batches: a resume at another
    --batch-size would train neither run's number of samples, so it is refused up front, also
    at the end of an epoch (where the stream itself could go on: 48 records, 6 steps of 8)."""
    every_epoch = ["--samples", 96, "--checkpoint-every", 6, "--keep-checkpoints", 0]
    first = invoke(*tiny(data, tmp_path / "run", *every_epoch))
    assert first.exit_code == 0, first.output
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    epoch_end = tmp_path / "run" / "checkpoints" / "step_00000006.pt"
    changed = tiny(data, tmp_path / "run", *every_epoch, "--resume", epoch_end)
    changed[changed.index("--batch-size") + 1] = 4
    refused = invoke(*changed)
    assert_one_line_error(refused, "trained with --batch-size 8", "resume with --batch-size 8")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics
    same = invoke(*tiny(data, tmp_path / "run", *every_epoch, "--resume", epoch_end))
    assert same.exit_code == 0, same.output


def test_accum_steps_trains_like_the_one_pass_run(data, tmp_path):
    """--accum-steps 2 (two micro-batches of 4) and --accum-steps auto --micro-batch 3 (four of
    2) through the real loader log the one-pass run's losses (exact accumulation; fp32 CPU,
    within 1e-5); config.json's derived values hold the micro-batches each step ran."""
    more = ["--samples", 8 * 3, "--log-every", 1]
    one = invoke(*tiny(data, tmp_path / "one", *more))
    assert one.exit_code == 0, one.output
    expected = losses(tmp_path / "one")
    assert expected.keys() == {1, 2, 3}
    for name, flags in {"two": [2], "auto": ["auto", "--micro-batch", 3]}.items():
        with model_batch_sizes() as sizes:
            result = invoke(*tiny(data, tmp_path / name, *more, "--accum-steps", *flags))
        assert result.exit_code == 0, result.output
        assert_micro_batches(sizes, steps=3, per_rank_batch=8, accum={"two": 2, "auto": 4}[name])
        run_config = json.loads((tmp_path / name / "config.json").read_text())
        assert run_config["options"]["accum_steps"] == flags[0]
        micro_batches = {"two": 2, "auto": 4}[name]  # what auto picked is recorded and said
        assert run_config["derived"]["accum_steps"] == micro_batches
        assert run_config["derived"]["micro_batch"] == 8 // micro_batches
        said = "--accum-steps auto: 4 micro-batch(es) of 2 samples per process and step"
        assert (said in result.output) == (name == "auto"), result.output
        got = losses(tmp_path / name)
        assert got.keys() == expected.keys()
        assert all(abs(got[step] - expected[step]) <= 1e-5 for step in expected), (got, expected)
    # A resume says what it resumes from first: the note comes once the checkpoint is restored
    # (a refused resume says only why).
    longer = ["--samples", 8 * 4, "--log-every", 1, "--resume", "auto", "--accum-steps", "auto"]
    resumed = invoke(*tiny(data, tmp_path / "auto", *longer, "--micro-batch", 4))
    assert resumed.exit_code == 0, resumed.output
    lines = resumed.output.splitlines()
    (restored,) = [i for i, line in enumerate(lines) if line.startswith("resuming from step 3")]
    (note,) = [i for i, line in enumerate(lines) if line.startswith("--accum-steps auto: 2 ")]
    assert restored < note, resumed.output


def test_compile_on_trains_without_recompiling_and_bad_compile_choices(data, tmp_path):
    """--compile on (aot_eager: no kernel generation on this small CPU) compiles the step once."""
    out = tmp_path / "run"
    more = ["--samples", 8 * 4, "--log-every", 1, "--compile", "on"]
    result = invoke(*tiny(data, out, *more, "--compile-backend", "aot_eager"))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["derived"]["compile"] is True
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and len({r["torch_compiles"] for r in records}) == 1
    assert records[0]["torch_compiles"] >= 1
    bogus = invoke(*tiny(data, tmp_path / "bad", "--compile", "bogus"))
    assert_one_line_error(bogus, "--compile must be one of auto, on, off")
    xla = invoke(*tiny(data, tmp_path / "bad", "--compile", "on", "--backend", "xla"))
    assert_one_line_error(xla, "--compile on does not apply to --backend xla", "--compile auto")
    assert not (tmp_path / "bad").exists()


# --- clipa-train eval --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-run") / "run"
    result = invoke(*tiny(data, out, "--samples", 16))
    assert result.exit_code == 0, result.output
    return next((out / "checkpoints").glob("step_*.pt"))


def test_eval_prints_json_and_writes_eval_json(data, checkpoint, tmp_path):
    result = invoke(
        "eval", "--checkpoint", checkpoint, "--imagenet-val", data["eval"],
        "--classnames", data["classnames"], "--out", tmp_path / "eval.json", "--json",
        "--workers", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "eval.json").read_text())
    assert printed["n"] == 20 and printed["classes"] == 20 and printed["chance"] == 0.05
    assert 0 <= printed["top1"] <= printed["top5"] <= 1
    assert printed["image_size"] == 32 and printed["text_length"] == 8
    # The run syntax-masked its in-loop prompts (as CLIPA does); a standalone eval truncates
    # them, and says so: its numbers can differ from the run's log.
    assert printed["prompt_mask"] == "truncate"
    assert "the run trained with --text-mask syntax" in " ".join(result.stderr.split())
    # What the numbers depend on besides the weights is recorded (another vocabulary or
    # mean/std scores otherwise)
    assert (printed["tokenizer"], printed["image_norm"]) == ("clip-bpe", "openai")


def write_imagenet_like(root: Path, images: list[tuple[bytes, int]]) -> tuple[Path, Path]:
    """The same labelled images as a 1000-class ImageFolder and a TFDS imagenet2012 builder."""
    import tensorflow_datasets as tfds

    from clipa_data.core import layout
    from clipa_data.core.example import encode_example
    from clipa_data.core.tfrecord import write_records
    from clipa_train.variants import variant_classes

    wnids = variant_classes()["imagenet_wnids"]  # sorted: label i is wnids[i]
    folder = root / "imagefolder" / "val"
    for label in range(1000):
        (folder / wnids[label]).mkdir(parents=True)
    for index, (jpg, label) in enumerate(images):
        (folder / wnids[label] / f"val_{index:03d}.jpg").write_bytes(jpg)

    builder = layout.builder_dir(root / "tfds", "imagenet2012", "5.1.0")
    builder.mkdir(parents=True)
    path = builder / layout.shard_filename("imagenet2012", "validation", 0, 1)
    with open(path, "wb") as handle:
        write_records(
            handle,
            (
                encode_example({"image": ("bytes", [jpg]), "label": ("int64", [label])})
                for jpg, label in images
            ),
        )
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=1000),
        }
    )
    split = tfds.core.SplitInfo(
        name="validation",
        shard_lengths=[len(images)],
        num_bytes=0,
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=builder,
            template=layout.DEFAULT_TEMPLATE,
            dataset_name="imagenet2012",
            split="validation",
            filetype_suffix=layout.FILE_FORMAT,
        ),
    )
    tfds.folder_dataset.write_metadata(
        data_dir=builder, features=features, split_infos=[split], check_data=False
    )
    return folder.parent, builder


def test_eval_reads_imagenet_as_image_folder_and_as_tfds_alike(checkpoint, tmp_path):
    labels = np.random.default_rng(0).integers(0, 1000, size=12)
    images = [(jpeg_bytes(48, 40, seed=i), int(label)) for i, label in enumerate(labels)]
    folder, builder = write_imagenet_like(tmp_path, images)
    (tmp_path / "templates.txt").write_text("a photo of a {}.\na drawing of the {}.\n")
    results = []
    for source in (folder, builder):
        result = invoke(
            "eval", "--checkpoint", checkpoint, "--imagenet-val", source,
            "--templates", tmp_path / "templates.txt", "--out", tmp_path / "eval.json",
            "--json", "--workers", 1,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.stdout))
    by_folder, by_tfds = results
    assert by_folder["task"] == by_tfds["task"] == "imagenet1k"
    assert by_folder["classes"] == by_tfds["classes"] == 1000 and by_folder["n"] == 12
    keys = ("top1", "top5", "n", "chance", "templates")
    assert {k: by_folder[k] for k in keys} == {k: by_tfds[k] for k in keys}


@pytest.mark.parametrize(
    ("dataset", "extra", "fragments"),
    [
        ("{eval}", [], ["has 20 classes but ImageNet-1K has 1000"]),
        ("{empty}", [], ["has no class folders"]),
        ("{missing}", [], ["zero-shot set not found"]),
        (
            "{eval}",
            ["--classnames", "{classnames}", "--templates", "{classnames}"],
            ["{classnames}: every template needs exactly one {{}}", "the templates file"],
        ),
    ],
)
def test_eval_bad_input(data, checkpoint, tmp_path, dataset, extra, fragments):
    (tmp_path / "empty").mkdir()
    places = {**data, "empty": tmp_path / "empty", "missing": tmp_path / "nope"}
    extra = [str(arg).format(**places) for arg in extra]
    result = invoke(
        "eval", "--checkpoint", checkpoint, "--imagenet-val", dataset.format(**places), *extra
    )
    assert_one_line_error(result, *[fragment.format(**places) for fragment in fragments])


def test_an_empty_class_folder_is_one_warning(data, checkpoint, tmp_path):
    """A class folder without images (a copy that stopped part-way) is still a class the images
    are scored against: it was said nowhere."""
    gappy = shutil.copytree(data["eval"], tmp_path / "gappy")
    images = gappy / ("val" if (gappy / "val").is_dir() else "") / "red_circle"
    for image in images.iterdir():
        image.unlink()
    result = invoke(
        "eval", "--checkpoint", checkpoint, "--imagenet-val", gappy, "--classnames",
        data["classnames"], "--out", tmp_path / "eval.json", "--workers", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "1 of 20 class folders hold no images (red_circle)" in warnings[0]
    # A training stage opens the set to check it and again to evaluate: it said it twice.
    zeroshot = ["--zeroshot", gappy, "--classnames", data["classnames"], "--samples", 16]
    trained = invoke(*tiny(data, tmp_path / "run", *zeroshot))
    assert trained.exit_code == 0, trained.output
    said = [line for line in trained.output.splitlines() if "class folders hold no" in line]
    assert len(said) == 1, trained.output


def test_eval_of_a_missing_checkpoint(data, tmp_path):
    result = invoke(
        "eval", "--checkpoint", tmp_path / "nope.pt", "--imagenet-val", data["eval"],
        "--classnames", data["classnames"],
    )  # fmt: skip
    assert_one_line_error(result, "nope.pt")


def test_a_run_directory_given_for_a_checkpoint_names_its_newest(data, checkpoint, tmp_path):
    run_dir = Path(checkpoint).parent.parent
    result = invoke(
        "eval", "--checkpoint", run_dir, "--imagenet-val", data["eval"],
        "--classnames", data["classnames"], "--out", tmp_path / "eval.json",
    )  # fmt: skip
    assert_one_line_error(result, f"{run_dir} is a run directory", f"newest: {checkpoint}")
    with_model = invoke(
        "eval", "--checkpoint", run_dir, "--model", "clipa-tiny", "--imagenet-val", data["eval"],
        "--classnames", data["classnames"], "--out", tmp_path / "eval.json",
    )  # fmt: skip
    assert_one_line_error(with_model, f"{run_dir} is a run directory", f"newest: {checkpoint}")
    resumed = invoke(*tiny(data, tmp_path / "run", "--resume", run_dir))
    assert_one_line_error(resumed, "is a run directory", str(checkpoint), "--resume auto")


def test_a_resume_with_another_from_is_refused(data, checkpoint, tmp_path):
    """The resumed weights are the run's own: another --from would be ignored, yet recorded."""
    other = tmp_path / "other.pt"
    other.write_bytes(checkpoint.read_bytes())

    def finetune(origin: Path, samples: int, *more: object):
        command = tiny(data, tmp_path / "ft", "--samples", samples, "--from", origin, *more)
        return invoke("finetune", *command[1:])

    first = finetune(other, 16)
    assert first.exit_code == 0, first.output
    config = (tmp_path / "ft" / "config.json").read_text()
    refused = finetune(checkpoint, 32, "--resume", "auto")
    assert_one_line_error(refused, f"the run started --from {other}", f"--from {checkpoint}")
    assert (tmp_path / "ft" / "config.json").read_text() == config
    same = finetune(other, 32, "--resume", "auto")
    assert same.exit_code == 0, same.output


def test_a_record_with_bad_image_bytes_is_skipped_and_reported(tmp_path):
    """Training on a shard with an undecodable image counts it in the summary."""
    records = make_records(16)
    records[5] = Record(key=records[5].key, jpg=b"not a jpeg", txt=records[5].txt)
    builder = make_builder_dir(tmp_path / "data", [records])
    out = tmp_path / "run"
    result = invoke(
        "pretrain", "--data", builder, "--out", out, "--model", "clipa-tiny", "--image-size", 32,
        "--text-length", 8, "--text-mask", "truncate", "--batch-size", 8, "--workers", 1,
        "--no-progress", "--samples", 16,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stream"]["bad_images"] == 1 and "bad images skipped" in result.stdout
    assert os.path.getsize(out / "metrics.jsonl") > 0


def test_captions_under_another_feature_need_text_field(tmp_path):
    """A builder whose captions are not in ``txt`` (none at all: downloaded without a caption
    column) is refused naming the record, not trained on empty captions; --text-field reads
    them, also from sidecars tagged from that feature."""
    from sidecars import SPACY_MODEL

    from clipa_data.prepare.tagging import TagConfig, tag_builder

    records = [
        Record(r.key, r.jpg, None, extra={"caption": ("bytes", [r.txt.encode()])})
        for r in make_records(16)
    ]
    builder = make_builder_dir(tmp_path / "data", [records])
    common = [
        "pretrain", "--data", builder, "--model", "clipa-tiny", "--image-size", 32,
        "--text-length", 8, "--batch-size", 8, "--workers", 1, "--no-progress", "--samples", 16,
    ]  # fmt: skip
    result = invoke(*common, "--out", tmp_path / "a", "--text-mask", "truncate")
    assert_one_line_error(
        result, "record 0 (key '000000000') has no caption feature 'txt'",
        "(it has: caption, jpg, key)", "pass the caption feature with --text-field",
    )  # fmt: skip
    result = invoke(*common, "--out", tmp_path / "b", "--text-mask", "truncate",
                    "--text-field", "caption")  # fmt: skip
    assert result.exit_code == 0, result.output
    tag_builder(
        TagConfig(builder_dir=builder, tagger="spacy", spacy_model=SPACY_MODEL,
                  text_field="caption", workers=1, show_progress=False)
    )  # fmt: skip
    result = invoke(*common, "--out", tmp_path / "c", "--text-mask", "syntax")
    assert_one_line_error(result, "holds field 'caption', expected 'txt'", "--text-field caption")
    result = invoke(*common, "--out", tmp_path / "d", "--text-mask", "syntax",
                    "--text-field", "caption")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["options"]["text_field"] == "caption"


def test_a_diverged_run_stops_without_saving_nan_weights(data, tmp_path):
    """--lr 1e6 turns the loss NaN at step 2: the run stops there with one line naming the last
    checkpoint to go on from (step 1's, finite), saves nothing after it and exits non-zero."""
    import torch

    from clipa_train.checkpoint import list_checkpoints, load_checkpoint

    blow_up = ["--samples", 8 * 20, "--lr", 1e6, "--warmup-steps", 0, "--text-mask", "truncate"]
    out = tmp_path / "saved"
    result = invoke(*tiny(data, out, *blow_up, "--log-every", 5, "--checkpoint-every", 1))
    assert_one_line_error(
        result, "the loss is nan at step 2: training diverged", "step_00000001.pt", "lower --lr"
    )
    ((step, saved),) = list_checkpoints(out / "checkpoints")
    assert step == 1
    weights = load_checkpoint(saved)["model"]
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diverged"] and summary["steps"] == 2 and summary["stopped"]

    logged = tmp_path / "logged"
    result = invoke(*tiny(data, logged, *blow_up, "--log-every", 1))
    assert_one_line_error(
        result,
        "at step 2: training diverged",
        "no checkpoint was saved: start again with",
        "--overwrite and a lower --lr",
    )
    assert not list_checkpoints(logged / "checkpoints")
    assert list(losses(logged)) == [1, 2]  # the NaN record is logged


EVAL = ["eval", "--checkpoint", "{ck}", "--imagenet-val", "{eval}"]
OUTPUTS_ON_A_STORE = {
    "eval": [*EVAL, "--out", "gs:/b/eval.json"],
    "eval cache": [*EVAL, "--text-cache", "s3://b/c"],
    "probe": ["probe", "--checkpoint", "{ck}", "--train", "{eval}", "--val", "{eval}", "--out",
              "gs://b/probe.json"],
    "export": ["export", "{ck}", "gs://b/model.pt"],
    "export from": ["export", "gs://b/step_00000001.pt", "{tmp}/model.pt"],
    "eval from": ["eval", "--checkpoint", "gs://b/c.pt", "--imagenet-val", "{eval}",
                  "--classnames", "{cn}"],
    "report": ["report", "{tmp}", "--out", "gs://b/report"],
    "recipe": ["recipe", "clipa-b16-v1", "--data", "{plain}", "--out", "gs://b/runs"],
}  # fmt: skip


@pytest.mark.parametrize("case", list(OUTPUTS_ON_A_STORE))
def test_every_output_on_a_store_is_one_line(data, tmp_path, case, monkeypatch):
    """An output there was a local folder named gs: (or s3:) that the user took for the bucket;
    a checkpoint read from there was said not to exist."""
    monkeypatch.chdir(tmp_path)
    places = {**data, "ck": tmp_path / "step_00000001.pt", "tmp": tmp_path}
    places["cn"] = data["classnames"]
    result = invoke(*[arg.format(**places) for arg in OUTPUTS_ON_A_STORE[case]])
    assert_one_line_error(result, "only a local path is")
    assert not (tmp_path / "gs:").exists() and not (tmp_path / "s3:").exists()


def test_a_final_loss_of_zero_is_printed_and_none_is_n_a(capsys):
    """The summary table printed a loss of exactly 0.0 as n/a (a truth test, not a None test)."""
    from clipa_cli.train_app import print_summary

    summary = {
        "stage": "pretrain", "steps": 4, "total_steps": 4, "stopped": False, "final_loss": 0.0,
        "samples_per_s": 10.0, "zeroshot": None, "checkpoint": "ck.pt", "run_dir": "run",
        "stream": {"bad_images": 0, "messages": []},
    }  # fmt: skip
    print_summary(summary)
    assert "0.0000" in capsys.readouterr().out
    print_summary({**summary, "final_loss": None})
    assert "n/a" in capsys.readouterr().out


def test_a_resume_keeps_the_options_that_shape_the_run_and_says_a_new_length(data, tmp_path):
    """Only --batch-size and --from were compared: a resume that forgot --samples trained one
    epoch on a recomputed schedule without a word, and one with another --lr (--image-mask,
    ...) exited 0 and rewrote config.json as if the run had been that one. Another length is
    said (a finished run may be trained on); logging, checkpoints and --accum-steps (exact)
    may change between attempts."""
    out = tmp_path / "run"
    every_step = ["--checkpoint-every", 1, "--keep-checkpoints", 0]
    first = invoke(*tiny(data, out, "--samples", 24, *every_step))
    assert first.exit_code == 0, first.output
    saved = (out / "config.json").read_text()
    step_one = out / "checkpoints" / "step_00000001.pt"
    changed = invoke(*tiny(data, out, "--samples", 24, "--lr", 0.5, "--resume", step_one))
    assert_one_line_error(
        changed, f"--resume {step_one}: the run trained with no --lr (this command: --lr 0.5)",
        "resume with the run's options",
    )  # fmt: skip
    masked = invoke(*tiny(data, out, "--samples", 24, "--image-mask", "grid", "--resume", step_one))
    assert_one_line_error(masked, "--image-mask resize (this command: --image-mask grid)")
    assert (out / "config.json").read_text() == saved
    same = ["--log-every", 2, "--accum-steps", 2, "--keep-checkpoints", 0]
    resumed = invoke(*tiny(data, out, "--samples", 24, *same, "--resume", step_one))
    assert resumed.exit_code == 0, resumed.output
    assert "note: --resume" not in resumed.stderr
    forgot = invoke(*tiny(data, out, *same, "--resume", step_one))
    assert forgot.exit_code == 0, forgot.output
    assert "the run trained with --samples 24 (this command: no --samples)" in forgot.stderr
    assert "it now ends at step 6" in " ".join(forgot.stderr.split())


def test_the_summarys_final_loss_is_the_last_steps_else_the_last_records():
    """A stop between log steps: summary.json's final loss is the step's it stopped at; after a
    second signal under several processes (no fetch), the last record's."""
    from clipa_train.loop import LoopResult
    from clipa_train.train_stage import _final_loss

    records = [{"step": 4, "loss": 2.5}]
    stopped = LoopResult(start_step=0, step=6, stopped=True, checkpoint=None, final_loss=2.25)
    assert _final_loss(stopped, records) == 2.25
    cut = LoopResult(start_step=0, step=6, stopped=True, checkpoint=None)
    assert _final_loss(cut, records) == 2.5 and _final_loss(cut, []) is None
