"""AdamW groups, the warm-up + cosine schedule and the logit-scale clamp."""

from __future__ import annotations

import math

import pytest
import torch

from clipa_data.core.errors import ClipaError
from clipa_train.model import build_model, load_preset
from clipa_train.optim import (
    OptimConfig,
    build_optimizer,
    clamp_logit_scale,
    learning_rate,
    parameter_groups,
)


def test_weight_decay_only_on_matrices_that_are_not_norms_biases_or_the_scale():
    model = build_model(load_preset("test-tiny").replace(pos_embed="sin_cos_2d", loss="sigmoid"))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in parameter_groups(model, 0.2))
    assert {
        "visual.conv1.weight",
        "visual.proj",
        "text_projection",
        "token_embedding.weight",
        "positional_embedding",
        "transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.1.mlp.c_fc.weight",
    } <= decay
    assert {
        "logit_scale",
        "logit_bias",
        "visual.class_embedding",
        "visual.ln_pre.weight",
        "ln_final.bias",
        "transformer.resblocks.0.attn.in_proj_bias",
        "visual.transformer.resblocks.0.ln_1.weight",
    } <= no_decay
    assert all(".ln_" not in n and "bias" not in n for n in decay)
    assert "visual.positional_embedding" not in decay | no_decay  # frozen sin-cos
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, total_steps=10))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0]
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-6
    assert optimizer.defaults["fused"]  # CPU parameters: one fused kernel


def test_schedule_is_linear_warmup_then_cosine_to_zero():
    config = OptimConfig(lr=1.0, total_steps=110, warmup_steps=10)
    assert [learning_rate(s, config) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert learning_rate(10, config) == 1.0
    assert learning_rate(60, config) == pytest.approx(0.5)
    assert learning_rate(110, config) == pytest.approx(0.0)
    assert learning_rate(109, config) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    no_warmup = OptimConfig(lr=2.0, total_steps=4)
    assert learning_rate(0, no_warmup) == 2.0


def test_logit_scale_is_clamped_to_ln_100():
    model = build_model(load_preset("test-tiny"))
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 0.0


def test_bad_optimiser_settings():
    with pytest.raises(ClipaError, match="warm-up steps must be in"):
        OptimConfig(lr=1e-3, total_steps=10, warmup_steps=11)
    with pytest.raises(ClipaError, match="learning rate must be positive"):
        OptimConfig(lr=0, total_steps=10)
