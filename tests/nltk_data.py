"""A small NLTK data folder built by the tests themselves, in NLTK's own formats.

This machine cannot download NLTK's official ``averaged_perceptron_tagger_eng`` or
``punkt_tab``. So the tests train the same classes on a few hundred tagged caption-like
sentences (``PerceptronTagger.train`` + ``save_to_json``) and a Punkt model
(``PunktTrainer`` + ``save_punkt_params``), and save them where NLTK looks under a temporary
``NLTK_DATA``. The code under test then loads and runs them exactly as it would the official
files: ``nltk.word_tokenize`` and ``nltk.pos_tag`` work unchanged.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clipa_data.demo import synthetic_captions as sc

DETERMINERS = ("a", "the", "A", "The", "An", "an")
NUMBERS = ("two", "three", "Two", "Three")


def tagged_sentences(count: int = 400, seed: int = 0) -> list[list[tuple[str, str]]]:
    """Caption-like sentences with their Penn Treebank tags, from known word classes."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        noun = rng.choice(sc.NOUNS)
        plural = rng.random() < 0.3
        head = [(rng.choice(NUMBERS), "CD")] if plural else [(rng.choice(DETERMINERS), "DT")]
        sentence = [
            *head,
            (rng.choice(sc.ADJECTIVES), "JJ"),
            (noun + "s" if plural else noun, "NNS" if plural else "NN"),
            (rng.choice(sc.VERBS), "VBG"),
            (rng.choice(["on", "in", "near", "under", "with", "by"]), "IN"),
            (rng.choice(["the", "a"]), "DT"),
            *([(rng.choice(sc.ADJECTIVES), "JJ")] if rng.random() < 0.5 else []),
            (rng.choice(sc.NOUNS), "NN"),
        ]
        if rng.random() < 0.3:
            sentence += [(",", ","), (rng.choice(sc.PLACES)[0].split()[0], "NNP")]
        if rng.random() < 0.2:
            sentence += [("and", "CC"), (rng.choice(sc.ADJECTIVES), "JJ")]
        sentence.append((rng.choice([".", "!"]), "."))
        sentences.append(sentence)
    return sentences


def build_nltk_data(root: Path) -> Path:
    """Write ``taggers/averaged_perceptron_tagger_eng`` and ``tokenizers/punkt_tab/english``.

    NLTK only writes model files inside its data folders, so ``root`` must be on
    ``nltk.data.path`` while this runs.
    """
    from nltk.tag.perceptron import PerceptronTagger
    from nltk.tokenize.punkt import PunktTrainer, save_punkt_params

    random.seed(0)  # PerceptronTagger.train shuffles with the global random module
    tagger = PerceptronTagger(load=False)
    tagger.train(tagged_sentences(), nr_iter=5)
    tagger.save_to_json(lang="eng", loc=str(root / "taggers" / "averaged_perceptron_tagger_eng"))

    trainer = PunktTrainer()
    trainer.train(" ".join(sc.laion_like_captions(300, seed=5)), finalize=True)
    params = trainer.get_params()
    params.abbrev_types.update({"dr", "mr", "mrs", "st", "e.g", "approx"})
    (root / "tokenizers" / "punkt_tab").mkdir(parents=True, exist_ok=True)
    save_punkt_params(params, dir=str(root / "tokenizers" / "punkt_tab" / "english"))
    return root


@pytest.fixture(scope="session")
def nltk_data_dir(tmp_path_factory) -> Path:
    """A session-wide NLTK data folder with the test-built tagger and Punkt model."""
    import nltk

    root = tmp_path_factory.mktemp("nltk_data")
    saved = list(nltk.data.path)
    nltk.data.path.insert(0, str(root))
    try:
        return build_nltk_data(root)
    finally:
        nltk.data.path[:] = saved


@pytest.fixture
def nltk_env(nltk_data_dir, monkeypatch) -> Path:
    """``NLTK_DATA`` points at the test-built data (for this process and its children)."""
    import nltk

    monkeypatch.setenv("NLTK_DATA", str(nltk_data_dir))
    monkeypatch.setattr(nltk.data, "path", [p for p in nltk.data.path if p != str(nltk_data_dir)])
    return nltk_data_dir


@pytest.fixture
def no_nltk_data(tmp_path, monkeypatch) -> Path:
    """NLTK finds no data at all: ``NLTK_DATA`` is an empty folder and the search path only it."""
    import nltk

    empty = tmp_path / "empty_nltk_data"
    empty.mkdir()
    monkeypatch.setenv("NLTK_DATA", str(empty))
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    return empty
