"""A deterministic synthetic batch source that honours the loader's batch contract.

For tests, benchmarks and smoke runs only: batch ``i`` is a pure function of ``(seed, i)``, each
rank takes its slice of the global batch, and ``state_dict``/``load_state_dict`` resume exactly.
Images and captions share a hidden class (a colour and a class token) so a model can learn.

``patch_keep`` is drawn by the loader's own ``PatchMasker`` (any name of
``clipa_train.image_masks.IMAGE_MASKS``), one numpy generator per row seeded with
``(seed, batch index, row)`` (``mask_rng``), so its K and geometry are the loader's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from clipa_data.core.errors import ClipaError
from clipa_train.reduce import PatchMaskConfig, PatchMasker


class SyntheticBatches:
    """Batches ``{'image': uint8 [B,H,W,3], 'text': int64 [B,L], 'key': [str], 'patch_keep'?}``."""

    def __init__(
        self,
        *,
        batch_size: int,
        image_size: int,
        text_length: int,
        vocab_size: int = 49408,
        num_batches: int | None = None,
        mask: str | None = None,
        patch_size: int = 16,
        mask_ratio: float = 0.5,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        classes: int = 8,
    ) -> None:
        if batch_size % world:
            raise ClipaError(
                f"global batch size {batch_size} is not divisible by world size {world}"
            )
        # PatchMaskConfig refuses an unknown mask name; None and "resize" give no patch_keep.
        self.masker = PatchMasker(
            PatchMaskConfig(mask or "resize", patch_size, mask_ratio), image_size
        )
        if text_length < 3 or vocab_size < classes + 3:
            raise ClipaError(
                "text length must be ≥ 3 and the vocabulary larger than the classes + 3"
            )
        self.batch_size, self.image_size, self.text_length = batch_size, image_size, text_length
        self.vocab_size, self.num_batches, self.mask = vocab_size, num_batches, mask
        self.seed = seed
        self.rank, self.world, self.classes = rank, world, classes
        self.index = 0

    def __iter__(self) -> Iterator[dict]:
        while self.num_batches is None or self.index < self.num_batches:
            batch = self.batch(self.index)
            self.index += 1
            yield batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless synthetic source has no length")
        return self.num_batches

    def state_dict(self) -> dict:
        """Position in the stream (batches already yielded)."""
        return {"index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue after the batches ``state`` had yielded."""
        self.index, self.seed = int(state["index"]), int(state["seed"])

    def batch(self, index: int) -> dict:
        """This rank's slice of global batch ``index``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        size, length, total = self.image_size, self.text_length, self.batch_size
        labels = torch.randint(self.classes, (total,), generator=generator)
        palette = torch.linspace(20, 235, self.classes)
        colour = torch.stack(
            [palette[labels], palette.flip(0)[labels], palette[(labels * 3) % self.classes]], 1
        )
        noise = torch.randint(-20, 21, (total, size, size, 3), generator=generator)
        images = (colour.view(total, 1, 1, 3) + noise).clamp(0, 255).to(torch.uint8)
        text = torch.zeros(total, length, dtype=torch.int64)
        lengths = torch.randint(3, length + 1, (total,), generator=generator)
        filler = torch.randint(
            self.classes + 1, self.vocab_size - 2, (total, length), generator=generator
        )
        for row in range(total):
            n = int(lengths[row])
            text[row, :n] = filler[row, :n]
            text[row, 0], text[row, 1], text[row, n - 1] = (
                self.vocab_size - 2,
                labels[row] + 1,
                self.vocab_size - 1,
            )
        batch = {
            "image": images,
            "text": text,
            "key": [f"{index:06d}{row:06d}" for row in range(total)],
        }
        if self.masker.keep is not None:
            batch["patch_keep"] = self.patch_keep(index, total)
        local = total // self.world
        rows = slice(self.rank * local, (self.rank + 1) * local)
        return {key: value[rows] for key, value in batch.items()}

    def mask_rng(self, index: int, row: int) -> np.random.Generator:
        """The generator that draws the mask of row ``row`` of global batch ``index``."""
        return np.random.default_rng((self.seed, index, row))

    def patch_keep(self, index: int, total: int) -> torch.Tensor:
        """``int16 [total, K]``: the loader's masks for every row of global batch ``index``."""
        rows = [self.masker.draw(self.mask_rng(index, row)) for row in range(total)]
        return torch.from_numpy(np.stack(rows))
