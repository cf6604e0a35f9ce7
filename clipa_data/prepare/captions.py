"""The captions of a tfrecord shard: ``(key, text)`` of every record, in the shard's own order.

img2dataset writes records in completion order, not in its parquet's order, so everything keyed
to records (sidecar rows) is built by reading the shard itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError, CorruptShardError
from clipa_data.core.example import parse_message
from clipa_data.core.tfrecord import read_records

KEY_FIELD = "key"
DEFAULT_TEXT_FIELD = layout.DEFAULT_TEXT_FIELD


@dataclass(frozen=True)
class Caption:
    """One record's key and caption text."""

    key: str
    """The record's img2dataset key."""
    text: str
    """The caption, decoded from UTF-8 (invalid bytes become U+FFFD)."""


def decode_text(raw: bytes) -> str:
    """Caption text of a bytes feature: UTF-8, with invalid bytes replaced (never a crash)."""
    return raw.decode("utf-8", errors="replace")


def _first_bytes(features, name: str, shard: str, index: int) -> bytes:
    if name not in features:
        available = ", ".join(sorted(features)) or "none"
        fix = (
            "records need img2dataset's keys to be joined with sidecars"
            if name == KEY_FIELD
            else "pass the caption feature with --text-field"
        )
        raise ClipaError(
            f"{shard}: record {index} has no feature {name!r} (it has: {available}); {fix}"
        )
    kind = features[name].WhichOneof("kind")
    if kind not in (None, "bytes_list"):
        raise ClipaError(
            f"{shard}: record {index}'s feature {name!r} holds numbers ({kind}), not text; "
            "pass the caption feature with --text-field"
        )
    values = features[name].bytes_list.value
    return values[0] if values else b""


def check_text_feature(builder: str | Path, text_field: str) -> None:
    """Refuse a ``--text-field`` that the builder's ``features.json`` declares as something
    other than text (the image bytes of ``jpg`` were tagged and previewed as captions)."""
    path = layout.join(builder, layout.FEATURES)
    if not layout.exists(path):
        return  # a builder written otherwise: each record is checked as it is read
    features = json.loads(layout.read_text(path)).get("featuresDict", {}).get("features", {})
    declared = features.get(text_field, {}).get("pythonClassName", "")
    if not declared or declared.endswith(".Text"):
        return
    texts = sorted(
        name for name, f in features.items() if f.get("pythonClassName", "").endswith(".Text")
    )
    raise ClipaError(
        f"--text-field {text_field}: {path} declares it {declared.rsplit('.', 1)[-1]}, not text; "
        f"pass a text feature ({', '.join(texts) or 'none declared'})"
    )


def iter_captions(shard: str | Path, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[Caption]:
    """Yield the caption of every record of ``shard`` in record order.

    A record without the text feature (a wrong ``--text-field``, or one that holds numbers), without
    a key, or that does not parse, and a shard that cannot be read, are errors naming the shard
    (and record); an empty or absent value is an empty caption.
    """
    name = str(shard)
    fix = "restore the builder directory's shards (or re-run clipa-data convert into a new OUT)"
    try:
        for index, raw in enumerate(read_records(shard)):
            try:
                features = parse_message(raw).features.feature
            except DecodeError as error:
                raise ClipaError(
                    f"{name}: record {index} is not a tf.train.Example ({error}); {fix}"
                ) from None
            key = _first_bytes(features, KEY_FIELD, name, index)
            text = _first_bytes(features, text_field, name, index)
            yield Caption(key=decode_text(key), text=decode_text(text))
    except CorruptShardError as error:
        raise ClipaError(f"{error}; {fix}") from None
    except OSError as error:
        raise ClipaError(f"{name} cannot be read ({error.strerror or error}); {fix}") from None


def read_captions(shard: str | Path, text_field: str = DEFAULT_TEXT_FIELD) -> list[Caption]:
    """All captions of ``shard`` in record order."""
    return list(iter_captions(shard, text_field))
