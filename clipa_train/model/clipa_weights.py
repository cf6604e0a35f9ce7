"""The CLIPA repository's own PyTorch weights (UCSC-VLAA/CLIPA, ``clipa_torch``): their state-dict
names and shapes, mapped to ours in one table.

What the table is built from (read, not copied; UCSC-VLAA/CLIPA at commit 3800508):

- ``clipa_torch/open_clip/model.py``: ``CLIP.__init__`` keeps the text tower's parts at the top
  level (``transformer``, ``token_embedding``, ``positional_embedding``, ``ln_final``,
  ``text_projection``) and ``logit_scale``; the causal mask is a non-persistent buffer. The v2
  configs (``ViT-{L,H}-14-CL32-GAP-BigVision``) build this ``CLIP``, not ``CustomTextCLIP``
  (no ``custom_text``, no ``hf_model_name``), so nothing is under ``text.``.
- ``clipa_torch/open_clip/transformer.py``: ``VisionTransformer`` (``conv1`` without bias,
  ``class_embedding`` [W], ``positional_embedding`` [grid² + 1, W], ``ln_pre`` an Identity when
  the config says ``ln_pre: false``, ``ln_post`` [W], ``proj`` [W, E]) and
  ``ResidualAttentionBlock`` (``ln_1``, ``attn`` an ``nn.MultiheadAttention``: ``in_proj_weight``
  [3W, W], ``in_proj_bias``, ``out_proj``; ``ln_2``; ``mlp.c_fc`` [int(W × ratio), W],
  ``mlp.c_proj``); ``TextTransformer`` (``positional_embedding`` [context, w]).
- ``clipa_torch/open_clip/factory.py``: ``load_checkpoint`` loads a file (a state dict or
  ``{"state_dict": ...}``, ``module.`` stripped) with ``strict=True`` into that ``CLIP``: the
  released v2 files therefore have exactly these names. The JAX models
  (``clipa_jax/models/vit.py``, ``text_transformer.py``) have the class token and its position
  slot, no projection biases (``use_bias=False``), matching the shapes.
- The seeds' README ("converted weights are not open_clip compatible") and the repository's
  ``scripts/test/*.sh``: the incompatibility is in behaviour, not in names — the configs use
  tanh GELU in both towers (``gelu_approximate: "tanh"``, JAX's default; OpenCLIP's
  ``*-CLIPA`` configs use exact GELU), the big_vision pooling styles (which OpenCLIP of that
  time lacked: patch-token mean then ``ln_post``; last-token text pooling without a causal mask),
  the BERT WordPiece tokenizer ([CLS] + L-1 wordpieces, no [SEP]) and, at evaluation, a
  bilinear squash resize with ImageNet mean/std.

So every row maps a name to the same name: the table is still the one place where the CLIPA
repository's names are written down, checked against every v2 preset (names and shapes) by
the tests, and what tells a foreign state dict from one of these.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

from clipa_data.core.errors import ClipaError
from clipa_train.model.config import ModelConfig, mlp_width

Shape = tuple[int, ...]


@dataclass(frozen=True)
class KeyRow:
    """One parameter of the CLIPA repository's ``CLIP`` and its name in our model."""

    clipa_repo: str
    """Its name in the CLIPA repository's files; ``{i}`` stands for a block index."""
    ours: str
    """Its name in our (OpenCLIP-named) model; ``{i}`` as above."""
    tower: str
    """``vision`` or ``text`` (whose ``layers`` the ``{i}`` runs over), or ``model``."""
    shape: Callable[[ModelConfig], Shape]
    """Its shape for a model config, as the CLIPA repository's module code builds it."""
    present: Callable[[ModelConfig], bool] = lambda config: True
    """Whether a model of that config has it (``ln_pre`` only without ``no_ln_pre``)."""


def _w(tower: str) -> Callable[[ModelConfig], int]:
    return lambda c: getattr(c, tower).width


def _block_rows(prefix: str, tower: str) -> list[KeyRow]:
    """The twelve tensors of one ``ResidualAttentionBlock`` (``nn.MultiheadAttention`` inside)."""
    width = _w(tower)

    def hidden(c: ModelConfig) -> int:
        return mlp_width(getattr(c, tower).width, getattr(c, tower).mlp_ratio)

    shapes: dict[str, Callable[[ModelConfig], Shape]] = {
        "ln_1.weight": lambda c: (width(c),),
        "ln_1.bias": lambda c: (width(c),),
        "attn.in_proj_weight": lambda c: (3 * width(c), width(c)),
        "attn.in_proj_bias": lambda c: (3 * width(c),),
        "attn.out_proj.weight": lambda c: (width(c), width(c)),
        "attn.out_proj.bias": lambda c: (width(c),),
        "ln_2.weight": lambda c: (width(c),),
        "ln_2.bias": lambda c: (width(c),),
        "mlp.c_fc.weight": lambda c: (hidden(c), width(c)),
        "mlp.c_fc.bias": lambda c: (hidden(c),),
        "mlp.c_proj.weight": lambda c: (width(c), hidden(c)),
        "mlp.c_proj.bias": lambda c: (width(c),),
    }
    name = f"{prefix}transformer.resblocks.{{i}}."
    return [KeyRow(name + key, name + key, tower, shape) for key, shape in shapes.items()]


def _same(name: str, tower: str, shape, present=lambda config: True) -> KeyRow:
    """A row whose two names are equal (every row today: see the module docstring)."""
    return KeyRow(name, name, tower, shape, present)


