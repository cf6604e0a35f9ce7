"""Image-text retrieval (COCO 5k, Flickr30k 1k): Recall@1/5/10 in both directions.

A set is a Karpathy-split annotation file (``dataset_coco.json``, ``dataset_flickr30k.json``:
``{"images": [{"filename", "filepath" (COCO), "split", "sentences": [{"raw"}, ...]}]}``) plus
the folder holding its images (``IMAGES/filepath/filename`` or ``IMAGES/filename``). The test
split is used with 5 captions per image, as the CLIP/CLIPA papers report it.

Recall is computed a chunk of queries at a time against all keys, so COCO's 25k captions x 5k
images never become one dense similarity matrix on the device.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick
from clipa_train.image import ImageConfig, ImageError, load_image

RECALL_AT = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalSpec:
    """Where a known retrieval set lives under a data root, and its expected size."""

    annotations: str
    """The Karpathy-split annotation file, relative to the data root."""
    images: str
    """The image folder, relative to the data root."""
    test_images: int
    """Images in the Karpathy test split (what the papers report on)."""


RETRIEVAL_SETS = {
    "coco": RetrievalSpec("coco/dataset_coco.json", "coco", 5000),
    "flickr30k": RetrievalSpec(
        "flickr30k/dataset_flickr30k.json", "flickr30k/flickr30k-images", 1000
    ),
}


def retrieval_spec(name: str) -> RetrievalSpec:
    """The registry entry for ``name`` (a one-line error naming the known sets otherwise)."""
    return pick(RETRIEVAL_SETS, name, "retrieval set")


@dataclass(frozen=True)
class RetrievalSet:
    """An opened retrieval test split: the images found and their captions."""

    name: str
    """``coco``, ``flickr30k`` or the name given."""
    annotations: str
    """The annotation file read."""
    images: tuple[str, ...]
    """Image files of the split that exist, in annotation order."""
    captions: tuple[str, ...]
    """Every caption of those images, grouped by image."""
    caption_image: tuple[int, ...]
    """For each caption, the index of its image in ``images``."""
    missing: tuple[str, ...] = ()
    """Images the annotations list but the folder lacks (skipped; recall is over the rest)."""


def _entries(annotations: Path) -> list[dict]:
    fix = "expected a Karpathy-split file like dataset_coco.json ({'images': [...]})"
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipaError(f"{annotations}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClipaError(f"{annotations}: not readable JSON ({error}); {fix}") from None
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ClipaError(f"{annotations}: no 'images' list; {fix}")
    for number, entry in enumerate(entries):
        ok = isinstance(entry, dict) and isinstance(entry.get("filename"), str)
        sentences = entry.get("sentences") if ok else None
        ok = (
            ok
            and isinstance(sentences, list)
            and all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences)
        )
        if not ok:
            raise ClipaError(
                f"{annotations}: images[{number}] lacks 'filename' or 'sentences' "
                f"[{{'raw': ...}}]; {fix}"
            )
    return entries


def _image_path(images: Path, entry: dict) -> Path | None:
    """COCO's entries name a sub-folder (``val2014``); accept the files with or without it."""
    name = entry["filename"]
    candidates = [images / entry.get("filepath", "") / name, images / name]
    return next((path for path in candidates if path.is_file()), None)


def open_retrieval_set(
    annotations: Path,
    images: Path,
    name: str,
    max_missing_fraction: float = 0.01,
    split: str = "test",
    captions_per_image: int = 5,
) -> RetrievalSet:
    """Read the ``split`` of a Karpathy annotation file and find its images under ``images``.

    Missing images are counted: above ``max_missing_fraction`` of the split the set is refused
    (the error lists the first few); below it they are skipped and listed in ``missing``.
    """
    annotations, images = Path(annotations), Path(images)
    entries = [entry for entry in _entries(annotations) if entry.get("split") == split]
    if not entries:
        raise ClipaError(f"{annotations}: no images in split {split!r}")
    if not images.is_dir():
        raise ClipaError(f"{images}: image folder not found (the images of {annotations})")
    found, missing, captions, caption_image = [], [], [], []
    for entry in entries:
        path = _image_path(images, entry)
        if path is None:
            missing.append(str(Path(entry.get("filepath", "")) / entry["filename"]))
            continue
        sentences = [s["raw"].strip() for s in entry["sentences"]][:captions_per_image]
        if not sentences:
            raise ClipaError(f"{annotations}: {entry['filename']} has no captions")
        captions += sentences
        caption_image += [len(found)] * len(sentences)
        found.append(str(path))
    if len(missing) > max_missing_fraction * len(entries) or not found:
        raise ClipaError(
            f"{images}: {len(missing)} of the {len(entries)} {split} images in {annotations} "
            f"are missing (allowed: {max_missing_fraction:.0%}), e.g. {', '.join(missing[:3])}; "
            "point --images at the folder that holds them"
        )
    return RetrievalSet(
        name, str(annotations), tuple(found), tuple(captions), tuple(caption_image), tuple(missing)
    )


