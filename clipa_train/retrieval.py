"""Image-text retrieval: Recall@1/5/10 both ways of a model on a ``RetrievalSet``.

Recall is computed a chunk of queries at a time against all keys, so COCO's 25k captions x 5k
images never become one dense similarity matrix on the device. The sets themselves (reading the
Karpathy-split annotations, the registry of known sets) are in ``retrieval_sets`` (torch-free).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipa_data.core.errors import ClipaError
from clipa_train.image import ImageConfig, ImageError, load_image
from clipa_train.retrieval_sets import RECALL_AT, RetrievalSet


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
    reference_exact: bool = False
    """``--reference-exact``: images decoded at full size by Pillow and resized bicubic."""


def _numbered_batch(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``(numbers, images)`` of ``(number, image)`` items: a module function, as workers
    started by spawn (under ``torch_xla.launch``) unpickle it (a lambda cannot be)."""
    return (
        torch.tensor([number for number, _ in items], dtype=torch.int64),
        torch.from_numpy(np.stack([image for _, image in items])),
    )


def image_features(model, backend, rset: RetrievalSet, settings: RetrievalSettings, progress):
    """L2-normalised image embeddings ``[images, D]`` in set order (workers may interleave)."""
    loader = torch.utils.data.DataLoader(
        _Images(
            rset.images,
            ImageConfig(
                settings.image_size, settings.crop, reference_exact=settings.reference_exact
            ),
        ),
        batch_size=settings.batch_size,
        num_workers=min(settings.workers, len(rset.images)),
        collate_fn=_numbered_batch,
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

    A query's rank is the number of wrong keys scoring at least as high as its best right key
    (an image has several right captions); Recall@k is the share of queries ranked below k.
    Ties count against the query, whatever the order of the keys: a model that maps every image
    (or caption) to one point scores no recall, not full recall.
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
        image_ranks.append(((scores >= best) & ~right).sum(dim=1))
    for start in range(0, len(text_emb), chunk_size):
        scores = text_emb[start : start + chunk_size] @ image_emb.T
        own = caption_image[start : start + len(scores), None]
        wrong = torch.arange(scores.shape[1], device=scores.device)[None, :] != own
        text_ranks.append(((scores >= scores.gather(1, own)) & wrong).sum(dim=1))
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
