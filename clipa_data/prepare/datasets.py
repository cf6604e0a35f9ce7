"""Download recipes as data: where each public image-text dataset's metadata comes from and how
img2dataset reads and stores it (``clipa-data download --dataset NAME``).

A recipe fills the ``DownloadConfig`` fields that differ between datasets (columns, image size,
resize mode, saved columns, extra img2dataset arguments); options given by the user win. The
sizes are the dataset cards' figures (samples in the metadata; expect 10-40 % of the URLs to be
gone by now). ``DownloadConfig``'s own defaults are the ``laion400m`` recipe (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clipa_data.core.errors import ClipaError


@dataclass(frozen=True)
class DatasetRecipe:
    """How to download one dataset with img2dataset."""

    name: str
    """The ``--dataset`` name."""
    summary: str
    """One line for ``--help``: what it is, how big, where its metadata is."""
    metadata: str
    """Where to get the metadata files (the URL_LIST argument)."""
    samples: str
    """Rows in the metadata, as the dataset card gives them (approximate)."""
    url_col: str
    """Column holding the image URL."""
    caption_col: str
    """Column holding the caption."""
    save_additional_columns: tuple[str, ...]
    """Metadata columns kept in every record."""
    image_size: int = 256
    """Side of the stored images (CLIPA trains at 224 px and below)."""
    resize_mode: str = "border"
    """img2dataset's resize mode."""
    input_format: str = "parquet"
    """Format of the metadata files."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Other img2dataset arguments (e.g. DataComp's face-blurring boxes)."""

    def settings(self) -> dict[str, Any]:
        """The ``DownloadConfig`` fields this recipe sets."""
        return {
            "input_format": self.input_format,
            "url_col": self.url_col,
            "caption_col": self.caption_col,
            "save_additional_columns": self.save_additional_columns,
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "extra": dict(self.extra),
        }


def _datacomp(scale: str, samples: str) -> DatasetRecipe:
    return DatasetRecipe(
        name=f"datacomp-{scale}",
        summary=(
            f"DataComp CommonPool {scale} ({samples} pairs; metadata: Hugging Face "
            f"mlfoundations/datacomp_pools, folder {scale}/); faces blurred from face_bboxes; "
            "256 px center_crop (DataComp's own script keeps 512 px keep_ratio_largest)"
        ),
        metadata=f"https://huggingface.co/datasets/mlfoundations/datacomp_pools ({scale}/)",
        samples=samples,
        url_col="url",
        caption_col="text",
        save_additional_columns=("uid",),
        resize_mode="center_crop",
        extra={"bbox_col": "face_bboxes"},
    )


RECIPES: tuple[DatasetRecipe, ...] = (
    DatasetRecipe(
        name="laion400m",
        summary=(
            "LAION-400M (413 M pairs; 32 parquet files, laion400m-meta); 256 px border, "
            "NSFW/similarity/LICENSE kept"
        ),
        metadata="https://the-eye.eu/public/AI/cah/laion400m-met-release/laion400m-meta/",
        samples="413 M",
        url_col="URL",
        caption_col="TEXT",
        save_additional_columns=("NSFW", "similarity", "LICENSE"),
    ),
    DatasetRecipe(
        name="relaion2b-en",
        summary=(
            "Re-LAION-2B-en research releases (about 2 B pairs; Hugging Face "
            "laion/relaion2B-en-research or -research-safe; LAION-2B-en with the flagged links "
            "removed); 256 px border"
        ),
        metadata="https://huggingface.co/datasets/laion/relaion2B-en-research-safe",
        samples="about 2 B (see the dataset card)",
        url_col="url",
        caption_col="caption",
        save_additional_columns=(),
    ),
    DatasetRecipe(
        name="laion2b-en",
        summary=(
            "LAION-2B-en as first released (2.32 B pairs; withdrawn by LAION in favour of "
            "relaion2b-en, kept for existing copies); 256 px border, similarity/hash/punsafe/"
            "pwatermark kept"
        ),
        metadata="laion2B-en parquet files (no longer distributed by LAION)",
        samples="2.32 B",
        url_col="URL",
        caption_col="TEXT",
        save_additional_columns=("similarity", "hash", "punsafe", "pwatermark"),
    ),
    _datacomp("small", "12.8 M"),
    _datacomp("medium", "128 M"),
    _datacomp("large", "1.28 B"),
    _datacomp("xlarge", "12.8 B"),
)
DATASETS: dict[str, DatasetRecipe] = {recipe.name: recipe for recipe in RECIPES}
"""The recipes by ``--dataset`` name."""


def recipe(name: str) -> DatasetRecipe:
    """The recipe called ``name``, or one line listing the names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ClipaError(f"--dataset {name!r}: choose one of {', '.join(DATASETS)}") from None
