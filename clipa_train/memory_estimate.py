"""Peak training memory per device, estimated before anything starts (the memory pre-flight).

A training step holds the fp32 parameters, their gradients and AdamW's two moments (16 bytes
per parameter; FSDP splits them over its processes) plus the activations the backward pass
needs, which grow with micro-batch × tokens × width × layers. Per residual block and token the
saved tensors are the block input, both layer-norm outputs, q/k/v, the attention output and
its reshaped copy, the residual sum and both MLP tensors: 9 + 2 × mlp_ratio widths (17 at
ratio 4). ``torch.nn.functional.scaled_dot_product_attention`` on the CPU and on CUDA runs a
fused kernel that keeps no ``L × L`` matrix, so attention adds nothing quadratic. With
``--grad-checkpointing`` a block keeps only its input and one block is recomputed at a time.
Under bf16 autocast the matmul outputs are bf16 and the residual stream and layer norms fp32.

``estimate_memory`` is pure arithmetic over the configs (no torch). Its constants were
calibrated on the CPU against measured peaks (the resident high-water mark, ``VmHWM``, of
real fp32 training steps of clipa-tiny and clipa-small, with and without checkpointing and
masks; the estimate came within 0.94-1.3 times the measured peak,
``tests/test_memory_estimate.py`` holds it to 0.75-1.5).
bf16 and CUDA use the same counts with bf16 sizes; they are not calibrated here.
``clipa_train.preflight.check_memory`` compares the estimate with the device's free memory.
The estimate is a central one, not a bound: a run refused would not fit, a run let through
near the limit may still run out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipa_data.core.errors import ClipaError

if TYPE_CHECKING:
    from clipa_train.model import ModelConfig

GIB = 1024**3

AVAILABLE_ENV = "CLIPA_MEMORY_AVAILABLE"
"""Environment variable: free memory to assume for the device instead of measuring it
(``24G``, ``512M`` or bytes), to check what fits on another machine, and for tests."""

SAVED_WIDTHS_FIXED = 7
"""Saved tensors per block and token, in widths, besides the MLP's two (see the module doc;
calibrated: the attention output and its reshaped copy share storage)."""

CHECKPOINTED_WIDTHS = 1
"""Saved per block and token with gradient checkpointing: the block input."""

BACKWARD_BLOCKS = 1
"""Blocks' worth of activation gradients alive at once in the backward pass (measured)."""

STEM_WIDTHS = 4
"""Per token outside the blocks: embedding, positional sum, ln_pre/ln_final in and out."""

RUNTIME_BYTES = {"cpu": 384 * 1024**2, "cuda": 512 * 1024**2, "xla": 0}
"""Memory a training process uses besides the model and its step: CPU: the interpreter and
torch (~300 MiB measured), autograd's and the thread pools' buffers (~80 MiB), the loader's
prefetched batches; CUDA: cuBLAS/cuDNN workspaces and the caching allocator's slack."""

WORKER_BYTES = 256 * 1024**2
"""CPU memory of one loader worker process (decoding, its shuffle buffer of encoded records)."""

BYTES = {"fp32": 4, "bf16": 2}


@dataclass(frozen=True)
class MemoryShape:
    """What one device runs in one training step (the estimator's input)."""

    model: ModelConfig
    """The architecture trained."""
    micro_batch: int
    """Samples one device runs forward and backward at a time (batch / devices / accum steps)."""
    image_tokens: int
    """Vision tokens per image after the image mask, class token included."""
    text_tokens: int
    """Text tokens per caption (the stage's text length)."""
    precision: str
    """``fp32`` or ``bf16`` (autocast with fp32 master weights), resolved."""
    grad_checkpointing: bool
    """Whether each block is recomputed in the backward pass."""
    shards: int = 1
    """Processes FSDP splits parameters, gradients and AdamW states over (1: not sharded)."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``xla``: which runtime overhead applies."""
    workers: int = 0
    """Loader worker processes (their memory counts on the CPU only)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one device's training process, by part, in bytes."""

    parameters: int
    """fp32 weights (this process's shard under FSDP), plus autocast's bf16 copies."""
    gradients: int
    """fp32 gradients, as many as the parameters held."""
    optimizer: int
    """AdamW's first and second moments (fp32)."""
    activations: int
    """Tensors the backward pass needs, for one micro-batch, both towers."""
    runtime: int
    """Interpreter, framework, workspaces and (CPU) loader workers."""

    @property
    def total(self) -> int:
        """The estimated peak."""
        return self.parameters + self.gradients + self.optimizer + self.activations + self.runtime

    @property
    def training(self) -> int:
        """The peak without the runtime: what the model and its step add."""
        return self.total - self.runtime


