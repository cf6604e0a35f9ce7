"""Benchmark data for the loader: photo-like 256 px JPEGs with LAION-like captions.

Images: smooth gradients, low-frequency sinusoids, Gaussian blobs and drawn shapes, a 0.8 px
blur and Gaussian noise (sigma 6), saved by Pillow at quality 90 with 4:2:0 subsampling
(~18 KiB each, the texture of ``performance-measurements.md`` section 1). Captions mix
COCO-like sentences, product titles with brands, SKUs and prices, stock-photo titles, travel
and news captions, noisy alt-text (HTML entities, emoji, file names) and multi-sentence
descriptions. Everything is seeded; the builder directory and its sidecars (made by the
``clipa-data tag`` stage with spaCy) are cached under ``benchmarks/work/``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

TESTS = Path(__file__).resolve().parent.parent / "tests"

NOUNS = [
    "dog",
    "cat",
    "bicycle",
    "car",
    "house",
    "mountain",
    "lake",
    "beach",
    "tree",
    "flower",
    "table",
    "chair",
    "woman",
    "man",
    "child",
    "city",
    "street",
    "bridge",
    "boat",
    "train",
    "coffee",
    "cake",
    "pizza",
    "guitar",
    "book",
    "window",
    "garden",
    "river",
    "forest",
    "sunset",
    "sky",
    "bird",
    "horse",
    "laptop",
    "phone",
    "shoe",
    "dress",
    "jacket",
    "bag",
    "watch",
    "lamp",
    "sofa",
    "kitchen",
]
ADJECTIVES = [
    "red",
    "blue",
    "green",
    "old",
    "new",
    "small",
    "large",
    "wooden",
    "vintage",
    "modern",
    "beautiful",
    "bright",
    "dark",
    "white",
    "black",
    "golden",
    "rustic",
    "cozy",
    "sunny",
    "snowy",
    "empty",
    "busy",
    "colorful",
    "tiny",
    "elegant",
]
VERBS = [
    "sitting",
    "standing",
    "running",
    "walking",
    "lying",
    "parked",
    "floating",
    "hanging",
    "leaning",
    "waiting",
]
PLACES = [
    "in the park",
    "on the beach",
    "next to a window",
    "in a busy street",
    "on a wooden table",
    "under a tree",
    "in the snow",
    "at sunset",
    "in the kitchen",
    "on the grass",
    "near the river",
    "in front of a wall",
]
BRANDS = [
    "Acme",
    "Nordica",
    "Zephyr",
    "Lumo",
    "Kestrel",
    "Orbis",
    "Velta",
    "Brio",
    "Quanta",
    "Solace",
]
CITIES = [
    "Paris",
    "Kyoto",
    "Lisbon",
    "Reykjavík",
    "Cape Town",
    "Montréal",
    "São Paulo",
    "Zürich",
    "Hanoi",
    "Oslo",
]
EMOJI = ["🥐", "🐶", "✨", "🌅", "🏔️", "❤️"]


def caption(rng: np.random.Generator) -> str:
    """One LAION-like caption."""

    def pick(words):
        return words[int(rng.integers(len(words)))]

    kind = rng.random()
    if kind < 0.38:
        text = f"A {pick(ADJECTIVES)} {pick(NOUNS)} {pick(VERBS)} {pick(PLACES)}"
        if rng.random() < 0.5:
            text += f" with a {pick(ADJECTIVES)} {pick(NOUNS)}"
        return text + "."
    if kind < 0.54:
        return (
            f"{pick(BRANDS)} {pick(ADJECTIVES).title()} {pick(NOUNS).title()} "
            f"{int(rng.integers(10, 999))}{pick(['', 'X', ' Pro', ' Lite'])} - "
            f"SKU-{int(rng.integers(1000, 99999))} | ${rng.uniform(5, 500):.2f} Free Shipping"
        )
    if kind < 0.68:
        return (
            f"{pick(ADJECTIVES).title()} {pick(NOUNS)} {pick(PLACES)} stock photo, royalty free "
            f"image {int(rng.integers(10**6, 10**7))}"
        )
    if kind < 0.78:
        return f"View of the {pick(NOUNS)} {pick(PLACES)}, {pick(CITIES)} — travel photography"
    if kind < 0.86:
        return (
            f"{pick(CITIES)}, {int(rng.integers(1, 28))} March {int(rng.integers(1990, 2024))}: "
            f"a {pick(NOUNS)} is seen {pick(PLACES)} during the festival (Photo by Staff/Reuters)"
        )
    if kind < 0.93:
        return (
            f"IMG_{int(rng.integers(1000, 9999))}.jpg &amp; {pick(NOUNS)} {pick(EMOJI)} "
            f"&quot;{pick(ADJECTIVES)}&quot; #{pick(NOUNS)} #{pick(CITIES).lower()}"
        )
    sentences = [
        f"The {pick(ADJECTIVES)} {pick(NOUNS)} is {pick(VERBS)} {pick(PLACES)}."
        for _ in range(int(rng.integers(3, 7)))
    ]
    return " ".join(sentences)


def photo(rng: np.random.Generator, size: int = 256) -> bytes:
    """One photo-like JPEG (quality 90, 4:2:0)."""
    grid = np.linspace(0, 1, size, dtype=np.float32)
    x, y = np.meshgrid(grid, grid)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = start + (end - start) * ramp[..., None]
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 4, 2)
        wave = np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
        image += rng.uniform(10, 30) * wave[..., None] * rng.uniform(-1, 1, 3)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy, sigma = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        image += blob[..., None] * rng.uniform(-120, 120, 3)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        a, b = rng.integers(0, size, 2), rng.integers(0, size, 2)
        if rng.random() < 0.5:
            cv2.circle(image, tuple(map(int, a)), int(rng.integers(8, 60)), color, -1)
        else:
            cv2.rectangle(
                image, tuple(map(int, a)), tuple(map(int, b)), color, int(rng.integers(-1, 6))
            )
    image = cv2.GaussianBlur(image, (0, 0), 0.8)
    noisy = image.astype(np.float32) + rng.normal(0, 6, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def build(
    work: Path, *, shards: int, per_shard: int, seed: int = 0, distinct_images: int = 0
) -> Path:
    """The cached builder directory (with sidecars) for these parameters.

    ``distinct_images`` > 0 draws every record's JPEG from a pool of that many (captions stay
    distinct): the loader decodes each record all the same, and an xz archive of the directory
    shrinks to about the pool's size, so a large builder travels to a GPU host (see
    ``bench_train_gpu``)."""
    sys.path.insert(0, str(TESTS))
    from builders import Record, make_builder_dir
    from sidecars import write_sidecars

    pooled = f"-pool{distinct_images}" if distinct_images else ""
    root = work / f"loader-{shards}x{per_shard}-s{seed}{pooled}"
    builder = root / "laionlike" / "1.0.0"
    if not (builder / "dataset_info.json").exists():
        rng = np.random.default_rng(seed)
        pool = [photo(rng) for _ in range(distinct_images)]

        def image() -> bytes:
            return pool[int(rng.integers(len(pool)))] if pool else photo(rng)

        records = [
            [
                Record(key=f"{s * per_shard + i:09d}", jpg=image(), txt=caption(rng))
                for i in range(per_shard)
            ]
            for s in range(shards)
        ]
        make_builder_dir(root, records, name="laionlike")
    write_sidecars(builder)  # skips shards already tagged
    return builder
