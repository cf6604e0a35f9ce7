"""The ImageNet variants of the paper's zero-shot table, each read from the layout it downloads as.

=================  ===========================================  =================================
set                folder (what its download unpacks to)        classes scored
=================  ===========================================  =================================
ImageNetV2         ``0`` … ``999`` (label = folder number)      the 1000 ImageNet-1K classes
ImageNet-Sketch    1000 WordNet-id folders (``sketch/``)        the 1000 ImageNet-1K classes
ImageNet-R, -A     200 WordNet-id folders                       those 200 classes: the logits are
                                                                restricted to their ImageNet ids
ObjectNet          ``objectnet-1.0/images/<folder>``            the 113 folders that overlap
                                                                ImageNet-1K, with ObjectNet's
                                                                names; the other 200 are skipped
=================  ===========================================  =================================

The class lists (every ImageNet WordNet id in label order, the R and A subsets, ObjectNet's 113
classes) ship in ``clipa_data/core/assets/imagenet_variants.json`` with their provenance. A
variant folder must hold every class it is scored over: a missing class would silently shrink
the classifier, so it is an error that names the missing folders.

Restricting the logits of a 1000-class classifier to a subset's columns is the same as building
the classifier from the subset's class names alone (each column depends on its own prompts
only), which is what is done: 200 classes of prompts instead of 1000.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick
from clipa_train import zeroshot
from clipa_train.evaluate import ZeroShotSet, class_folders, folder_units

SHOWN = 10
"""Missing or unexpected folder names listed in an error."""


def variant_classes() -> dict:
    """The shipped lists: ``imagenet_wnids``, ``imagenet-r``, ``imagenet-a``, ``objectnet``."""
    asset = resources.files("clipa_data.core.assets").joinpath("imagenet_variants.json")
    return json.loads(asset.read_text())


def _task(name: str, classnames: Iterable[str], templates: str | None) -> zeroshot.ZeroShotTask:
    if templates:
        prompts = tuple(zeroshot.read_lines(Path(templates), "template"))
    else:
        prompts = zeroshot.imagenet_task().templates
    return zeroshot.ZeroShotTask(name, tuple(classnames), prompts)


def _names(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _check_folders(root: Path, name: str, expected: list[str], extra_allowed: bool) -> None:
    """Every expected class folder is there (and, unless allowed, nothing else)."""
    found = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    missing = [folder for folder in expected if folder not in found]
    if missing:
        raise ClipaError(
            f"{root}: {name} is missing {len(missing)} of its {len(expected)} class folders "
            f"({_names(missing)}); restore the full download"
        )
    unknown = sorted(found - set(expected))
    if unknown and not extra_allowed:
        raise ClipaError(
            f"{root}: {len(unknown)} folders are not {name} classes ({_names(unknown)}); "
            f"point at the {name} folder itself"
        )


def open_wnid_set(path: Path, templates: str | None = None, *, name: str) -> ZeroShotSet:
    """ImageNet-Sketch (all 1000 ids) or ImageNet-R / -A (200): one folder per WordNet id.

    Labels follow the sorted ids; the classifier has one column per id, named as ImageNet-1K's
    class of that id (the 200-way sets are thereby scored over their own classes only).
    """
    data = variant_classes()
    all_wnids = data["imagenet_wnids"]
    wnids = all_wnids if name == "imagenet-sketch" else data[name]
    _check_folders(path, name, wnids, extra_allowed=False)
    imagenet = zeroshot.imagenet_task().classnames
    index = {wnid: i for i, wnid in enumerate(all_wnids)}
    task = _task(name, (imagenet[index[wnid]] for wnid in wnids), templates)
    units = folder_units(path, {wnid: label for label, wnid in enumerate(wnids)})
    return ZeroShotSet(str(path), "imagefolder", units, len(units), task)


def open_imagenet_v2(path: Path, templates: str | None = None) -> ZeroShotSet:
    """ImageNetV2: folders ``0`` … ``999``, the folder number is the ImageNet-1K label."""
    expected = [str(label) for label in range(zeroshot.IMAGENET_CLASSES)]
    _check_folders(path, "imagenetv2", expected, extra_allowed=False)
    folders = class_folders(path)  # numbered folders sort by value
    units = folder_units(path, {folder.name: int(folder.name) for folder in folders})
    task = _task("imagenetv2", zeroshot.imagenet_task().classnames, templates)
    return ZeroShotSet(str(path), "imagefolder", units, len(units), task)


def objectnet_images(path: Path) -> Path:
    """The folder of ObjectNet's class folders: ``objectnet-1.0/images`` of the download."""
    for candidate in (path / "objectnet-1.0" / "images", path / "images", path):
        if candidate.is_dir():
            return candidate
    raise ClipaError(f"{path}: ObjectNet folder not found")


def open_objectnet(path: Path, templates: str | None = None) -> ZeroShotSet:
    """ObjectNet's 113 ImageNet-overlapping classes (sorted folder names = labels).

    Prompts use ObjectNet's own class names, lower-cased, as CLIP_benchmark does; the images of
    the 200 folders with no ImageNet counterpart are not scored.
    """
    root = objectnet_images(path)
    classes = variant_classes()["objectnet"]
    folders = [entry["folder"] for entry in classes]
    _check_folders(root, "objectnet", folders, extra_allowed=True)
    task = _task("objectnet", (entry["name"] for entry in classes), templates)
    units = folder_units(root, {folder: label for label, folder in enumerate(folders)})
    return ZeroShotSet(str(root), "imagefolder", units, len(units), task)


VARIANTS: dict[str, Callable[[Path, str | None], ZeroShotSet]] = {
    "imagenetv2": open_imagenet_v2,
    "imagenet-sketch": functools.partial(open_wnid_set, name="imagenet-sketch"),
    "imagenet-r": functools.partial(open_wnid_set, name="imagenet-r"),
    "imagenet-a": functools.partial(open_wnid_set, name="imagenet-a"),
    "objectnet": open_objectnet,
}
"""Each ImageNet variant's opener: ``(folder, templates file or None) -> ZeroShotSet``."""


def open_variant(name: str, path: str | Path, templates: str | None = None) -> ZeroShotSet:
    """Open and check the variant ``name`` at ``path`` (see the module table)."""
    opener = pick(VARIANTS, name, "zero-shot variant")
    if not Path(path).is_dir():
        raise ClipaError(f"{path}: {name} folder not found")
    return opener(Path(path), templates)
