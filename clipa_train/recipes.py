"""The CLIPA recipes as data: CLIPA-v1 (two stages) and CLIPA-v2 (two or three stages).

CLIPA-v1 values come from the CLIPA PyTorch scripts (``clipa_torch/scripts/exp/gpu/**``,
summarised in ``shared/reference/clipa-spec.md`` §5.5). Learning rates follow the paper's rules,
checked in the tests: pre-training ``8e-6 × global_batch / 256``, fine-tuning ``8e-7 ×
global_batch / 256``. Warm-up is ~51.2M samples in pre-training and ~25.6M in fine-tuning.

CLIPA-v2 values come from the JAX configs (``clipa_jax/configs/model_h/**``, spec §7) and the
CLIPA README's schedules ("12.8B@84 + 512M@224 + 128M@336"); what the originals do that clipa
cannot is said in each recipe's ``note``, never dropped silently.

A stage fixes every option field below; a command-line flag that contradicts one is an error,
flags it does not set are free. ``clipa-train recipe`` runs a recipe's stages in order
(``clipa_train.recipe_run``); ``--recipe NAME[:STAGE]`` fills one stage's settings in.
A recipe may also be a JSON or YAML file of the same shape (``load_recipe_file``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from clipa_data.core.errors import ClipaError, parse_error_line
from clipa_data.core.tokenizer import CLIP_BPE

PRETRAIN_LR_PER_256 = 8e-6
FINETUNE_LR_PER_256 = 8e-7
LAION_400M_SAMPLES = 407_332_084  # 41,408 shards of LAION-400M as CLIPA counted them
L_JITTER = (0.32, 0.32, 0.32, 0.08)
WORDPIECE_VOCAB = "wordpiece"
"""A stage's ``tokenizer`` when it needs BERT's uncased WordPiece vocabulary: the user gives the
local file with ``--tokenizer PATH`` (nothing is downloaded)."""
STAGE_KINDS = ("pretrain", "finetune")
RECIPE_FILE_SUFFIXES = (".json", ".yaml", ".yml")
NOT_OPTIONS = ("stage", "name", "tokenizer")
"""``StageRecipe`` fields that are not training options (``tokenizer`` is checked instead, as
a v2 vocabulary is a local path only the user knows)."""


@dataclass(frozen=True)
class StageRecipe:
    """The settings of one training stage; field names match the command-line options."""

    stage: str
    """``pretrain`` or ``finetune`` (the ``clipa-train`` command that runs it)."""
    model: str
    """Model preset (``clipa_train/model/presets``)."""
    image_size: int
    """Training image size in pixels (fewer patches = fewer image tokens)."""
    text_length: int
    """Text context length L (CLIP BPE: SOT + L-2 tokens + EOT; WordPiece: [CLS] + L-1)."""
    text_mask: str
    """Text reduction strategy: a name of ``text_reduction.TEXT_MASKS``."""
    global_batch: int
    """Samples per optimiser step over all devices."""
    lr: float
    """Peak learning rate."""
    warmup_steps: int
    """Linear warm-up steps before the cosine decay."""
    pos_embed: str
    """Image positional embedding: a name of ``pos_embed.POS_EMBEDS``."""
    name: str = ""
    """The stage's name in its recipe and its run directory under ``clipa-train recipe --out``
    (default: ``stage``)."""
    epochs: float | None = None
    """Passes over the data (pre-training); exclusive with ``samples``."""
    samples: int | None = None
    """Samples seen in the stage (fine-tuning); exclusive with ``epochs``."""
    image_mask: str = "resize"
    """Image reduction: a name of ``image_masks.IMAGE_MASKS`` (resize: no mask)."""
    mask_ratio: float = 0.0
    """Share of patches dropped by the random/block masks."""
    precision: str = "bf16"
    """bf16 autocast with fp32 master weights (the GPU scripts' amp_bf16)."""
    grad_checkpointing: bool = True
    """Recompute activations per block in the backward pass."""
    crop_scale_min: float = 0.4
    """RandomResizedCrop minimum area share."""
    color_jitter: tuple[float, float, float, float] | None = None
    """Brightness, contrast, saturation, hue jitter (the L/16 recipes), else none."""
    color_jitter_prob: float = 0.0
    """Probability of applying the colour jitter."""
    grayscale_prob: float = 0.0
    """Probability of converting to grayscale."""
    eps: float = 1e-6
    """AdamW ε (OpenCLIP's 1e-6 for ViTs in v1; optax's default 1e-8 in the v2 JAX configs)."""
    image_norm: str = "openai"
    """Input mean/std: ``openai`` (CLIP's, v1) or ``imagenet`` (the v2 JAX configs)."""
    tokenizer: str = CLIP_BPE
    """``clip-bpe``, or ``wordpiece``: BERT's uncased WordPiece from ``--tokenizer PATH``."""

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.samples is None):
            raise ValueError(f"{self.model}: give exactly one of epochs or samples")
        if self.stage not in STAGE_KINDS:
            raise ValueError(f"stage must be one of {', '.join(STAGE_KINDS)}, not {self.stage!r}")
        if not self.name:
            object.__setattr__(self, "name", self.stage)  # frozen: the default filled once
        if isinstance(self.color_jitter, list):  # from a recipe file
            object.__setattr__(self, "color_jitter", tuple(self.color_jitter))

    def as_options(self) -> dict[str, object]:
        """The stage as ``{option name: value}`` for merging with command-line flags."""
        return {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.name not in NOT_OPTIONS
        }


