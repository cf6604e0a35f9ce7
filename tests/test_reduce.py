"""Image patch masks (shapes, ranges, geometry) and text reduction from sidecars or captions."""

from __future__ import annotations

import numpy as np
import pytest
from builders import make_builder_dir, make_records
from sidecars import write_sidecars

from clipa_data.core import layout, sidecar, text_reduction
from clipa_data.core.errors import ClipaError
from clipa_data.core.tokenizer import EOT, SOT, vocab_sha256
from clipa_train.reduce import PatchMaskConfig, PatchMasker, TextReducer, TextReductionConfig

SIZES = [(64, 16), (112, 16), (224, 16), (224, 14), (96, 16), (32, 16)]


def draws(strategy, size, patch, ratio=0.5, count=50):
    masker = PatchMasker(PatchMaskConfig(strategy, patch, ratio), size)
    rng = np.random.default_rng(0)
    return masker, [masker.draw(rng) for _ in range(count)]


@pytest.mark.parametrize("strategy", ["random", "grid", "block"])
@pytest.mark.parametrize(("size", "patch"), SIZES)
def test_masks_are_sorted_unique_in_range_and_fixed_size(strategy, size, patch):
    masker, masks = draws(strategy, size, patch)
    assert masker.grid == size // patch
    for keep in masks:
        assert keep.dtype == np.int16 and keep.shape == (masker.keep,)
        assert (np.diff(keep) > 0).all()
        assert keep.min() >= 0 and keep.max() < masker.patches
    assert len({keep.tobytes() for keep in masks}) > 1


def test_resize_has_no_mask():
    masker, masks = draws("resize", 112, 16)
    assert masker.keep is None and masks[0] is None


@pytest.mark.parametrize(
    ("size", "ratio", "keep"), [(224, 0.5, 98), (224, 0.3, 137), (64, 0.99, 1)]
)
def test_random_keeps_max_1_int_n_times_1_minus_ratio(size, ratio, keep):
    masker, masks = draws("random", size, 16, ratio)
    assert masker.keep == keep
    counts = np.bincount(np.concatenate(masks), minlength=masker.patches)
    if keep == 1:  # the one patch kept still varies from draw to draw
        assert len({int(mask[0]) for mask in masks}) > 10
    else:
        assert (counts > 0).sum() > masker.patches * 0.5


@pytest.mark.parametrize(("size", "patch"), SIZES)
def test_grid_keeps_one_patch_in_every_2x2_window(size, patch):
    masker, masks = draws("grid", size, patch)
    grid = masker.grid
    windows = ((grid + 1) // 2) ** 2
    assert masker.keep == windows
    positions = set()
    for keep in masks:
        rows, cols = np.divmod(keep.astype(int), grid)
        window = (rows // 2) * ((grid + 1) // 2) + cols // 2
        assert sorted(window.tolist()) == list(range(windows))
        positions.update(zip((rows % 2).tolist(), (cols % 2).tolist(), strict=True))
    assert positions == {(0, 0), (0, 1), (1, 0), (1, 1)}


@pytest.mark.parametrize(
    ("size", "patch", "ratio", "shape"),
    [
        (224, 16, 0.5, (10, 10)),
        (112, 16, 0.5, (5, 5)),
        (64, 16, 0.75, (2, 2)),
        (224, 14, 0.75, (8, 8)),
        (32, 16, 0.0, (2, 2)),
    ],
)
def test_block_keeps_one_contiguous_rectangle(size, patch, ratio, shape):
    masker, masks = draws("block", size, patch, ratio)
    assert masker.strategy.shape == shape and masker.keep == shape[0] * shape[1]
    corners = set()
    for keep in masks:
        rows, cols = np.divmod(keep.astype(int), masker.grid)
        top, left = rows.min(), cols.min()
        assert rows.max() - top + 1 == shape[0] and cols.max() - left + 1 == shape[1]
        assert len(keep) == shape[0] * shape[1]  # full rectangle, no holes
        corners.add((top, left))
    assert len(corners) > 1 or shape[0] == masker.grid


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ClipaError, match="image size 100 is not a multiple of the patch size 16"):
        PatchMasker(PatchMaskConfig("grid", 16), 100)


@pytest.mark.parametrize("changes", [{"strategy": "checkerboard"}, {"ratio": 1.0}, {"ratio": -0.1}])
def test_bad_mask_configs(changes):
    with pytest.raises(ClipaError):
        PatchMaskConfig(**changes)


CAPTIONS = [
    "Two red circles on the green grass next to an old wooden bench in the park",
    "a cat",
    "Café au lait & croissant — breakfast in Paris, France (2019)",
]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The sidecar rows ``clipa-data tag`` writes for ``CAPTIONS``."""
    builder = make_builder_dir(
        tmp_path_factory.mktemp("reduce"), [make_records(len(CAPTIONS), captions=CAPTIONS)]
    )
    (path,) = write_sidecars(builder)
    shard = layout.read_split(builder, "train").shards[0]
    expected = sidecar.SidecarExpectation(shard.path, len(CAPTIONS), vocab_sha256(), "txt")
    return sidecar.load_sidecar(path, expected)


@pytest.mark.parametrize("mask", ["truncate", "random", "block"])
def test_text_from_sidecar_equals_text_from_caption(rows, mask):
    reduce = TextReducer(TextReductionConfig(mask, 8))
    for row, caption in enumerate(CAPTIONS):
        from_sidecar = reduce(caption, rows, row, np.random.default_rng(row))
        from_caption = reduce(caption, None, 0, np.random.default_rng(row))
        assert from_sidecar.tolist() == from_caption.tolist()
        assert from_sidecar.dtype == np.int64 and from_sidecar.shape == (8,)
        assert from_sidecar[0] == SOT and EOT in from_sidecar


def test_syntax_keeps_nouns_first_in_text_order(rows):
    reduce = TextReducer(TextReductionConfig("syntax", 6))
    ids = reduce(CAPTIONS[0], rows, 0, np.random.default_rng(0))
    assert (
        ids.tolist() == text_reduction.syntax_mask(rows.caption_ids(0), *rows.words(0), 6).tolist()
    )
    from clipa_data.core.tokenizer import default_tokenizer

    assert default_tokenizer().decode(ids) == "circles grass bench park"
    assert reduce(CAPTIONS[1], rows, 1, np.random.default_rng(0)).tolist()[:4] == [
        SOT,
        320,
        2368,
        EOT,
    ]


def test_random_text_mask_varies_with_the_generator(rows):
    reduce = TextReducer(TextReductionConfig("random", 6))
    results = {tuple(reduce(CAPTIONS[0], rows, 0, np.random.default_rng(s))) for s in range(10)}
    assert len(results) > 1


def test_syntax_without_sidecar_rows_is_refused():
    with pytest.raises(ClipaError, match="needs sidecars: run clipa-data tag"):
        TextReducer(TextReductionConfig("syntax", 8))("a cat", None, 0, np.random.default_rng(0))


@pytest.mark.parametrize("changes", [{"mask": "shuffle"}, {"length": 2}])
def test_bad_text_configs(changes):
    with pytest.raises(ClipaError):
        TextReductionConfig(**changes)
