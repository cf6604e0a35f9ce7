"""Retrieval test sets (COCO 5k, Flickr30k 1k) read from Karpathy-split annotations; torch-free.

A set is a Karpathy-split annotation file (``dataset_coco.json``, ``dataset_flickr30k.json``:
``{"images": [{"filename", "filepath" (COCO), "split", "sentences": [{"raw"}, ...]}]}``) plus
the folder holding its images (``IMAGES/filepath/filename`` or ``IMAGES/filename``). The test
split is used with 5 captions per image, as the CLIP/CLIPA papers report it. Missing images are
counted when the set is opened: a few are skipped (and listed), more refuse the set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick

RECALL_AT = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalSpec:
    """Where a known retrieval set lives under a data root, and its expected size."""

    annotations: str
    """The Karpathy-split annotation file, relative to the data root."""
    images: str
    """The image folder, relative to the data root."""
    test_images: int
    """Images in the Karpathy test split (what the papers report on)."""

    def locate(self, root: Path) -> tuple[Path, Path] | None:
        """``(annotations, images)`` under a data root, or None when the annotations are absent."""
        annotations = Path(root) / self.annotations
        return (annotations, Path(root) / self.images) if annotations.is_file() else None


RETRIEVAL_SETS = {
    "coco": RetrievalSpec("coco/dataset_coco.json", "coco", 5000),
    "flickr30k": RetrievalSpec(
        "flickr30k/dataset_flickr30k.json", "flickr30k/flickr30k-images", 1000
    ),
}


def retrieval_spec(name: str) -> RetrievalSpec:
    """The registry entry for ``name`` (a one-line error naming the known sets otherwise)."""
    return pick(RETRIEVAL_SETS, name, "retrieval set")


@dataclass(frozen=True)
class RetrievalSet:
    """An opened retrieval test split: the images found and their captions."""

    name: str
    """``coco``, ``flickr30k`` or the name given."""
    annotations: str
    """The annotation file read."""
    images: tuple[str, ...]
    """Image files of the split that exist, in annotation order."""
    captions: tuple[str, ...]
    """Every caption of those images, grouped by image."""
    caption_image: tuple[int, ...]
    """For each caption, the index of its image in ``images``."""
    missing: tuple[str, ...] = ()
    """Images the annotations list but the folder lacks (skipped; recall is over the rest)."""


def _entries(annotations: Path) -> list[dict]:
    fix = "expected a Karpathy-split file like dataset_coco.json ({'images': [...]})"
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipaError(f"{annotations}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClipaError(f"{annotations}: not readable JSON ({error}); {fix}") from None
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ClipaError(f"{annotations}: no 'images' list; {fix}")
    for number, entry in enumerate(entries):
        ok = isinstance(entry, dict) and isinstance(entry.get("filename"), str)
        ok = ok and isinstance(entry.get("filepath") or "", str)  # null in some exports
        sentences = entry.get("sentences") if ok else None
        ok = (
            ok
            and isinstance(sentences, list)
            and all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences)
        )
        if not ok:
            raise ClipaError(
                f"{annotations}: images[{number}] lacks 'filename' or 'sentences' "
                f"[{{'raw': ...}}] (or its 'filepath' is not a folder name); {fix}"
            )
    return entries


def _image_path(images: Path, entry: dict) -> Path | None:
    """COCO's entries name a sub-folder (``val2014``); accept the files with or without it."""
    name = entry["filename"]
    candidates = [images / _sub_folder(entry) / name, images / name]
    return next((path for path in candidates if path.is_file()), None)


def _sub_folder(entry: dict) -> str:
    """The entry's ``filepath`` (COCO: ``val2014``); Flickr30k's has none, some exports null."""
    return entry.get("filepath") or ""


def open_retrieval_set(
    annotations: Path,
    images: Path,
    name: str,
    max_missing_fraction: float = 0.01,
    split: str = "test",
    captions_per_image: int = 5,
    fix: str = "point --images at the folder that holds them (or allow more with --max-missing)",
) -> RetrievalSet:
    """Read the ``split`` of a Karpathy annotation file and find its images under ``images``;
    ``fix`` ends the error about missing images (what the caller's user can change).

    Missing images are counted: above ``max_missing_fraction`` of the split the set is refused
    (the error lists the first few); below it they are skipped and listed in ``missing``.
    """
    annotations, images = Path(annotations), Path(images)
    entries = [entry for entry in _entries(annotations) if entry.get("split") == split]
    if not entries:
        raise ClipaError(f"{annotations}: no images in split {split!r}")
    if not images.is_dir():
        raise ClipaError(f"{images}: image folder not found (the images of {annotations})")
    found, missing, captions, caption_image = [], [], [], []
    for entry in entries:
        sentences = [s["raw"].strip() for s in entry["sentences"]][:captions_per_image]
        if not sentences:
            raise ClipaError(f"{annotations}: {entry['filename']} has no captions")
        path = _image_path(images, entry)
        if path is None:
            missing.append(str(Path(_sub_folder(entry)) / entry["filename"]))
            continue
        captions += sentences
        caption_image += [len(found)] * len(sentences)
        found.append(str(path))
    if len(missing) > max_missing_fraction * len(entries) or not found:
        raise ClipaError(
            f"{images}: {len(missing)} of the {len(entries)} {split} images in {annotations} "
            f"are missing (allowed: {max_missing_fraction:.0%}), e.g. {', '.join(missing[:3])}; "
            f"{fix}"
        )
    return RetrievalSet(
        name, str(annotations), tuple(found), tuple(captions), tuple(caption_image), tuple(missing)
    )


def retrieval_warnings(rset: RetrievalSet) -> list[str]:
    """What a user should know before trusting an opened set's recalls: a split of another
    size than the papers' (their numbers do not compare) and the images skipped."""
    listed = len(rset.missing) + len(rset.images)
    expected = retrieval_spec(rset.name).test_images
    lines = []
    if listed != expected:
        lines.append(
            f"{rset.annotations} lists {listed} test images, not the {expected} of the "
            f"{rset.name} split the papers report"
        )
    if rset.missing:
        lines.append(
            f"{len(rset.missing)} of {listed} images of {rset.annotations} are missing and "
            f"skipped (e.g. {', '.join(rset.missing[:3])}); recall is over the rest"
        )
    return lines
