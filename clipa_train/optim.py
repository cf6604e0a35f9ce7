"""AdamW with CLIPA's parameter groups, linear warm-up + cosine schedule, logit-scale clamp."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from clipa_data.core.errors import ClipaError

# Names that never get weight decay (OpenCLIP's rule, on top of every 1-D parameter).
NO_DECAY_MARKERS = ("bn", "ln", "bias", "logit_scale")
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule settings."""

    lr: float
    """Peak learning rate (CLIPA: 8e-6 × global batch / 256 pre-training, 8e-7 × … fine-tuning)."""
    total_steps: int
    """Optimiser steps of the whole stage; the cosine reaches zero here."""
    warmup_steps: int = 0
    """Linear warm-up steps: lr·(step+1)/warmup, then cosine."""
    weight_decay: float = 0.2
    """Decoupled weight decay of ≥2-D weights (never biases, norms, 1-D vectors, logit scale)."""
    beta1: float = 0.9
    """Adam β1."""
    beta2: float = 0.95
    """Adam β2."""
    eps: float = 1e-6
    """Adam ε (OpenCLIP's default for ViT models)."""
    grad_clip_norm: float | None = None
    """Clip the global gradient norm to this value; None (CLIPA's setting) disables clipping."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ClipaError(f"learning rate must be positive, got {self.lr}")
        if self.total_steps < 1:
            raise ClipaError(f"total steps must be at least 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ClipaError(
                f"warm-up steps must be in [0, total steps = {self.total_steps}], "
                f"got {self.warmup_steps}"
            )
        if (
            self.weight_decay < 0
            or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1)
            or self.eps <= 0
        ):
            raise ClipaError("weight decay must be ≥ 0, betas in [0, 1) and eps > 0")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ClipaError(f"gradient clip norm must be positive, got {self.grad_clip_norm}")


def decays(name: str, parameter: torch.Tensor) -> bool:
    """Whether a parameter gets weight decay (≥2-D and not a norm/bias/logit-scale by name)."""
    return parameter.ndim >= 2 and not any(marker in name for marker in NO_DECAY_MARKERS)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups (decay, no decay); frozen parameters (sin-cos tables) are left out."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if decays(name, parameter) else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters (frozen ones left out).

    Build it once the model is on its device: on CPU and CUDA it uses PyTorch's fused AdamW
    (one kernel for all tensors; ~6x faster than the per-tensor loop on a CPU), on XLA the
    plain implementation, which traces into the step's graph, with its step counts and lr on
    the device (``capturable``), so no value of theirs becomes a constant of the graph.
    """
    device_type = next(model.parameters()).device.type
    fused = device_type in FUSED_DEVICES
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=fused,
        capturable=not fused,
    )


IMPLEMENTATION_FLAGS = ("fused", "capturable", "foreach", "differentiable")
"""AdamW's group settings that choose its implementation for a device, not its arithmetic."""


def with_own_implementation(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """``state`` (an ``optimizer.state_dict()``) with ``optimizer``'s own implementation flags in
    every group: they follow the device, not the run that saved it (a CPU or CUDA run's fused
    AdamW made an XLA resume fail, an XLA run's capturable one a CPU resume)."""
    own = {
        flag: optimizer.defaults[flag]
        for flag in IMPLEMENTATION_FLAGS
        if flag in optimizer.defaults
    }
    return {**state, "param_groups": [{**group, **own} for group in state["param_groups"]]}


def check_optimizer_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Refuse a fused optimiser (built on CPU) whose parameters now live on an XLA device."""
    if optimizer.defaults.get("fused") and device.type not in FUSED_DEVICES:
        raise ClipaError(
            f"the optimiser was built before the model moved to {device.type}; call "
            "build_optimizer after backend.prepare_model (or model.to(backend.device))"
        )


def learning_rate(step: int, config: OptimConfig) -> float:
    """The lr used for optimiser step ``step`` (0-based): linear warm-up, then cosine to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = config.total_steps - config.warmup_steps
    if decay_steps <= 0:
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return 0.5 * (1 + math.cos(math.pi * progress)) * config.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr: a host float, or for a capturable optimiser (XLA) the value of a
    device tensor. As a host float on XLA, AdamW's 1 − lr·wd became the constant 1 once it
    rounded to 1 in float32 late in the schedule, and the step a new graph."""
    capturable = optimizer.defaults.get("capturable", False)
    for group in optimizer.param_groups:
        if not capturable:
            group["lr"] = lr  # also where a checkpoint restored a tensor
            continue
        device = group["params"][0].device
        value = torch.tensor(lr, dtype=torch.float32)
        if isinstance(group["lr"], torch.Tensor) and group["lr"].device == device:
            group["lr"].copy_(value)  # new data for the same graph input
        else:  # built with a float, or restored from a checkpoint
            group["lr"] = value.to(device)


@torch.no_grad()
def clamp_logit_scale(model: nn.Module) -> None:
    """Keep the log temperature in [0, ln 100] after every step, as CLIP/CLIPA do."""
    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
