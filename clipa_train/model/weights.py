"""Load OpenCLIP / CLIPA-v1 weights (or a clipa checkpoint's model) into a model of any image size
and text length: positional embeddings are resized, everything else must match exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_train.model.clipa_weights import (
    CLIPA_REPO_PRESETS,
    OPENCLIP_EXTRAS,
    check_known_keys,
    from_clipa_repo,
)
from clipa_train.model.config import ModelConfig, load_preset, preset_names
from clipa_train.model.pos_embed import resize_image_pos_embed, resize_text_pos_embed, sincos_2d

StateDict = dict[str, torch.Tensor]

IMAGE_POS = "visual.positional_embedding"
TEXT_POS = "positional_embedding"
# Non-persistent in OpenCLIP, but older exports carried it; it is rebuilt, never loaded.
IGNORED_SUFFIXES = ("attn_mask",)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes of DDP and torch.compile wrappers (in either order), stripped on load."""


def read_weights(path: str | Path) -> StateDict:
    """The state dict in ``path``: a bare state dict, ``{'state_dict': ...}`` (OpenCLIP training
    checkpoints and the CLIPA repository's files) or a clipa checkpoint (``{'model': ...}``); a
    ``module.`` prefix is stripped, CLIPA-repository names mapped to ours (``clipa_weights``)."""
    from clipa_train.checkpoint import is_safetensors, load_tensors, refuse_folder

    layout.check_local(path, "weights file", read=True)
    path = Path(path)
    refuse_folder(path, "use")  # a run directory: its newest checkpoint is named
    if not path.is_file():
        raise ClipaError(f"weights file {path} does not exist")
    with path.open("rb") as handle:
        safetensors = is_safetensors(handle.read(9))
    try:
        payload = load_tensors(path, safetensors)
    except ClipaError:
        raise
    except Exception as error:  # torch raises several types for damaged or foreign files
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise ClipaError(
            f"{path}: cannot read weights ({first_line[:200]}); is the file truncated or not a "
            "PyTorch state dict?"
        ) from None
    return unwrap_state_dict(payload, str(path))


def unwrap_state_dict(payload: object, source: str = "weights") -> StateDict:
    """Accept a bare state dict, ``{'state_dict': sd}`` or ``{'model': sd}``; strip the DDP and
    torch.compile prefixes (``module.``, ``_orig_mod.``)."""
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(
        isinstance(value, torch.Tensor) for value in payload.values()
    ):
        raise ClipaError(f"{source}: no state dict of tensors found")
    plain = {
        _plain_key(key): value
        for key, value in payload.items()
        if not key.endswith(IGNORED_SUFFIXES)
    }
    return from_clipa_repo(plain)  # the CLIPA repository's own files: its names to ours


