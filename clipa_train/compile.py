"""``--compile``: the step's model forward through ``torch.compile``, once per stage.

The names are readable without torch (option parsing and ``--help`` import this module); torch
is imported inside the functions that compile or count. CLIPA's token counts are fixed per
stage, so a stage traces one graph (a few where DDP buckets or FSDP hooks split it) on its first
step and never again: ``graphs_compiled`` lets the loop log the count (``torch_compiles`` in
``metrics.jsonl``), and a count that grows after the first step is a recompilation bug.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick

if TYPE_CHECKING:
    from torch import nn

COMPILE_CHOICES: dict[str, str] = {
    "auto": "on for CUDA, off for CPU and XLA",
    "on": "torch.compile the step's model forward (CPU or CUDA)",
    "off": "run the step eagerly",
}
"""``--compile`` name -> what it does; the only list of these names."""

COMPILES: tuple[str, ...] = tuple(COMPILE_CHOICES)
"""The ``--compile`` names, in the order help texts list them."""

AUTO_ON = frozenset({"cuda"})
"""Backends where ``--compile auto`` compiles (CPU compiles slowly; XLA compiles its own graphs)."""


def resolve_compile(choice: str, device_kind: str) -> bool:
    """Whether to compile the step for ``--compile choice`` on the resolved backend
    ``device_kind`` (cpu, cuda or xla); ``on`` with xla is refused with one line."""
    pick(COMPILE_CHOICES, choice, "--compile value")
    if choice == "auto":
        return device_kind in AUTO_ON
    if choice == "on" and device_kind == "xla":
        raise ClipaError(
            "--compile on does not apply to --backend xla (PyTorch/XLA compiles the step into its "
            "own graphs); use --compile auto or off with xla, or --backend cuda|cpu to compile"
        )
    return choice == "on"


def check_compiler(name: str) -> None:
    """A ClipaError naming the choices unless ``name`` is a registered torch.compile backend."""
    import torch._dynamo

    names = torch._dynamo.list_backends(exclude_tags=())
    if name not in names:
        pick(dict.fromkeys(names), name, "--compile-backend")


def compile_model(model: nn.Module, compiler: str = "inductor") -> nn.Module:
    """``model`` (bare, DDP-wrapped or FSDP-sharded) with its forward compiled by ``compiler``.

    Returns a wrapper that shares ``model``'s parameters: the loop keeps stepping, evaluating and
    checkpointing the bare model, so state dicts never see the wrapper's ``_orig_mod.`` prefix.
    Shapes are static per stage (fixed image tokens and text length), so ``dynamic=False``: a
    changed shape recompiles visibly instead of silently tracing a slower dynamic graph.
    """
    import torch

    check_compiler(compiler)
    return torch.compile(model, backend=compiler, dynamic=False)


def graphs_compiled() -> int:
    """Graphs torch.compile has built in this process so far (dynamo's ``unique_graphs``:
    every first compilation, recompilation and graph-break piece)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
