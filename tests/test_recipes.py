"""The CLIPA recipes follow the paper's rules (lr per 256, warm-up in samples, token counts)."""

from __future__ import annotations

import pytest

from clipa_train.recipes import (
    FINETUNE_LR_PER_256,
    PRETRAIN_LR_PER_256,
    RECIPE_NAMES,
    get_recipe,
)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_learning_rate_rule(name):
    recipe = get_recipe(name)
    assert recipe.pretrain.lr == pytest.approx(
        PRETRAIN_LR_PER_256 * recipe.pretrain.global_batch / 256
    )
    assert recipe.finetune.lr == pytest.approx(
        FINETUNE_LR_PER_256 * recipe.finetune.global_batch / 256
    )


@pytest.mark.parametrize("name", RECIPE_NAMES)
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