def _plain_key(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def resize_positional_embeddings(
    state: StateDict, model: nn.Module, report: Callable[[str], None] | None = None
) -> StateDict:
    """A copy of ``state`` whose image and text positional embeddings have the model's sizes;
    ``report`` (if given) gets one line per table resized."""
    state = dict(state)
    target = model.state_dict()
    for key in (IMAGE_POS, TEXT_POS):
        if key not in state or key not in target or state[key].shape[1:] != target[key].shape[1:]:
            continue  # absent or of another width: check_compatible reports it
        state_rows, rows = state[key].shape[0], target[key].shape[0]
        if state_rows == rows:
            continue  # the checkpoint's own table, whatever it trained with
        if key == IMAGE_POS and model.config.vision.pos_embed == "sin_cos_2d":
            # The fixed table is a function of the grid: the model's own, computed for its grid
            # (as CLIPA-v2's JAX code does for each stage), not the old grid's table resized.
            was_fixed = _is_sincos(state[key])
            state[key] = target[key].detach().clone()
            if report is not None:
                before = "" if was_fixed else " (the checkpoint's was learned or resized: dropped)"
                sizes = _sizes(key, state_rows, rows)
                report(f"fine-tuning recomputed the fixed sin-cos {sizes}{before}")
            continue
        if key == IMAGE_POS:
            state[key] = resize_image_pos_embed(state[key], model.config.vision.grid)
        else:
            state[key] = resize_text_pos_embed(state[key], rows)
        if report is not None:
            report(f"fine-tuning resized the {_sizes(key, state_rows, rows)}")
    return state


def _is_sincos(table: torch.Tensor) -> bool:
    """Whether ``table`` is the fixed sin-cos table of its grid (not learned, not resized)."""
    grid = round((table.shape[0] - 1) ** 0.5)
    if grid * grid != table.shape[0] - 1 or table.shape[1] % 4:
        return False
    return torch.allclose(table.float(), sincos_2d(table.shape[1], grid), atol=1e-4)


def _sizes(key: str, old: int, new: int) -> str:
    """What a resizing of the ``key`` table from ``old`` to ``new`` rows means to a user."""
    if key == IMAGE_POS:  # a class row, then a square grid of patches
        before, after = round((old - 1) ** 0.5), round((new - 1) ** 0.5)
        return f"image positional embeddings from {before}x{before} to {after}x{after} patches"
    return f"text positional embeddings from {old} to {new} tokens"


def check_compatible(
    state: StateDict, model: nn.Module, source: str, as_written: StateDict | None = None
) -> None:
    """Raise one clear line when ``state`` was written for another architecture; the preset
    it matches is found from ``as_written`` (the weights before resizing; default ``state``)."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = [
        f"{key} {list(state[key].shape)} vs model {list(target[key].shape)}"
        for key in sorted(set(state) & set(target))
        if state[key].shape != target[key].shape
    ]
    if not mismatched and sorted(missing + unexpected) == ["logit_bias"]:
        # Only the sigmoid loss's bias differs: weights of one loss, a model of the other.
        from clipa_train.loss import loss_of

        has = "has" if unexpected else "has no"
        theirs, ours = loss_of(bool(unexpected)), loss_of(not unexpected)
        raise ClipaError(
            f"{source} was trained with the {theirs} loss (it {has} logit_bias) and this "
            f"model is built for --loss {ours}: drop --loss (the checkpoint's is the default) "
            f"or pass --loss {theirs}"
        )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (e.g. {'; '.join(mismatched[:2])})")
    if problems:
        raise ClipaError(
            f"{source} was written for another architecture: {', '.join(problems)}; "
            + preset_hint(state if as_written is None else as_written, model.config)
        )


RESIZED_FIELDS = ("vision.image_size", "text.context_length")
"""Fields weights may differ in (positional embeddings are resized on load)."""
NOT_ARCHITECTURE = ("text.text_mask", "init_logit_scale")
"""Fields that are a loader default or an initial value, not part of the architecture."""


def preset_hint(state: StateDict, config: ModelConfig) -> str:
    """The end of the error for weights of another architecture: which bundled preset they
    match and the fields (the switches) in which that preset differs from the model."""
    matches = matching_presets(state)
    if not matches:
        return "choose the preset it was trained with (no bundled preset matches it)"
    if len(matches) > 1:
        return f"it matches the presets {', '.join(matches)}; pass --model with one of them"
    ours, theirs = _flat(config.to_dict()), _flat(load_preset(matches[0]).to_dict())
    skip = (*RESIZED_FIELDS, *NOT_ARCHITECTURE)
    differences = [
        f"{key} {theirs.get(key)!r} (model {ours.get(key)!r})"
        for key in sorted(set(ours) | set(theirs))
        if key not in skip and ours.get(key) != theirs.get(key)
    ]
    return (
        f"it matches preset {matches[0]}, which differs from this model in "
        f"{', '.join(differences)}; pass --model {matches[0]}"
    )


def _flat(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def matching_presets(state: StateDict) -> list[str]:
    """The bundled presets whose models have exactly ``state``'s names and shapes (checked on
    the meta device), positional-embedding sizes aside; those at ``state``'s own image size and
    context length are preferred (ViT-L-14-CLIPA vs ViT-L-14-CLIPA-336)."""
    # The sigmoid loss's bias is no part of the architecture: a sigmoid export matches too.
    shapes = {key: tuple(v.shape) for key, v in state.items() if key not in OPENCLIP_EXTRAS}
    conv, tokens = shapes.get("visual.conv1.weight"), shapes.get("token_embedding.weight")
    if conv is None or tokens is None or IMAGE_POS not in shapes or TEXT_POS not in shapes:
        return []
    grid = round((shapes[IMAGE_POS][0] - 1) ** 0.5)
    exact, resized = [], []
    for name in preset_names():
        if name in CLIPA_REPO_PRESETS:
            continue  # its OpenCLIP twin has the same tensors and is the one detected
        config = load_preset(name)
        vision, text = config.vision, config.text
        if conv != (vision.width, 3, vision.patch_size, vision.patch_size) or tokens != (
            text.vocab_size,
            text.width,
        ):
            continue  # cheap checks first: most presets never get built
        try:
            sized = config.replace(
                image_size=grid * vision.patch_size, context_length=shapes[TEXT_POS][0]
            )
        except ClipaError:
            continue
        if _meta_shapes(sized) == shapes:
            own = (vision.grid, text.context_length) == (grid, shapes[TEXT_POS][0])
            (exact if own else resized).append(name)
    return exact or resized


def _meta_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict ``config`` builds, without memory or init."""
    from clipa_train.model.clip import CLIP

    with torch.device("meta"):
        model = CLIP(config)
    state = model.state_dict()
    return {key: tuple(v.shape) for key, v in state.items() if key not in OPENCLIP_EXTRAS}