@dataclass(frozen=True)
class Recipe:
    """A CLIPA recipe: its stages in order and what the paper reports for them."""

    name: str
    """Recipe name used with ``--recipe`` and ``clipa-train recipe``."""
    description: str
    """One line for ``--help`` and the README."""
    stages: tuple[StageRecipe, ...]
    """The stages in order; each after the first starts from the previous one's checkpoint."""
    reported_top1: tuple[float | None, ...] = ()
    """Zero-shot ImageNet-1K top-1 (%) reported after each stage (None: not reported)."""
    data: str = "LAION-400M"
    """The data set the reported numbers were trained on."""
    note: str = ""
    """Settings of the original that clipa has no equivalent for, and choices made reading it."""

    def __post_init__(self) -> None:
        names = [stage.name for stage in self.stages]
        if not self.stages or self.stages[0].stage != "pretrain":
            raise ValueError(f"{self.name}: the first stage must be a pretrain stage")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: stage names repeat: {', '.join(names)}")
        if not self.reported_top1:
            object.__setattr__(self, "reported_top1", (None,) * len(self.stages))
        if len(self.reported_top1) != len(self.stages):
            raise ValueError(f"{self.name}: one reported_top1 per stage")

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The stage names, in order."""
        return tuple(stage.name for stage in self.stages)

    def stage_named(self, name: str) -> StageRecipe:
        """The stage called ``name``; a ``ClipaError`` listing the stages otherwise."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ClipaError(
            f"recipe {self.name} has no stage {name!r}; its stages: {', '.join(self.stage_names)}"
        )

    def first(self, kind: str) -> StageRecipe:
        """The first stage run by ``clipa-train KIND`` (``--recipe NAME`` without ``:STAGE``)."""
        for stage in self.stages:
            if stage.stage == kind:
                return stage
        raise ClipaError(f"recipe {self.name} has no {kind} stage")

    @property
    def pretrain(self) -> StageRecipe:
        """The pre-training stage."""
        return self.first("pretrain")

    @property
    def finetune(self) -> StageRecipe:
        """The first fine-tuning stage."""
        return self.first("finetune")


def _l16_aug() -> dict:
    return {"color_jitter": L_JITTER, "color_jitter_prob": 0.8, "grayscale_prob": 0.2}


