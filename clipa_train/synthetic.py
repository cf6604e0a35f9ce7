"""A deterministic synthetic batch source that honours the loader's batch contract.

For tests, benchmarks and smoke runs only: batch ``i`` is a pure function of ``(seed, i)``, each
rank takes its slice of the global batch, and ``state_dict``/``load_state_dict`` resume exactly.
Images and captions share a hidden class (a colour and a class token) so a model can learn.

The ``patch_keep`` masks here are simple stand-ins for the loader's reductions, with its shapes:
``random`` keeps K of N patches; ``grid`` one random patch per 2×2 window (N/4); ``block`` one
random rectangle of ``side × side`` patches, side = round(grid·√(1−ratio)).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from clipa_data.core.errors import ClipaError

MASKS = ("random", "grid", "block")


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
        if mask is not None and mask not in MASKS:
            raise ClipaError(f"unknown mask {mask!r}; choose one of {', '.join(MASKS)}")
        if text_length < 3 or vocab_size < classes + 3:
            raise ClipaError(
                "text length must be ≥ 3 and the vocabulary larger than the classes + 3"
            )
        self.batch_size, self.image_size, self.text_length = batch_size, image_size, text_length
        self.vocab_size, self.num_batches, self.mask = vocab_size, num_batches, mask
        self.grid, self.mask_ratio, self.seed = image_size // patch_size, mask_ratio, seed
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
        if self.mask is not None:
            batch["patch_keep"] = self._patch_keep(total, generator)
        local = total // self.world
        rows = slice(self.rank * local, (self.rank + 1) * local)
        return {key: value[rows] for key, value in batch.items()}

    def _patch_keep(self, total: int, generator: torch.Generator) -> torch.Tensor:
        grid, n = self.grid, self.grid**2
        if self.mask == "random":
            keep = max(1, int(n * (1 - self.mask_ratio)))
            order = torch.rand(total, n, generator=generator).argsort(dim=1)[:, :keep]
        elif self.mask == "grid":
            half = grid // 2
            rows = torch.arange(half).repeat_interleave(half) * 2
            cols = torch.arange(half).repeat(half) * 2
            offset = torch.randint(2, (total, 2, half * half), generator=generator)
            order = (rows + offset[:, 0]) * grid + cols + offset[:, 1]
        else:
            side = max(1, round(grid * math.sqrt(1 - self.mask_ratio)))
            top = torch.randint(grid - side + 1, (total, 1), generator=generator)
            left = torch.randint(grid - side + 1, (total, 1), generator=generator)
            cells = torch.arange(side * side)
            order = (top + cells // side) * grid + left + cells % side
        return order.sort(dim=1).values.to(torch.int16)
