"""The CLIPA-v1 recipes follow the paper's rules (lr per 256, warm-up in samples, token counts);
the CLIPA-v2 recipes hold the numbers of the v2 JAX configs (clipa-spec §7, the seeds' table)."""

from __future__ import annotations

import json

import pytest

from clipa_data.core.errors import ClipaError
from clipa_train.recipes import (
    FINETUNE_LR_PER_256,
    PRETRAIN_LR_PER_256,
    V1_RECIPE_NAMES,
    V2_RECIPE_NAMES,
    get_recipe,
    load_recipe_file,
    stage_recipe,
)
from clipa_train.run_config import resolve


@pytest.mark.parametrize("name", V1_RECIPE_NAMES)
def test_learning_rate_rule(name):
    recipe = get_recipe(name)
    assert recipe.pretrain.lr == pytest.approx(
        PRETRAIN_LR_PER_256 * recipe.pretrain.global_batch / 256
    )
    assert recipe.finetune.lr == pytest.approx(
        FINETUNE_LR_PER_256 * recipe.finetune.global_batch / 256
    )


@pytest.mark.parametrize("name", V1_RECIPE_NAMES)
def test_warmup_in_samples(name):
    recipe = get_recipe(name)
    assert recipe.pretrain.warmup_steps * recipe.pretrain.global_batch == pytest.approx(
        51.2e6, rel=0.01
    )
    # "About 25.6M": the B/16 script's 3,072 steps x 8,192 is 25.2M, so 2% tolerance.
    assert recipe.finetune.warmup_steps * recipe.finetune.global_batch == pytest.approx(
        25.6e6, rel=0.02
    )


