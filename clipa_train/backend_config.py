"""The backend and precision registries and ``BackendConfig``: torch-free, so option parsing
(``clipa-train --help``, ``run_config``) reads the names without importing torch.

``BACKEND_CHOICES`` and ``PRECISION_CHOICES`` are the only lists of backend and precision names;
``clipa_train.backend`` implements them (and re-exports everything here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import unknown_choice
from clipa_train.compile import resolve_compile

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "openai": (OPENAI_MEAN, OPENAI_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
"""``--image-norm`` name -> (mean, std) of the input normalisation: OpenAI CLIP's (CLIPA-v1's
PyTorch code) or ImageNet's (the CLIPA-v2 JAX configs, training and evaluation)."""


@dataclass(frozen=True)
class BackendChoice:
    """One ``--backend`` name."""

    help: str
    """What it runs on."""
    auto_precision: str | None
    """What ``--precision auto`` means on it (None: ``auto`` itself, resolved first)."""


BACKEND_CHOICES: dict[str, BackendChoice] = {
    "auto": BackendChoice("xla if a TPU is configured, else cuda if available, else cpu", None),
    "cpu": BackendChoice("torch on the CPU (DDP over gloo under torchrun)", "fp32"),
    "cuda": BackendChoice("torch on NVIDIA GPUs (DDP over NCCL under torchrun)", "bf16"),
    "xla": BackendChoice("PyTorch/XLA through PJRT (TPU; one process per device)", "bf16"),
}
"""Backend name -> what it is; ``clipa_train.backend.create_backend`` builds it."""

BACKENDS: tuple[str, ...] = tuple(BACKEND_CHOICES)
"""The backend names, in the order help texts list them."""


@dataclass(frozen=True)
class PrecisionChoice:
    """One ``--precision`` name."""

    help: str
    """What it means."""
    autocast: str | None
    """The torch dtype (name) the forward pass autocasts to; None: no autocast (fp32)."""


PRECISION_CHOICES: dict[str, PrecisionChoice] = {
    "auto": PrecisionChoice("bf16 on CUDA and XLA, fp32 on CPU", None),
    "fp32": PrecisionChoice("float32 throughout", None),
    "bf16": PrecisionChoice("bfloat16 autocast with fp32 master weights", "bfloat16"),
}
"""Precision name -> what it is (``auto`` is resolved per backend by ``resolve_precision``)."""

PRECISIONS: tuple[str, ...] = tuple(PRECISION_CHOICES)
"""The precision names, in the order help texts list them."""


def _check(kind: str, name: str, names: tuple[str, ...]) -> None:
    if name not in names:
        raise unknown_choice(kind, name, names)


@dataclass(frozen=True)
class BackendConfig:
    """Device, precision and input normalisation."""

    name: str = "auto"
    """A name of ``BACKENDS`` (see ``BACKEND_CHOICES``)."""
    precision: str = "fp32"
    """A name of ``PRECISIONS`` (see ``PRECISION_CHOICES``; bf16 also works on the CPU, slowly);
    ``create_backend`` resolves auto for the backend it builds."""
    sharding: str = "ddp"
    """A name of ``clipa_train.sharding.SHARDINGS``: ``ddp`` (a full model per rank) or ``fsdp``
    (FSDP2 over the torchrun processes; refused on xla and in a single process)."""
    image_mean: tuple[float, float, float] = OPENAI_MEAN
    """Per-channel mean (RGB, in [0, 1]) subtracted on the device; OpenAI CLIP's by default."""
    image_std: tuple[float, float, float] = OPENAI_STD
    """Per-channel standard deviation (RGB, in [0, 1]) divided on the device."""
    compile: bool = False
    """torch.compile the step's model forward (``--compile``, resolved by
    ``clipa_train.compile.resolve_compile``); CPU and CUDA only."""
    compiler: str = "inductor"
    """The torch.compile backend when ``compile`` is on (``aot_eager`` / ``eager`` trace without
    generating kernels: for debugging, and for tests on small CPUs)."""

    def __post_init__(self) -> None:
        _check("backend", self.name, BACKENDS)
        _check("precision", self.precision, PRECISIONS)
        from clipa_train.sharding import check_sharding  # it imports this module

        check_sharding(self.sharding, self.name, world=None)
        if self.compile:
            resolve_compile("on", self.name)  # refuses xla with the --compile error
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ClipaError("image mean and std need three values each, std > 0")


def tpu_configured() -> bool:
    """Whether this host is set up for a TPU (PJRT_DEVICE=TPU, TPU env vars or /dev/accel*)."""
    if os.environ.get("PJRT_DEVICE", "").upper() == "TPU":
        return True
    if os.environ.get("TPU_NAME") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return True
    return Path("/dev/accel0").exists()


def resolve_backend(name: str) -> str:
    """``--backend``: auto → xla if a TPU is configured, else cuda if available, else cpu."""
    _check("backend", name, BACKENDS)
    if name != "auto":
        return name
    if tpu_configured():
        return "xla"
    import torch  # only here: the names above must stay readable without torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, backend: str) -> str:
    """``--precision`` on the resolved ``backend``: auto → that backend's auto precision."""
    _check("precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    return BACKEND_CHOICES[resolve_backend(backend)].auto_precision
