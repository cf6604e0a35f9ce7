"""How the model is laid out over ranks: ``ddp`` (a full copy per rank) or ``fsdp`` (PyTorch's
FSDP2, ``torch.distributed.fsdp.fully_shard``: parameters, gradients and AdamW states sharded).

``SHARDING_CHOICES`` is the only list of names. This module imports torch only inside its
functions, so option parsing reads the names without it. Under FSDP a checkpoint still holds one
full state dict in the format of a DDP or single-process checkpoint (:func:`full_state` gathers it
on rank 0, :func:`load_full_state` shards it again), so checkpoints move freely between the two.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipa_data.core.errors import AgreedError, ClipaError
from clipa_data.core.registry import pick

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class ShardingChoice:
    """One ``--sharding`` name."""

    help: str
    """What it does."""
    gathers_in_forward: bool
    """Whether a forward pass is a collective (parameters are all-gathered from every rank), so
    every rank must run every forward, evaluation included."""
    shards_state: bool
    """Whether each rank holds only its share of the parameters, gradients and AdamW states
    (``fully_shard``; needs ≥ 2 torch processes, not XLA)."""


SHARDING_CHOICES: dict[str, ShardingChoice] = {
    "ddp": ShardingChoice(
        "a full copy of the model and optimiser per rank, gradients averaged by DDP",
        gathers_in_forward=False,
        shards_state=False,
    ),
    "fsdp": ShardingChoice(
        "FSDP2, fully_shard per residual block: parameters, gradients and AdamW states "
        "sharded over the ranks (torchrun with ≥ 2 processes, cpu or cuda)",
        gathers_in_forward=True,
        shards_state=True,
    ),
}
"""Sharding name -> what it is; ``TorchBackend`` applies it."""

SHARDINGS: tuple[str, ...] = tuple(SHARDING_CHOICES)
"""The sharding names, in the order help texts list them."""


def sharding_choice(name: str) -> ShardingChoice:
    """The registry entry of ``name`` (a one-line error for unknown names)."""
    return pick(SHARDING_CHOICES, name, "sharding")


def check_sharding(name: str, backend: str, world: int | None) -> None:
    """Refuse a sharding the backend (a name, before torch_xla is imported; ``auto`` counts as
    xla where a TPU is configured) or the number of processes (None: not known yet) cannot run,
    with the fix."""
    from clipa_train.backend_config import tpu_configured

    if not sharding_choice(name).shards_state:
        return
    if backend == "xla" or (backend == "auto" and tpu_configured()):
        raise ClipaError(
            f"--sharding {name} is for the torch backends (cpu, cuda); the xla backend is "
            "data-parallel only (PyTorch/XLA shards with its own SPMD/FSDP, not wired in here): "
            "use --sharding ddp with --backend xla"
        )
    if world is not None and world < 2:
        raise ClipaError(
            f"--sharding {name} needs at least 2 processes; launch with torchrun "
            "--nproc_per_node N (N ≥ 2), or use --sharding ddp for one process"
        )


def torchrun_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_first_rank() -> bool:
    """Whether this process is torchrun's rank 0 (or there is no torchrun): the one that prints
    tables and notes, so a run says each thing once rather than once per rank."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def said_once_per_host() -> Iterator[None]:
    """Around the checks before training that read only what every process of a host shares
    (options, data, resume, the host's RAM): they raise the same ``ClipaError`` there, so only
    its first (``LOCAL_RANK`` 0) prints it and the others exit non-zero silently; a host whose
    check fails alone still says why. (A check of a process's own GPU stays outside.)"""
    try:
        yield
    except AgreedError:
        raise
    except ClipaError as error:
        said_here = int(os.environ.get("LOCAL_RANK", "0")) == 0
        raise AgreedError(str(error), said_here) from None


def shard_model(model: nn.Module, device: torch.device, world: int, precision: str) -> nn.Module:
    """Apply ``fully_shard`` to every residual block of both towers, then to the root (which
    keeps embeddings, norms, projections and the logit scale), in place; returns ``model``.

    Parameters become DTensors, so build the optimiser afterwards. Mixed precision: bf16
    parameters in forward/backward when ``precision`` is bf16, gradients reduced in float32.
    Gradient checkpointing composes (a recomputed block all-gathers its parameters again).
    """
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if precision == "bf16" else None, reduce_dtype=torch.float32
    )
    for tower in (model.visual.transformer, model.transformer):
        for block in tower.resblocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
    # fully_shard refuses 0-d parameters: the logit scale and bias stay whole on every rank
    # and sync_replicated averages their gradients.
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=set(replicated(model)))
    # Zero-shot evaluation calls these instead of forward: they must gather the root's
    # parameters too.
    for method in ("encode_image", "encode_text"):
        register_fsdp_forward_method(model, method)
    return model


def replicated(model: nn.Module) -> list[torch.Tensor]:
    """The trainable 0-d parameters (logit scale and bias), which FSDP leaves unsharded."""
    return [p for p in model.parameters() if p.ndim == 0 and p.requires_grad]


def sync_replicated(optimizer: torch.optim.Optimizer, world: int) -> None:
    """Average, over ranks, the gradients of the optimiser's parameters that FSDP left whole
    (plain tensors among DTensors: see :func:`replicated`), in one all-reduce."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    grads = [
        p.grad
        for group in optimizer.param_groups
        for p in group["params"]
        if p.grad is not None and not isinstance(p, DTensor)
    ]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1).float() for grad in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    for grad, value in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(value.view_as(grad))


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimiser parameter, in the order ``optimizer.state_dict()`` numbers
    them (groups in order, parameters in order)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimiser) state dicts as ``model.state_dict()`` / ``optimizer.state_dict()`` give
    them for an unsharded model. Under FSDP every rank must call it (it gathers); rank 0 gets
    the full tensors on the CPU, the other ranks empty dicts."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if not by_name:  # ranks other than 0
        return model_state, {}
    # torch keys the full optimiser state by parameter name; plain checkpoints number them.
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    return model_state, {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name["param_groups"]
        ],
    }


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
) -> None:
    """Load what :func:`full_state` returned (or a DDP / single-process checkpoint's dicts);
    under FSDP every rank passes the full dicts and keeps its own shard (torch turns the
    tensors of ``model_state`` into this rank's shards in place: pass a dict not used again)."""
    from clipa_train.optim import with_own_implementation

    optimizer_state = with_own_implementation(optimizer_state, optimizer)
    if not is_sharded(model):
        model.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    names = _parameter_names(model, optimizer)
    if len(names) != sum(len(g["params"]) for g in optimizer_state["param_groups"]):
        raise ClipaError(
            "the checkpoint's optimiser state has a different number of parameters than this "
            "model's optimiser; resume with the same model and options"
        )
    by_name = {
        "state": {names[i]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in optimizer_state["param_groups"]
        ],
    }
    options = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, by_name, options=options)
