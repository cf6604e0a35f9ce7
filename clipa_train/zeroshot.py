"""Zero-shot classification: class names × prompt templates → a text classifier; top-1/top-5.

As in CLIP/CLIPA: every class's prompts are encoded, each embedding is L2-normalised, the mean
is L2-normalised again, and image embeddings are scored with ``100 · image @ classifier``.
The same code runs inside the training loop (every N steps, end of stage) and standalone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from clipa_data.core.errors import ClipaError

LOGIT_SCALE = 100.0
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ZeroShotTask:
    """Class names (in label order) and the prompt templates used to describe them."""

    name: str
    """Shown in logs and results, e.g. ``imagenet1k``."""
    classnames: tuple[str, ...]
    """One human-readable name per label, in label order (sorted folder order)."""
    templates: tuple[str, ...]
    """Prompt templates, each with one ``{}`` for the class name."""

    def __post_init__(self) -> None:
        if not self.classnames:
            raise ClipaError(f"{self.name}: no class names")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if not self.templates or bad:
            shown = bad[:3] or "none given"
            raise ClipaError(f"{self.name}: every template needs exactly one {{}} (bad: {shown})")

    def prompts(self, label: int) -> list[str]:
        """All prompts of class ``label``."""
        return [template.format(self.classnames[label]) for template in self.templates]


def imagenet_task() -> ZeroShotTask:
    """The 1000 OpenAI ImageNet class names and the 80 CLIP prompt templates."""
    data = json.loads(
        resources.files("clipa_data.core.assets").joinpath("imagenet1k_zeroshot.json").read_text()
    )
    return ZeroShotTask("imagenet1k", tuple(data["classnames"]), tuple(data["templates"]))


def read_lines(path: Path, what: str) -> list[str]:
    """The non-empty lines of ``path``; a template file's must each hold one ``{}`` (the error
    names the file, not only the set it was given for)."""
    if not Path(path).is_file():
        raise ClipaError(f"{path}: {what} file not found")
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    lines = [line for line in lines if line]
    bad = [line for line in lines if line.count("{}") != 1]
    if what == "template" and (bad or not lines):
        shown = f"bad: {bad[:3]}" if bad else "it has none"
        raise ClipaError(
            f"{path}: every template needs exactly one {{}} where the class name goes ({shown}); "
            "is it the templates file (--templates)?"
        )
    return lines


def task_from_files(
    name: str, classnames_file: Path, templates_file: Path | None = None
) -> ZeroShotTask:
    """A task from a class-name file (one per line) and an optional template file."""
    classnames = read_lines(classnames_file, "class-name")
    if templates_file:
        templates = read_lines(templates_file, "template")
    else:
        templates = list(imagenet_task().templates)
    return ZeroShotTask(name, tuple(classnames), tuple(templates))


PromptEncoder = Callable[[list[str]], torch.Tensor]
"""Turns prompt strings into ``int64 [N, L]`` token ids for the model's text tower."""


@torch.no_grad()
def build_classifier(
    model: torch.nn.Module,
    task: ZeroShotTask,
    encode_prompts: PromptEncoder,
    device: torch.device,
    step_boundary: Callable[[], None] = lambda: None,
    classes_per_batch: int = 16,
) -> torch.Tensor:
    """``[embed_dim, classes]``: per class, the normalised mean of normalised prompt embeddings."""
    columns = []
    for first in range(0, len(task.classnames), classes_per_batch):
        labels = range(first, min(first + classes_per_batch, len(task.classnames)))
        prompts = [prompt for label in labels for prompt in task.prompts(label)]
        ids = encode_prompts(prompts).to(device)
        embeddings = model.encode_text(ids, normalize=True).float()
        per_class = embeddings.reshape(len(labels), len(task.templates), -1).mean(dim=1)
        columns.append(torch.nn.functional.normalize(per_class, dim=-1))
        step_boundary()
    return torch.cat(columns).T.contiguous()


@dataclass
class TopK:
    """Running top-1/top-5 counts."""

    correct1: int = 0
    """Samples whose label is the top logit."""
    correct5: int = 0
    """Samples whose label is among the five top logits (all of them with fewer classes)."""
    count: int = 0
    """Samples counted."""

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices.cpu()
        labels = labels.cpu()
        hits = top == labels[:, None]
        self.correct1 += int(hits[:, 0].sum())
        self.correct5 += int(hits.any(dim=1).sum())
        self.count += int(labels.shape[0])

    def result(self) -> dict[str, float | int]:
        if self.count == 0:
            raise ClipaError("zero-shot evaluation saw no images")
        return {
            "top1": self.correct1 / self.count,
            "top5": self.correct5 / self.count,
            "n": self.count,
        }


@torch.no_grad()
def score(
    model: torch.nn.Module,
    classifier: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    step_boundary: Callable[[], None] = lambda: None,
) -> dict[str, float | int]:
    """Top-1/top-5 of ``(normalised float images [B,3,S,S], labels [B])`` batches."""
    counts = TopK()
    for images, labels in batches:
        features = model.encode_image(images, normalize=True).float()
        counts.update(LOGIT_SCALE * features @ classifier, labels)
        step_boundary()
    return counts.result()
