"""Option resolution for pretrain/finetune: defaults < recipe < config file < flags."""

from __future__ import annotations

import json

import pytest

from clipa_data.core.errors import ClipaError
from clipa_train.run_config import TrainConfig, read_config_file, resolve

BASE = {"data": "d", "out": "o"}


def test_stage_defaults():
    pre = resolve("pretrain", BASE)
    assert (pre.model.name, pre.reduction.image_size, pre.reduction.text_length) == (None,) * 3
    assert pre.reduction.text_mask is None
    fine = resolve("finetune", {**BASE, "from_checkpoint": "c.pt"})
    reduction = fine.reduction
    assert (
        reduction.image_size, reduction.image_mask, reduction.text_length, reduction.text_mask
    ) == (224, "resize", 32, "truncate")  # fmt: skip
    assert fine.model.pos_embed == "learnable"


def test_learning_rate_rules_and_warmup():
    pre = resolve("pretrain", {**BASE, "batch_size": 512})
    assert pre.peak_lr() == pytest.approx(8e-6 * 2)
    fine = resolve("finetune", {**BASE, "from_checkpoint": "c", "batch_size": 512})
    assert fine.peak_lr() == pytest.approx(8e-7 * 2)
    assert pre.total_steps(10_000) == 10_000 // 512
    assert pre.warmup(1000) == 100  # 10 % of a short run
    assert resolve("pretrain", {**BASE, "batch_size": 65536}).warmup(100_000) == 781
    assert resolve("pretrain", {**BASE, "samples": 5120, "batch_size": 512}).total_steps(9) == 10


def test_infinite_epochs_are_refused():
    with pytest.raises(ClipaError, match="--epochs must be positive and finite"):
        resolve("pretrain", {**BASE, "epochs": float("inf")})


def test_epochs_end_where_the_loaders_epoch_ends():
    """An epoch is whole global batches (the loader draws no remainder): 3 epochs of 48 records
    at batch 20 are 3 x 2 steps, not 48 x 3 // 20 = 7 (which spilled into a 4th epoch)."""
    three = resolve("pretrain", {**BASE, "epochs": 3, "batch_size": 20})
    assert three.total_steps(48) == 6
    half = resolve("pretrain", {**BASE, "epochs": 0.5, "batch_size": 20})
    assert half.total_steps(100) == 2  # half of an epoch of 5 steps, rounded down
    per_epoch = {**BASE, "epochs": 2, "batch_size": 20, "samples_per_epoch": 400}
    assert resolve("pretrain", per_epoch).total_steps(48) == 40


def test_recipe_fills_in_and_conflicts_are_errors():
    config = resolve("pretrain", {**BASE, "recipe": "clipa-l16-i17-t16"})
    assert (
        config.model.name, config.reduction.image_size, config.reduction.text_mask,
        config.optim.batch_size,
    ) == ("ViT-L-16-CL16-Syntax-GAP", 64, "syntax", 32768)  # fmt: skip
    assert config.augment.color_jitter == (0.32, 0.32, 0.32, 0.08) and config.optim.epochs == 6
    same = resolve("pretrain", {**BASE, "recipe": "clipa-l16-i17-t16", "image_size": 64})
    assert same == config
    with pytest.raises(ClipaError, match=r"--recipe clipa-l16-i17-t16 sets --image-size 64"):
        resolve("pretrain", {**BASE, "recipe": "clipa-l16-i17-t16", "image_size": 112})
    with pytest.raises(ClipaError, match="unknown recipe"):
        resolve("pretrain", {**BASE, "recipe": "nope"})


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("text-mask: syntax\ntext_length: 8\ncolor_jitter: [0.1, 0.1, 0.1, 0.0]\n")
    config = resolve("pretrain", {**BASE, "text_length": 12}, path)
    assert (config.reduction.text_mask, config.reduction.text_length) == ("syntax", 12)
    assert config.augment.color_jitter == (0.1, 0.1, 0.1, 0.0)
    path.write_text("epochs: 2\nbatch_size: 20\n")  # a length flag replaces the file's length
    assert resolve("pretrain", {**BASE, "samples": 400}, path).optim.samples == 400
    assert resolve("pretrain", {**BASE, "samples": 400}, path).optim.epochs is None
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps({"from": "x.pt"}))
    assert read_config_file(json_path) == {"from_checkpoint": "x.pt"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("bogus_option: 1\n", "unknown option"),
        ("- a\n- b\n", "mapping"),
        ("a: [\n", "cannot parse"),
    ],
)
def test_bad_config_files(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ClipaError, match=message):
        resolve("pretrain", BASE, path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mask_ratio": 1.0}, r"--mask-ratio must be in \[0, 1\)"),
        ({"mask_ratio": -0.1}, r"--mask-ratio must be in \[0, 1\)"),
        ({"image_mask": "checkerboard"}, "--image-mask must be one of"),
        ({"text_mask": "nouns"}, "--text-mask must be one of"),
        ({"epochs": 1, "samples": 10}, "not both"),
        ({"text_length": 2}, "≥ 3"),
        ({"classnames": "c.txt"}, "--classnames needs --zeroshot"),
    ],
)
def test_bad_options(changes, message):
    with pytest.raises(ClipaError, match=message):
        TrainConfig.from_options("pretrain", {**BASE, **changes})


