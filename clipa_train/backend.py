"""Where the step runs: CPU, CUDA (single process or torchrun DDP) or PyTorch/XLA (PJRT).

One small interface, so the loop never branches on the device. This is the only module that
imports torch_xla, and only inside :class:`XlaBackend`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from clipa_data.core.errors import ClipaError
from clipa_train import sharding
from clipa_train.backend_config import (
    BACKEND_CHOICES,
    BACKENDS,
    OPENAI_MEAN,
    OPENAI_STD,
    PRECISION_CHOICES,
    PRECISIONS,
    BackendConfig,
    resolve_backend,
    resolve_precision,
    tpu_configured,
)

__all__ = [  # the registries and config live in backend_config (torch-free); re-exported here
    "BACKENDS",
    "BACKEND_CHOICES",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "Backend",
    "BackendConfig",
    "TorchBackend",
    "XlaBackend",
    "create_backend",
    "launch",
    "resolve_backend",
    "resolve_precision",
    "tpu_configured",
]


def create_backend(config: BackendConfig) -> Backend:
    """The backend for ``config.name`` (resolved), joined to the torchrun / PJRT process group."""
    name = resolve_backend(config.name)
    precision = resolve_precision(config.precision, name)
    config = dataclasses.replace(config, name=name, precision=precision)  # re-checks compile
    sharding.check_sharding(config.sharding, name, world=None)  # auto may have become xla
    if name == "xla":
        return XlaBackend(config)
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipaError(
            "--backend cuda was requested but no CUDA device is available; use --backend cpu"
        )
    return TorchBackend(config, name)


class Backend:
    """The interface the loop uses. Subclasses set ``name``, ``device``, ``rank``, ``world``,
    ``local_rank``; the defaults here are those of one process."""

    name: str
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def loss_rank(self) -> int | torch.Tensor:
        """This rank for the loss's label offsets: an int (a device scalar on XLA)."""
        return self.rank

    def per_rank_batch(self, global_batch: int) -> int:
        """Samples per rank for a global batch; it must split evenly."""
        if global_batch < 1 or global_batch % self.world:
            raise ClipaError(
                f"global batch size {global_batch} is not divisible by the world size "
                f"{self.world}; use a multiple of {self.world}"
            )
        return global_batch // self.world

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device and return the module the step calls."""
        return model.to(self.device)

    def shard_model(self, model: nn.Module) -> nn.Module:
        """Shard ``model``'s parameters over ranks in place (FSDP), on the device; call it before
        building the optimiser. Without sharding: the model, moved to the device."""
        return model.to(self.device)

    def checkpoint_function(self) -> Callable | None:
        """The gradient-checkpointing function for this device (None: torch's default)."""
        return None

    def all_gather_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of every rank concatenated in rank order; backward sums the gradients."""
        return x

    def sync_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average gradients over ranks where no wrapper (DDP) already did."""

    def step_boundary(self) -> None:
        """End of one training step (XLA: cut and launch the graph)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the forward pass to the precision's dtype (none for fp32)."""
        dtype = PRECISION_CHOICES[self.config.precision].autocast
        # A disabled region still names a dtype every device type accepts.
        fast = getattr(torch, dtype or "bfloat16")
        return torch.autocast(self.device.type, dtype=fast, enabled=dtype is not None)

    def images_to_device(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` host images → normalised float ``[B, 3, H, W]`` on the device."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ClipaError(
                f"batch images must be uint8 [B, H, W, 3], got {images.dtype} {list(images.shape)}"
            )
        non_blocking = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=non_blocking).permute(0, 3, 1, 2).float()
        shift, scale = self._normalisation()
        return (images - shift) * scale

    def to_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Move a uint8 NHWC batch to the device and normalise it there (float NCHW)."""
        non_blocking = self.device.type == "cuda"
        keep = batch.get("patch_keep")
        return {
            "image": self.images_to_device(batch["image"]),
            "text": batch["text"].to(self.device, non_blocking=non_blocking).long(),
            "patch_keep": None if keep is None else keep.to(self.device, non_blocking=non_blocking),
        }

    def _normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """255·mean and 1/(255·std) as device tensors, made once (no per-step host copies)."""
        if getattr(self, "_norm", None) is None:
            mean = torch.tensor(self.config.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.config.image_std, dtype=torch.float32).view(1, 3, 1, 1)
            self._norm = ((mean * 255).to(self.device), (1 / (std * 255)).to(self.device))
        return self._norm

    def to_host(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Fetch scalar tensors to Python floats in one transfer (call outside the step)."""
        if not values:
            return {}
        stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()]).cpu()
        return dict(zip(values, stacked.tolist(), strict=True))

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar tensor over ranks (for logging the global loss)."""
        return value

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (agreeing to stop)."""
        return flag

    def barrier(self) -> None:
        """Wait for every rank."""

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        return [value]

    def compile_count(self) -> int | None:
        """Running number of graph compilations (XLA), None elsewhere."""
        return None

    def compiled(self, model: nn.Module) -> nn.Module:
        """``model`` with its forward compiled when ``config.compile`` is on, else ``model``."""
        if not self.config.compile:
            return model
        from clipa_train.compile import compile_model, graphs_compiled

        self._graphs_before = graphs_compiled()  # dynamo counts per process, not per model
        return compile_model(model, self.config.compiler)

    def torch_compile_count(self) -> int | None:
        """Graphs torch.compile built since :meth:`compiled` (None when not compiling)."""
        before = getattr(self, "_graphs_before", None)
        if before is None:
            return None
        from clipa_train.compile import graphs_compiled

        return graphs_compiled() - before

    def rng_state(self) -> dict[str, Any]:
        """Host and device RNG states as tensors and plain values, so a checkpoint loads with
        ``torch.load(weights_only=True)`` (no arbitrary unpickling)."""
        kind, keys, position, has_gauss, cached = np.random.get_state()
        return {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rng_state` returned."""
        random.setstate(state["python"])
        kind, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["torch"])

    def close(self) -> None:
        """Leave the process group."""


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the local rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        if dist.get_backend() == "nccl":
            local = grad.new_empty((ctx.rows, *grad.shape[1:]))
            dist.reduce_scatter_tensor(local, grad, op=dist.ReduceOp.SUM)
            return local
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # gloo has no reduce-scatter
        return grad[dist.get_rank() * ctx.rows : (dist.get_rank() + 1) * ctx.rows]


def _import_before_the_group() -> None:
    """``torch.distributed.nn`` binds the default process group as a default argument of its
    functions when first imported, which DDP does on first use: the group then outlived
    ``destroy_process_group``, and one of gloo's threads that dropped its last collective's
    tensor while the interpreter exited aborted the finished process ("terminate called
    without an active exception"). Imported before the group exists, it binds none."""
    import torch.distributed.nn  # noqa: F401


class TorchBackend(Backend):
    """CPU or CUDA; multi-process under torchrun (DDP over gloo on CPU, NCCL on CUDA)."""

    def __init__(self, config: BackendConfig, name: str) -> None:
        super().__init__(config)
        self.name = name
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if name == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self._owns_group = False
        if world > 1 and not dist.is_initialized():
            _import_before_the_group()
            dist.init_process_group("nccl" if name == "cuda" else "gloo")
            self._owns_group = True
        if dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        sharding.check_sharding(config.sharding, name, self.world)
        self.fsdp = sharding.sharding_choice(config.sharding).shards_state

    def shard_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if not self.fsdp or sharding.is_sharded(model):
            return model
        return sharding.shard_model(model, self.device, self.world, self.config.precision)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.fsdp:  # fully_shard works in place: the model is the module the step calls
            if not sharding.is_sharded(model):
                raise ClipaError(
                    "--sharding fsdp: the model was not sharded; call backend.shard_model(model) "
                    "before building its optimiser"
                )
            return self.compiled(model)
        model = model.to(self.device)
        if self.world > 1:
            ids = [self.local_rank] if self.name == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return self.compiled(model)  # after DDP, so DDP's buckets split the graph (torch's advice)

    def all_gather_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        return _GatherWithGrad.apply(x) if self.world > 1 else x

    def sync_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if self.fsdp:  # FSDP reduced the sharded gradients; the 0-d parameters stayed whole
            sharding.sync_replicated(optimizer, self.world)

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world

    def any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather_objects(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def rng_state(self) -> dict[str, Any]:
        state = super().rng_state()
        if self.name == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        super().set_rng_state(state)
        if self.name == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            # A model that holds the group in a reference cycle (DDP's) would keep it, and
            # gloo's threads, alive past the interpreter's exit (see _import_before_the_group).
            gc.collect()


class XlaBackend(Backend):
    """PyTorch/XLA through PJRT (TPU; ``PJRT_DEVICE=CPU`` in tests). One process per device
    (``launch``); gradients are averaged with ``xm.reduce_gradients``, no DDP wrapper."""

    name = "xla"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        if importlib.util.find_spec("torch_xla") is None:
            raise ClipaError(
                "--backend xla needs torch_xla, which is not installed in this environment; "
                "install torch-xla matching your torch (see make test-xla) or use --backend "
                "cpu|cuda"
            )
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.runtime as xr

        self._torch_xla, self._xm = torch_xla, xm
        self.device = torch_xla.device()
        self.rank, self.world = xr.global_ordinal(), xr.world_size()
        self.local_rank = xr.local_ordinal()

    @property
    def loss_rank(self) -> int | torch.Tensor:
        """A device scalar, not a Python int baked into the graph: every replica then traces
        the same graph (compiled once, and replicas on one host never wait for each other's
        compilation inside a collective)."""
        if self.world == 1:
            return 0
        if getattr(self, "_rank_tensor", None) is None:
            self._rank_tensor = torch.tensor(self.rank, device=self.device)
        return self._rank_tensor

    def checkpoint_function(self) -> Callable:
        from torch_xla.utils.checkpoint import checkpoint

        def run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return checkpoint(block, x)

        return run

    def all_gather_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        xm, world = self._xm, self.world

        class GatherWithGrad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, value: torch.Tensor) -> torch.Tensor:
                return xm.all_gather(value, dim=0)

            @staticmethod
            def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
                return xm.reduce_scatter(xm.REDUCE_SUM, grad, 1.0, 0, world)

        return GatherWithGrad.apply(x)

    def sync_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if self.world > 1:
            self._xm.reduce_gradients(optimizer)

    def step_boundary(self) -> None:
        sync = getattr(self._torch_xla, "sync", None)
        sync() if sync is not None else self._xm.mark_step()

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return value
        return self._xm.all_reduce(self._xm.REDUCE_SUM, value.detach(), scale=1.0 / self.world)

    def any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        return bool(self._xm.mesh_reduce("clipa_stop", int(flag), max))

    def barrier(self) -> None:
        if self.world > 1:
            self._xm.rendezvous("clipa_barrier")

    def gather_objects(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        pairs = self._xm.mesh_reduce(
            "clipa_gather", (self.rank, value), lambda xs: sorted(xs, key=lambda pair: pair[0])
        )
        return [item for _, item in pairs]

    def compile_count(self) -> int:
        import torch_xla.debug.metrics as met

        data = met.metric_data("CompileTime")
        return int(data[0]) if data else 0

    def rng_state(self) -> dict[str, Any]:
        state = super().rng_state()
        state["xla"] = int(self._xm.get_rng_state())
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        super().set_rng_state(state)
        if "xla" in state:
            self._xm.set_rng_state(int(state["xla"]))


def launch(function: Callable[..., Any], backend: str, args: tuple = ()) -> None:
    """Run ``function(index, *args)`` once per local device: for xla one process per device via
    ``torch_xla.launch``, which runs it off the spawned process's main thread, so the stop
    signals this process hears are relayed as a last argument; otherwise in this process
    (torchrun already made one per device)."""
    if resolve_backend(backend) != "xla":
        function(int(os.environ.get("LOCAL_RANK", "0")), *args)
        return
    if importlib.util.find_spec("torch_xla") is None:
        XlaBackend(BackendConfig(name="xla"))  # raises the clear error
    from concurrent.futures.process import BrokenProcessPool

    import torch_xla
    from torch.distributed import is_torchelastic_launched

    try:
        if is_torchelastic_launched():  # torch_xla calls it here, on this thread
            torch_xla.launch(function, args=args)
            return
        from clipa_train.signal_relay import SignalRelay

        with SignalRelay() as relay:
            torch_xla.launch(function, args=(*args, relay))
    except BrokenProcessPool:
        # The spawned process died without a word of its own (killed: out of host memory, a
        # stray kill -9; or an XLA runtime abort, logged above): a pool's traceback said none.
        raise ClipaError(
            "the training process on the XLA device ended abruptly (killed, e.g. out of host "
            "memory, or an XLA runtime abort logged above); --resume auto continues from the "
            "last checkpoint, or, if the run saved none yet, run the command again without "
            "--resume (clipa-train recipe: run the same recipe command again)"
        ) from None
