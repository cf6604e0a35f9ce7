"""Procedural demo scenes: coloured shapes on textured backgrounds, drawn from a seed.

The concept space is deliberately small and visual (5 colours x 4 shapes = 20 classes) so a
tiny CLIP trained for minutes on CPU can learn it. A scene is a pure function of
``(seed, index)``: the HTTP server renders it on request and the metadata writer captions it,
and both agree without sharing state.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[float, float]] = {
    "red": (0.0, 6.0),
    "yellow": (52.0, 5.0),
    "green": (125.0, 12.0),
    "blue": (220.0, 10.0),
    "purple": (282.0, 8.0),
}
"""Colour name -> (hue in degrees, allowed hue jitter); saturated, so they pop off the
low-saturation backgrounds."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""The shape kinds a scene can contain."""

BACKGROUNDS: tuple[str, ...] = ("plain", "blotchy", "striped", "checkered", "grainy")
"""Background texture kinds (all low-saturation, so no background looks like an object colour)."""

CLASSES: tuple[tuple[str, str], ...] = tuple(
    sorted(((colour, shape) for colour in COLOURS for shape in SHAPES), key=lambda c: "_".join(c))
)
"""Every (colour, shape) class, in the sorted order of their folder names (``blue_circle``...)."""

CLASS_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour, shape in CLASSES)
"""Zero-shot class names (``"blue circle"``...), in sorted folder-name order."""

# Salts keep the training, validation and metadata random streams independent.
TRAIN_SALT = 1
VALIDATION_SALT = 2


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene."""

    colour: str
    """Colour name, a key of ``COLOURS``."""
    shape: str
    """Shape kind, one of ``SHAPES``."""
    rgb: tuple[int, int, int]
    """The exact fill colour (the named hue, jittered)."""
    center: tuple[float, float]
    """Centre in pixels (x, y)."""
    radius: float
    """Half the object's extent in pixels."""
    angle: float
    """Rotation in degrees."""


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw (and caption) one image."""

    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels."""
    background: str
    """Texture kind, one of ``BACKGROUNDS``."""
    background_rgb: tuple[int, int, int]
    """Base colour of the texture (low saturation)."""
    texture_seed: int
    """Seed of the texture noise."""
    objects: tuple[SceneObject, ...]
    """The shapes, in drawing order."""


def scene_rng(seed: int, index: int, salt: int) -> np.random.Generator:
    """The random stream of one scene: independent for every (seed, index, purpose)."""
    return np.random.default_rng([salt, seed, index])


