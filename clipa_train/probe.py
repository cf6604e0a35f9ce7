"""``clipa-train probe``: linear-probe top-1 of a checkpoint's frozen image features.

What CLIP_benchmark and the scaling-laws study report beside zero-shot: the image tower is
frozen, its normalised features are extracted once per set (and cached on disk, keyed by the
checkpoint file, the set's images and the image settings, so a second probe of the same
checkpoint reuses them and says so), and a multinomial logistic-regression head is fitted on
the training features in torch: full-batch L-BFGS on standardised features, the L2 strength
chosen from ``L2_GRID`` by top-1 on a held-out part of the training set, then refitted on all of
it and scored on the validation set. No scikit-learn.

Sets are ImageFolder trees (``DIR`` or ``DIR/train`` / ``DIR/val``: one folder per class,
sorted names = label order; train and val must have the same class folders) or TFDS builder
directories with ``image`` + ``label`` (split ``train`` for training; ``validation``, ``val``
or ``test`` for evaluation), read with ``clipa_train.evaluate``'s image pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from clipa_data.core import layout
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_train.backend_config import BACKENDS
from clipa_train.checkpoint_output import CheckpointOutput
from clipa_train.eval_stage import (
    CROPS,
    CheckpointOption,
    EvalCropOption,
    ImageNormOption,
    PresetOption,
    check_image_norm,
)

if TYPE_CHECKING:  # torch stays out of option parsing
    import torch

    from clipa_train.evaluate import ZeroShotSet

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""L2 strengths tried (per sample: the loss is the mean cross-entropy + l2/2·|W|²)."""
CACHE_VERSION = 2
"""Bumped when the cached features change meaning (part of every cache key); 2: rows in the
set's order (1: in the order the loader workers delivered them)."""
TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("validation", "val", "test")


@dataclass(frozen=True)
class ProbeConfig:
    """Options of ``clipa-train probe``."""

    checkpoint: CheckpointOption
    train: Annotated[
        str, Doc("Training set: ImageFolder tree (DIR or DIR/train) or TFDS builder (train split).")
    ]
    val: Annotated[
        str, Doc("Evaluation set: ImageFolder tree (DIR or DIR/val) or TFDS builder (validation).")
    ]
    model: PresetOption = None
    image_size: Annotated[
        int | None, Doc("Image side for the features (default: the checkpoint model's).")
    ] = None
    crop: EvalCropOption = "center"
    image_norm: ImageNormOption = None
    batch_size: Annotated[int, Doc("Images per feature-extraction batch.")] = 256
    workers: Annotated[int, Doc("Image decoding worker processes.")] = 2
    backend: Annotated[str, Doc("Device for extraction and fitting."), Choices(BACKENDS)] = "auto"
    holdout: Annotated[
        float, Doc("Share of the training set held out to choose the L2 strength.")
    ] = 0.2
    max_iter: Annotated[
        int, Doc("L-BFGS iterations per fit, at most (OpenAI CLIP's scikit-learn example: 1000).")
    ] = 1000
    seed: Annotated[int, Doc("Seed of the held-out split.")] = 0
    cache_dir: Annotated[
        str | None, Doc("Feature cache folder (default: probe_cache/ in the checkpoint's run dir).")
    ] = None
    out: Annotated[
        str | None,
        Doc(
            "The result file (a folder when it ends with /: FOLDER/probe.json; default: "
            "probe.json in the run directory of the checkpoint)."
        ),
    ] = None

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ClipaError(f"--crop must be one of {', '.join(CROPS)}")
        check_image_norm(self.image_norm)
        layout.check_local(self.out, "--out")  # None: not given, nothing to check
        layout.check_local(self.cache_dir, "--cache-dir")
        if self.batch_size < 1 or self.workers < 0 or self.max_iter < 1:
            raise ClipaError("--batch-size and --max-iter must be positive and --workers ≥ 0")
        if self.image_size is not None and self.image_size < 1:
            raise ClipaError("--image-size must be positive")
        if not 0 < self.holdout < 1:
            raise ClipaError(f"--holdout must be between 0 and 1 (exclusive), not {self.holdout}")

    @property
    def output(self) -> CheckpointOutput:
        """``probe.json``: ``--out``, else in the checkpoint's run folder."""
        return CheckpointOutput(self.checkpoint, self.out, "probe.json")

    def result_path(self) -> Path:
        """Where ``probe.json`` goes."""
        return self.output.result_path()

    def cache_path(self) -> Path:
        """The feature cache folder."""
        return Path(self.cache_dir) if self.cache_dir else self.output.run_folder() / "probe_cache"


# --- sets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSet:
    """An opened probe set: the zero-shot set type (for ``evaluate.image_batches``) + its split."""

    images: ZeroShotSet
    """What ``evaluate.image_batches`` reads (its task holds the class names, no prompts)."""
    split: str
    """``folder`` for an ImageFolder, else the TFDS split read."""
    classes: tuple[str, ...]
    """Class names in label order (folder names, or ``0``…``N-1`` for TFDS)."""