def at_sizes_of(state: StateDict, config: ModelConfig) -> ModelConfig:
    """``config`` at the image size and context length of the positional embeddings in
    ``state`` (unchanged where it holds none: loading it names what differs)."""
    if IMAGE_POS not in state or TEXT_POS not in state:
        return config
    grid = round((state[IMAGE_POS].shape[0] - 1) ** 0.5)
    return config.replace(
        image_size=grid * config.vision.patch_size, context_length=state[TEXT_POS].shape[0]
    )


def recognise_preset(path: str | Path) -> ModelConfig:
    """The preset that the OpenCLIP-format or CLIPA-repository weights in ``path`` were written
    for, at the image size and context length of their positional embeddings (an export of a
    32 px / 8-token pre-training is that model, not the preset's 224 px / 77 tokens), or one
    error naming the candidates (or the foreign keys) and the fix."""
    state = read_weights(path)
    check_known_keys(state, str(path))
    matches = matching_presets(state)
    if len(matches) == 1:
        config = at_sizes_of(state, load_preset(matches[0]))
        from clipa_train.loss import loss_of

        return config.replace(loss=loss_of(True)) if "logit_bias" in state else config
    if not matches:
        raise ClipaError(
            f"{path} holds no architecture (OpenCLIP/CLIPA weights) and matches no bundled "
            "preset; pass --model PRESET (a name or a preset .json)"
        )
    raise ClipaError(
        f"{path} holds no architecture and matches the presets {', '.join(matches)}; "
        "pass --model with the one it was trained with"
    )


def load_openclip_weights(
    model: nn.Module,
    source: str | Path | StateDict,
    report: Callable[[str], None] | None = None,
    name: str = "state dict",
) -> nn.Module:
    """Load OpenCLIP / CLIPA-v1 weights into ``model`` with ``strict=True``.

    ``source`` is a file path or an in-memory state dict (``name``: where it came from, for
    messages). Image positional embeddings are resized bicubically (class row kept), text ones
    linearly, to the model's image size and context length (a fixed sin-cos image table is
    the model's own, computed for its grid; ``report``, if given, gets a line for each); any
    other difference is an error. Returns ``model``.
    """
    if isinstance(source, str | Path):
        name, state = str(source), read_weights(source)
    else:
        state = unwrap_state_dict(source, name)
    said: list[str] = []  # told once the weights fit: not before an architecture error
    resized = resize_positional_embeddings(state, model, said.append)
    check_compatible(resized, model, name, as_written=state)
    model.load_state_dict(resized, strict=True)
    for line in said if report is not None else ():
        report(line)
    return model
