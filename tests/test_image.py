"""Decode at a reduced DCT scale, crops, eval transforms, augmentation and odd inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from builders import jpeg_bytes
from PIL import Image

from clipa_data.core.errors import ClipaError
from clipa_train import image
from clipa_train.image import Box, ImageConfig, ImageError, load_image


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize(
    ("size", "decoded"),
    [(32, 32), (64, 64), (112, 128), (128, 128), (129, 256), (200, 256), (300, 256)],
)
def test_whole_image_decodes_at_the_smallest_dct_scale_covering_the_target(size, decoded):
    data = jpeg_bytes(256, 256, seed=1)
    region = image.decode_region(data, image.header_dimensions(data), Box(0, 0, 256, 256), size)
    assert region.shape == (decoded, decoded, 3)


def test_crop_region_keeps_enough_pixels():
    data = jpeg_bytes(256, 256, seed=1)
    header = image.header_dimensions(data)
    box = Box(100, 40, 150, 130)  # 130 px high crop for a 64 px target: 1/2 scale
    region = image.decode_region(data, header, box, 64)
    assert region.shape[:2] == (65, 75)
    full = image.decode_region(data, header, Box(0, 0, 256, 256), 256)
    expected = full[40:170, 100:250].astype(float).mean()
    assert abs(region.astype(float).mean() - expected) < 3


def test_random_resized_crop_follows_scale_and_ratio():
    config = ImageConfig(size=64)
    areas, ratios = [], []
    generator = rng()
    for _ in range(300):
        box = image.random_resized_crop(300, 200, config, generator)
        assert 0 <= box.x <= box.x + box.width <= 300
        assert 0 <= box.y <= box.y + box.height <= 200
        areas.append(box.width * box.height / 60000)
        ratios.append(box.width / box.height)
    assert 0.39 <= min(areas) <= max(areas) <= 1.0
    assert min(areas) < 0.5 and max(areas) > 0.8
    assert 0.74 <= min(ratios) <= max(ratios) <= 1.34
    same = [image.random_resized_crop(300, 200, config, rng(5)) for _ in range(2)]
    assert same[0] == same[1]


def test_random_resized_crop_falls_back_to_a_ratio_clamped_centre_crop():
    config = ImageConfig(size=64)
    assert image.random_resized_crop(10000, 50, config, rng()) == Box(4966, 0, 67, 50)
    assert image.random_resized_crop(50, 10000, config, rng()) == Box(0, 4966, 50, 67)
    assert image.random_resized_crop(1, 1, config, rng()) == Box(0, 0, 1, 1)


def test_eval_boxes():
    center = ImageConfig(size=64, crop="center")
    assert image.crop_box(300, 200, center, None) == Box(50, 0, 200, 200)
    assert image.crop_box(300, 200, ImageConfig(size=64, crop="square"), None) == Box(
        0, 0, 300, 200
    )


def test_center_crop_matches_a_pillow_reference():
    data = jpeg_bytes(320, 240, seed=3)
    ours = load_image(data, ImageConfig(size=96, crop="center")).astype(float)
    source = Image.open(io.BytesIO(data)).convert("RGB")
    resized = source.resize((128, 96), Image.BILINEAR)  # shorter side -> 96
    reference = np.asarray(resized.crop((16, 0, 112, 96))).astype(float)
    assert np.abs(ours - reference).mean() < 4


def test_square_resize_keeps_the_whole_image():
    left_red = np.zeros((50, 200, 3), np.uint8)
    left_red[:, :100, 0] = 255
    buffer = io.BytesIO()
    Image.fromarray(left_red).save(buffer, format="PNG")
    out = load_image(buffer.getvalue(), ImageConfig(size=32, crop="square"))
    assert out[:, :15, 0].min() > 240 and out[:, 17:, 0].max() < 15


@pytest.mark.parametrize(
    ("width", "height", "mode", "fmt", "by_pillow"),
    [
        (64, 48, "RGB", "JPEG", False),
        (64, 48, "L", "JPEG", False),
        (64, 48, "CMYK", "JPEG", False),
        (64, 48, "RGBA", "PNG", True),
        (64, 48, "P", "GIF", True),
        (1, 1, "RGB", "JPEG", False),
        (10000, 50, "RGB", "JPEG", False),
        (50, 10000, "RGB", "PNG", True),
    ],
)
def test_odd_inputs_give_an_rgb_image_of_the_target_size(width, height, mode, fmt, by_pillow):
    data = jpeg_bytes(width, height, seed=2, mode=mode, fmt=fmt)
    config = ImageConfig(size=32)
    out = np.full((32, 32, 3), 7, np.uint8)
    assert image.transform_into(out, data, config, rng()) == by_pillow
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    if mode == "L":
        assert np.abs(out[..., 0].astype(int) - out[..., 2]).max() <= 2
    if width == height == 1:
        assert (out == out[0, 0]).all()


def test_cmyk_and_gray_jpegs_look_like_the_rgb_original():
    config = ImageConfig(size=48, crop="center")
    rgb = load_image(jpeg_bytes(96, 64, seed=4), config).astype(float)
    cmyk = load_image(jpeg_bytes(96, 64, seed=4, mode="CMYK"), config).astype(float)
    gray = load_image(jpeg_bytes(96, 64, seed=4, mode="L"), config).astype(float)
    assert np.abs(rgb - cmyk).mean() < 6
    assert np.abs(rgb @ image.LUMA - gray[..., 0]).mean() < 3


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", jpeg_bytes(64, 64, seed=1)[:300], b"\xff\xd8\xff" + b"\0" * 50],
)
def test_undecodable_bytes_raise_image_error(data):
    with pytest.raises(ImageError) as raised:
        load_image(data, ImageConfig(size=32), rng())
    assert " object at 0x" not in str(raised.value)  # Pillow names its BytesIO


def test_bytes_of_no_image_format_say_so():
    with pytest.raises(ImageError, match=r"^not an image: no format Pillow reads recognises"):
        load_image(b"not an image at all", ImageConfig(size=32), rng())


def test_jitter_and_grayscale_are_seeded_and_change_the_image():
    data = jpeg_bytes(64, 64, seed=6)
    plain = load_image(data, ImageConfig(size=32, crop="center"))
    config = ImageConfig(size=32, crop="center", color_jitter=image.RECIPE_JITTER)
    jittered = [load_image(data, config, rng(seed)) for seed in range(6)]
    assert all((j == load_image(data, config, rng(s))).all() for s, j in enumerate(jittered))
    changed = sum(np.abs(j.astype(int) - plain).mean() > 1 for j in jittered)
    assert 2 <= changed <= 6  # applied with probability 0.8
    gray = load_image(data, ImageConfig(size=32, crop="center", grayscale_prob=1.0), rng())
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_hue_shift_rotates_colours():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    shifted = image._shift_hue(red.astype(np.float32), 1 / 3)
    assert shifted[..., 1].mean() > 150 and shifted[..., 0].mean() < 50  # red -> green


def test_resize_writes_into_the_output_and_averages():
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    out = np.zeros((16, 16, 3), np.uint8)
    image.resize_into(stripes, out)
    assert np.abs(out.astype(float) - 127.5).max() < 2  # box filter, no aliasing


@pytest.mark.parametrize(
    "changes",
    [
        {"size": 0},
        {"crop": "middle"},
        {"scale": (0.0, 1.0)},
        {"scale": (0.9, 0.4)},
        {"ratio": (1.5, 1.0)},
        {"color_jitter": (0.4, 0.4)},
        {"color_jitter": (0.4, 0.4, 0.4, 0.9)},
        {"grayscale_prob": 1.5},
    ],
)
def test_bad_image_configs(changes):
    with pytest.raises(ClipaError):
        ImageConfig(**changes)


def test_decode_scale_math():
    assert image._scaled_minimum(256, 256, Box(0, 0, 256, 256), 64) == (64, 64)
    assert image._scaled_minimum(256, 128, Box(0, 0, 100, 80), 64) == (256, 128)
    assert image._scaled_minimum(255, 129, Box(0, 0, 200, 128), 32) == (64, 33)
    assert image._scaled_minimum(40, 40, Box(0, 0, 40, 40), 64) == (40, 40)


def test_resize_of_mixed_factors_matches_a_box_filter():
    source = load_image(jpeg_bytes(400, 300, seed=7), ImageConfig(size=300, crop="square"))
    region = source[:90, :200]  # 2.8x and 6.25x down to 32 px
    out = np.zeros((32, 32, 3), np.uint8)
    image.resize_into(region, out)
    reference = np.asarray(Image.fromarray(region).resize((32, 32), Image.BOX)).astype(float)
    assert np.abs(out.astype(float) - reference).mean() < 4
