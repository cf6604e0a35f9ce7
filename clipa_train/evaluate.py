"""Zero-shot evaluation sets and the evaluation itself (in the training loop and standalone).

A set is either an ImageFolder tree (``DIR`` or ``DIR/val``: one folder per class, sorted
names = label order; folders named by numbers, as ImageNetV2's, sort by value) or a TFDS
builder directory with ``image`` + ``label`` features (e.g. ``imagenet2012``, split
``validation``). The ImageNet variants (V2, R, A, Sketch, ObjectNet) are opened by ``variants``.
Without ``--classnames`` a set must have ImageNet-1K's 1000 classes (the shipped OpenAI class
names and 80 templates are used); with it, the file gives one name per class in label order.
Everything is checked when the set is opened, before any training starts.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.core.example import parse_message
from clipa_data.core.text_reduction import RankedWords, priority_of_tag, rank_words, text_mask
from clipa_data.core.tfrecord import read_records
from clipa_data.core.tokenizer import CLIP_BPE, load_tokenizer
from clipa_train import zeroshot
from clipa_train.image import ImageConfig, ImageError, load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TFDS_SPLITS = ("validation", "val", "test")


@dataclass(frozen=True)
class ZeroShotSet:
    """An opened zero-shot evaluation set."""

    source: str
    """The folder or builder directory given."""
    kind: str
    """``imagefolder`` or ``tfds``."""
    units: tuple[tuple[str, int], ...]
    """Read units: (image file, label) for folders, (shard file, -1) for TFDS."""
    num_images: int
    """Images in the set."""
    task: zeroshot.ZeroShotTask
    """Class names and templates."""


class NotImageNetError(ClipaError):
    """A set without ``--classnames`` whose class count is not ImageNet-1K's."""

    def __init__(self, message: str, source: str, classes: int) -> None:
        super().__init__(message)
        self.source = source
        self.classes = classes


def _task(source: str, classes: int, classnames: str | None, templates: str | None):
    if classnames is None:
        task = zeroshot.imagenet_task()
        if templates:
            lines = zeroshot.read_lines(Path(templates), "template")
            task = zeroshot.ZeroShotTask(task.name, task.classnames, tuple(lines))
        if classes != zeroshot.IMAGENET_CLASSES:
            raise NotImageNetError(
                f"{source} has {classes} classes but ImageNet-1K has 1000; for another set pass "
                "--classnames FILE (one name per line, in sorted folder order)",
                source,
                classes,
            )
        return task
    task = zeroshot.task_from_files(
        Path(source).name, Path(classnames), templates and Path(templates)
    )
    if len(task.classnames) != classes:
        raise ClipaError(
            f"{classnames} has {len(task.classnames)} class names but {source} has {classes} "
            "classes; give one name per class, in sorted folder order"
        )
    return task


class NotImageNetFoldersError(ClipaError):
    """1000 class folders, scored as ImageNet-1K, that are not its classes."""

    def __init__(self, root: Path, detail: str) -> None:
        super().__init__(
            f"{root}: {detail}; name them by id (n01440764, ...), or pass --classnames FILE "
            "for another set"
        )
        self.root, self.detail = root, detail


def _check_imagenet_folders(root: Path, names: list[str]) -> None:
    """1000 folders scored as ImageNet-1K must be its classes: WordNet ids (sorted, as the
    class names are; ``n01440764_tench`` counts by its id) or the labels 0 … 999. Any other
    1000 folders were scored silently against ImageNet's names in sorted order."""
    from clipa_train.variants import variant_classes

    if all(name.isdigit() for name in names):
        return  # class_folders checked them to be 0 … N-1
    wnids = set(variant_classes()["imagenet_wnids"])
    unknown = sorted(name for name in names if name[:9] not in wnids)
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        detail = f"{len(unknown)} of its {len(names)} class folders are not ImageNet-1K WordNet ids"
        raise NotImageNetFoldersError(root, f"{detail} ({', '.join(unknown[:5])}{more})")
    if len({name[:9] for name in names}) != len(names):
        raise NotImageNetFoldersError(root, "two of its class folders have the same WordNet id")