def _v1_recipes() -> list[Recipe]:
    return [
        Recipe(
            name="clipa-b16-i50-t16",
            description="ViT-B/16, 112 px (50 image tokens), 16 text tokens (truncate); ~2 days",
            stages=(
                StageRecipe(
                    stage="pretrain", model="ViT-B-16-CL16", image_size=112, text_length=16,
                    text_mask="truncate", global_batch=65_536, lr=2.048e-3, warmup_steps=782,
                    epochs=6, pos_embed="sin_cos_2d",
                ),
                StageRecipe(
                    stage="finetune", model="ViT-B-16-CL16", image_size=224, text_length=16,
                    text_mask="truncate", global_batch=8_192, lr=2.56e-5, warmup_steps=3_072,
                    samples=131_072_000, pos_embed="learnable",
                ),
            ),
            reported_top1=(59.7, 63.2),
        ),
        Recipe(
            name="clipa-l16-i17-t16",
            description="ViT-L/16, 64 px (17 image tokens), 16 text tokens (syntax); ~3 days",
            stages=(
                StageRecipe(
                    stage="pretrain", model="ViT-L-16-CL16-Syntax-GAP", image_size=64,
                    text_length=16, text_mask="syntax", global_batch=32_768, lr=1.024e-3,
                    warmup_steps=1_563, epochs=6, pos_embed="sin_cos_2d", **_l16_aug(),
                ),
                StageRecipe(
                    stage="finetune", model="ViT-L-16-CL16-Syntax-GAP", image_size=224,
                    text_length=16, text_mask="truncate", global_batch=7_168, lr=2.24e-5,
                    warmup_steps=3_571, samples=131_072_000, pos_embed="learnable", **_l16_aug(),
                ),
            ),
            reported_top1=(60.3, 67.8),
        ),
        Recipe(
            name="clipa-l16-i37-t8",
            description="ViT-L/16, 96 px (37 image tokens), 8 text tokens (syntax); ~4 days",
            stages=(
                StageRecipe(
                    stage="pretrain", model="ViT-L-16-CL8-Syntax-GAP", image_size=96,
                    text_length=8, text_mask="syntax", global_batch=32_768, lr=1.024e-3,
                    warmup_steps=1_563, epochs=6, pos_embed="sin_cos_2d", **_l16_aug(),
                ),
                StageRecipe(
                    stage="finetune", model="ViT-L-16-CL32-GAP", image_size=224, text_length=32,
                    text_mask="truncate", global_batch=7_168, lr=2.24e-5, warmup_steps=3_571,
                    samples=131_072_000, pos_embed="learnable", **_l16_aug(),
                ),
            ),
            reported_top1=(57.9, 69.3),
        ),
    ]  # fmt: skip


V2_PRETRAIN_SAMPLES = 12_811_670_000
"""12.8B: the v2 configs' 10,000 "epochs" of ImageNet-1K's 1,281,167 images (195,490 steps)."""

V2_NOTE = (
    "From the CLIPA-v2 JAX configs (model_h/{84,70}_8_pre_training.py, "
    "unmask_tuning_224_scheduleX4.py, unmask_tuning_336_scheduleX1.py) and the CLIPA README's "
    "schedules. Not applied, as clipa has no equivalent: Adam's first moment kept in bf16 "
    "(mu_dtype; clipa keeps fp32 optimiser states); weight decay on Dense/Conv kernels only "
    "(clipa decays every 2-D parameter, so also the token and learnable text positional "
    "embeddings); the warm-up starting from lr 0 (JAX min(1, step/warmup); clipa "
    "(step+1)/warmup); sin-cos frequencies ω = 1/10000^(d/(D/4−1)) (clipa: MAE's "
    "1/10000^(d/(D/4)); both compute the frozen table for each stage's grid); the inception "
    "crop's bilinear antialiased resize (clipa: bicubic, the same 40–100 % area and 3/4–4/3 "
    "ratio); tanh GELU (the presets use OpenCLIP's exact GELU); one 250,000-record shuffle "
    "buffer per host (clipa's --shuffle-buffer is per loader worker, left free); the text "
    "positional table loaded without a resize 8→32 (the configs as written; clipa resizes it "
    "linearly); no clamp on the logit scale (clipa clamps it at ln 100, as CLIPA-v1 and "
    "OpenCLIP do). "
    "The text is BERT's uncased WordPiece (bert-base-uncased, [SEP] left out): give "
    "--tokenizer PATH, your local vocab.txt or tokenizer.json or its folder; nothing is "
    "downloaded."
)

V2_L14_NOTE = (
    " L/14: no L/14 config is in the reference (model_l/64_32_pre_training.py holds an H/14 at "
    "84 px with batch 65,336 (sic), lr 2.04e-3, warm-up 802 and no jitter; model_l/"
    "unmask_tuning.py an L/16 at 224 px for 131M samples): the L/14 stages take the H/14 "
    "configs' values, as the README's L/14 schedules equal H/14's."
)


_V2_COMMON = {
    **_l16_aug(),  # simclr_jitter_gray(jitter_strength=0.4): the same jitter and gray
    "precision": "bf16",
    "grad_checkpointing": True,
    "crop_scale_min": 0.4,  # inception_crop area_min=40
    "eps": 1e-8,
    "image_norm": "imagenet",
    "tokenizer": WORDPIECE_VOCAB,
}
"""What every v2 stage shares (besides wd 0.2 and Adam β 0.9/0.95, clipa's defaults)."""


