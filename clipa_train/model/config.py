"""Model configuration: frozen dataclasses and the JSON presets in ``presets/``.

A preset is a small JSON file with ``embed_dim``, a ``vision`` and a ``text`` object (every
field of :class:`VisionConfig` / :class:`TextTowerConfig` must be present, nothing else is
accepted) and an optional ``description``. Loading checks names and types and says which field
of which file is wrong, so a typo never becomes a silently different model.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from clipa_data.core.errors import ClipaError
from clipa_data.core.text_reduction import TEXT_MASKS
from clipa_train.loss import loss_choice
from clipa_train.model.pooling import GELU_APPROXIMATIONS, TEXT_POOLS, VISION_POOLS
from clipa_train.model.pos_embed import POS_EMBEDS

POOLS = tuple(VISION_POOLS)
TEXT_POOL_NAMES = tuple(TEXT_POOLS)
LEGACY_POOLS = {"token": ("tok", False), "gap": ("avg_all", True)}
"""Vision pool names of clipa before the OpenCLIP names: old checkpoints and config.json files
say ``token`` / ``gap`` (GAP always normalised after pooling) and are read as these."""


def mlp_width(width: int, mlp_ratio: float) -> int:
    """Hidden width of a block's MLP, truncated as OpenCLIP does (bigG: int(1664 × 4.9231) =
    8192)."""
    return int(width * mlp_ratio)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ClipaError(message)


@dataclass(frozen=True)
class VisionConfig:
    """The ViT image tower."""

    image_size: int
    """Input side in pixels (square images); must be a multiple of ``patch_size``."""
    patch_size: int
    """Side of one square patch in pixels (the patch-embedding conv's kernel and stride)."""
    width: int
    """Token width of the transformer."""
    layers: int
    """Number of residual attention blocks."""
    heads: int
    """Attention heads; ``width`` must divide evenly (B/16: 12, L/16: 16, H/14: 16 of width 80,
    bigG/14: 16 of width 104; OpenCLIP's configs give ``head_width`` instead)."""
    mlp_ratio: float
    """Hidden width of each MLP as a multiple of ``width``, truncated (``mlp_width``; bigG:
    4.9231 → 8192)."""
    pool: str
    """A name of ``pooling.VISION_POOLS`` (OpenCLIP's ``pool_type``): ``tok`` the class token's
    output; ``avg_all`` the mean over all tokens *including* the class token (CLIPA-v1's GAP,
    its PyTorch ``pool_style='open_clip'``); ``avg`` the mean over the patch tokens only
    (CLIPA-v2)."""
    pos_embed: str
    """A name of ``pos_embed.POS_EMBEDS``: ``learnable`` (std width^-0.5) or ``sin_cos_2d`` (fixed
    MAE table, frozen, class row 0)."""
    no_ln_pre: bool = False
    """True: no LayerNorm before the blocks (CLIPA-v2, the JAX ViT); the model then has no
    ``visual.ln_pre`` parameters (OpenCLIP's ``no_ln_pre``)."""
    final_ln_after_pool: bool = False
    """True: ``ln_post`` normalises the pooled vector (CLIPA-v1 GAP, CLIPA-v2); False: every
    token before pooling (OpenCLIP's default; the same thing for ``tok``)."""
    gelu_approximate: str = "none"
    """The MLPs' GELU: ``none`` (exact) or ``tanh`` (``pooling.GELU_APPROXIMATIONS``)."""

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "width", "layers", "heads"):
            _require(getattr(self, name) > 0, f"vision.{name} must be positive")
        nearest = max(1, self.image_size // self.patch_size) * self.patch_size
        _require(
            self.image_size % self.patch_size == 0,
            f"image size {self.image_size} is not a multiple of the patch size {self.patch_size}; "
            f"use e.g. --image-size {nearest}",
        )
        _require(self.width % self.heads == 0, "vision.width must be divisible by vision.heads")
        _require(self.mlp_ratio > 0, "vision.mlp_ratio must be positive")
        _require(self.pool in POOLS, f"vision.pool must be one of {POOLS}, not {self.pool!r}")
        _require(
            self.gelu_approximate in GELU_APPROXIMATIONS,
            f"vision.gelu_approximate must be one of {GELU_APPROXIMATIONS}, "
            f"not {self.gelu_approximate!r}",
        )
        _require(
            self.pos_embed in POS_EMBEDS,
            f"vision.pos_embed must be one of {POS_EMBEDS}, not {self.pos_embed!r}",
        )
        if self.pos_embed == "sin_cos_2d":
            _require(self.width % 4 == 0, "sin_cos_2d needs vision.width divisible by 4")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (the class token not counted)."""
        return self.grid**2

    @property
    def head_width(self) -> int:
        """Width of one attention head (OpenCLIP's configs give this; bigG: 1664 / 16 = 104)."""
        return self.width // self.heads


@dataclass(frozen=True)
class TextTowerConfig:
    """The text transformer (causal unless ``no_causal_mask``)."""

    context_length: int
    """Positions in the positional embedding; batches may be shorter, never longer."""
    vocab_size: int
    """Token-embedding rows (49,408 for the CLIP BPE, 32,000 for CLIPA-v2's WordPiece); with
    ``pool='argmax'`` the EOT id must be the largest id used."""
    width: int
    """Token width of the transformer."""
    heads: int
    """Attention heads; ``width`` must divide evenly."""
    layers: int
    """Number of residual attention blocks."""
    mlp_ratio: float
    """Hidden width of each MLP as a multiple of ``width``."""
    text_mask: str
    """The text reduction the preset was trained with (a default for the loader; the model itself
    does not use it): a name of ``clipa_data.core.text_reduction.TEXT_MASKS``."""
    pool: str = "argmax"
    """A name of ``pooling.TEXT_POOLS`` (OpenCLIP's ``pool_type``): ``argmax`` the EOT position
    (CLIP BPE), ``last`` the batch's last position even if it is padding (CLIPA-v2)."""
    no_causal_mask: bool = False
    """True: every token attends to every other, padding included (CLIPA-v2, the JAX text
    tower); False: causal attention as in CLIP."""
    gelu_approximate: str = "none"
    """The MLPs' GELU: ``none`` (exact) or ``tanh`` (``pooling.GELU_APPROXIMATIONS``)."""

    def __post_init__(self) -> None:
        for name in ("context_length", "vocab_size", "width", "heads", "layers"):
            _require(getattr(self, name) > 0, f"text.{name} must be positive")
        _require(self.width % self.heads == 0, "text.width must be divisible by text.heads")
        _require(self.mlp_ratio > 0, "text.mlp_ratio must be positive")
        _require(
            self.text_mask in TEXT_MASKS,
            f"text.text_mask must be one of {TEXT_MASKS}, not {self.text_mask!r}",
        )
        _require(
            self.pool in TEXT_POOL_NAMES,
            f"text.pool must be one of {TEXT_POOL_NAMES}, not {self.pool!r}",
        )
        _require(
            self.gelu_approximate in GELU_APPROXIMATIONS,
            f"text.gelu_approximate must be one of {GELU_APPROXIMATIONS}, "
            f"not {self.gelu_approximate!r}",
        )


@dataclass(frozen=True)
class ModelConfig:
    """A CLIP model: both towers, the joint embedding width and the logit scale/bias init."""

    embed_dim: int
    """Width of the joint image-text embedding (the projections' output)."""
    vision: VisionConfig
    """The image tower."""
    text: TextTowerConfig
    """The text tower."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log temperature: log(1/0.07) for the contrastive loss, log(10) for SigLIP."""
    init_logit_bias: float | None = None
    """Initial ``logit_bias`` (SigLIP: -10); None means the model has no bias parameter."""

    def __post_init__(self) -> None:
        _require(self.embed_dim > 0, "embed_dim must be positive")

    def replace(
        self,
        *,
        image_size: int | None = None,
        context_length: int | None = None,
        pos_embed: str | None = None,
        pool: str | None = None,
        loss: str | None = None,
    ) -> ModelConfig:
        """A copy with the per-stage overrides a command applies (None keeps the preset's value);
        ``loss`` sets that loss's logit scale/bias init (``clipa_train.loss.LOSS_CHOICES``)."""
        vision = dataclasses.replace(
            self.vision,
            image_size=image_size or self.vision.image_size,
            pos_embed=pos_embed or self.vision.pos_embed,
            pool=pool or self.vision.pool,
        )
        text = dataclasses.replace(
            self.text, context_length=context_length or self.text.context_length
        )
        logit = {}
        if loss is not None:
            choice = loss_choice(loss)
            logit = {
                "init_logit_scale": choice.init_logit_scale,
                "init_logit_bias": choice.init_logit_bias,
            }
        return dataclasses.replace(self, vision=vision, text=text, **logit)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (what checkpoints store to recognise an architecture)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> ModelConfig:
        """Build from a dict, naming ``source`` and the field in every error (the pool names of
        older clipa versions, ``LEGACY_POOLS``, are read as today's)."""
        return _build(cls, upgrade_legacy(data), source, prefix="")


def upgrade_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with a ``vision.pool`` of ``LEGACY_POOLS`` renamed (and its LayerNorm order)."""
    vision = data.get("vision")
    if not isinstance(vision, dict) or vision.get("pool") not in LEGACY_POOLS:
        return data
    pool, ln_after = LEGACY_POOLS[vision["pool"]]
    vision = {"final_ln_after_pool": ln_after, **vision, "pool": pool}
    return {**data, "vision": vision}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_type(value: Any, expected: Any, source: str, name: str) -> Any:
    """Return ``value`` if it has the annotated type (ints accepted for floats)."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        expected = next(option for option in options if option is not type(None))
    if dataclasses.is_dataclass(expected):
        if not isinstance(value, dict):
            raise ClipaError(f"{source}: field {name!r} must be an object, got {value!r}")
        return _build(expected, value, source, prefix=f"{name}.")
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
    }[expected]
    if not ok:
        raise ClipaError(
            f"{source}: field {name!r} must be {expected.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    return float(value) if expected is float else value


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = _field_types(cls)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ClipaError(f"{source}: unknown field {prefix + key!r}{hint}")
    missing = [
        name
        for name, spec in known.items()
        if name not in data
        and spec.default is dataclasses.MISSING
        and spec.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ClipaError(f"{source}: missing field(s) {', '.join(prefix + m for m in missing)}")
    values = {
        key: _check_type(value, hints[key], source, prefix + key) for key, value in data.items()
    }
    try:
        return cls(**values)
    except ClipaError as error:
        raise ClipaError(f"{source}: {error}") from None


PRESET_PACKAGE = "clipa_train.model.presets"
METADATA_KEYS = ("description",)


def preset_names() -> list[str]:
    """Names of the bundled presets, sorted."""
    folder = resources.files(PRESET_PACKAGE)
    return sorted(
        entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json")
    )


def load_preset(name_or_path: str | Path) -> ModelConfig:
    """A bundled preset by name (``ViT-B-16-CL16``) or a preset JSON file by path."""
    text, source = _read_preset(str(name_or_path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClipaError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ClipaError(f"{source}: a preset must be a JSON object")
    data = {key: value for key, value in data.items() if key not in METADATA_KEYS}
    return ModelConfig.from_dict(data, source)


def _read_preset(name_or_path: str) -> tuple[str, str]:
    if name_or_path.endswith(".json") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ClipaError(f"preset file {path} does not exist")
        return path.read_text(), str(path)
    entry = resources.files(PRESET_PACKAGE) / f"{name_or_path}.json"
    if not entry.is_file():
        names = preset_names()
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ClipaError(
            f"unknown model preset {name_or_path!r}; {hint}known presets: {', '.join(names)} "
            "(or give the path of a preset .json file)"
        )
    return entry.read_text(), f"preset {name_or_path}"


__all__ = [
    "ModelConfig",
    "TextTowerConfig",
    "VisionConfig",
    "load_preset",
    "preset_names",
]