class _Images(torch.utils.data.IterableDataset):
    """Decoded uint8 ``[S, S, 3]`` images in set order; workers take interleaved slices."""

    def __init__(self, files: tuple[str, ...], image: ImageConfig) -> None:
        self.files, self.image = files, image

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        index, count = (info.id, info.num_workers) if info else (0, 1)
        for number in range(index, len(self.files), count):
            try:
                yield number, load_image(Path(self.files[number]).read_bytes(), self.image)
            except ImageError as error:
                raise ClipaError(f"{self.files[number]}: image does not decode ({error})") from None


@dataclass(frozen=True)
class RetrievalSettings:
    """How a model is evaluated on a retrieval set."""

    image_size: int
    """Evaluation image side."""
    crop: str = "center"
    """``center`` (shorter side + centre crop) or ``square`` resize."""
    batch_size: int = 256
    """Images (and captions) per forward pass."""
    workers: int = 2
    """Image decoding worker processes."""
    chunk_size: int = 1024
    """Queries scored against all keys at once (bounds the similarity block's memory)."""


def image_features(model, backend, rset: RetrievalSet, settings: RetrievalSettings, progress):
    """L2-normalised image embeddings ``[images, D]`` in set order (workers may interleave)."""
    loader = torch.utils.data.DataLoader(
        _Images(rset.images, ImageConfig(size=settings.image_size, crop=settings.crop)),
        batch_size=settings.batch_size,
        num_workers=min(settings.workers, len(rset.images)),
        collate_fn=lambda items: (
            torch.tensor([number for number, _ in items], dtype=torch.int64),
            torch.from_numpy(np.stack([image for _, image in items])),
        ),
    )
    features: torch.Tensor | None = None
    for numbers, images in loader:
        batch = model.encode_image(backend.images_to_device(images), normalize=True).float()
        if features is None:
            features = torch.empty(len(rset.images), batch.shape[1], device=batch.device)
        features[numbers.to(batch.device)] = batch
        backend.step_boundary()
        progress(len(numbers))
    return features


def text_features(model, backend, captions, encode_text, batch_size: int, progress):
    """L2-normalised caption embeddings ``[captions, D]``."""
    parts = []
    for start in range(0, len(captions), batch_size):
        batch = list(captions[start : start + batch_size])
        ids = encode_text(batch).to(backend.device)
        parts.append(model.encode_text(ids, normalize=True).float())
        backend.step_boundary()
        progress(len(batch))
    return torch.cat(parts)


def recall_at(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    caption_image: torch.Tensor,
    chunk_size: int = 1024,
    ks: tuple[int, ...] = RECALL_AT,
) -> dict[str, float]:
    """Image→text and text→image Recall@k, ``chunk_size`` queries against all keys at a time.

    A query's rank is the number of wrong keys scoring strictly above its best right key (an
    image has several right captions); Recall@k is the share of queries ranked below k.
    """
    if chunk_size < 1:
        raise ClipaError(f"retrieval chunk size must be positive, got {chunk_size}")
    caption_image = caption_image.to(text_emb.device)
    image_ranks, text_ranks = [], []
    for start in range(0, len(image_emb), chunk_size):
        scores = image_emb[start : start + chunk_size] @ text_emb.T
        ids = torch.arange(start, start + len(scores), device=scores.device)
        right = caption_image[None, :] == ids[:, None]
        best = scores.masked_fill(~right, float("-inf")).amax(dim=1, keepdim=True)
        image_ranks.append(((scores > best) & ~right).sum(dim=1))
    for start in range(0, len(text_emb), chunk_size):
        scores = text_emb[start : start + chunk_size] @ image_emb.T
        own = caption_image[start : start + len(scores), None]
        text_ranks.append((scores > scores.gather(1, own)).sum(dim=1))
    by_image, by_text = torch.cat(image_ranks), torch.cat(text_ranks)
    result = {}
    for k in ks:
        result[f"image_to_text_R@{k}"] = (by_image < k).sum().item() / len(by_image)
    for k in ks:
        result[f"text_to_image_R@{k}"] = (by_text < k).sum().item() / len(by_text)
    return result


def evaluate_retrieval(
    model: torch.nn.Module,
    backend,
    rset: RetrievalSet,
    settings: RetrievalSettings,
    encode_text: Callable[[list[str]], torch.Tensor],
    progress: Callable[[int], None] = lambda done: None,
) -> dict[str, float | int]:
    """Recall@1/5/10 both ways of ``model`` on ``rset``; ``progress(n)`` after each batch.

    ``encode_text`` turns captions into token ids at the model's text length (the checkpoint's
    tokenizer, e.g. ``evaluate.prompt_encoder(context_length, "truncate")``); progress counts
    images then captions (``len(images) + len(captions)`` in all).
    """
    with torch.no_grad():
        with backend.autocast():
            images = image_features(model, backend, rset, settings, progress)
            texts = text_features(
                model, backend, rset.captions, encode_text, settings.batch_size, progress
            )
        # Outside autocast: the similarities stay fp32, so near-ties rank as in the reference.
        caption_image = torch.tensor(rset.caption_image, dtype=torch.int64)
        scores = recall_at(images, texts, caption_image, settings.chunk_size)
    return {
        **scores,
        "images": len(rset.images),
        "captions": len(rset.captions),
        "missing_images": len(rset.missing),
    }
