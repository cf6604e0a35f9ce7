"""A held-out zero-shot validation set of demo scenes, laid out like ImageNet's ``val/``.

::

    <folder>/val/<class_folder>/val_00000.jpg   one clear object of the class per image
    <folder>/classnames.txt                     one name per line, in sorted folder order
    <folder>/templates.txt                      one prompt template with ``{}`` per line

Class folders are ``<colour>_<shape>`` (``blue_circle``...) and their names ``<colour> <shape>``.
The images come from a random stream separate from the training scenes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core.atomic import TEMP_MARKER
from clipa_data.core.errors import ClipaError
from clipa_data.demo.scenes import CLASS_NAMES, CLASSES, encode_jpeg, render_scene, validation_scene

IMAGE_SUBDIR = "val"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "templates.txt"

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a {} on a textured background.",
    "a drawing of a {}.",
    "a close-up photo of a {}.",
)
"""Zero-shot prompt templates written to ``templates.txt``."""

CLASS_FOLDERS: tuple[str, ...] = tuple(f"{colour}_{shape}" for colour, shape in CLASSES)
"""Folder name of every class, sorted; ``CLASS_NAMES[i]`` names ``CLASS_FOLDERS[i]``."""


@dataclass(frozen=True)
class DemoValidation:
    """What ``write_demo_validation`` wrote."""

    root: Path
    """The folder passed in."""
    image_dir: Path
    """``<root>/val``: one sub-folder per class (an ImageFolder)."""
    classnames_path: Path
    """``<root>/classnames.txt``."""
    templates_path: Path | None
    """``<root>/templates.txt``, or None when not written."""
    class_names: tuple[str, ...]
    """Class names in sorted folder order (the label order of an ImageFolder)."""
    images: int
    """Number of images written."""


def _write_tree(root: Path, per_class: int, seed: int, size: int, templates: bool) -> None:
    for class_index, folder in enumerate(CLASS_FOLDERS):
        class_dir = root / IMAGE_SUBDIR / folder
        class_dir.mkdir(parents=True)
        for index in range(per_class):
            image = render_scene(validation_scene(seed, class_index, index, size))
            (class_dir / f"val_{index:05d}.jpg").write_bytes(encode_jpeg(image))
    (root / CLASSNAMES_FILE).write_text("\n".join(CLASS_NAMES) + "\n")
    if templates:
        (root / TEMPLATES_FILE).write_text("\n".join(TEMPLATES) + "\n")


def write_demo_validation(
    folder: str | Path,
    per_class: int = 20,
    seed: int = 0,
    *,
    size: int = 64,
    templates: bool = True,
) -> DemoValidation:
    """Write ``per_class`` held-out images for each of the 20 classes under ``folder``.

    ``folder`` must not exist yet (or be empty): the set is built under a temporary name and
    renamed into place, so it is either complete or absent. Same arguments, same bytes.
    """
    root = Path(folder)
    if per_class < 1 or size < 16:
        raise ClipaError(f"need per_class >= 1 and size >= 16, got {per_class} and {size}")
    if root.is_file() or (root.is_dir() and any(root.iterdir())):
        raise ClipaError(f"{root} already exists and is not empty; remove it or pick a new folder")
    staging = root.with_name(f".{root.name}{TEMP_MARKER}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_tree(staging, per_class, seed, size, templates)
        if root.is_dir():
            root.rmdir()
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DemoValidation(
        root=root,
        image_dir=root / IMAGE_SUBDIR,
        classnames_path=root / CLASSNAMES_FILE,
        templates_path=root / TEMPLATES_FILE if templates else None,
        class_names=CLASS_NAMES,
        images=per_class * len(CLASSES),
    )
