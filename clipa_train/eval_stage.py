"""``clipa-train eval``: zero-shot top-1/top-5 of a checkpoint, standalone.

The model is rebuilt from the architecture stored in a clipa checkpoint (or from ``--model``
for OpenCLIP/CLIPA weights) at the evaluation image size, positional embeddings resized on
load. Prompts are truncated to the model's context length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core.atomic import write_json
from clipa_data.core.errors import ClipaError

CROPS = ("center", "square")


@dataclass(frozen=True)
class EvalConfig:
    """Options of a standalone zero-shot evaluation."""

    checkpoint: str
    """A clipa checkpoint, or OpenCLIP/CLIPA weights together with ``model``."""
    dataset: str
    """ImageFolder ``val/`` tree or TFDS imagenet2012 builder directory."""
    classnames: str | None = None
    """Class names file for a non-ImageNet folder (one per line, sorted folder order)."""
    templates: str | None = None
    """Prompt templates file (one per line with ``{}``); default: the 80 CLIP templates."""
    model: str | None = None
    """Preset to build when the checkpoint holds no architecture (OpenCLIP weights)."""
    image_size: int | None = None
    """Evaluation image side (default: the checkpoint model's image size)."""
    crop: str = "center"
    """``center`` (shorter side + centre crop) or ``square`` resize."""
    batch_size: int = 256
    """Images per batch."""
    workers: int = 2
    """Decoding worker processes."""
    backend: str = "auto"
    """auto, cpu, cuda or xla."""
    out: str | None = None
    """Where ``eval.json`` goes (default: the run directory of the checkpoint)."""

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ClipaError(f"--crop must be one of {', '.join(CROPS)}")
        if self.batch_size < 1 or self.workers < 0:
            raise ClipaError("--batch-size must be positive and --workers ≥ 0")
        if self.image_size is not None and self.image_size < 1:
            raise ClipaError("--image-size must be positive")

    def result_path(self) -> Path:
        """``eval.json``: ``--out``, else next to ``checkpoints/`` (the run dir), else beside it."""
        if self.out:
            return Path(self.out)
        folder = Path(self.checkpoint).resolve().parent
        return (folder.parent if folder.name == "checkpoints" else folder) / "eval.json"


def _model(config: EvalConfig):
    from clipa_train.model import ModelConfig, build_model, load_openclip_weights, load_preset
    from clipa_train.train_stage import _checkpoint_architecture

    saved = _checkpoint_architecture(config.checkpoint)
    if config.model is not None:
        base = load_preset(config.model)
    elif saved is not None:
        base = ModelConfig.from_dict(saved, source=config.checkpoint)
    else:
        raise ClipaError(
            f"{config.checkpoint} holds no architecture (OpenCLIP/CLIPA weights); pass --model"
        )
    architecture = base.replace(image_size=config.image_size)
    patch = architecture.vision.patch_size
    if architecture.vision.image_size % patch:
        raise ClipaError(
            f"image size {architecture.vision.image_size} is not a multiple of the patch size "
            f"{patch}"
        )
    model = build_model(architecture)
    load_openclip_weights(model, config.checkpoint)
    return model


def evaluate_checkpoint(config: EvalConfig) -> dict:
    """Evaluate, write ``eval.json`` and return the result (``top1``, ``top5``, ``n``, ...)."""
    from clipa_train.backend import BackendConfig, create_backend
    from clipa_train.evaluate import (
        EvalSettings,
        evaluate_zeroshot,
        open_zeroshot_set,
        prompt_encoder,
    )

    zset = open_zeroshot_set(config.dataset, config.classnames, config.templates)
    model = _model(config)
    backend = create_backend(BackendConfig(name=config.backend))
    started = time.perf_counter()
    model.to(backend.device).eval()
    settings = EvalSettings(
        image_size=model.config.vision.image_size,
        text_length=model.config.text.context_length,
        crop=config.crop,
        batch_size=config.batch_size,
        workers=config.workers,
    )
    scores = evaluate_zeroshot(
        model, backend, zset, settings, prompt_encoder(settings.text_length, "truncate")
    )
    result = {
        **scores,
        "checkpoint": config.checkpoint,
        "dataset": zset.source,
        "task": zset.task.name,
        "templates": len(zset.task.templates),
        "image_size": settings.image_size,
        "text_length": settings.text_length,
        "crop": config.crop,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(config.result_path(), result)
    return result