@pytest.mark.parametrize(
    ("name", "image_tokens", "text_tokens"),
    [("clipa-b16-i50-t16", 50, 16), ("clipa-l16-i17-t16", 17, 16), ("clipa-l16-i37-t8", 37, 8)],
)
def test_name_matches_token_counts(name, image_tokens, text_tokens):
    stage = get_recipe(name).pretrain
    assert (stage.image_size // 16) ** 2 + 1 == image_tokens
    assert stage.text_length == text_tokens
    assert get_recipe(name).finetune.image_size == 224


def test_unknown_recipe():
    with pytest.raises(KeyError, match="known: clipa-b16-i50-t16"):
        get_recipe("clipa-h14")


# The v2 JAX configs (clipa-spec §7): batch, samples -> steps, lr, warm-up, mask ratio, per stage.
V2_PRETRAIN = {"global_batch": 65_536, "samples": 12_811_670_000, "lr": 2.048e-3,
               "warmup_steps": 3_200, "text_length": 8, "text_mask": "syntax",
               "image_mask": "resize", "mask_ratio": 0.0}  # fmt: skip
V2_FINETUNE_224 = {"image_size": 224, "global_batch": 32_768, "samples": 524_288_000,
                   "lr": 5.12e-5, "warmup_steps": 800, "text_length": 32, "text_mask": "truncate",
                   "image_mask": "random", "mask_ratio": 0.3}  # fmt: skip
V2_FINETUNE_336 = {"image_size": 336, "global_batch": 16_384, "samples": 131_072_000,
                   "lr": 6.4e-6, "warmup_steps": 1_600, "text_length": 32, "text_mask": "truncate",
                   "image_mask": "random", "mask_ratio": 0.4}  # fmt: skip
V2_EVERY_STAGE = {"pos_embed": "sin_cos_2d", "crop_scale_min": 0.4,
                  "color_jitter": (0.32, 0.32, 0.32, 0.08), "color_jitter_prob": 0.8,
                  "grayscale_prob": 0.2, "eps": 1e-8, "image_norm": "imagenet",
                  "precision": "bf16"}  # fmt: skip
H, L = "ViT-H-14-CLIPA", "ViT-L-14-CLIPA"
V2_EXPECTED = {
    "clipa-v2-h14-84-224": [(H, 84, V2_PRETRAIN), (H, 224, V2_FINETUNE_224)],
    "clipa-v2-h14-84-224-336": [
        (H, 84, V2_PRETRAIN), (H, 224, V2_FINETUNE_224), (H + "-336", 336, V2_FINETUNE_336),
    ],
    "clipa-v2-h14-70-224": [(H, 70, V2_PRETRAIN), (H, 224, V2_FINETUNE_224)],
    "clipa-v2-l14-84-224": [(L, 84, V2_PRETRAIN), (L, 224, V2_FINETUNE_224)],
    "clipa-v2-l14-84-224-336": [
        (L, 84, V2_PRETRAIN), (L, 224, V2_FINETUNE_224), (L + "-336", 336, V2_FINETUNE_336),
    ],
}  # fmt: skip


def test_every_v2_recipe_is_checked():
    assert set(V2_EXPECTED) == set(V2_RECIPE_NAMES)


@pytest.mark.parametrize("name", sorted(V2_EXPECTED))
def test_v2_recipe_values_are_the_configs(name):
    recipe = get_recipe(name)
    assert len(recipe.stages) == len(V2_EXPECTED[name])
    for stage, (model, image_size, expected) in zip(recipe.stages, V2_EXPECTED[name], strict=True):
        options = stage.as_options()
        assert (stage.model, stage.image_size) == (model, image_size)
        for key, value in {**expected, **V2_EVERY_STAGE}.items():
            assert options[key] == pytest.approx(value), (name, stage.name, key)
        assert stage.tokenizer == "wordpiece"
    # The configs' step counts: 12.8B / 64k = 195,490; 512M / 32k = 16,000; 128M / 16k = 8,000.
    steps = [stage.samples // stage.global_batch for stage in recipe.stages]
    assert steps == [195_490, 16_000, 8_000][: len(steps)]
    # lr = per-256 rate x batch // 256 as the configs write it: 8e-6, then 4e-7, then 1e-7.
    rates = [stage.lr / (stage.global_batch // 256) for stage in recipe.stages]
    assert rates == pytest.approx([8e-6, 4e-7, 1e-7][: len(rates)])
    assert "mu_dtype" in recipe.note and "--tokenizer PATH" in recipe.note


@pytest.mark.parametrize(
    ("name", "top1"),
    [("clipa-v2-h14-70-224", 81.1), ("clipa-v2-h14-84-224", 81.5),
     ("clipa-v2-h14-84-224-336", 81.8), ("clipa-v2-l14-84-224", 79.7),
     ("clipa-v2-l14-84-224-336", 80.3)],
)  # fmt: skip
def test_v2_reported_accuracy_is_the_seeds_table(name, top1):
    assert get_recipe(name).reported_top1[-1] == top1


def test_v2_image_tokens():
    """84 px / 14 = 6x6 patches; 70 px = 5x5 (the paper's "I37" / "I26" with the class token)."""
    assert get_recipe("clipa-v2-h14-84-224").pretrain.image_size // 14 == 6
    assert get_recipe("clipa-v2-h14-70-224").pretrain.image_size // 14 == 5


def test_recipe_stage_by_name():
    recipe = "clipa-v2-h14-84-224-336"
    assert stage_recipe(recipe, "finetune").image_size == 224  # the first fine-tuning stage
    assert stage_recipe(f"{recipe}:finetune-336", "finetune").image_size == 336
    with pytest.raises(ClipaError, match="is a finetune stage; run it with clipa-train finetune"):
        stage_recipe(f"{recipe}:finetune-336", "pretrain")
    with pytest.raises(ClipaError, match="its stages: pretrain, finetune, finetune-336"):
        stage_recipe(f"{recipe}:ft", "finetune")


def test_v2_recipe_needs_a_local_wordpiece_vocabulary(tmp_path):
    options = {"data": str(tmp_path), "out": str(tmp_path / "run"), "recipe": "clipa-v2-h14-84-224"}
    with pytest.raises(ClipaError, match="give --tokenizer PATH, a local bert-base-uncased vocab"):
        resolve("pretrain", options)


def test_v2_recipe_sets_the_imagenet_normalisation(tmp_path):
    from clipa_train.backend_config import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN
    from clipa_train.resolved_stage import _backend

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo"]))
    options = {"data": str(tmp_path), "out": str(tmp_path / "run"), "tokenizer": str(vocab)}
    config = resolve("pretrain", {**options, "recipe": "clipa-v2-h14-84-224"})
    backend = _backend(config)
    assert (backend.image_mean, backend.image_std) == (IMAGENET_MEAN, IMAGENET_STD)
    v1 = resolve("pretrain", {**options, "tokenizer": None, "recipe": "clipa-b16-i50-t16"})
    assert _backend(v1).image_mean == OPENAI_MEAN
    with pytest.raises(ClipaError, match="sets --tokenizer clip-bpe for pretrain"):
        resolve("pretrain", {**options, "recipe": "clipa-b16-i50-t16"})


def test_a_flag_against_a_setting_the_recipe_leaves_unset_says_what_it_does_instead():
    """The recipe trains its pre-training for 6 epochs and sets no colour jitter: the line
    says so, not "sets --samples None"."""
    options = {"data": "d", "out": "o", "recipe": "clipa-b16-i50-t16"}
    with pytest.raises(ClipaError) as refused:
        resolve("pretrain", {**options, "samples": 1000})
    assert "sets the stage's length with --epochs 6 for pretrain; drop --samples 1000" in str(
        refused.value
    )
    with pytest.raises(ClipaError) as refused:
        resolve("pretrain", {**options, "color_jitter": (0.1, 0.1, 0.1, 0.1)})
    assert "sets no --color-jitter for pretrain; drop --color-jitter 0.1,0.1,0.1,0.1" in str(
        refused.value
    )


def test_recipe_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"stages": [TINY_STAGE, {**TINY_STAGE, "stage": "finetune"}]}))
    recipe = load_recipe_file(path)
    assert recipe.stage_names == ("pretrain", "finetune")
    assert get_recipe(str(path)) == recipe
    path.write_text(json.dumps({"stages": [{**TINY_STAGE, "batch": 8}]}))
    with pytest.raises(ClipaError, match=r"not a recipe .*batch"):
        load_recipe_file(path)


def test_a_recipe_file_reads_values_as_config_files_do(tmp_path):
    """YAML reads 1e-3 as text and a JSON file may quote numbers: a recipe file's values are
    read as the options' types; one that cannot be is one line naming file, stage and field."""
    path = tmp_path / "tiny.yaml"
    text = "stages:\n- " + "\n  ".join(f"{k}: {v}" for k, v in TINY_STAGE.items())
    path.write_text(
        text.replace("lr: 0.001", "lr: 1e-3").replace("global_batch: 8", "global_batch: '8'")
    )
    assert "lr: 1e-3" in path.read_text()
    (stage,) = load_recipe_file(path).stages
    assert stage.lr == 1e-3 and stage.global_batch == 8 and stage.samples == 32
    for key, value in (
        ("global_batch", "8.5"),
        ("image_size", "abc"),
        ("grad_checkpointing", "maybe"),
    ):
        path.write_text(
            f"{text}\n  {key}: {value}"
            if key not in TINY_STAGE
            else text.replace(f"{key}: {TINY_STAGE[key]}", f"{key}: {value}")
        )
        with pytest.raises(ClipaError) as refused:
            load_recipe_file(path)
        message = str(refused.value)
        assert message.startswith(f"{path}: stage 1: {key} must be ") and value in message


TINY_STAGE = {"stage": "pretrain", "model": "clipa-tiny", "image_size": 32, "text_length": 8,
              "text_mask": "truncate", "global_batch": 8, "lr": 1e-3, "warmup_steps": 1,
              "samples": 32, "pos_embed": "learnable"}  # fmt: skip


def test_eval_normalises_as_the_training_run_did(tmp_path):
    """A v2 run's checkpoint is evaluated with ImageNet mean/std (its config.json says so)."""
    from clipa_train.backend_config import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN
    from clipa_train.eval_stage import EvalConfig

    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000010.pt"
    assert EvalConfig(checkpoint=str(checkpoint)).backend_config().image_mean == OPENAI_MEAN
    checkpoint.parent.mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(
        json.dumps({"options": {"image_norm": "imagenet"}})
    )
    backend = EvalConfig(checkpoint=str(checkpoint)).backend_config()
    assert (backend.image_mean, backend.image_std) == (IMAGENET_MEAN, IMAGENET_STD)
    given = EvalConfig(checkpoint=str(checkpoint), image_norm="openai").backend_config()
    assert given.image_mean == OPENAI_MEAN
    with pytest.raises(ClipaError, match="--image-norm must be one of openai, imagenet"):
        EvalConfig(checkpoint=str(checkpoint), image_norm="laion")