def parameter_count(model: ModelConfig) -> int:
    """Parameters of the CLIP model built from ``model`` (as ``clipa_train.model`` builds it)."""
    vision, text = model.vision, model.text
    vision_stem = 3 * vision.patch_size**2 * vision.width + (vision.num_patches + 2) * vision.width
    vision_head = 4 * vision.width + vision.width * model.embed_dim  # ln_pre, ln_post, proj
    text_stem = (text.vocab_size + text.context_length) * text.width
    text_head = 2 * text.width + text.width * model.embed_dim  # ln_final, projection
    logit = 1 if model.init_logit_bias is None else 2
    return (
        vision_stem + vision_head
        + vision.layers * _block_parameters(vision.width, vision.mlp_ratio)
        + text_stem + text_head + text.layers * _block_parameters(text.width, text.mlp_ratio)
        + logit
    )  # fmt: skip


def _block_parameters(width: int, mlp_ratio: float) -> int:
    hidden = int(width * mlp_ratio)
    attention = 3 * width * width + 3 * width + width * width + width
    mlp = width * hidden + hidden + hidden * width + width
    return attention + mlp + 4 * width  # + two layer norms


def _tower_activations(
    tokens: int, width: int, layers: int, mlp_ratio: float, shape: MemoryShape
) -> float:
    """Bytes one sample's tokens keep for the backward pass in one tower."""
    block = SAVED_WIDTHS_FIXED + 2 * mlp_ratio  # widths per token
    # bf16: the residual stream and layer-norm inputs (4 widths) stay fp32, the rest is bf16.
    block_bytes = 4 * 4 + (block - 4) * 2 if shape.precision == "bf16" else block * 4
    residual = 4  # the block input is fp32 under autocast too
    if shape.grad_checkpointing:
        kept = layers * CHECKPOINTED_WIDTHS * residual + block_bytes  # + one recomputed block
    else:
        kept = layers * block_bytes
    return tokens * width * (kept + BACKWARD_BLOCKS * block_bytes + STEM_WIDTHS * 4)


def estimate_memory(shape: MemoryShape) -> MemoryEstimate:
    """The estimated peak memory of one device's training process for ``shape``."""
    model = shape.model
    count = parameter_count(model)
    held = math.ceil(count / shape.shards)
    autocast_copies = 2 * count if shape.precision == "bf16" else 0
    vision, text = model.vision, model.text
    per_sample = _tower_activations(
        shape.image_tokens, vision.width, vision.layers, vision.mlp_ratio, shape
    ) + _tower_activations(shape.text_tokens, text.width, text.layers, text.mlp_ratio, shape)
    image_input = 3 * vision.image_size**2 * 4  # normalised float images, saved by the conv
    activations = shape.micro_batch * (per_sample + image_input)
    runtime = RUNTIME_BYTES[shape.device]
    if shape.device == "cpu":
        runtime += shape.workers * WORKER_BYTES
    return MemoryEstimate(
        parameters=4 * held + autocast_copies,
        gradients=4 * held,
        optimizer=8 * held,
        activations=int(activations),
        runtime=runtime,
    )


def gib(size: float) -> str:
    """Bytes as GiB with one decimal (``23.4 GiB``)."""
    return f"{size / GIB:.1f} GiB"


def parse_size(text: str) -> int:
    """``24G``, ``512M``, ``1.5T`` (binary units) or plain bytes, as bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise ClipaError(f"{AVAILABLE_ENV}={text!r} is not a size; use e.g. 24G, 512M or bytes")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * 1024**power)
