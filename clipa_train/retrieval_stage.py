"""``clipa-train eval --retrieval coco|flickr30k``: image-text Recall@1/5/10 of a checkpoint.

The model is rebuilt as for zero-shot eval (``eval_stage``); captions are tokenized to the
model's context length (truncated), images go through the centre-crop eval pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_train.eval_stage import EvalConfig
from clipa_train.retrieval_sets import RETRIEVAL_SETS


@dataclass(frozen=True)
class RetrievalOptions:
    """The retrieval options of ``clipa-train eval`` (beside ``EvalConfig``'s)."""

    retrieval: Annotated[
        str | None,
        Doc("Evaluate image-text retrieval on this Karpathy test split instead of zero-shot."),
        Choices(RETRIEVAL_SETS),
    ] = None
    annotations: Annotated[
        str | None, Doc("Karpathy-split JSON (dataset_coco.json / dataset_flickr30k.json).")
    ] = None
    images: Annotated[
        str | None, Doc("Folder of the set's images (IMAGES/filepath/filename or IMAGES/filename).")
    ] = None
    chunk_size: Annotated[
        int, Doc("Retrieval queries scored against all keys at once (bounds memory).")
    ] = 1024
    max_missing: Annotated[
        float, Doc("Share of the split's images that may be missing (skipped, said so).")
    ] = 0.01

    def __post_init__(self) -> None:
        given = [self.annotations is not None, self.images is not None]
        if self.retrieval is None and any(given):
            raise ClipaError("--annotations and --images go with --retrieval coco|flickr30k")
        if self.retrieval is not None and not all(given):
            raise ClipaError(
                f"--retrieval {self.retrieval} needs --annotations FILE (the Karpathy-split "
                "JSON) and --images DIR (the folder of its images)"
            )
        if self.retrieval is not None and self.retrieval not in RETRIEVAL_SETS:
            raise ClipaError(f"--retrieval must be one of {', '.join(RETRIEVAL_SETS)}")
        if self.chunk_size < 1 or not 0 <= self.max_missing <= 1:
            raise ClipaError("--chunk-size must be positive and --max-missing within [0, 1]")


def _refuse_zero_shot_options(config: EvalConfig) -> None:
    """Options of the zero-shot sets mean nothing to retrieval: one line rather than ignored."""
    zero_shot = {
        "--imagenet-val": config.dataset,
        "--classnames": config.classnames,
        "--templates": config.templates,
        "--suite": config.suite,
        "--data-root": config.data_root,
        "--text-cache": config.text_cache,
        "--no-text-cache": config.no_text_cache,
    }
    given = [flag for flag, value in zero_shot.items() if value]
    if given:
        raise ClipaError(
            f"{', '.join(given)}: zero-shot options, not for --retrieval (one kind per eval run)"
        )


def evaluate_retrieval_checkpoint(
    config: EvalConfig,
    options: RetrievalOptions,
    note: Callable[[str], None] = lambda line: None,
    progress: Callable[[int, int], Callable[[int], None]] | None = None,
) -> dict:
    """Evaluate, write ``eval.json`` and return the result (``image_to_text_R@1``, ...).

    ``note`` receives warnings (missing images skipped); ``progress(total, ...)`` is called
    once with the item count and returns the per-batch callback.
    """
    from clipa_train.backend import create_backend
    from clipa_train.eval_stage import _model, prompt_tokenizer
    from clipa_train.evaluate import prompt_encoder
    from clipa_train.retrieval import RetrievalSettings, evaluate_retrieval
    from clipa_train.retrieval_sets import open_retrieval_set, retrieval_warnings

    _refuse_zero_shot_options(config)
    config.output.check_writable()
    rset = open_retrieval_set(
        options.annotations, options.images, options.retrieval, options.max_missing
    )
    for line in retrieval_warnings(rset):
        note(line)
    model = _model(config)
    backend = create_backend(config.backend_config())
    started = time.perf_counter()
    model.to(backend.device).eval()
    settings = RetrievalSettings(
        image_size=model.config.vision.image_size,
        crop=config.crop,
        batch_size=config.batch_size,
        workers=config.workers,
        chunk_size=options.chunk_size,
        reference_exact=config.reference_exact,
    )
    text_length = model.config.text.context_length
    total = len(rset.images) + len(rset.captions)
    scores = evaluate_retrieval(
        model,
        backend,
        rset,
        settings,
        prompt_encoder(text_length, "truncate", tokenizer=prompt_tokenizer(config, model)),
        progress(total) if progress else lambda done: None,
    )
    result = {
        **scores,
        "checkpoint": config.checkpoint,
        "retrieval": rset.name,
        "annotations": rset.annotations,
        "image_size": settings.image_size,
        "text_length": text_length,
        "crop": config.crop,
        "reference_exact": config.reference_exact,
        "seconds": round(time.perf_counter() - started, 2),
    }
    config.output.write(result, note)
    return result
