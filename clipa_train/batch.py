"""The batch contract between the loader and the trainer, and its assembly in a worker.

A batch is a dict:

==============  ===========================  ===============================================
``image``       ``uint8 [B, H, W, 3]``       RGB, HWC; the device converts to float and
                                             normalises (``clipa_train.backend``)
``patch_keep``  ``int16 [B, K]``             sorted kept patch indices (only with an image
                                             mask other than ``resize``)
``text``        ``int64 [B, L]``             SOT ... EOT, zero-padded
``key``         ``list[str]``                the records' keys
==============  ===========================  ===============================================

Shapes are fixed for a stage (B, H = W, K and L never change between batches), so an XLA graph
compiles once. In a worker process the tensors are allocated in shared memory, so handing a
batch to the main process copies no pixels; the loader pins them when a GPU is present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGE = "image"
PATCH_KEEP = "patch_keep"
TEXT = "text"
KEY = "key"


@dataclass(frozen=True)
class BatchShapes:
    """The fixed shapes of a stage's batches."""

    image: tuple[int, int, int, int]
    """``(B, H, W, 3)``."""
    patch_keep: tuple[int, int] | None
    """``(B, K)``, or None without an image mask."""
    text: tuple[int, int]
    """``(B, L)``."""


class BatchArrays:
    """One batch being filled slot by slot (numpy views over torch storage)."""

    def __init__(self, shapes: BatchShapes, shared: bool) -> None:
        self.tensors = {
            IMAGE: torch.empty(shapes.image, dtype=torch.uint8),
            TEXT: torch.zeros(shapes.text, dtype=torch.int64),
        }
        if shapes.patch_keep is not None:
            self.tensors[PATCH_KEEP] = torch.empty(shapes.patch_keep, dtype=torch.int16)
        if shared:
            for tensor in self.tensors.values():
                tensor.share_memory_()
        self.image = self.tensors[IMAGE].numpy()
        self.text = self.tensors[TEXT].numpy()
        self.patch_keep = self.tensors[PATCH_KEEP].numpy() if PATCH_KEEP in self.tensors else None
        self.keys = [""] * shapes.image[0]

    def copy_slot(self, source: int, target: int) -> None:
        """Make slot ``target`` a copy of slot ``source`` (image, text, mask, key)."""
        self.image[target] = self.image[source]
        self.text[target] = self.text[source]
        if self.patch_keep is not None:
            self.patch_keep[target] = self.patch_keep[source]
        self.keys[target] = self.keys[source]

    def to_batch(self) -> dict:
        """The batch dict of the contract."""
        return {**self.tensors, KEY: list(self.keys)}