def _v2_pretrain(model: str, image_size: int) -> StageRecipe:
    """``model_h/{84,70}_8_pre_training.py``: 8 syntax tokens (noun_tokenize), batch 64k."""
    return StageRecipe(
        stage="pretrain", name="pretrain", model=model, image_size=image_size, text_length=8,
        text_mask="syntax", global_batch=65_536, lr=2.048e-3, warmup_steps=3_200,
        samples=V2_PRETRAIN_SAMPLES, pos_embed="sin_cos_2d", **_V2_COMMON,
    )  # fmt: skip


def _v2_finetune_224(model: str) -> StageRecipe:
    """``model_h/unmask_tuning_224_scheduleX4.py``: 512M samples, random mask 0.3."""
    return StageRecipe(
        stage="finetune", name="finetune", model=model, image_size=224, text_length=32,
        text_mask="truncate", global_batch=32_768, lr=5.12e-5, warmup_steps=800,
        samples=524_288_000, pos_embed="sin_cos_2d", image_mask="random", mask_ratio=0.3,
        **_V2_COMMON,
    )  # fmt: skip


def _v2_finetune_336(model: str) -> StageRecipe:
    """``model_h/unmask_tuning_336_scheduleX1.py``: 128M samples, random mask 0.4."""
    return StageRecipe(
        stage="finetune", name="finetune-336", model=model, image_size=336, text_length=32,
        text_mask="truncate", global_batch=16_384, lr=6.4e-6, warmup_steps=1_600,
        samples=131_072_000, pos_embed="sin_cos_2d", image_mask="random", mask_ratio=0.4,
        **_V2_COMMON,
    )  # fmt: skip


def _v2_recipes() -> list[Recipe]:
    h, h336, lg, lg336 = (
        "ViT-H-14-CLIPA",
        "ViT-H-14-CLIPA-336",
        "ViT-L-14-CLIPA",
        "ViT-L-14-CLIPA-336",
    )
    return [
        Recipe(
            name="clipa-v2-h14-84-224",
            description="CLIPA-v2 H/14: 12.8B samples at 84 px (36 patches), 8 syntax tokens, "
            "then 512M at 224 px, 32 tokens; 7,776 A100-hours",
            stages=(_v2_pretrain(h, 84), _v2_finetune_224(h)),
            reported_top1=(None, 81.5), data="DataComp-1B", note=V2_NOTE,
        ),
        Recipe(
            name="clipa-v2-h14-84-224-336",
            description="CLIPA-v2 H/14: clipa-v2-h14-84-224, then 128M samples at 336 px; "
            "8,640 A100-hours (81.8 % on DataComp-1B, 79.1 % on LAION-2B)",
            stages=(_v2_pretrain(h, 84), _v2_finetune_224(h), _v2_finetune_336(h336)),
            reported_top1=(None, 81.5, 81.8), data="DataComp-1B", note=V2_NOTE,
        ),
        Recipe(
            name="clipa-v2-h14-70-224",
            description="CLIPA-v2 H/14: 12.8B samples at 70 px (25 patches), 8 syntax tokens, "
            "then 512M at 224 px, 32 tokens; 5,920 A100-hours ($9,324)",
            stages=(_v2_pretrain(h, 70), _v2_finetune_224(h)),
            reported_top1=(None, 81.1), data="DataComp-1B", note=V2_NOTE,
        ),
        Recipe(
            name="clipa-v2-l14-84-224",
            description="CLIPA-v2 L/14: 12.8B samples at 84 px, 8 syntax tokens, then 512M at "
            "224 px, 32 tokens; 4,008 A100-hours",
            stages=(_v2_pretrain(lg, 84), _v2_finetune_224(lg)),
            reported_top1=(None, 79.7), data="DataComp-1B", note=V2_NOTE + V2_L14_NOTE,
        ),
        Recipe(
            name="clipa-v2-l14-84-224-336",
            description="CLIPA-v2 L/14: clipa-v2-l14-84-224, then 128M samples at 336 px; "
            "4,520 A100-hours",
            stages=(_v2_pretrain(lg, 84), _v2_finetune_224(lg), _v2_finetune_336(lg336)),
            reported_top1=(None, 79.7, 80.3), data="DataComp-1B", note=V2_NOTE + V2_L14_NOTE,
        ),
    ]  # fmt: skip


def _recipes() -> dict[str, Recipe]:
    return {recipe.name: recipe for recipe in [*_v1_recipes(), *_v2_recipes()]}


