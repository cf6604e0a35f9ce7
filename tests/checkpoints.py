"""Real clipa checkpoints of small models, written without training (for export and probe)."""

from __future__ import annotations

from pathlib import Path

import torch

from clipa_train.backend import BackendConfig, create_backend
from clipa_train.checkpoint import save_checkpoint
from clipa_train.model import build_model, load_preset


def write_checkpoint(
    run: Path,
    loss: str | None = None,
    step: int = 3,
    seed: int = 0,
    preset: str = "test-tiny",
    run_config: dict | None = None,
    **changes,
) -> Path:
    """``save_checkpoint`` of a freshly initialised preset (seeded) with a CPU backend."""
    torch.manual_seed(seed)
    model = build_model(load_preset(preset).replace(loss=loss, **changes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backend = create_backend(BackendConfig(name="cpu"))
    return save_checkpoint(
        run / "checkpoints", step=step, model=model, optimizer=optimizer, stream_state={},
        backend=backend, run_config=run_config,
    )  # fmt: skip
