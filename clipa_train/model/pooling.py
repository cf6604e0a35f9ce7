"""How each tower turns its output tokens into one vector: one registry per tower.

Torch-free (the functions only index and average the tensor they get), so the option layer and
``config.py`` read the names without importing torch. Names are OpenCLIP's ``pool_type`` values;
``avg_all`` is CLIPA-v1's GAP (``pool_style='open_clip'``), which OpenCLIP no longer offers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VISION_POOLS: dict[str, Callable[[Any], Any]] = {
    # The class token's output (classic CLIP, CLIPA-v1 B/16).
    "tok": lambda x: x[:, 0],
    # Mean over all tokens *including* the class token: CLIPA-v1's GAP (its PyTorch code).
    "avg_all": lambda x: x.mean(dim=1),
    # Mean over the patch tokens only: CLIPA-v2 / big_vision 'gap' (the class token still runs).
    "avg": lambda x: x[:, 1:].mean(dim=1),
}
"""Vision pooling over ``[B, 1 + K, width]`` (class token first) → ``[B, width]``."""

TEXT_POOLS: dict[str, Callable[[Any, Any], Any]] = {
    # The EOT position, found as the argmax of the ids (the CLIP BPE's EOT is its largest id).
    "argmax": lambda x, ids: x.gather(
        1, ids.argmax(dim=-1).view(-1, 1, 1).expand(-1, 1, x.shape[-1])
    ).squeeze(1),
    # The last position of the batch, padding or not (CLIPA-v2 / big_vision 'last').
    "last": lambda x, ids: x[:, -1],
}
"""Text pooling over ``[B, L, width]`` given the ids ``[B, L]`` → ``[B, width]``."""

GELU_APPROXIMATIONS = ("none", "tanh")
"""``torch.nn.GELU(approximate=...)``: exact (OpenCLIP, CLIPA's PyTorch code) or tanh (JAX's
default, which CLIPA-v2 trained with)."""