def _object_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    hue, jitter = COLOURS[colour]
    h = ((hue + rng.uniform(-jitter, jitter)) % 360.0) / 360.0
    s = rng.uniform(0.75, 1.0)
    v = rng.uniform(0.85, 1.0) if colour == "yellow" else rng.uniform(0.7, 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def _background_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = rng.uniform(95, 215)
    tint = rng.uniform(-12, 12, size=3)
    return tuple(int(np.clip(grey + t, 0, 255)) for t in tint)  # type: ignore[return-value]


def _place(
    rng: np.random.Generator, width: int, height: int, radii: list[float]
) -> list[tuple[float, float]]:
    """Centres that keep every object inside the image and (mostly) apart from the others."""
    centres: list[tuple[float, float]] = []
    for radius in radii:
        best = None
        for _ in range(30):
            x = rng.uniform(radius, width - radius)
            y = rng.uniform(radius, height - radius)
            gap = min(
                (math.dist((x, y), c) - radius - r for c, r in zip(centres, radii, strict=False)),
                default=math.inf,
            )
            if best is None or gap > best[0]:
                best = (gap, (x, y))
            if gap > 0:
                break
        centres.append(best[1])  # type: ignore[index]
    return centres


def _make_objects(
    rng: np.random.Generator,
    width: int,
    height: int,
    classes: list[tuple[str, str]],
    size_range: tuple[float, float],
) -> tuple[SceneObject, ...]:
    side = min(width, height)
    radii = [rng.uniform(*size_range) * side for _ in classes]
    centres = _place(rng, width, height, radii)
    return tuple(
        SceneObject(
            colour=colour,
            shape=shape,
            rgb=_object_rgb(rng, colour),
            center=centre,
            radius=radius,
            angle=float(rng.uniform(-20, 20)),
        )
        for (colour, shape), radius, centre in zip(classes, radii, centres, strict=True)
    )


def _random_class(rng: np.random.Generator) -> tuple[str, str]:
    return CLASSES[int(rng.integers(len(CLASSES)))]


def training_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the training set ``seed``: 1-3 shapes, sometimes several alike."""
    rng = scene_rng(seed, index, TRAIN_SALT)
    width = int(rng.integers(96, 161))
    height = int(np.clip(width * rng.uniform(0.8, 1.25), 96, 160))
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    if count > 1 and rng.random() < 0.4:
        classes = [_random_class(rng)] * count
    else:
        classes = [_random_class(rng) for _ in range(count)]
    size_range = (0.22, 0.34) if count == 1 else (0.13, 0.2)
    return Scene(
        width=width,
        height=height,
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        background_rgb=_background_rgb(rng),
        texture_seed=int(rng.integers(2**31)),
        objects=_make_objects(rng, width, height, classes, size_range),
    )


def validation_scene(seed: int, class_index: int, index: int, size: int = 64) -> Scene:
    """A held-out image of class ``CLASSES[class_index]``: one clear object, square image."""
    rng = scene_rng(seed, class_index * 1_000_003 + index, VALIDATION_SALT)
    return Scene(
        width=size,
        height=size,
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        background_rgb=_background_rgb(rng),
        texture_seed=int(rng.integers(2**31)),
        objects=_make_objects(rng, size, size, [CLASSES[class_index]], (0.24, 0.34)),
    )


def _texture(scene: Scene) -> np.ndarray:
    """The background as an (H, W, 3) float array around ``background_rgb``."""
    rng = np.random.default_rng(scene.texture_seed)
    h, w = scene.height, scene.width
    base = np.asarray(scene.background_rgb, dtype=np.float32)
    if scene.background == "blotchy":
        coarse = rng.normal(0, 1, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8))))
        small = Image.fromarray(((coarse + 3) * 40).clip(0, 255).astype(np.uint8))
        shade = np.asarray(small.resize((w, h), Image.BILINEAR), np.float32) / 40 - 3
        light = shade[..., None] * 14
    elif scene.background == "striped":
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6, 18)
        yy, xx = np.mgrid[0:h, 0:w]
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period
        light = (np.sin(phase) * 16)[..., None]
    elif scene.background == "checkered":
        cell = int(rng.integers(6, 16))
        yy, xx = np.mgrid[0:h, 0:w]
        light = ((((xx // cell) + (yy // cell)) % 2) * 22 - 11)[..., None].astype(np.float32)
    elif scene.background == "grainy":
        light = rng.normal(0, 14, size=(h, w, 1))
    else:
        light = np.zeros((h, w, 1), np.float32)
    noise = rng.normal(0, 4, size=(h, w, 3))
    return base + light + noise


def _outline(obj: SceneObject) -> list[tuple[float, float]]:
    """The polygon of a square, triangle or star (a circle is drawn as an ellipse)."""
    corners = {"square": 4, "triangle": 3, "star": 10}[obj.shape]
    start = {"square": 45.0, "triangle": -90.0, "star": -90.0}[obj.shape] + obj.angle
    cx, cy = obj.center
    points = []
    for k in range(corners):
        radius = obj.radius
        if obj.shape == "square":
            radius *= 0.9 * math.sqrt(2)  # the square's half-side is 0.9 radius
        elif obj.shape == "star" and k % 2:
            radius *= 0.45
        elif obj.shape == "triangle":
            radius *= 1.1
        a = math.radians(start + k * 360.0 / corners)
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image."""
    pixels = _texture(scene).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        if obj.shape == "circle":
            cx, cy = obj.center
            r = obj.radius
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=obj.rgb)
        else:
            draw.polygon(_outline(obj), fill=obj.rgb)
    return image


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an image."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