RECIPE_NAMES: tuple[str, ...] = tuple(_recipes())
V1_RECIPE_NAMES: tuple[str, ...] = tuple(recipe.name for recipe in _v1_recipes())
V2_RECIPE_NAMES: tuple[str, ...] = tuple(recipe.name for recipe in _v2_recipes())


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``, or the recipe file at ``name`` (``.json``/``.yaml``);
    raises ``KeyError`` listing the known names."""
    recipes = _recipes()
    if name in recipes:
        return recipes[name]
    if name.lower().endswith(RECIPE_FILE_SUFFIXES):
        return load_recipe_file(name)
    raise KeyError(
        f"unknown recipe {name!r}; known: {', '.join(recipes)} (or a recipe .json/.yaml file)"
    )


def split_recipe_ref(ref: str) -> tuple[str, str | None]:
    """``NAME:STAGE`` → (NAME, STAGE); ``NAME`` → (NAME, None)."""
    name, colon, stage = ref.rpartition(":")
    if colon and stage and "/" not in stage and "\\" not in stage:
        return name, stage
    return ref, None


def stage_recipe(ref: str, kind: str) -> StageRecipe:
    """The stage ``--recipe REF`` means for ``clipa-train KIND``: ``NAME:STAGE`` names it,
    ``NAME`` is the recipe's first stage of that kind; one ``ClipaError`` line otherwise."""
    name, stage_name = split_recipe_ref(ref)
    try:
        recipe = get_recipe(name)
    except KeyError as error:
        raise ClipaError(str(error.args[0])) from None
    stage = recipe.first(kind) if stage_name is None else recipe.stage_named(stage_name)
    if stage.stage != kind:
        raise ClipaError(
            f"--recipe {ref}: stage {stage.name} is a {stage.stage} stage; run it with "
            f"clipa-train {stage.stage}"
        )
    return stage


def check_recipe_tokenizer(ref: str, stage: StageRecipe, given: str | None) -> None:
    """A WordPiece stage needs ``--tokenizer PATH`` (a local vocabulary; never downloaded)."""
    if stage.tokenizer != WORDPIECE_VOCAB:
        return
    from clipa_data.core.tokenizer import load_tokenizer

    if given is None or given == CLIP_BPE or load_tokenizer(given).name != WORDPIECE_VOCAB:
        raise ClipaError(
            f"--recipe {ref} reads text with BERT's uncased WordPiece vocabulary: give "
            "--tokenizer PATH, a local bert-base-uncased vocab.txt or tokenizer.json (or its "
            "folder); nothing is downloaded"
        )


def _stage_values(path: Path, number: int, stage: dict) -> dict:
    """A recipe file's stage with each option-valued field read as its option's type, as a
    ``--config`` file is (YAML reads ``1e-3`` as text); one line naming the file, stage and
    field when a value cannot be."""
    from clipa_train.run_config import OPTION_NAMES, RECIPE_RENAMES, coerce_option, expected_type

    values = dict(stage)
    for key, value in stage.items():
        option = RECIPE_RENAMES.get(key, key)
        if option not in OPTION_NAMES or option == "tokenizer":
            continue  # stage, name: not options; tokenizer: a name or a path, kept as given
        try:
            values[key] = coerce_option(option, value)
        except (KeyError, TypeError, ValueError):
            raise ClipaError(
                f"{path}: stage {number}: {key} must be {expected_type(option)}, got {value!r}"
            ) from None
    return values


def load_recipe_file(path: str | Path) -> Recipe:
    """A recipe from a JSON or YAML file: ``name``, ``description``, ``stages`` (a list of
    ``StageRecipe`` fields each), optionally ``reported_top1``, ``data``, ``note``."""
    path = Path(path)
    if not path.is_file():
        raise ClipaError(f"{path}: recipe file not found")
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(path.read_text())
        else:
            import yaml

            values = yaml.safe_load(path.read_text())
    except Exception as error:  # json and yaml errors share no base we can import lazily
        raise ClipaError(
            f"{path}: cannot parse the recipe file ({parse_error_line(error)})"
        ) from None
    try:
        stages = tuple(
            StageRecipe(**_stage_values(path, number, stage))
            for number, stage in enumerate(values.pop("stages"), 1)
        )
        return Recipe(**{"name": str(path), "description": str(path), **values, "stages": stages})
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ClipaError(
            f"{path}: not a recipe ({error}); it needs stages: a list of stage settings"
        ) from None