def _open_folder(root: Path, role: str) -> ProbeSet:
    from clipa_train.evaluate import IMAGE_SUFFIXES, ZeroShotSet, no_images_error
    from clipa_train.zeroshot import ZeroShotTask

    if (root / role).is_dir():
        root = root / role
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ClipaError(f"{root} has no class folders; a probe set holds one folder per class")
    units = tuple(
        (str(path), label)
        for label, folder in enumerate(folders)
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    )
    if not units:
        raise no_images_error(root, folders)
    names = tuple(folder.name for folder in folders)
    task = ZeroShotTask(root.name, names, ("{}",))
    return ProbeSet(ZeroShotSet(str(root), "imagefolder", units, len(units), task), "folder", names)


def _open_tfds(builder, role: str) -> ProbeSet:
    from clipa_train.evaluate import ZeroShotSet
    from clipa_train.zeroshot import ZeroShotTask

    wanted = TRAIN_SPLITS if role == "train" else VAL_SPLITS
    names = layout.split_names(builder)
    split = next((name for name in wanted if name in names), None)
    if split is None:
        raise ClipaError(
            f"{builder}: no {' / '.join(wanted)} split for --{role} (found: "
            f"{', '.join(names) or 'none'})"
        )
    info = layout.read_split(builder, split)
    if info.num_records == 0:
        raise ClipaError(f"{builder}: split {split} has no images")
    features = json.loads(layout.read_text(layout.join(builder, layout.FEATURES)))
    label = features.get("featuresDict", {}).get("features", {}).get("label", {})
    count = label.get("classLabel", {}).get("numClasses")
    if count is None:
        raise ClipaError(f"{builder}: no class-label feature 'label'; not a classification set")
    classes = tuple(str(i) for i in range(int(count)))
    units = tuple((shard.path, -1) for shard in info.shards if shard.num_records)
    task = ZeroShotTask(f"{Path(str(builder)).parent.name}-{split}", classes, ("{}",))
    return ProbeSet(
        ZeroShotSet(str(builder), "tfds", units, info.num_records, task), split, classes
    )


def open_probe_set(path: str | Path, role: str) -> ProbeSet:
    """Open ``--train`` (``role='train'``) or ``--val`` (``role='val'``)."""
    if not layout.is_url(path) and not Path(path).exists():
        raise ClipaError(f"--{role} {path}: no such folder")
    if layout.is_url(path) or layout.find_builder_dirs(Path(path)):
        return _open_tfds(layout.resolve_builder_dir(path), role)
    return _open_folder(Path(path), role)


def check_same_classes(train: ProbeSet, val: ProbeSet) -> None:
    """Train and val must label the same classes the same way."""
    if train.classes == val.classes:
        return
    only_train = sorted(set(train.classes) - set(val.classes))
    only_val = sorted(set(val.classes) - set(train.classes))
    detail = "; ".join(
        part
        for part in (
            only_train and f"only in --train: {', '.join(only_train[:5])}",
            only_val and f"only in --val: {', '.join(only_val[:5])}",
        )
        if part
    )
    raise ClipaError(
        f"--train has {len(train.classes)} classes and --val {len(val.classes)}, not the same "
        f"({detail or 'another order'}); give both sets the same class folders"
    )


# --- features and their cache ---------------------------------------------------------------


