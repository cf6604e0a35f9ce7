"""The flat option table and the resolved stage: every flag reaches one field, nothing stays
unresolved."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from builders import make_builder_dir, make_records
from clipa_cli.train_options import training_options

from clipa_train.resolved_stage import OFF_WHEN_NONE, ResolvedStage, resolve_stage
from clipa_train.run_config import OPTIONS, TrainConfig, option_flag, resolve


def _leaf_fields(cls: type, prefix: str = "") -> set[str]:
    """``group.field`` of every non-dataclass field under ``cls``."""
    hints = typing.get_type_hints(cls)
    leaves = set()
    for field in dataclasses.fields(cls):
        if field.name == "stage":
            continue  # the command, not an option
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            leaves |= _leaf_fields(kind, f"{prefix}{field.name}.")
        else:
            leaves.add(prefix + field.name)
    return leaves


def test_every_option_maps_to_exactly_one_field_and_every_field_is_reachable():
    paths = list(OPTIONS.values())
    assert len(paths) == len(set(paths)), "two options share a field"
    assert set(paths) == _leaf_fields(TrainConfig)
    flags = [option_flag(name) for name in OPTIONS]
    assert len(flags) == len(set(flags))
    assert option_flag("from_checkpoint") == "--from"
    assert option_flag("batch_size") == "--batch-size"


def test_every_option_is_a_flag_and_round_trips():
    assert [p.name for p in training_options()] == list(OPTIONS)
    given = {"data": "d", "out": "o", "eval_every": 7, "model": "m", "zeroshot": "z"}
    config = resolve("pretrain", given)
    assert config.evaluation.every == 7 and config.model.name == "m"
    flat = config.to_json()
    assert flat.pop("stage") == "pretrain"
    assert TrainConfig.from_options("pretrain", flat) == config


def _hints(cls: type) -> dict[str, object]:
    from clipa_train.image import ImageConfig
    from clipa_train.loop import LoopConfig
    from clipa_train.model import ModelConfig
    from clipa_train.optim import OptimConfig
    from clipa_train.reduce import PatchMaskConfig, TextReductionConfig

    names = [
        ImageConfig,
        LoopConfig,
        ModelConfig,
        OptimConfig,
        PatchMaskConfig,
        TextReductionConfig,
    ]
    return typing.get_type_hints(cls, localns={c.__name__: c for c in names})


def _unset_fields(value: object, hints_of: type, prefix: str = "") -> list[str]:
    """Fields holding None whose type does not allow None (a gap left unresolved)."""
    found = []
    hints = _hints(hints_of)
    for field in dataclasses.fields(value):
        item, hint = getattr(value, field.name), hints[field.name]
        optional = type(None) in typing.get_args(hint)
        if item is None and not optional:
            found.append(prefix + field.name)
        elif dataclasses.is_dataclass(item):
            found += _unset_fields(item, type(item), f"{prefix}{field.name}.")
    return found


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resolved_stage_has_no_unset_fields(tmp_path, stage):
    builder = make_builder_dir(tmp_path / "data", [make_records(8)])
    options = {"data": str(builder), "out": str(tmp_path / "run"), "model": "clipa-tiny"}
    if stage == "finetune":
        options["from_checkpoint"] = str(tmp_path / "weights.pt")  # read only when training
    options["text_mask"] = "truncate"
    resolved = resolve_stage(resolve(stage, options))
    optional = {
        f.name for f in dataclasses.fields(ResolvedStage)
        if type(None) in typing.get_args(_hints(ResolvedStage)[f.name])
    }  # fmt: skip
    assert optional <= OFF_WHEN_NONE
    assert _unset_fields(resolved, ResolvedStage) == []
    assert resolved.image.size == (224 if stage == "finetune" else 64)  # stage default, preset
    assert resolved.text.length == 32 and resolved.patch_mask.patch_size == 8
    assert resolved.optim.lr == resolved.config.peak_lr() and resolved.optim.total_steps == 1
    options = resolved.to_json()["options"]
    assert None not in [options[k] for k in ("image_size", "text_length", "text_mask", "lr")]