def class_folders(root: Path) -> list[Path]:
    """The class folders of ``root`` in label order, checked to be there.

    Folders named by numbers (ImageNetV2's ``0`` … ``999``) are labels, not text: they sort by
    value (as text ``10`` would come before ``2`` and shuffle the labels) and must be exactly
    ``0`` … ``N-1``.
    """
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise ClipaError(
            f"{root} has no class folders; an eval folder holds one sub-folder of images per class"
        )
    if not all(folder.name.isdigit() for folder in folders):
        return sorted(folders)
    folders.sort(key=lambda folder: int(folder.name))
    numbers = {int(folder.name) for folder in folders}
    missing = sorted(set(range(max(numbers) + 1)) - numbers)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ClipaError(
            f"{root}: numbered class folders are the labels 0..{max(numbers)}, but "
            f"{len(missing)} of them are missing ({shown}); restore the full download"
        )
    return folders


def folder_units(
    root: Path, labels: dict[str, int], warn: bool = True
) -> tuple[tuple[str, int], ...]:
    """``(image file, label)`` for the images of each folder ``root/NAME`` in ``labels``. Empty
    class folders are said in one warning: each is still a class the images are scored against,
    but one left by a copy or extraction that stopped part-way would not show in the top-1
    (a deliberately small subset of a set's classes may leave some empty)."""
    images = {
        name: [p for p in sorted((root / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        for name in labels
    }
    if not any(images.values()):
        raise no_images_error(root, [root / name for name in labels])
    empty = [name for name, paths in images.items() if not paths]
    if empty and warn:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        print(
            f"warning: {root}: {len(empty)} of {len(labels)} class folders hold no images "
            f"({shown}); they are still scored as classes: restore them if a copy or "
            "extraction stopped part-way",
            file=sys.stderr,
        )
    return tuple((str(path), labels[name]) for name, paths in images.items() for path in paths)


def no_images_error(root: Path, folders: list[Path]) -> ClipaError:
    """Class folders without images; when they hold folders instead, ``root`` is one level
    above a set (``eval/`` of ``eval/val/CLASS/``): name the folder to give."""
    nested = [folder for folder in folders if any(p.is_dir() for p in folder.iterdir())]
    hint = (
        f"; its folders hold folders, so it may be a set's parent: give {nested[0]} instead"
        if nested
        else ""
    )
    return ClipaError(f"{root} has {len(folders)} class folders but no images in them{hint}")


def _open_folder(
    root: Path, classnames: str | None, templates: str | None, warn: bool
) -> ZeroShotSet:
    if (root / "val").is_dir():
        root = root / "val"
    folders = class_folders(root)
    if len(folders) < 2:
        raise ClipaError(
            f"{root} has one class folder ({folders[0].name}): zero-shot classification needs "
            "2 or more classes (it would score 100 %), one sub-folder of images each"
        )
    labels = {folder.name: label for label, folder in enumerate(folders)}
    units = folder_units(root, labels, warn)
    task = _task(str(root), len(folders), classnames, templates)
    if classnames is None:
        _check_imagenet_folders(root, [folder.name for folder in folders])
    return ZeroShotSet(str(root), "imagefolder", units, len(units), task)


def _label_classes(builder) -> int:
    features = json.loads(layout.read_text(layout.join(builder, layout.FEATURES)))
    found = features.get("featuresDict", {}).get("features", {}).get("label", {})
    classes = found.get("classLabel", {}).get("numClasses")
    if classes is None:
        raise ClipaError(f"{builder}: no class-label feature 'label'; not a classification set")
    return int(classes)


def _open_tfds(builder, classnames: str | None, templates: str | None) -> ZeroShotSet:
    names = layout.split_names(builder)
    split = next((name for name in TFDS_SPLITS if name in names), None)
    if split is None:
        raise ClipaError(f"{builder}: no validation split (found: {', '.join(names) or 'none'})")
    info = layout.read_split(builder, split)
    if info.num_records == 0:
        raise ClipaError(f"{builder}: split {split} has no images")
    task = _task(str(builder), _label_classes(builder), classnames, templates)
    units = tuple((shard.path, -1) for shard in info.shards if shard.num_records)
    return ZeroShotSet(str(builder), "tfds", units, info.num_records, task)


def open_zeroshot_set(
    path: str | Path,
    classnames: str | None = None,
    templates: str | None = None,
    warn: bool = True,
) -> ZeroShotSet:
    """Open and check an evaluation set (ImageFolder tree or TFDS builder directory); ``warn``
    False leaves out the warnings of an ImageFolder tree (a training stage says them once)."""
    if not layout.is_url(path) and not Path(path).exists():
        raise ClipaError(f"{path}: zero-shot set not found")
    if layout.is_url(path) or layout.find_builder_dirs(Path(path)):
        return _open_tfds(layout.resolve_builder_dir(path), classnames, templates)
    return _open_folder(Path(path), classnames, templates, warn)


class _Images(torch.utils.data.IterableDataset):
    """Decoded ``(uint8 [S, S, 3], label, place)`` triples; units are split across workers,
    so they arrive in an order that depends on the worker count: ``place`` (the unit's index,
    then the record's, in one int64) restores the set's own order."""

    def __init__(self, zset: ZeroShotSet, image: ImageConfig) -> None:
        self.zset, self.image = zset, image

    def __iter__(self) -> Iterator[tuple[np.ndarray, int, int]]:
        info = torch.utils.data.get_worker_info()
        index, count = (info.id, info.num_workers) if info else (0, 1)
        for unit in range(index, len(self.zset.units), count):
            source, label = self.zset.units[unit]
            if self.zset.kind == "imagefolder":
                yield self._load(Path(source).read_bytes(), source), label, unit << 32
                continue
            for number, raw in enumerate(read_records(source)):
                features = parse_message(raw).features.feature
                where = f"{source} record {number}"
                yield (
                    self._load(features["image"].bytes_list.value[0], where),
                    int(features["label"].int64_list.value[0]),
                    (unit << 32) + number,
                )

    def _load(self, data: bytes, where: str) -> np.ndarray:
        try:
            return load_image(data, self.image)
        except ImageError as error:
            raise ClipaError(f"{where}: image does not decode ({error})") from None


def image_batches(
    zset: ZeroShotSet, image: ImageConfig, batch_size: int, workers: int
) -> torch.utils.data.DataLoader:
    """Batches of ``(uint8 [B, S, S, 3], int64 [B] labels, int64 [B] places)`` over the whole
    set, in an order that depends on ``workers``; sorting by place gives the set's order."""
    return torch.utils.data.DataLoader(
        _Images(zset, image),
        batch_size=batch_size,
        num_workers=min(workers, len(zset.units)),
        collate_fn=_labelled_batch,
    )


def _labelled_batch(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, places)`` of ``(image, label, place)`` items: a module function, as
    workers started by spawn (under ``torch_xla.launch``) unpickle it (a lambda cannot be)."""
    return (
        torch.from_numpy(np.stack([image for image, _, _ in items])),
        torch.tensor([label for _, label, _ in items], dtype=torch.int64),
        torch.tensor([place for _, _, place in items], dtype=torch.int64),
    )


def prompt_encoder(
    length: int,
    mask: str,
    tagger_spec=None,
    tokenizer: str = CLIP_BPE,
    reference_exact: bool = False,
) -> Callable[[list[str]], torch.Tensor]:
    """Token ids for prompts at the stage's text length, cached per prompt.

    A mask that needs words (syntax) tags prompts with the tagger that made the training
    sidecars (as CLIPA's in-loop evaluation syntax-masks prompts), or, with a WordPiece
    ``tokenizer``, ranks their words from its vocabulary's table; one that draws at random
    (random, block) evaluates deterministically with truncation. ``reference_exact``: the
    mask's original procedure (``TextMaskStrategy.reducer``).
    """
    strategy = text_mask(mask)
    if strategy.draws:
        strategy = text_mask("truncate")
    reduce_ids = strategy.reducer(reference_exact)
    tokenizer = load_tokenizer(tokenizer)
    own_words = strategy.needs_words and tokenizer.own_words()
    cache: dict[str, np.ndarray] = {}
    tagger = None
    if strategy.needs_words and not own_words:
        if tagger_spec is None:
            raise ClipaError(f"{mask}-masked prompts need the tagger recorded in the sidecars")
        from clipa_data.core.taggers import load_tagger

        tagger = load_tagger(tagger_spec)

    def words_of(prompts: list[str]) -> list[RankedWords | None]:
        if own_words:
            return [tokenizer.ranked_words(prompt) for prompt in prompts]
        if tagger is None or not prompts:
            return [None] * len(prompts)
        ranked = []
        for words in tagger.tag(prompts):
            ids = [tokenizer.encode_word(word) for word, _ in words]
            ranked.append(
                rank_words(
                    np.asarray([i for word in ids for i in word], dtype=np.int64),
                    np.asarray([len(word) for word in ids], dtype=np.int64),
                    np.asarray([priority_of_tag(tag) for _, tag in words]),
                )
            )
        return ranked

    def encode(prompts: list[str]) -> torch.Tensor:
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in cache]
        for prompt, words in zip(missing, words_of(missing), strict=True):
            ids = np.asarray(tokenizer.encode(prompt), dtype=np.int64)
            cache[prompt] = reduce_ids(ids, length, None, words, tokenizer.format)
        return torch.from_numpy(np.stack([cache[prompt] for prompt in prompts]))

    return encode


@dataclass(frozen=True)
class EvalSettings:
    """How a model is evaluated zero-shot."""

    image_size: int
    """Evaluation image side (CLIPA evaluates at the stage's training size)."""
    text_length: int
    """Prompt token length (the model's context length during that stage)."""
    text_mask: str = "truncate"
    """The stage's text mask; prompts use it when it draws nothing at random, else truncation."""
    crop: str = "center"
    """``center`` (shorter side + centre crop) or ``square`` resize."""
    batch_size: int = 256
    """Images per batch."""
    workers: int = 2
    """Decoding worker processes."""
    reference_exact: bool = False
    """``--reference-exact``: images through the PIL bicubic path (``ImageConfig``) and the
    classifier built in fp32 without autocast, as the original (``build_classifier``)."""


def build_classifier(
    model: torch.nn.Module,
    backend,
    task: zeroshot.ZeroShotTask,
    encode_prompts: Callable[[list[str]], torch.Tensor],
    settings: EvalSettings,
) -> torch.Tensor:
    """The zero-shot classifier from the current weights: under the backend's autocast (bf16
    text forwards), or with ``settings.reference_exact`` in fp32 without autocast, as the
    original's ``zero_shot_classifier`` (the weights are fp32 masters in every precision)."""
    with contextlib.nullcontext() if settings.reference_exact else backend.autocast():
        return zeroshot.build_classifier(
            model, task, encode_prompts, backend.device, backend.step_boundary
        )


def evaluate_zeroshot(
    model: torch.nn.Module,
    backend,
    zset: ZeroShotSet,
    settings: EvalSettings,
    encode_prompts: Callable[[list[str]], torch.Tensor],
    advance: Callable[[int], None] = lambda images: None,
    text_cache=None,
) -> dict[str, float | int]:
    """Top-1/top-5 of ``model`` on ``zset`` (the classifier is rebuilt from the current weights,
    or, for fixed weights, taken from a ``text_cache.TextCache``).

    ``advance(n)`` is told of each batch of ``n`` images as it is scored (a progress bar).
    """

    def build(task: zeroshot.ZeroShotTask) -> torch.Tensor:
        return build_classifier(model, backend, task, encode_prompts, settings)

    classifier = build(zset.task) if text_cache is None else text_cache.classifier(zset.task, build)
    with backend.autocast():
        image = ImageConfig(
            size=settings.image_size, crop=settings.crop, reference_exact=settings.reference_exact
        )
        loader = image_batches(zset, image, settings.batch_size, settings.workers)

        def batches():
            for images, labels, _ in loader:
                yield backend.images_to_device(images), labels
                advance(len(labels))  # after the batch was scored

        result = zeroshot.score(model, classifier, batches(), backend.step_boundary)
    return {**result, "classes": len(zset.task.classnames), "chance": 1 / len(zset.task.classnames)}
