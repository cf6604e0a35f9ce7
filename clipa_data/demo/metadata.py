"""A LAION-400M-like metadata parquet whose URLs point at the demo server.

Columns and types follow LAION-400M's metadata: ``SAMPLE_ID`` (int64), ``URL``, ``TEXT``
(string), ``HEIGHT``, ``WIDTH`` (int64), ``LICENSE``, ``NSFW`` (string), ``similarity``
(float64). No value is ever null, so downstream type checks see one type per column.

With ``broken=True`` five rows fail the way the web does: two 404s, one URL to a port where
nothing listens, one HTML page served as ``.jpg`` and one image whose response carries
``X-Robots-Tag: noai``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipa_data.core.atomic import atomic_writer
from clipa_data.core.errors import ClipaError
from clipa_data.demo.captions import caption_scene
from clipa_data.demo.scenes import scene_rng, training_scene
from clipa_data.demo.server import broken_path, image_path, missing_path, optout_path

METADATA_SALT = 3

DEAD_PORT_URL = "http://127.0.0.1:1"
"""A local address where nothing listens (port 1 is privileged and unused): connection refused."""

BROKEN_KINDS: tuple[str, ...] = ("http_404", "http_404", "dead_port", "not_an_image", "opt_out")
"""The failures planted among the rows with ``broken=True``, one entry per row."""

SCHEMA = pa.schema(
    [
        ("SAMPLE_ID", pa.int64()),
        ("URL", pa.string()),
        ("TEXT", pa.string()),
        ("HEIGHT", pa.int64()),
        ("WIDTH", pa.int64()),
        ("LICENSE", pa.string()),
        ("NSFW", pa.string()),
        ("similarity", pa.float64()),
    ]
)
"""The parquet schema (LAION-400M's column names)."""

LICENSES = ("?", "?", "?", "?", "?", "?", "?", "https://creativecommons.org/licenses/by/4.0/")


@dataclass(frozen=True)
class DemoMetadata:
    """What ``write_demo_metadata`` wrote."""

    path: Path
    """The parquet file."""
    rows: int
    """Number of rows (samples), broken ones included."""
    broken: tuple[tuple[int, str], ...]
    """``(row index, kind)`` of every planted failure; kinds come from ``BROKEN_KINDS``."""

    @property
    def expected_successes(self) -> int:
        """Rows img2dataset can download and decode."""
        return self.rows - len(self.broken)


def broken_rows(count: int, seed: int) -> dict[int, str]:
    """Row index -> planted failure kind, spread over the rows by ``seed``."""
    rng = np.random.default_rng([METADATA_SALT, seed, count])
    positions = rng.choice(count, size=len(BROKEN_KINDS), replace=False)
    return {int(p): kind for p, kind in zip(positions, BROKEN_KINDS, strict=True)}


def _url(base_url: str, seed: int, index: int, kind: str | None) -> str:
    if kind is None:
        return base_url + image_path(seed, index)
    return {
        "http_404": base_url + missing_path(index),
        "dead_port": DEAD_PORT_URL + image_path(seed, index),
        "not_an_image": base_url + broken_path(index),
        "opt_out": base_url + optout_path(seed, index),
    }[kind]


def demo_rows(base_url: str, count: int, seed: int, planted: dict[int, str]) -> dict[str, list]:
    """The metadata columns for ``count`` samples served from ``base_url``."""
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for index in range(count):
        scene = training_scene(seed, index)
        rng = scene_rng(seed, index, METADATA_SALT)
        columns["SAMPLE_ID"].append(index)
        columns["URL"].append(_url(base_url.rstrip("/"), seed, index, planted.get(index)))
        columns["TEXT"].append(caption_scene(scene, rng))
        columns["HEIGHT"].append(scene.height)
        columns["WIDTH"].append(scene.width)
        columns["LICENSE"].append(LICENSES[int(rng.integers(len(LICENSES)))])
        columns["NSFW"].append("UNSURE" if rng.random() < 0.04 else "UNLIKELY")
        columns["similarity"].append(round(float(rng.uniform(0.28, 0.42)), 6))
    return columns


def write_demo_metadata(
    path: str | Path, base_url: str, count: int, seed: int = 0, *, broken: bool = True
) -> DemoMetadata:
    """Write a LAION-like parquet of ``count`` rows whose URLs point at ``base_url``.

    ``base_url`` is what ``serve_demo_images()`` yields. With ``broken`` (the default) five of
    the rows are planted failures (see ``BROKEN_KINDS``), so ``count`` must be at least 6.
    The same arguments always give the same file.
    """
    path = Path(path)
    minimum = len(BROKEN_KINDS) + 1 if broken else 1
    if count < minimum:
        raise ClipaError(f"demo metadata needs at least {minimum} rows, got count={count}")
    if path.is_dir():
        raise ClipaError(f"{path} is a folder; pass the path of the parquet file to write")
    planted = broken_rows(count, seed) if broken else {}
    table = pa.Table.from_pydict(demo_rows(base_url, count, seed, planted), schema=SCHEMA)
    with atomic_writer(path) as handle:
        pq.write_table(table, handle)
    return DemoMetadata(path=path, rows=count, broken=tuple(sorted(planted.items())))
