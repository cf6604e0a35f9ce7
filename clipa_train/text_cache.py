"""Zero-shot classifiers (class names × templates → text embeddings) cached per checkpoint.

Building ImageNet's 1000 × 80-prompt classifier is the slow text half of every ``clipa-train
eval``; for fixed weights it never changes. A ``TextCache`` keeps each classifier of one eval run
in memory (ImageNet-1K, -V2 and -Sketch share the 1000-class one; ImageNet-R and -A take its
columns of their 200 classes: the 1000-class logits restricted to their WordNet ids, which is
what ``variants`` scores them by) and on disk, by default in ``zeroshot_cache/`` of the
checkpoint's run directory, so the next eval of the same checkpoint skips the text tower.

The key (the file name's hash) is what makes the classifier given a model: the checkpoint file
(resolved path, size, modification time: a rewritten file is another key; hashing its bytes
would read a multi-GB file on every eval, costing about what the cache saves), the text tower's
architecture (``--model``, context length), how it was built (fp32 or the backend's autocast),
the class names and the templates.

The tokenizer is deliberately *not* in the key: it is recorded in the file (its name, vocabulary
sha256 and where it was read from) and checked on every read. A checkpoint was trained with one
tokenizer; a cached classifier of the same weights made with another means that this run or the
one that wrote the file fed the model ids of a vocabulary it never learnt. Keyed, the two would
live side by side and the mistake would pass unseen; checked, it is one error line naming the
file, both tokenizers and the fix.

A file that does not read back as a cache entry of this key (truncated, corrupted, hand-edited) is
only a lost cache: a warning names it and the classifier is rebuilt and written again.
Files are written atomically (``clipa_data.core.atomic``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from clipa_data.core.atomic import atomic_writer
from clipa_data.core.errors import ClipaError
from clipa_train.zeroshot import ZeroShotTask

CACHE_FOLDER = "zeroshot_cache"
"""The default cache folder's name, in the checkpoint's run directory (beside ``eval.json``)."""
FORMAT = "clipa-zeroshot-classifier"
VERSION = 1


@dataclass(frozen=True)
class ModelKey:
    """What, besides the classes and templates, decides a classifier."""

    checkpoint: str
    """The checkpoint file, resolved."""
    size: int
    """Its size in bytes."""
    mtime_ns: int
    """Its modification time (ns): a checkpoint rewritten in place is another key."""
    text: str
    """The text tower's architecture and the joint embedding width, as sorted JSON."""
    build: str
    """``fp32`` (``--reference-exact``) or ``<device>/<precision>`` (the backend's autocast)."""


def model_key(checkpoint: str | Path, model: Any, backend: Any, reference_exact: bool) -> ModelKey:
    """The key of ``model`` loaded from ``checkpoint`` and evaluated on ``backend``."""
    path = Path(checkpoint).resolve()
    stat = path.stat()
    config = model.config.to_dict()
    text = json.dumps({"text": config["text"], "embed_dim": config["embed_dim"]}, sort_keys=True)
    build = "fp32" if reference_exact else f"{backend.device.type}/{backend.config.precision}"
    return ModelKey(str(path), stat.st_size, stat.st_mtime_ns, text, build)


@dataclass(frozen=True)
class TokenizerRecord:
    """The tokenizer that made a classifier's prompt ids."""

    name: str
    """``clip-bpe`` or ``wordpiece``."""
    sha256: str
    """sha256 of its vocabulary file: the same vocabulary read from elsewhere is the same."""
    source: str
    """Where it was read from (what ``--tokenizer`` takes)."""

    @classmethod
    def of(cls, tokenizer: Any) -> TokenizerRecord:
        return cls(tokenizer.name, tokenizer.sha256(), str(tokenizer.source))

    def same(self, other: TokenizerRecord) -> bool:
        return (self.name, self.sha256) == (other.name, other.sha256)

    def describe(self) -> str:
        where = "" if self.source == self.name else f" {self.source}"
        return f"{self.name}{where} (vocabulary sha256 {self.sha256[:12]})"


Build = Callable[[ZeroShotTask], torch.Tensor]
"""Builds a task's ``[embed_dim, classes]`` classifier with the text tower."""


