"""Image bytes -> uint8 ``[size, size, 3]`` RGB: crop first, decode at the smallest DCT scale
that still covers the crop at the target size, then an area-style resize.

Every transform is a crop box in source pixels followed by a resize of that box to
``size x size``:

- ``random``: RandomResizedCrop as torchvision draws it (area ``scale`` of the image, aspect
  ``ratio``, 10 tries, then a centre crop clamped to the ratio range) — CLIPA's recipes use
  scale (0.4, 1) and ratio (3/4, 4/3);
- ``center``: the centred square of side min(w, h), i.e. resize the shorter side to ``size``
  and centre-crop (the eval transform);
- ``square``: the whole image squashed to ``size x size`` (``--square-resize-only``).

JPEGs are decoded by libjpeg-turbo (simplejpeg) with ``min_width/min_height`` so the IDCT runs
at the smallest of the scales 1/8, 1/4, 1/2, 1 whose crop is still >= ``size`` in both
directions (a 256 px image cropped for 64 px decodes at 1/2, a whole one for 112 px at 1/2).
libjpeg-turbo also scales by 3/8, 5/8, 6/8, 7/8, but without SIMD: measured here, 5/8-7/8
decode slower than full size, so they are never asked for.

The resize is area-style: the DCT scale (a box-like prefilter), then exact halvings while an
axis is still >= 2x the target (an exact 2x bilinear resize averages each pixel pair, i.e. a
2x box filter), then one bilinear step for the last factor below 2 (or any enlargement).
OpenCV 4's ``INTER_AREA`` costs 130-550 µs at these sizes for non-integer or mixed (2, 1)
factors, against ~50 µs for this path.

Anything simplejpeg cannot read (PNG, WebP, GIF, ... in the ``jpg`` field) goes through Pillow
(``draft`` for JPEG, then RGB). Grayscale and CMYK JPEGs, 1x1 and 10,000x50 images all give a
``size x size`` RGB image. Bytes no decoder reads raise ``ImageError``.

Reference-exact (``ImageConfig.reference_exact``, ``--reference-exact``): as OpenCLIP's PIL
transforms, the whole image is decoded by Pillow at full size (no DCT scaling, no ``draft``)
and resized with PIL's bicubic filter: ``random`` crops the box and resizes it (torchvision's
``resized_crop``), ``center`` resizes the shorter side to ``size`` then centre-crops
(``Resize`` + ``CenterCrop``), ``square`` resizes the whole image (``Resize((size, size))``).
Slower (a full-size IDCT, a wide bicubic kernel); ``benchmarks/bench_reference_exact.py``
measures by how much and how far the fast path's pixels are from these.

Optional colour jitter and grayscale follow the L/H recipes (SimCLR strength 0.4: brightness,
contrast, saturation 0.32, hue 0.08, applied with probability 0.8 in random order; grayscale
with probability 0.2), computed on the small uint8 output.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import simplejpeg

from clipa_data.core.errors import ClipaError

Crop = Literal["random", "center", "square"]
CROPS: tuple[str, ...] = ("random", "center", "square")
RECIPE_JITTER = (0.32, 0.32, 0.32, 0.08)
"""Colour jitter of CLIPA's L/16 and H/14 recipes (brightness, contrast, saturation, hue)."""
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R 601 luma weights (what PIL and torchvision use for grayscale)."""
DCT_SCALES = (1 / 8, 1 / 4, 1 / 2, 1.0)
"""Decode scales with SIMD IDCTs in libjpeg-turbo (the others are slower than a full decode)."""
CROP_TRIES = 10
"""RandomResizedCrop tries this many random boxes before falling back to a centre crop."""


class ImageError(Exception):
    """Bytes that no decoder could turn into an image."""


@dataclass(frozen=True)
class ImageConfig:
    """How a training or evaluation image is made."""

    size: int = 224
    """Output side in pixels (the image is ``size x size``)."""
    crop: Crop = "random"
    """``random`` (RandomResizedCrop), ``center`` (shorter side + centre crop) or ``square``."""
    scale: tuple[float, float] = (0.4, 1.0)
    """RandomResizedCrop: range of the crop's area as a fraction of the image."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """RandomResizedCrop: range of the crop's aspect ratio (width / height)."""
    color_jitter: tuple[float, float, float, float] | None = None
    """Brightness, contrast, saturation, hue strengths (e.g. ``RECIPE_JITTER``), or None."""
    color_jitter_prob: float = 0.8
    """Probability of applying the colour jitter (when ``color_jitter`` is set)."""
    grayscale_prob: float = 0.0
    """Probability of turning the image gray (3 equal channels)."""
    reference_exact: bool = False
    """Decode at full size with Pillow and resize bicubic, as the original (module docstring),
    instead of the DCT-scaled decode and area-style resize."""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ClipaError(f"image size must be positive, got {self.size}")
        if self.crop not in CROPS:
            raise ClipaError(f"unknown crop {self.crop!r}; choose one of {', '.join(CROPS)}")
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ClipaError(f"crop scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        low, high = self.ratio
        if not 0 < low <= high:
            raise ClipaError(f"crop ratio must satisfy 0 < low <= high, got {self.ratio}")
        if self.color_jitter is not None:
            if len(self.color_jitter) != 4 or min(self.color_jitter) < 0:
                raise ClipaError("color jitter needs 4 strengths >= 0 (b, c, s, hue)")
            if self.color_jitter[3] > 0.5:
                raise ClipaError(f"hue jitter must be <= 0.5, got {self.color_jitter[3]}")
        for name in ("color_jitter_prob", "grayscale_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ClipaError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def random(self) -> bool:
        """Whether the transform draws random numbers."""
        return (
            self.crop == "random"
            or (self.color_jitter is not None and self.color_jitter_prob > 0)
            or self.grayscale_prob > 0
        )


@dataclass(frozen=True, slots=True)
class Box:
    """A crop in source pixels."""

    x: int
    y: int
    width: int
    height: int


def random_resized_crop(
    width: int, height: int, config: ImageConfig, rng: np.random.Generator
) -> Box:
    """torchvision's RandomResizedCrop box (same algorithm; draws 2 x 10 + 2 uniforms)."""
    draws = rng.random(2 * CROP_TRIES + 2)
    area = width * height
    log_low, log_high = math.log(config.ratio[0]), math.log(config.ratio[1])
    low, high = config.scale
    for attempt in range(CROP_TRIES):
        target = area * (low + (high - low) * draws[2 * attempt])
        aspect = math.exp(log_low + (log_high - log_low) * draws[2 * attempt + 1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x = int(draws[-2] * (width - w + 1))
            y = int(draws[-1] * (height - h + 1))
            return Box(x, y, w, h)
    aspect = width / height
    if aspect < config.ratio[0]:
        w, h = width, min(height, max(1, round(width / config.ratio[0])))
    elif aspect > config.ratio[1]:
        w, h = min(width, max(1, round(height * config.ratio[1]))), height
    else:
        w, h = width, height
    return Box((width - w) // 2, (height - h) // 2, w, h)


def crop_box(width: int, height: int, config: ImageConfig, rng: np.random.Generator | None) -> Box:
    """The source region the transform resizes to ``size x size``."""
    if config.crop == "random":
        if rng is None:
            raise ValueError("the random crop needs a generator")
        return random_resized_crop(width, height, config, rng)
    if config.crop == "center":
        side = min(width, height)
        return Box((width - side) // 2, (height - side) // 2, side, side)
    return Box(0, 0, width, height)


def _scaled_minimum(width: int, height: int, box: Box, size: int) -> tuple[int, int]:
    """Decode size at the smallest ``DCT_SCALES`` scale keeping the box >= ``size`` both ways."""
    needed = size / min(box.width, box.height)
    scale = next((s for s in DCT_SCALES if s >= needed), 1.0)
    return min(width, math.ceil(width * scale)), min(height, math.ceil(height * scale))


def _decode_pillow(data: bytes, min_width: int, min_height: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (min_width, min_height))
            return np.asarray(image.convert("RGB"))
    except Exception as error:  # Pillow raises many types for bad bytes; all mean "unusable"
        raise _unusable(error) from None


def _unusable(error: Exception) -> ImageError:
    """Pillow's error as one line (its "cannot identify image file" names a BytesIO object)."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return ImageError("not an image: no format Pillow reads recognises its bytes")
    return ImageError(f"not a decodable image ({type(error).__name__}: {error})")


def header_dimensions(data: bytes) -> tuple[int, int, bool]:
    """(width, height, whether simplejpeg can decode it) from the encoded header alone (a JPEG's
    through simplejpeg, any other format's through Pillow): nothing is decoded."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        return width, height, True
    except ValueError:
        pass
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as error:  # Pillow raises many types for bad bytes; all mean "unusable"
        raise _unusable(error) from None
    return width, height, False


def decode_region(data: bytes, header: tuple[int, int, bool], box: Box, size: int) -> np.ndarray:
    """The box's pixels (RGB uint8 view), decoded at the smallest scale that keeps it >= ``size``
    both ways; ``header`` is what ``header_dimensions`` returned for ``data``."""
    width, height, is_jpeg = header
    min_width, min_height = _scaled_minimum(width, height, box, size)
    if is_jpeg:
        try:
            pixels = simplejpeg.decode_jpeg(
                data, colorspace="RGB", min_width=min_width, min_height=min_height
            )
        except ValueError as error:
            raise ImageError(f"JPEG does not decode ({error})") from None
    else:
        pixels = _decode_pillow(data, min_width, min_height)
    scale_x = pixels.shape[1] / width
    scale_y = pixels.shape[0] / height
    x0, y0 = int(box.x * scale_x), int(box.y * scale_y)
    x1 = max(x0 + 1, min(pixels.shape[1], round((box.x + box.width) * scale_x)))
    y1 = max(y0 + 1, min(pixels.shape[0], round((box.y + box.height) * scale_y)))
    return pixels[y0:y1, x0:x1]


def color_jitter(pixels: np.ndarray, config: ImageConfig, rng: np.random.Generator) -> None:
    """Colour jitter then grayscale, in place, as the L/H recipes (draws 10 uniforms)."""
    draws = rng.random(10)
    if config.color_jitter is not None and draws[0] < config.color_jitter_prob:
        strengths = config.color_jitter
        factors = [1 + s * (2 * u - 1) for s, u in zip(strengths[:3], draws[1:4], strict=True)]
        hue = strengths[3] * (2 * draws[4] - 1)
        image = pixels.astype(np.float32)
        for op in np.argsort(draws[5:9], kind="stable"):
            if op == 3:
                image = _shift_hue(image, hue)
                continue
            factor = factors[op]
            if op == 0:
                image *= factor
            else:
                gray = image @ LUMA
                blend = gray.mean() if op == 1 else gray[..., None]
                image = image * factor + blend * (1 - factor)
            np.clip(image, 0, 255, out=image)
        pixels[...] = np.rint(image)
    if draws[9] < config.grayscale_prob:
        pixels[...] = np.rint(pixels.astype(np.float32) @ LUMA)[..., None]


def _shift_hue(image: np.ndarray, hue: float) -> np.ndarray:
    if hue == 0:
        return image
    hsv = cv2.cvtColor(np.rint(image).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(round(hue * 255) % 256)  # uint8 wraps around the hue circle
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)


def resize_into(region: np.ndarray, out: np.ndarray) -> None:
    """Area-style resize of ``region`` into ``out`` (see the module docstring)."""
    height, width = region.shape[:2]
    size_y, size_x = out.shape[:2]
    while width >= 2 * size_x or height >= 2 * size_y:
        half_x = width // 2 if width >= 2 * size_x else width
        half_y = height // 2 if height >= 2 * size_y else height
        even = region[
            : height if half_y == height else 2 * half_y, : width if half_x == width else 2 * half_x
        ]
        region = cv2.resize(even, (half_x, half_y), interpolation=cv2.INTER_LINEAR)
        height, width = half_y, half_x
    cv2.resize(region, (size_x, size_y), dst=out, interpolation=cv2.INTER_LINEAR)


def reference_into(
    out: np.ndarray, data: bytes, config: ImageConfig, rng: np.random.Generator | None
) -> None:
    """The original's PIL path into ``out``: a full Pillow decode, then a bicubic resize of the
    crop box (``center``: shorter side to ``size``, then a centre crop, as torchvision's
    ``Resize`` + ``CenterCrop``). The crop box draws what the fast path draws."""
    from PIL import Image

    size = config.size
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
    except Exception as error:  # Pillow raises many types for bad bytes; all mean "unusable"
        raise _unusable(error) from None
    width, height = image.size
    if config.crop == "center":
        short, long = min(width, height), max(width, height)
        # torchvision's Resize(int): the shorter side becomes size, the longer is truncated.
        other = max(1, int(size * long / short))
        new = (size, other) if width <= height else (other, size)
        image = image.resize(new, Image.Resampling.BICUBIC)
        left = round((new[0] - size) / 2.0)  # Python rounding, as torchvision
        top = round((new[1] - size) / 2.0)
        image = image.crop((left, top, left + size, top + size))
    else:
        box = crop_box(width, height, config, rng)
        region = image.crop((box.x, box.y, box.x + box.width, box.y + box.height))
        image = region.resize((size, size), Image.Resampling.BICUBIC)
    out[...] = np.asarray(image)


def transform_into(
    out: np.ndarray, data: bytes, config: ImageConfig, rng: np.random.Generator | None
) -> bool:
    """Decode and transform ``data`` into ``out`` (uint8 ``[size, size, 3]``).

    Returns whether it is not a JPEG simplejpeg reads (Pillow decodes it; with
    ``reference_exact`` Pillow decodes every image). Raises ``ImageError``.
    """
    header = header_dimensions(data)
    if config.reference_exact:
        reference_into(out, data, config, rng)
    else:
        box = crop_box(header[0], header[1], config, rng)
        resize_into(decode_region(data, header, box, config.size), out)
    if config.color_jitter is not None or config.grayscale_prob > 0:
        if rng is None:
            raise ValueError("colour jitter and grayscale need a generator")
        color_jitter(out, config, rng)
    return not header[2]


def load_image(
    data: bytes, config: ImageConfig, rng: np.random.Generator | None = None
) -> np.ndarray:
    """One image as uint8 ``[size, size, 3]`` (e.g. zero-shot eval with ``crop="center"``)."""
    out = np.empty((config.size, config.size, 3), dtype=np.uint8)
    transform_into(out, data, config, rng)
    return out
