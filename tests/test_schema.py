"""Schema inference: every record's kinds, wherever in the shard the odd record sits."""

from __future__ import annotations

import pytest

from clipa_data.core.errors import ClipaError
from clipa_data.core.example import encode_example
from clipa_data.prepare.schema import FULL_PARSE_RECORDS, merge, observe, skeleton


def record(index: int, **overrides) -> bytes:
    features = {
        "key": ("bytes", [f"{index:09d}".encode()]),
        "jpg": ("bytes", [bytes([index % 256]) * (100 + index)]),
        "txt": ("bytes", [f"caption {index}".encode()]),
        "width": ("int64", [64 + index]),
        "similarity": ("float", [index / 1000]),
    }
    for name, value in overrides.items():
        if value is None:
            features.pop(name)
        else:
            features[name] = value
    return encode_example(features)


def test_skeleton_ignores_values_but_not_kinds_or_names():
    assert skeleton(record(1)) == skeleton(record(2))
    assert skeleton(record(1)) != skeleton(record(1, similarity=("bytes", [b""])))
    assert skeleton(record(1)) != skeleton(record(1, similarity=None))


def test_clean_records_give_one_kind_per_column():
    facts = observe(record(i) for i in range(300))
    schema = merge([("00000.tfrecord", facts)])
    assert [(c.name, c.kind, c.is_list) for c in schema.columns] == [
        ("key", "bytes", False),
        ("jpg", "bytes", False),
        ("txt", "bytes", False),
        ("similarity", "float", False),
        ("width", "int64", False),
    ]
    assert facts.records == 300 and facts.first_key == "000000000"


@pytest.mark.parametrize("odd", [3, FULL_PARSE_RECORDS + 57])
def test_a_column_changing_type_is_found_anywhere(odd):
    records = [record(i) for i in range(FULL_PARSE_RECORDS + 100)]
    records[odd] = record(odd, similarity=("bytes", [b""]))
    with pytest.raises(ClipaError) as caught:
        merge([("00007.tfrecord", observe(records))])
    message = str(caught.value)
    assert "column 'similarity' changes type: float 0 in 00007.tfrecord record 0" in message
    assert f"bytes b'' in 00007.tfrecord record {odd} (key {odd:09d})" in message
    assert "missing number as empty bytes" in message
    assert "--drop-column similarity" in message
    assert merge([("00007.tfrecord", observe(records))], drop=["similarity"]).dropped == (
        "similarity",
    )


def test_a_column_changing_type_between_shards():
    first = observe(record(i) for i in range(5))
    second = observe(record(i, width=("bytes", [b"64"])) for i in range(5, 9))
    with pytest.raises(
        ClipaError,
        match=r"'width' changes type: int64 64 in a record 0 .* "
        r"bytes b'64' in b record 0 \(key 000000005\)",
    ):
        merge([("a", first), ("b", second)])


@pytest.mark.parametrize("odd", [0, 4, FULL_PARSE_RECORDS + 3])
def test_a_missing_column_is_found(odd):
    records = [record(i) for i in range(FULL_PARSE_RECORDS + 10)]
    records[odd] = record(odd, txt=None)
    with pytest.raises(
        ClipaError, match=rf"'txt' is missing from s record {odd} .*--drop-column txt"
    ):
        merge([("s", observe(records))])


def test_a_column_absent_from_a_whole_shard():
    first = observe(record(i) for i in range(3))
    second = observe(record(i, similarity=None) for i in range(3, 6))
    with pytest.raises(ClipaError, match="'similarity' is missing from b record 0"):
        merge([("a", first), ("b", second)])


def test_variable_value_counts_make_a_list_feature():
    records = [record(i, tags=("bytes", [b"x"] * (1 + i % 3))) for i in range(6)]
    schema = merge([("s", observe(records))])
    tags = next(c for c in schema.columns if c.name == "tags")
    assert tags.is_list and tags.describe() == "text list"


def test_dropping_an_unknown_column_is_refused():
    with pytest.raises(ClipaError, match="--drop-column simlarity: no such column"):
        merge([("s", observe([record(0)]))], drop=["simlarity"])


def test_records_without_an_image_are_refused():
    with pytest.raises(ClipaError, match="no image feature"):
        merge([("s", observe([record(0, jpg=None)]))])
