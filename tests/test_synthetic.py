"""The synthetic batches draw their patch masks with the loader's PatchMasker, for every mask."""

from __future__ import annotations

import numpy as np
import pytest

from clipa_train.image_masks import IMAGE_MASKS
from clipa_train.reduce import PatchMaskConfig, PatchMasker
from clipa_train.synthetic import SyntheticBatches

# (image size, patch size): grids of 7x7 and 9x9 (odd), 8x8 and 14x14 (even).
GRIDS = [(56, 8), (72, 8), (64, 8), (112, 8)]


@pytest.mark.parametrize("mask", IMAGE_MASKS)
@pytest.mark.parametrize(("size", "patch"), GRIDS)
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_synthetic_masks_are_the_loaders(mask, size, patch, ratio):
    source = SyntheticBatches(
        batch_size=4,
        image_size=size,
        text_length=8,
        vocab_size=512,
        patch_size=patch,
        mask=mask,
        mask_ratio=ratio,
        seed=7,
    )
    masker = PatchMasker(PatchMaskConfig(mask, patch, ratio), size)
    batch = source.batch(3)
    if masker.keep is None:
        assert "patch_keep" not in batch
        return
    keep = batch["patch_keep"].numpy()
    assert keep.dtype == np.int16 and keep.shape == (4, masker.keep)
    expected = [masker.draw(source.mask_rng(3, row)) for row in range(4)]
    assert keep.tolist() == np.stack(expected).tolist()


def test_grid_at_112_px_keeps_the_loaders_16_patches():
    """The case that disagreed before: a 7x7 grid keeps ceil(7/2)**2 = 16, not 9."""
    source = SyntheticBatches(batch_size=2, image_size=112, text_length=8, mask="grid")
    assert source.batch(0)["patch_keep"].shape == (2, 16)


def test_ranks_slice_the_same_global_masks():
    def source(rank, world):
        return SyntheticBatches(
            batch_size=4,
            image_size=32,
            text_length=8,
            vocab_size=512,
            patch_size=8,
            mask="block",
            seed=1,
            rank=rank,
            world=world,
        )

    whole = source(0, 1).batch(2)["patch_keep"]
    halves = [source(rank, 2).batch(2)["patch_keep"] for rank in range(2)]
    assert whole.tolist() == halves[0].tolist() + halves[1].tolist()