def _vision_rows() -> list[KeyRow]:
    v = "vision"

    def grid_rows(c: ModelConfig) -> int:
        return c.vision.grid**2 + 1  # the class token's slot, then the patches row by row

    def width(c: ModelConfig) -> Shape:
        return (c.vision.width,)

    def with_ln_pre(c: ModelConfig) -> bool:
        return not c.vision.no_ln_pre

    return [
        _same("visual.conv1.weight", v, lambda c: (c.vision.width, 3, *(c.vision.patch_size,) * 2)),
        _same("visual.class_embedding", v, width),
        _same("visual.positional_embedding", v, lambda c: (grid_rows(c), c.vision.width)),
        _same("visual.ln_pre.weight", v, width, with_ln_pre),
        _same("visual.ln_pre.bias", v, width, with_ln_pre),
        *_block_rows("visual.", v),
        _same("visual.ln_post.weight", v, width),
        _same("visual.ln_post.bias", v, width),
        _same("visual.proj", v, lambda c: (c.vision.width, c.embed_dim)),
    ]


def _text_rows() -> list[KeyRow]:
    t = "text"

    def width(c: ModelConfig) -> Shape:
        return (c.text.width,)

    return [
        _same("token_embedding.weight", t, lambda c: (c.text.vocab_size, c.text.width)),
        _same("positional_embedding", t, lambda c: (c.text.context_length, c.text.width)),
        *_block_rows("", t),
        _same("ln_final.weight", t, width),
        _same("ln_final.bias", t, width),
        _same("text_projection", t, lambda c: (c.text.width, c.embed_dim)),
        _same("logit_scale", "model", lambda c: ()),
    ]


KEY_TABLE: tuple[KeyRow, ...] = (*_vision_rows(), *_text_rows())
"""Every parameter a CLIPA-repository ``CLIP`` (ViT towers) can hold, its name in our model and
its shape; v1 (``ln_pre``) and v2 models alike."""


@cache
def _patterns(column: str) -> tuple[tuple[re.Pattern, KeyRow], ...]:
    return tuple(
        (re.compile(re.escape(getattr(row, column)).replace(r"\{i\}", r"(\d+)") + "$"), row)
        for row in KEY_TABLE
    )


def _rename(state: dict, source: str, target: str) -> tuple[dict, list[str]]:
    """``state`` with the names of column ``source`` turned into those of ``target``; keys no
    row knows are kept as they are and listed."""
    renamed, unknown = {}, []
    for key, value in state.items():
        for pattern, row in _patterns(source):
            match = pattern.match(key)
            if match:
                name = getattr(row, target)
                renamed[name.replace("{i}", match.group(1)) if match.groups() else name] = value
                break
        else:
            renamed[key] = value
            unknown.append(key)
    return renamed, unknown


def from_clipa_repo(state: dict) -> dict:
    """A CLIPA-repository state dict under our names (other keys unchanged: the strict load
    names them)."""
    return _rename(state, "clipa_repo", "ours")[0]


def to_clipa_repo(state: dict) -> dict:
    """Our model's state dict under the CLIPA repository's names (the inverse of
    ``from_clipa_repo``); a key without a row is an error."""
    renamed, unknown = _rename(state, "ours", "clipa_repo")
    if unknown:
        raise ClipaError(f"no CLIPA-repository name for {', '.join(sorted(unknown)[:3])}")
    return renamed


def clipa_repo_shapes(config: ModelConfig) -> dict[str, Shape]:
    """The names and shapes a CLIPA-repository file of a ``config`` model holds (its module code
    as the table records it)."""
    shapes = {}
    for row in KEY_TABLE:
        if not row.present(config):
            continue
        layers = getattr(config, row.tower).layers if "{i}" in row.clipa_repo else 1
        for index in range(layers):
            shapes[row.clipa_repo.replace("{i}", str(index))] = row.shape(config)
    return shapes


CLIPA_REPO_PRESETS = {
    "ViT-L-14-CL32-GAP-BigVision": "ViT-L-14-CLIPA",
    "ViT-H-14-CL32-GAP-BigVision": "ViT-H-14-CLIPA",
}
"""Bundled presets named as the CLIPA repository's v2 configs, each its OpenCLIP twin with tanh
GELU (what the repository evaluates its released files with). GELU has no parameters, so a file
cannot say which it was meant for: detection picks the twin, ``--model`` picks these. The
repository has no bigG config (bigG was released in OpenCLIP's format only) and no 336 px one
(its scripts pass ``--force-image-size 336``: here ``--image-size 336``)."""
OPENCLIP_EXTRAS = ("logit_bias",)
"""Names OpenCLIP (and clipa) models may hold that no CLIPA-repository model has (SigLIP's)."""
REQUIRED = tuple(row.clipa_repo for row in KEY_TABLE if "{i}" not in row.clipa_repo)
"""Names every CLIPA-repository / OpenCLIP ViT state dict has, ``ln_pre`` aside."""


def check_known_keys(keys: Iterable[str], source: str) -> None:
    """Refuse, in one line, a state dict that is neither OpenCLIP's nor the CLIPA repository's
    (nor a clipa checkpoint's model): a few unexpected and missing names, and the fix."""
    keys = set(keys)
    unknown = _rename(dict.fromkeys(keys), "clipa_repo", "ours")[1]
    unexpected = sorted(key for key in unknown if key not in OPENCLIP_EXTRAS)
    missing = [  # in the table's order: the image tower's first
        name for name in REQUIRED if name not in keys and not name.startswith("visual.ln_pre")
    ]
    if not unexpected and not missing:
        return
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    if missing:
        parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    raise ClipaError(
        f"{source} is neither OpenCLIP / CLIPA-repository weights nor a clipa checkpoint: "
        f"{', '.join(parts)}; convert it to an OpenCLIP CLIP state dict first"
    )
