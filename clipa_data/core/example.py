"""``tf.train.Example`` without TensorFlow.

The message classes are built at run time from a descriptor (in a private descriptor pool, so
they never clash with TensorFlow's own registration when both are loaded) and parsed by the
installed protobuf runtime (upb, in C). The wire format is identical to TensorFlow's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Literal

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

Kind = Literal["bytes", "float", "int64"]
"""The three value kinds a ``tf.train.Feature`` can hold."""

FeatureMap = dict[str, tuple[Kind, list]]
"""A decoded example: feature name -> (kind, values)."""

_KIND_FIELDS: dict[str, Kind] = {
    "bytes_list": "bytes",
    "float_list": "float",
    "int64_list": "int64",
}


def _list_message(name: str, field_type: int) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name)
    message.field.add(name="value", number=1, type=field_type, label=3)
    return message


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="clipa/tf_example.proto", package="tensorflow", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    fdp.message_type.append(_list_message("BytesList", field.TYPE_BYTES))
    fdp.message_type.append(_list_message("FloatList", field.TYPE_FLOAT))
    fdp.message_type.append(_list_message("Int64List", field.TYPE_INT64))

    feature = descriptor_pb2.DescriptorProto(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (field_name, type_name) in enumerate(
        [("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")],
        start=1,
    ):
        feature.field.add(
            name=field_name,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=f".tensorflow.{type_name}",
            label=1,
            oneof_index=0,
        )
    fdp.message_type.append(feature)

    features = descriptor_pb2.DescriptorProto(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=1)
    entry.field.add(
        name="value", number=2, type=field.TYPE_MESSAGE, type_name=".tensorflow.Feature", label=1
    )
    features.field.add(
        name="feature",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=".tensorflow.Features.FeatureEntry",
        label=3,
    )
    fdp.message_type.append(features)

    example = descriptor_pb2.DescriptorProto(name="Example")
    example.field.add(
        name="features",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=".tensorflow.Features",
        label=1,
    )
    fdp.message_type.append(example)
    return fdp


@functools.cache
def example_class() -> type:
    """The ``tensorflow.Example`` message class (built once per process)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def parse_message(raw: bytes):
    """Parse serialized bytes into an Example message (fast path for readers)."""
    return example_class().FromString(raw)


def decode_example(raw: bytes) -> FeatureMap:
    """Decode a serialized ``tf.train.Example`` into ``{name: (kind, values)}``.

    A feature with no kind set (possible on the wire) decodes as ``("bytes", [])``.
    """
    decoded: FeatureMap = {}
    for name, feature in parse_message(raw).features.feature.items():
        which = feature.WhichOneof("kind")
        if which is None:
            decoded[name] = ("bytes", [])
        else:
            decoded[name] = (_KIND_FIELDS[which], list(getattr(feature, which).value))
    return decoded


def encode_example(features: Mapping[str, tuple[Kind, Sequence]]) -> bytes:
    """Serialize ``{name: (kind, values)}`` into ``tf.train.Example`` bytes."""
    message = example_class()()
    feature_map = message.features.feature
    for name, (kind, values) in features.items():
        target = feature_map[name]
        if kind == "bytes":
            target.bytes_list.value.extend(
                v.encode() if isinstance(v, str) else bytes(v) for v in values
            )
        elif kind == "float":
            target.float_list.value.extend(float(v) for v in values)
        elif kind == "int64":
            target.int64_list.value.extend(int(v) for v in values)
        else:
            raise ValueError(f"unknown feature kind {kind!r} for {name!r}")
    # Sorted map keys: protobuf otherwise orders them differently in every process, and a
    # resumed (or repeated) conversion must write the same bytes.
    return message.SerializeToString(deterministic=True)


def bytes_value(message, name: str) -> bytes | None:
    """The first bytes value of feature ``name`` of a parsed message, or None if absent/empty."""
    features = message.features.feature
    if name not in features:
        return None
    values = features[name].bytes_list.value
    return values[0] if values else None