class TextCache:
    """The classifiers of one eval run: in memory for all its sets, on disk under ``folder``
    (None: memory only). ``note`` hears one line per classifier: built, read or reused."""

    def __init__(
        self,
        folder: Path | None,
        key: ModelKey,
        tokenizer: Any,
        device: torch.device,
        note: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.folder = None if folder is None else Path(folder)
        self.key, self.device, self.note = key, device, note
        self.tokenizer = TokenizerRecord.of(tokenizer)
        self._memory: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}

    def path(self, task: ZeroShotTask) -> Path | None:
        """The file of ``task``'s classifier (None without a folder)."""
        if self.folder is None:
            return None
        what = {"key": asdict(self.key), "classes": task.classnames, "templates": task.templates}
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
        return self.folder / f"{len(task.classnames)}-classes-{digest[:20]}.pt"

    def classifier(self, task: ZeroShotTask, build: Build) -> torch.Tensor:
        """``task``'s classifier: from memory, from disk, or built (and written)."""
        held = self._from_memory(task)
        if held is not None:
            return held
        path = self.path(task)
        classifier = self._read(path, task) if path is not None and path.is_file() else None
        if classifier is not None:
            self.note(f"{task.name}: zero-shot classifier read from {path}")
        else:
            classifier = build(task)
            if path is not None and not self._write(path, task, classifier):
                path = None
            where = f", cached in {path}" if path is not None else ""
            classes = len(task.classnames)
            self.note(f"{task.name}: zero-shot classifier built ({classes} classes{where})")
        self._memory[(task.templates, task.classnames)] = classifier
        return classifier

    def _from_memory(self, task: ZeroShotTask) -> torch.Tensor | None:
        """This run's classifier of the same classes, or the columns of ``task``'s classes in
        one built for a superset of them (each column depends on its own class's prompts only)."""
        wanted = set(task.classnames)
        for (templates, names), classifier in self._memory.items():
            if templates != task.templates or not wanted <= set(names):
                continue
            if names == task.classnames:
                self.note(f"{task.name}: zero-shot classifier reused from this run")
                return classifier
            index: dict[str, int] = {}
            for column, name in enumerate(names):
                index.setdefault(name, column)
            columns = torch.tensor([index[name] for name in task.classnames], device=self.device)
            self.note(
                f"{task.name}: zero-shot classifier of its {len(task.classnames)} classes taken "
                f"from this run's {len(names)}-class one"
            )
            return classifier.index_select(1, columns)
        return None

    def _read(self, path: Path, task: ZeroShotTask) -> torch.Tensor | None:
        """The cached classifier, None (with a warning) when the file is not a readable entry of
        this key, and an error when another tokenizer made it (see the module docstring)."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            made_with = TokenizerRecord(**saved["tokenizer"])
            classifier = saved["classifier"]
            expected = (FORMAT, VERSION, asdict(self.key), list(task.classnames))
            found = (saved["format"], saved["version"], saved["key"], saved["classes"])
            if found != expected or list(saved["templates"]) != list(task.templates):
                raise ValueError("its key is not this eval's")
            if classifier.ndim != 2 or classifier.shape[1] != len(task.classnames):
                raise ValueError(f"classifier of shape {list(classifier.shape)}")
        except Exception as error:  # any unreadable file is a lost cache entry, never a result
            self.note(f"warning: {path}: not a readable zero-shot cache ({error}); rebuilding it")
            return None
        if not made_with.same(self.tokenizer):
            raise ClipaError(
                f"{path}: this zero-shot cache was made with tokenizer {made_with.describe()}, "
                f"but this eval uses {self.tokenizer.describe()}; pass --tokenizer "
                f"{made_with.source} if that is the checkpoint's tokenizer, else delete {path}"
            )
        return classifier.to(self.device)

    def _write(self, path: Path, task: ZeroShotTask, classifier: torch.Tensor) -> bool:
        """Write the entry; False (with a warning) where the folder takes no files: a cache is
        worth no failed eval (read-only weights folders are common)."""
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "task": task.name,
            "key": asdict(self.key),
            "tokenizer": asdict(self.tokenizer),
            "classes": list(task.classnames),
            "templates": list(task.templates),
            "classifier": classifier.detach().cpu().contiguous(),
        }
        try:
            # Leftover temporaries are not swept here: one may be another eval's, being written.
            with atomic_writer(path) as handle:
                torch.save(payload, handle)
        except OSError as error:
            self.note(
                f"warning: zero-shot classifier not cached ({error}); pass --text-cache DIR "
                "(a writable folder) or --no-text-cache"
            )
            return False
        return True