def cache_key(
    checkpoint: Path, probe_set: ProbeSet, image_size: int, crop: str, model: dict
) -> str:
    """16 hex digits naming what the features depend on: the checkpoint file (path, size,
    modification time: re-reading gigabytes to hash them would cost more than the cache saves),
    the set's images (source, split, every file or shard with its size and modification time:
    an image replaced under the same name is new data), the image side and crop, and
    ``model`` (the architecture built, e.g. another ``--model`` over the same weights, the input
    normalisation and the precision)."""
    stat = checkpoint.stat()
    zset = probe_set.images
    described = {
        "version": CACHE_VERSION,
        "checkpoint": [str(checkpoint.resolve()), stat.st_size, stat.st_mtime_ns],
        "set": [str(Path(str(zset.source)).resolve()), probe_set.split, zset.num_images],
        "units": _files_digest([unit for unit, _ in zset.units]),
        "image": [image_size, crop],
        "model": model,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def _files_digest(paths: list[str]) -> str:
    """sha256 of every path with its size and modification time (one stat each: cheap beside
    decoding the images; a file that vanished counts as changed)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\tmissing\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedFeatures:
    """Features of one set and where they came from."""

    features: torch.Tensor
    """float32 ``[N, D]`` normalised image features (CPU)."""
    labels: torch.Tensor
    """int64 ``[N]``."""
    path: Path
    """The cache file."""
    reused: bool
    """True when read from the cache (the model did not run)."""


def cached_features(path: Path, compute: Callable[[], tuple]) -> CachedFeatures:
    """The features in ``path`` if it exists, else ``compute()``'s, written there atomically."""
    import torch

    from clipa_data.core.atomic import atomic_writer

    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return CachedFeatures(payload["features"], payload["labels"], path, True)
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    features, labels = compute()
    with atomic_writer(path) as handle:
        torch.save({"features": features, "labels": labels}, handle)
    return CachedFeatures(features, labels, path, False)


def extract_features(model, backend, probe_set: ProbeSet, image, batch_size: int, workers: int):
    """Normalised image features and labels of every image of ``probe_set`` (CPU tensors), in
    the set's order whatever ``workers`` is: the seeded held-out split picks rows by position,
    so an order that followed the worker count picked other images for each count."""
    import torch

    from clipa_train.evaluate import image_batches

    features, labels, places = [], [], []
    batches = image_batches(probe_set.images, image, batch_size, workers)
    with torch.inference_mode(), backend.autocast():
        for images, batch_labels, batch_places in batches:
            encoded = model.encode_image(backend.images_to_device(images), normalize=True)
            features.append(encoded.float().cpu())
            labels.append(batch_labels)
            places.append(batch_places)
            backend.step_boundary()
    order = torch.cat(places).argsort()
    return torch.cat(features)[order], torch.cat(labels)[order]


def _model(config: ProbeConfig):
    from clipa_train.eval_stage import checkpoint_model

    return checkpoint_model(config.model, config.checkpoint, config.image_size).eval()


# --- the probe --------------------------------------------------------------------------------


def probe_features(
    config: ProbeConfig, checkpoint: Path, sets: dict[str, ProbeSet], backend, say
) -> tuple[dict[str, CachedFeatures], int]:
    """Each set's features from its cache file, or extracted (the model is built only then),
    and the image side they were made at."""
    from clipa_train.eval_stage import architecture_at_own_sizes
    from clipa_train.image import ImageConfig

    architecture = architecture_at_own_sizes(config.model, str(checkpoint))
    image_size = config.image_size or architecture.vision.image_size
    image = ImageConfig(size=image_size, crop=config.crop)
    described = {
        "architecture": architecture.to_dict(),
        "norm": [list(backend.config.image_mean), list(backend.config.image_std)],
        "precision": backend.config.precision,
    }
    model = None
    found = {}
    for role, probe_set in sets.items():
        key = cache_key(checkpoint, probe_set, image_size, config.crop, described)
        # Named by the set, not its role: a set given as both --train and --val is read once.
        name = f"{Path(str(probe_set.images.source)).name}-{key}.pt"

        def compute(probe_set=probe_set):
            nonlocal model
            model = model or _model(config).to(backend.device)
            return extract_features(
                model, backend, probe_set, image, config.batch_size, config.workers
            )

        found[role] = cached_features(config.cache_path() / name, compute)
        state = "reused cache" if found[role].reused else "extracted, cached in"
        say(f"{role} features ({probe_set.images.num_images} images): {state} {found[role].path}")
    return found, image_size


def probe_checkpoint(config: ProbeConfig, say: Callable[[str], None] = lambda _: None) -> dict:
    """Extract (or reuse) the features, fit the head, write ``probe.json``, return the result.
    ``say`` gets one line per set about its feature cache."""
    from clipa_data.core.atomic import check_writable_folder
    from clipa_train.backend import create_backend
    from clipa_train.eval_stage import scoring_backend, trained_image_norm
    from clipa_train.export import checkpoint_file
    from clipa_train.logistic import fit_probe

    checkpoint = checkpoint_file(config.checkpoint)
    config.output.check_writable()
    check_writable_folder(config.cache_path(), "the feature cache")
    sets = {role: open_probe_set(getattr(config, role), role) for role in ("train", "val")}
    check_same_classes(sets["train"], sets["val"])
    train_set, val_set = sets["train"], sets["val"]
    if (train_set.images.source, train_set.split) == (val_set.images.source, val_set.split):
        say(
            f"warning: --train and --val are the same images ({train_set.images.source}): the "
            "top-1 is measured on the images the head was fitted on"
        )
    started = time.perf_counter()
    # The features are the trained model's only with the input normalisation it trained with.
    norm = config.image_norm or trained_image_norm(checkpoint)
    backend = create_backend(scoring_backend(config.backend, norm))
    found, image_size = probe_features(config, checkpoint, sets, backend, say)
    classes = len(sets["train"].classes)
    # L-BFGS runs where tensors are eager: the CPU or CUDA (an XLA backend fits on the CPU)
    device = backend.device if backend.device.type in ("cpu", "cuda") else "cpu"
    train, val = found["train"], found["val"]
    fit = fit_probe(
        train.features, train.labels, classes, L2_GRID,
        config.holdout, config.seed, config.max_iter, device,
    )  # fmt: skip
    result = {
        "top1": fit.head.top1(val.features, val.labels),
        "l2": fit.l2,
        "holdout_top1": {f"{l2:g}": top1 for l2, top1 in fit.holdout_top1.items()},
        "n_train": int(train.labels.numel()),
        "n_val": int(val.labels.numel()),
        "classes": classes,
        "chance": 1 / classes,
        "feature_dim": int(train.features.shape[1]),
        "checkpoint": str(checkpoint),
        "train": sets["train"].images.source,
        "val": sets["val"].images.source,
        "image_size": image_size,
        "crop": config.crop,
        "cache": {role: {"path": str(f.path), "reused": f.reused} for role, f in found.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    config.output.write(result, say)
    return result