def test_finetune_needs_a_checkpoint():
    with pytest.raises(ClipaError, match="finetune needs --from"):
        resolve("finetune", BASE)


def test_an_option_that_would_be_ignored_is_refused_unless_it_changes_nothing(tmp_path):
    """--mask-ratio without a ratio mask is refused, also typed with its default's value
    (`--mask-ratio 0.5` alone trained unmasked, silently); a config file repeating the default
    (a run's whole options), or a recipe's own value, changes nothing and passes. Under a
    recipe that fixes the other option the fix is to drop the flag, not to add what the
    recipe refuses."""
    with pytest.raises(ClipaError, match=r"--mask-ratio 0\.3 would be ignored without --image"):
        resolve("pretrain", {**BASE, "mask_ratio": 0.3})
    with pytest.raises(ClipaError, match=r"--mask-ratio 0\.5 would be ignored without --image"):
        resolve("pretrain", {**BASE, "mask_ratio": 0.5})
    whole = tmp_path / "whole.yaml"
    whole.write_text("mask_ratio: 0.5\ncompile: 'off'\ncompile_backend: inductor\n")
    resolve("pretrain", BASE, whole)  # defaults repeated by a file
    recipe = {**BASE, "recipe": "clipa-b16-i50-t16"}
    resolve("pretrain", {**recipe, "mask_ratio": 0.0})  # the recipe's own value
    with pytest.raises(ClipaError) as refused:
        resolve("pretrain", {**recipe, "color_jitter_prob": 0.5})
    assert str(refused.value).endswith(
        "drop --color-jitter-prob (--recipe clipa-b16-i50-t16 fixes --color-jitter)"
    )


def test_a_fine_tune_takes_the_image_norm_its_from_weights_were_trained_with(tmp_path):
    """`finetune --from` a CLIPA-v2-style run (--image-norm imagenet) without --image-norm
    trained on OpenAI-normalised inputs, silently (--loss already followed the checkpoint)."""
    from checkpoints import write_checkpoint

    imagenet = write_checkpoint(tmp_path / "v2", run_config={"options": {"image_norm": "imagenet"}})
    plain = write_checkpoint(tmp_path / "v1")
    assert resolve("finetune", {**BASE, "from_checkpoint": str(imagenet)}).model.image_norm == (
        "imagenet"
    )
    assert resolve("finetune", {**BASE, "from_checkpoint": str(plain)}).model.image_norm == "openai"
    given = {**BASE, "from_checkpoint": str(imagenet), "image_norm": "openai"}
    assert resolve("finetune", given).model.image_norm == "openai"  # a flag still decides
