"""``clipa-train eval --suite paper --data-root DIR``: each set of the paper's table under DIR.

A suite is a tuple of ``SuiteEntry`` rows in the table's column order; each row says where its
set lives under ``--data-root`` (conventional folder names, the first found wins), how to open
and check it, and how to evaluate it. Absent sets are skipped and reported; every found set is
opened (and checked) before the model is built, so a broken download fails in seconds. Another
kind of set (retrieval, say) is another row: an ``open`` and an ``evaluate`` function and the
result keys its table columns show.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick
from clipa_data.core.tokenizer import CLIP_BPE
from clipa_train.evaluate import (
    EvalSettings,
    NotImageNetError,
    NotImageNetFoldersError,
    ZeroShotSet,
    evaluate_zeroshot,
    open_zeroshot_set,
)
from clipa_train.retrieval_sets import open_retrieval_set, retrieval_spec, retrieval_warnings
from clipa_train.variants import open_variant


@dataclass(frozen=True)
class SuiteModel:
    """What every set's evaluation gets: the model on its device and how to feed it."""

    model: Any
    """The CLIP model, in eval mode, on ``backend.device``."""
    backend: Any
    """The backend (device, autocast, image normalisation)."""
    settings: EvalSettings
    """Image size, text length, crop, batch size and workers."""
    encode_prompts: Callable[[list[str]], Any]
    """Prompt strings → token ids at the model's text length."""
    tokenizer: str = CLIP_BPE
    """The prompts' tokenizer spec (``--tokenizer``, else the run's; eval.json records it)."""
    text_cache: Any = None
    """The run's ``text_cache.TextCache``: the sets' classifiers, built once (None: each set
    builds its own)."""


@dataclass(frozen=True)
class SetOptions:
    """What the command line sets for the suite's sets (each kind of set reads its own)."""

    templates: str | None = None
    """``--templates``: the zero-shot sets' prompt templates (None: each set's own)."""
    max_missing: float = 0.01
    """``--max-missing``: share of a retrieval split's images that may be missing (skipped)."""
    chunk_size: int = 1024
    """``--chunk-size``: retrieval queries scored against all keys at once."""


@dataclass(frozen=True)
class SuiteEntry:
    """One set of a suite: where it lives, how it is opened and evaluated, what the table shows."""

    name: str
    """Key in ``eval.json`` and in the ``--json`` lines."""
    folders: tuple[str, ...]
    """Conventional places under ``--data-root``, tried in order; the first that exists wins."""
    open: Callable[[Path, SetOptions], Any]
    """``(found path, options) -> opened set``; raises ClipaError on a bad set."""
    evaluate: Callable[[Any, SuiteModel, SetOptions, Callable[[int], None]], dict]
    """``(opened set, model, options, advance(items)) -> result``: the metrics plus ``n``."""
    columns: tuple[tuple[str, str], ...]
    """Table columns as ``(header, result key)``, e.g. ``(("IN-1K", "top1"),)``."""
    size: Callable[[Any], int]
    """The opened set's item count (the progress bar's total)."""
    warnings: Callable[[Any], list[str]] = lambda opened: []
    """What the user should know about an opened set (images skipped, say)."""


def _zeroshot_entry(name: str, header: str, folders: tuple[str, ...]) -> SuiteEntry:
    def open_set(path: Path, options: SetOptions) -> ZeroShotSet:
        if name == "imagenet1k":
            try:
                return open_zeroshot_set(path, templates=options.templates)
            except NotImageNetError as error:  # its fix, --classnames, is not a suite's option
                raise ClipaError(
                    f"{error.source} has {error.classes} classes, not ImageNet-1K's 1000: the "
                    f"suite reads {path} as ImageNet-1K; move that set out of --data-root (and "
                    "evaluate it alone with --imagenet-val DIR --classnames FILE)"
                ) from None
            except NotImageNetFoldersError as error:
                raise ClipaError(
                    f"{error.root}: {error.detail}; the suite reads {path} as ImageNet-1K: name "
                    "its folders by WordNet id (n01440764, ...)"
                ) from None
        return open_variant(name, path, options.templates)

    def evaluate(
        zset: ZeroShotSet, suite: SuiteModel, options: SetOptions, advance: Callable[[int], None]
    ) -> dict:
        scores = evaluate_zeroshot(
            suite.model,
            suite.backend,
            zset,
            suite.settings,
            suite.encode_prompts,
            advance,
            suite.text_cache,
        )
        return {**scores, "task": zset.task.name, "templates": len(zset.task.templates)}

    return SuiteEntry(
        name, folders, open_set, evaluate, ((header, "top1"),), lambda zset: zset.num_images
    )


def _retrieval_entry(name: str, header: str) -> SuiteEntry:
    """A Karpathy test split (``retrieval_sets``), found by its annotation file under the root."""
    spec = retrieval_spec(name)

    def open_set(annotations: Path, options: SetOptions) -> Any:
        # The annotation file sits `spec.annotations` below the root; the images beside it.
        root = annotations.parents[len(Path(spec.annotations).parts) - 1]
        images = root / spec.images
        fix = f"put them in {images} (or allow more with --max-missing)"
        return open_retrieval_set(annotations, images, name, options.max_missing, fix=fix)

    def evaluate(
        rset: Any, suite: SuiteModel, options: SetOptions, advance: Callable[[int], None]
    ) -> dict:
        from clipa_train.retrieval import RetrievalSettings, evaluate_retrieval

        base = suite.settings
        settings = RetrievalSettings(
            image_size=base.image_size,
            crop=base.crop,
            batch_size=base.batch_size,
            workers=base.workers,
            chunk_size=options.chunk_size,
            reference_exact=base.reference_exact,
        )
        scores = evaluate_retrieval(
            suite.model, suite.backend, rset, settings, suite.encode_prompts, advance
        )
        return {**scores, "n": scores["images"]}

    columns = ((f"{header} I→T", "image_to_text_R@1"), (f"{header} T→I", "text_to_image_R@1"))
    return SuiteEntry(
        name,
        (spec.annotations,),
        open_set,
        evaluate,
        columns,
        lambda rset: len(rset.images) + len(rset.captions),
        retrieval_warnings,
    )


