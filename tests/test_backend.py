"""Backend resolution, errors and on-device normalisation (CPU)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from clipa_data.core.errors import ClipaError
from clipa_train.backend import (
    OPENAI_MEAN,
    OPENAI_STD,
    BackendConfig,
    create_backend,
    resolve_backend,
)


def test_auto_resolves_to_xla_only_with_a_tpu(monkeypatch):
    for name in ("PJRT_DEVICE", "TPU_NAME", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(name, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_backend("auto") == expected
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    assert resolve_backend("auto") == expected
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    assert resolve_backend("auto") == "xla"
    assert resolve_backend("cpu") == "cpu"
    with pytest.raises(ClipaError, match="unknown backend 'tpu'"):
        resolve_backend("tpu")


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla present")
def test_xla_without_torch_xla_is_one_clear_error():
    with pytest.raises(ClipaError, match="--backend xla needs torch_xla, which is not installed"):
        create_backend(BackendConfig(name="xla"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(ClipaError, match="no CUDA device is available"):
        create_backend(BackendConfig(name="cuda"))


def test_batch_size_not_divisible_by_the_world_size():
    backend = create_backend(BackendConfig(name="cpu"))
    assert backend.per_rank_batch(6) == 6
    backend.world = 4  # as torchrun with 4 processes would set it
    assert backend.per_rank_batch(8) == 2
    with pytest.raises(
        ClipaError, match="global batch size 6 is not divisible by the world size 4"
    ):
        backend.per_rank_batch(6)


def test_uint8_nhwc_is_normalised_on_the_device():
    backend = create_backend(BackendConfig(name="cpu"))
    images = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    text = torch.ones(2, 5, dtype=torch.int64)
    keep = torch.tensor([[0, 3], [1, 2]], dtype=torch.int16)
    batch = backend.to_device(
        {"image": images, "text": text, "patch_keep": keep, "key": ["a", "b"]}
    )
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    expected = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(batch["image"], expected, rtol=1e-5, atol=1e-5)
    assert batch["text"].dtype == torch.int64 and torch.equal(batch["patch_keep"], keep)
    imagenet = create_backend(
        BackendConfig(name="cpu", image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    )
    grey = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    assert torch.allclose(
        imagenet.to_device({"image": grey, "text": text[:1]})["image"], torch.tensor(2.0)
    )
    with pytest.raises(ClipaError, match=r"must be uint8 \[B, H, W, 3\]"):
        backend.to_device({"image": images.permute(0, 3, 1, 2), "text": text})


def test_one_precision_list_and_auto_resolves_per_backend():
    """One registry serves --precision and BackendConfig; auto is resolved when building."""
    from clipa_train.backend import PRECISIONS
    from clipa_train.backend_config import resolve_precision
    from clipa_train.run_config import option_spec

    assert option_spec("precision").choices == PRECISIONS and "auto" in PRECISIONS
    assert [resolve_precision("auto", name) for name in ("cpu", "cuda", "xla")] == [
        "fp32",
        "bf16",
        "bf16",
    ]
    assert resolve_precision("bf16", "cpu") == "bf16"
    backend = create_backend(BackendConfig(name="cpu", precision="auto"))
    assert backend.config.precision == "fp32"
    with backend.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with create_backend(BackendConfig(name="cpu", precision="bf16")).autocast():
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ClipaError, match="unknown precision 'fp16'; choose one of auto, fp32"):
        BackendConfig(precision="fp16")
