"""``clipa-train eval``: zero-shot top-1/top-5 of a checkpoint, standalone.

The model is rebuilt from the architecture stored in a clipa checkpoint (or from ``--model``
for OpenCLIP/CLIPA weights) at the evaluation image size, positional embeddings resized on
load. Prompts are truncated to the model's context length (a run's in-loop evaluations reduce
them with its text mask, as CLIPA's do: the eval says so when that differs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from clipa_data.core import layout
from clipa_data.core.atomic import write_json
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.tokenizer import CLIP_BPE
from clipa_train.backend_config import BACKENDS, IMAGE_NORMS
from clipa_train.checkpoint_output import CheckpointOutput
from clipa_train.run_config import DEFAULT_MODEL

CROPS = ("center", "square")


ImageNormOption = Annotated[
    str | None,
    Doc("Input mean/std: openai or imagenet (default: the training run's, from its "
        "config.json or the checkpoint itself; else openai)."),
    Choices(tuple(IMAGE_NORMS)),
]  # fmt: skip
"""``--image-norm`` of eval and probe: the features are the trained model's only with the
input normalisation it trained with."""


CheckpointOption = Annotated[
    str,
    Doc("A clipa checkpoint, or released OpenCLIP/CLIPA weights (the preset is found from "
        "their parameter names and shapes; --model picks one)."),
]  # fmt: skip
"""The checkpoint eval and probe score."""
PresetOption = Annotated[
    str | None,
    Doc("Build this preset (a name or a preset .json) instead of the architecture the weights "
        "hold or match, at the weights' own image size and context length."),
]  # fmt: skip
"""``--model`` of eval and probe: for weights that match several presets, or none."""
EvalCropOption = Annotated[
    str, Doc("center: shorter side + centre crop; square: resize."), Choices(CROPS)
]
"""``--crop`` of eval and probe (training's random crop is not one)."""


def scoring_backend(name: str, image_norm: str):
    """The backend config of device ``name`` normalising inputs as ``image_norm`` says (the
    features are the trained model's only with the normalisation it trained with)."""
    from clipa_train.backend_config import BackendConfig

    mean, std = IMAGE_NORMS[image_norm]
    return BackendConfig(name=name, image_mean=mean, image_std=std)


def check_image_norm(value: str | None) -> None:
    """One line for an ``--image-norm`` that is not a known normalisation."""
    if value is not None and value not in IMAGE_NORMS:
        raise ClipaError(f"--image-norm must be one of {', '.join(IMAGE_NORMS)}")


@dataclass(frozen=True)
class EvalConfig:
    """Options of a standalone zero-shot evaluation."""

    checkpoint: CheckpointOption
    dataset: Annotated[
        str | None,
        Doc("ImageFolder val/ tree (sorted class folders) or TFDS imagenet2012 builder dir; "
            "with --classnames any folder of class folders."),
    ] = None  # fmt: skip
    classnames: Annotated[
        str | None,
        Doc("Class names file for a non-ImageNet set (one per line, sorted folder order)."),
    ] = None
    templates: Annotated[
        str | None,
        Doc("Prompt templates file (one per line with {}); default: the 80 CLIP templates."),
    ] = None
    model: PresetOption = None
    image_size: Annotated[
        int | None, Doc("Evaluation image side (default: the checkpoint model's image size).")
    ] = None
    crop: EvalCropOption = "center"
    batch_size: Annotated[int, Doc("Images per batch.")] = 256
    workers: Annotated[int, Doc("Image decoding worker processes.")] = 2
    backend: Annotated[str, Doc("Device to evaluate on."), Choices(BACKENDS)] = "auto"
    out: Annotated[
        str | None,
        Doc(
            "The result file (a folder when it ends with /: FOLDER/eval.json; default: "
            "eval.json in the run directory of the checkpoint)."
        ),
    ] = None
    tokenizer: Annotated[
        str | None,
        Doc("Prompt tokenizer: clip-bpe, or the local WordPiece tokenizer.json / vocab.txt (or "
            "its folder) the model was trained with (default: a clipa checkpoint's own, else "
            "clip-bpe; CLIPA-v2 weights need bert-base-uncased's)."),
    ] = None  # fmt: skip
    image_norm: ImageNormOption = None
    suite: Annotated[
        str | None,
        Doc("Instead of one set, every set of a suite found under --data-root: paper "
            "(ImageNet-1K, -V2, -A, -R, ObjectNet, -Sketch zero-shot; COCO and Flickr30k "
            "retrieval)."),
    ] = None  # fmt: skip
    data_root: Annotated[
        str | None, Doc("Folder holding the suite's sets under their conventional names.")
    ] = None
    reference_exact: Annotated[
        bool,
        Doc("As the original: images decoded at full size by Pillow and resized bicubic, the "
            "classifier built in fp32 without autocast (off: the fast paths)."),
    ] = False  # fmt: skip
    text_cache: Annotated[
        str | None,
        Doc("Folder of cached zero-shot classifiers, reused by the next eval of the same "
            "checkpoint (default: zeroshot_cache/ in the checkpoint's run directory)."),
    ] = None  # fmt: skip
    no_text_cache: Annotated[
        bool,
        Doc("Neither read nor write cached zero-shot classifiers (a suite's sets still share "
            "one)."),
    ] = False  # fmt: skip

    def __post_init__(self) -> None:
        check_image_norm(self.image_norm)
        layout.check_local(self.out, "--out")  # None: not given, nothing to check
        layout.check_local(self.text_cache, "--text-cache")
        if self.crop not in CROPS:
            raise ClipaError(f"--crop must be one of {', '.join(CROPS)}")
        if self.batch_size < 1 or self.workers < 0:
            raise ClipaError("--batch-size must be positive and --workers ≥ 0")
        if self.image_size is not None and self.image_size < 1:
            raise ClipaError("--image-size must be positive")
        if self.tokenizer not in (None, CLIP_BPE):
            from clipa_data.core.tokenizer import load_tokenizer

            load_tokenizer(self.tokenizer)  # a missing or bad vocabulary: one line, now
        if self.dataset is not None and self.suite is not None:
            raise ClipaError("give one set (--imagenet-val DIR) or a suite (--suite), not both")
        if self.suite is not None and (self.data_root is None or self.classnames is not None):
            raise ClipaError("--suite needs --data-root DIR (and takes no --classnames)")
        if self.suite is None and self.data_root is not None:
            raise ClipaError(
                "--data-root goes with a suite: give one set with --imagenet-val DIR or a suite "
                "with --suite paper --data-root DIR"
            )
        if self.no_text_cache and self.text_cache is not None:
            raise ClipaError("--text-cache DIR or --no-text-cache, not both")

    def backend_config(self):
        """The device and the input normalisation the model was trained with."""
        return scoring_backend(self.backend, self.used_image_norm())

    def _trained_norm(self) -> str:
        return trained_image_norm(self.checkpoint)

    def used_image_norm(self) -> str:
        """The input normalisation the evaluation runs with (``--image-norm`` or the run's)."""
        return self.image_norm or self._trained_norm()

    @property
    def output(self) -> CheckpointOutput:
        """``eval.json``: ``--out``, else in the checkpoint's run folder."""
        return CheckpointOutput(self.checkpoint, self.out, "eval.json")

    def result_path(self) -> Path:
        """Where ``eval.json`` goes."""
        return self.output.result_path()

    def text_cache_folder(self) -> Path | None:
        """``--text-cache``, else ``zeroshot_cache/`` in ``run_folder()``; None: no disk cache."""
        from clipa_train.text_cache import CACHE_FOLDER

        if self.no_text_cache:
            return None
        if self.text_cache:
            return Path(self.text_cache)
        return self.output.run_folder() / CACHE_FOLDER


def trained_image_norm(checkpoint: str | Path) -> str:
    """``--image-norm`` of the run that wrote the checkpoint (a CLIPA-v2 recipe trains with
    ImageNet's), read from its ``config.json``, else from the ``preprocess_cfg`` of an
    exported folder's ``open_clip_config.json`` beside it, else from the checkpoint's own copy
    of its options (a checkpoint copied out of its run); ``openai`` for other weights."""
    folder = Path(checkpoint).resolve().parent
    run_config = (folder.parent if folder.name == "checkpoints" else folder) / "config.json"
    try:
        return json.loads(run_config.read_text())["options"]["image_norm"] or "openai"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return (
        _exported_image_norm(folder / "open_clip_config.json")
        or _recorded_option(str(checkpoint), "image_norm")
        or "openai"
    )


def _exported_image_norm(path: Path) -> str | None:
    """The ``--image-norm`` whose mean and std an export's ``preprocess_cfg`` holds."""
    from clipa_train.backend_config import IMAGE_NORMS

    try:
        preprocess = json.loads(path.read_text())["preprocess_cfg"]
        given = [float(value) for value in (*preprocess["mean"], *preprocess["std"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, (mean, std) in IMAGE_NORMS.items():
        wanted = (*mean, *std)
        if len(given) == len(wanted) and all(
            abs(a - b) < 1e-6 for a, b in zip(given, wanted, strict=True)
        ):
            return name
    return None


def architecture_at_own_sizes(preset: str | None, checkpoint: str, state=None):
    """The checkpoint's architecture at its own image size and context length, also when
    ``preset`` (``--model``) names the architecture: a preset's sizes would resize the
    positional embeddings of a short-token pre-training without a word. ``state``: a function
    giving the checkpoint's weights (read once by the caller)."""
    from clipa_train.checkpoint import base_architecture
    from clipa_train.model.weights import at_sizes_of, read_weights

    # base_architecture reads the file first: a damaged one is named as a checkpoint there.
    base = base_architecture(preset, checkpoint, default=DEFAULT_MODEL)
    if preset is None:
        return base
    return at_sizes_of((state or (lambda: read_weights(checkpoint)))(), base)


def checkpoint_model(preset: str | None, checkpoint: str, image_size: int | None):
    """The checkpoint's model (``architecture_at_own_sizes``), ``image_size`` if given."""
    import functools

    from clipa_train.model import build_model, load_openclip_weights
    from clipa_train.model.weights import read_weights

    state = functools.cache(lambda: read_weights(checkpoint))
    architecture = architecture_at_own_sizes(preset, checkpoint, state)
    model = build_model(architecture.replace(image_size=image_size))
    load_openclip_weights(model, state(), name=str(checkpoint))
    return model


def _model(config: EvalConfig):
    return checkpoint_model(config.model, config.checkpoint, config.image_size)


def prompt_tokenizer(config: EvalConfig, model) -> str:
    """``--tokenizer``, else the one a clipa checkpoint was trained with, else CLIP BPE; its
    ids must fit the model's text vocabulary (a CLIPA-v2 model has WordPiece's 32,000: CLIP
    BPE's ids would index past it), or one line says which file to pass."""
    from clipa_data.core.tokenizer import load_tokenizer

    spec = config.tokenizer or _recorded_option(config.checkpoint, "tokenizer") or CLIP_BPE
    tokenizer = load_tokenizer(spec)
    vocabulary = model.config.text.vocab_size
    if tokenizer.vocab_size > vocabulary:
        raise ClipaError(
            f"--tokenizer {spec} has {tokenizer.vocab_size} ids but the model's text vocabulary "
            f"has {vocabulary}: the model was trained with another tokenizer; pass --tokenizer "
            "with its local tokenizer.json / vocab.txt (CLIPA-v2: bert-base-uncased's)"
        )
    trained = _recorded_option(config.checkpoint, "tokenizer_sha256", section="derived")
    if trained is not None and trained != tokenizer.sha256():
        # Another vocabulary of the same size reads every prompt as other words: below chance
        raise ClipaError(
            f"--tokenizer {spec} is not the vocabulary {config.checkpoint} was trained with "
            f"(sha256 {tokenizer.sha256()[:12]}…, the run's {trained[:12]}…); pass the run's "
            f"file ({_recorded_option(config.checkpoint, 'tokenizer')})"
        )
    return spec


def _recorded_option(path: str, name: str, section: str = "options") -> str | None:
    """Option ``name`` (``tokenizer``, ``image_norm``; or of ``section``, e.g. ``derived``) as
    a clipa checkpoint's run recorded it; None for other weights (memory-mapped: the tensors
    are not read)."""
    import torch

    from clipa_train.checkpoint import FORMAT

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format file: it has no run config to read either
        return None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return payload.get("config", {}).get(section, {}).get(name)
    return None


def _loaded(config: EvalConfig, note: Callable[[str], None] = lambda line: None):
    """The checkpoint's model on its backend in eval mode, the evaluation settings, the
    prompt encoder (the model's context length, truncated) and the zero-shot classifiers'
    ``TextCache`` (``note`` hears where each came from) — what every eval set uses."""
    from clipa_data.core.tokenizer import load_tokenizer
    from clipa_train.backend import create_backend
    from clipa_train.eval_suite import SuiteModel
    from clipa_train.evaluate import EvalSettings, prompt_encoder

    model = _model(config)
    backend = create_backend(config.backend_config())
    model.to(backend.device).eval()
    settings = EvalSettings(
        image_size=model.config.vision.image_size,
        text_length=model.config.text.context_length,
        crop=config.crop,
        batch_size=config.batch_size,
        workers=config.workers,
        reference_exact=config.reference_exact,
    )
    spec = prompt_tokenizer(config, model)
    trained_mask = _recorded_option(config.checkpoint, "text_mask")
    if trained_mask not in (None, "truncate"):
        # The run's own evaluations reduced prompts with its text mask (as CLIPA's do), this
        # one truncates: a syntax-masked pre-training scores differently here than in its log.
        note(
            f"prompts are truncated to {settings.text_length} tokens; the run trained with "
            f"--text-mask {trained_mask} and its in-loop evaluations reduced them so, so its "
            "logged zero-shot numbers can differ from these"
        )
    encode = prompt_encoder(settings.text_length, "truncate", tokenizer=spec)
    return SuiteModel(
        model,
        backend,
        settings,
        encode,
        tokenizer=spec,
        text_cache=_text_cache(config, model, backend, load_tokenizer(spec), note),
    )


def _text_cache(config: EvalConfig, model, backend, tokenizer, note: Callable[[str], None]):
    """One classifier per class list for all the run's sets, on disk per checkpoint."""
    from clipa_train.text_cache import TextCache, model_key

    key = model_key(config.checkpoint, model, backend, config.reference_exact)
    return TextCache(config.text_cache_folder(), key, tokenizer, backend.device, note)


def evaluate_checkpoint(
    config: EvalConfig, note: Callable[[str], None] = lambda line: None
) -> dict:
    """Evaluate, write ``eval.json`` and return the result (``top1``, ``top5``, ``n``, ...);
    ``note`` hears where the zero-shot classifier came from."""
    from clipa_train.evaluate import evaluate_zeroshot, open_zeroshot_set

    config.output.check_writable()
    zset = open_zeroshot_set(config.dataset, config.classnames, config.templates)
    started = time.perf_counter()
    loaded = _loaded(config, note)
    settings = loaded.settings
    scores = evaluate_zeroshot(
        loaded.model,
        loaded.backend,
        zset,
        settings,
        loaded.encode_prompts,
        text_cache=loaded.text_cache,
    )
    result = {
        **scores,
        "checkpoint": config.checkpoint,
        "dataset": zset.source,
        "task": zset.task.name,
        "templates": len(zset.task.templates),
        "image_size": settings.image_size,
        "text_length": settings.text_length,
        "prompt_mask": "truncate",
        "crop": config.crop,
        "reference_exact": config.reference_exact,
        # What the numbers depend on besides the weights (another vocabulary or mean/std
        # scores otherwise, silently)
        "tokenizer": loaded.tokenizer,
        "image_norm": config.used_image_norm(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    config.output.write(result, note)
    return result


def evaluate_suite(
    config: EvalConfig,
    progress: bool = True,
    note_skipped=lambda name, why: None,
    note: Callable[[str], None] = lambda line: None,
    max_missing: float = 0.01,
    chunk_size: int = 1024,
) -> dict:
    """Every set of ``config.suite`` found under ``config.data_root``; writes ``eval.json``.

    ``note_skipped(name, why)`` hears of each absent set before the model is built; ``note``
    of each found set's warnings (retrieval images skipped) and where each zero-shot
    classifier came from (the sets share one ``TextCache``). ``max_missing`` and
    ``chunk_size`` go to the retrieval sets (``--max-missing``, ``--chunk-size``).

    Returns ``{"sets": {name: result}, "skipped": {name: why}, ...}`` with the settings used.
    """
    from clipa_train.eval_suite import SetOptions, run_suite

    config.output.check_writable()
    root, path = Path(config.data_root), config.result_path()
    options = SetOptions(config.templates, max_missing, chunk_size)
    head = {
        "checkpoint": config.checkpoint,
        "suite": config.suite,
        "reference_exact": config.reference_exact,
        "image_norm": config.used_image_norm(),
    }
    kept: list[str] = []

    def save(result: dict) -> None:  # the first write says what it replaced, later ones update
        if kept:
            write_json(path, result)
        else:
            config.output.write(result, note)

    def keep(so_far: dict) -> None:  # each finished set is in eval.json at once
        save({**head, **so_far, "complete": False})
        kept[:] = list(so_far["sets"])

    try:
        found = run_suite(
            config.suite, root, lambda: _loaded(config, note), options, progress,
            note_skipped, note, keep,
        )  # fmt: skip
    except ClipaError as error:
        if not kept:
            raise
        raise ClipaError(
            f"{error} (the sets evaluated before it, {', '.join(kept)}, are in {path})"
        ) from None
    result = {**head, **found, "complete": True}
    save(result)
    return result