PAPER = (
    _zeroshot_entry("imagenet1k", "IN-1K", ("imagenet", "imagenet-1k", "imagenet2012")),
    _zeroshot_entry(
        "imagenetv2",
        "IN-V2",
        (
            "imagenetv2-matched-frequency-format-val",
            "imagenetv2-matched-frequency/imagenetv2-matched-frequency-format-val",
            "imagenetv2-matched-frequency",
            "imagenetv2",
        ),
    ),
    _zeroshot_entry("imagenet-a", "IN-A", ("imagenet-a",)),
    _zeroshot_entry("imagenet-r", "IN-R", ("imagenet-r",)),
    _zeroshot_entry("objectnet", "ObjectNet", ("objectnet", "objectnet-1.0")),
    _zeroshot_entry(
        "imagenet-sketch", "IN-Sketch", ("imagenet-sketch/sketch", "imagenet-sketch", "sketch")
    ),
    _retrieval_entry("coco", "COCO"),
    _retrieval_entry("flickr30k", "Flickr"),
)
"""The paper's columns, in its order: zero-shot top-1 as CLIP's robustness table (IN, V2, A, R,
ObjectNet, Sketch), then image→text and text→image Recall@1 on the COCO 5k and Flickr30k 1k
Karpathy test splits."""

SUITES: dict[str, tuple[SuiteEntry, ...]] = {"paper": PAPER}
"""Every suite ``--suite`` names."""


def find_sets(
    entries: tuple[SuiteEntry, ...], root: Path, options: SetOptions
) -> tuple[list[tuple[SuiteEntry, Path, Any]], dict[str, str]]:
    """The entries found under ``root``, opened and checked, and why the others were skipped."""
    if not root.is_dir():
        raise ClipaError(f"--data-root {root}: folder not found")
    found, skipped = [], {}
    for entry in entries:
        path = next((root / folder for folder in entry.folders if (root / folder).exists()), None)
        if path is None:
            skipped[entry.name] = f"not found under {root} (looked for {', '.join(entry.folders)})"
            continue
        found.append((entry, path, entry.open(path, options)))
    if not found:
        names = "; ".join(f"{entry.name}: {' or '.join(entry.folders)}" for entry in entries)
        raise ClipaError(f"--data-root {root} holds none of the suite's sets (expected {names})")
    return found, skipped


def run_suite(
    name: str,
    root: Path,
    load: Callable[[], SuiteModel],
    options: SetOptions = SetOptions(),
    progress: bool = True,
    note_skipped: Callable[[str, str], None] = lambda name, why: None,
    note: Callable[[str], None] = lambda line: None,
    on_set: Callable[[dict], None] = lambda so_far: None,
) -> dict:
    """Evaluate every set of suite ``name`` found under ``root``.

    Returns the settings used, ``sets`` (name -> result) and ``skipped`` (name -> why).

    ``load`` builds the model once, after every found set has been opened and checked;
    ``note_skipped(name, why)`` hears of each absent set before that, ``note`` of each found
    set's warnings (images skipped), ``on_set`` of the result so far after each set (a later
    set's failure, an image that does not decode, must not lose an hour of finished sets).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    entries = pick(SUITES, name, "suite")
    found, skipped = find_sets(entries, root, options)
    for skipped_name, why in skipped.items():
        note_skipped(skipped_name, why)
    for entry, _, opened in found:
        for line in entry.warnings(opened):
            note(line)
    suite = load()
    results = {}
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
    bars = Progress(
        *columns, TimeRemainingColumn(), console=Console(stderr=True), disable=not progress
    )
    with bars:
        for entry, path, opened in found:
            bar = bars.add_task(entry.name, total=entry.size(opened))
            started = time.perf_counter()
            advance = lambda n, bar=bar: bars.advance(bar, n)  # noqa: E731
            result = entry.evaluate(opened, suite, options, advance)
            seconds = round(time.perf_counter() - started, 2)
            results[entry.name] = {**result, "dataset": str(path), "seconds": seconds}
            on_set(_summary(root, suite, results, skipped))
    return _summary(root, suite, results, skipped)


def _summary(root: Path, suite: SuiteModel, results: dict, skipped: dict) -> dict:
    settings = suite.settings
    return {
        "data_root": str(root),
        "image_size": settings.image_size,
        "text_length": settings.text_length,
        "crop": settings.crop,
        "sets": dict(results),
        "skipped": skipped,
    }


def table_columns(name: str) -> list[tuple[str, str, str]]:
    """``(set, header, result key)`` of every column of suite ``name``, in the paper's order."""
    return [
        (entry.name, header, key)
        for entry in pick(SUITES, name, "suite")
        for header, key in entry.columns
    ]
