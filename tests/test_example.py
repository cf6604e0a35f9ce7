"""tf.train.Example without TensorFlow: byte-level parity with TensorFlow's protos."""

from __future__ import annotations

import pytest

from clipa_data.core.example import bytes_value, decode_example, encode_example, parse_message

FEATURES = {
    "key": ("bytes", [b"000000001"]),
    "jpg": ("bytes", [b"\xff\xd8\xff" + bytes(range(256))]),
    "txt": ("bytes", ["a red circle ☺".encode()]),
    "width": ("int64", [256]),
    "similarity": ("float", [0.3125]),
    "empty": ("bytes", [b""]),
    "many": ("int64", [1, -2, 3]),
}


def test_round_trip():
    decoded = decode_example(encode_example(FEATURES))
    assert decoded == {name: (kind, list(values)) for name, (kind, values) in FEATURES.items()}


def test_bytes_value_fast_path():
    message = parse_message(encode_example(FEATURES))
    assert bytes_value(message, "key") == b"000000001"
    assert bytes_value(message, "missing") is None


def test_parity_with_tensorflow():
    tf = pytest.importorskip("tensorflow")
    ours = encode_example(FEATURES)
    theirs = tf.train.Example.FromString(ours)
    assert theirs.features.feature["txt"].bytes_list.value[0] == "a red circle ☺".encode()
    assert list(theirs.features.feature["many"].int64_list.value) == [1, -2, 3]
    # And TensorFlow's serialization decodes to the same mapping.
    assert decode_example(theirs.SerializeToString()) == decode_example(ours)
    parsed = tf.io.parse_single_example(
        ours,
        {
            "key": tf.io.FixedLenFeature([], tf.string),
            "similarity": tf.io.FixedLenFeature([], tf.float32),
        },
    )
    assert parsed["key"].numpy() == b"000000001"
    assert parsed["similarity"].numpy() == pytest.approx(0.3125)
