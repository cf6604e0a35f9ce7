"""TFDS metadata for a folder of shards: written by TFDS's own writer, then proven by its reader.

``write`` hands ``tfds.folder_dataset.write_metadata`` the exact shard lengths convert counted
(TFDS never recounts), and ``verify`` loads the result with ``tfds.builder_from_directory``,
compares the declared lengths and files, and reads the first example of every shard through
TFDS's own reader and feature decoders. TensorFlow is imported inside these functions only.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.prepare.schema import Column, Schema, image_format

if TYPE_CHECKING:
    from clipa_data.prepare.manifest import ConvertManifest

TENSORFLOW_IO_PLUGIN_WARNINGS = (
    "unable to load libtensorflow_io_plugins.so",
    "file system plugins are not loaded",
)
"""The start of tensorflow_io's import warnings when its .so files do not match TF."""
VERIFY_CHUNK = 512
"""Shards read per ``as_dataset`` call while verifying (keeps one read plan small)."""


def import_tensorflow() -> float:
    """Import TensorFlow and TFDS quietly (once per process); returns the seconds it took.

    TF 2.21 prints oneDNN and absl start-up lines whatever TF_CPP_MIN_LOG_LEVEL says;
    TF_ENABLE_ONEDNN_OPTS=0 silences them (it only changes oneDNN math kernels, which
    parsing records and decoding images do not use). Both only apply if not already set;
    level 2 still prints TensorFlow's errors. tensorflow_io, when TFDS pulls it in, warns that
    its plugins (built for another TF) do not load: those two warnings, and only those, are
    dropped (TFDS reads local files through TF itself).
    """
    started = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    with warnings.catch_warnings():
        for message in TENSORFLOW_IO_PLUGIN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        import tensorflow  # noqa: F401
        import tensorflow_datasets  # noqa: F401

    return time.perf_counter() - started


def feature_connector(column: Column):
    """The TFDS feature for one column: Image for the image, Text for bytes, scalars, lists."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    fmt = image_format(column.name)
    if fmt in ("jpeg", "png") and column.kind == "bytes" and not column.is_list:
        return tfds.features.Image(shape=(None, None, 3), encoding_format=fmt)
    if fmt == "webp" and column.kind == "bytes" and not column.is_list:
        # TF decodes webp as a one-frame animation (4-D), which tfds Image rejects: keep the
        # encoded bytes and let the loader decode them.
        return tfds.features.Tensor(shape=(), dtype=tf.string)
    dtype = {"bytes": tf.string, "int64": np.int64, "float": np.float32}[column.kind]
    if column.is_list:
        return tfds.features.Tensor(shape=(None,), dtype=dtype)
    if column.kind == "bytes":
        return tfds.features.Text()
    return tfds.features.Scalar(dtype=dtype)


def features_dict(schema: Schema):
    """The ``FeaturesDict`` declaring every column of ``schema``."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({c.name: feature_connector(c) for c in schema.columns})


def write(
    builder: Path,
    *,
    name: str,
    version: str,
    split: str,
    shard_lengths: Sequence[int],
    num_bytes: int,
    schema: Schema,
    description: str,
) -> None:
    """Write ``dataset_info.json`` and ``features.json`` into ``builder`` with TFDS's writer."""
    import_tensorflow()
    import tensorflow_datasets as tfds

    template = tfds.core.ShardedFileTemplate(
        data_dir=builder,
        template=layout.DEFAULT_TEMPLATE,
        dataset_name=name,
        split=split,
        filetype_suffix=layout.FILE_FORMAT,
    )
    split_info = tfds.core.SplitInfo(
        name=split,
        shard_lengths=list(shard_lengths),
        num_bytes=num_bytes,
        filename_template=template,
    )
    tfds.folder_dataset.write_metadata(
        data_dir=builder,
        features=features_dict(schema),
        split_infos=[split_info],
        version=version,
        filename_template=template,
        check_data=False,  # verify() below reads far more than TFDS's one-example check
        description=description,
    )


def write_for(builder: Path, manifest: ConvertManifest, schema: Schema) -> None:
    """``write`` what convert's complete ``manifest`` declares (local folder or store staging)."""
    write(
        builder,
        name=manifest.dataset.name,
        version=manifest.dataset.version,
        split=manifest.dataset.split,
        shard_lengths=[shard.records for shard in manifest.shards],
        num_bytes=manifest.num_bytes,
        schema=schema,
        description=(
            f"img2dataset shards from {manifest.source.folder}, converted by clipa-data convert"
        ),
    )


@dataclass(frozen=True)
class Verification:
    """What reading the builder back with TFDS proved."""

    shards: int
    """Shards whose length and file TFDS agrees on."""
    examples_decoded: int
    """Examples read and decoded through TFDS (one per shard)."""
    seconds: float
    """Wall time of the verification."""


def _first_examples(builder, split: str, starts: Sequence[int]):
    import tensorflow_datasets as tfds

    instruction = "+".join(f"{split}[{start}:{start + 1}]" for start in starts)
    dataset = builder.as_dataset(
        split=instruction,
        shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    return list(dataset.as_numpy_iterator())


def _reason(error: Exception) -> str:
    """The first line of a TF/TFDS error, without TF's op and iterator boilerplate."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"^Error in user-defined function .*? with iterator: \S+: ", "", text)
    return re.sub(r"\s*\[Op:\w+\].*$", "", text).strip()


def _unreadable_shard(builder, split: str, starts: Sequence[int], first: int) -> tuple[int, str]:
    """The first shard (from index ``first``) whose first example TFDS cannot read, and why.

    Only called after reading a whole chunk failed, so reading shard by shard costs nothing on
    a good result.
    """
    for offset, start in enumerate(starts):
        try:
            if len(_first_examples(builder, split, [start])) != 1:
                return first + offset, "no example read"
        except Exception as error:  # tf.errors.* / AssertionError from TFDS's cardinality check
            return first + offset, _reason(error)
    return first, "the shards read one by one are fine, but not together"


def verify(
    builder_path: Path,
    *,
    split: str,
    shard_lengths: Sequence[int],
    first_keys: Sequence[str | None],
    fix: str | None = None,
    unreadable_fix: Callable[[int], str] | None = None,
) -> Verification:
    """Load ``builder_path`` with TFDS and prove it holds what convert wrote, or raise.

    ``fix`` ends every error message (default: delete the folder and re-run convert), except
    that of a shard whose first example TFDS cannot read: ``unreadable_fix(shard index)``, when
    given (the record came so from its source: converting again would fail the same way).
    """
    import_tensorflow()
    started = time.perf_counter()
    import tensorflow_datasets as tfds

    fix = fix or f"delete {builder_path} and re-run clipa-data convert"
    try:
        builder = tfds.builder_from_directory(str(builder_path))
        info = builder.info.splits[split]
    except Exception as error:  # TFDS raises many types; all mean "cannot load"
        raise ClipaError(
            f"{builder_path}: TFDS cannot load the result ({_reason(error)}); {fix}"
        ) from None
    names = [path.name for path in info.filepaths]
    declared = list(info.shard_lengths)
    if len(declared) != len(shard_lengths):
        raise ClipaError(
            f"{builder_path}: {layout.DATASET_INFO} declares {len(declared)} shards for split "
            f"{split} but convert wrote {len(shard_lengths)}; {fix}"
        )
    for index, (got, want) in enumerate(zip(declared, shard_lengths, strict=True)):
        if got != want:
            raise ClipaError(
                f"{builder_path}: {layout.DATASET_INFO} declares {got} records for shard {index} "
                f"({names[index]}) but convert counted {want}; {fix}"
            )
    for path in info.filepaths:
        if not path.exists():
            raise ClipaError(f"{builder_path}: shard {path.name} is missing; {fix}")
    image_columns = [
        name
        for name, feature in builder.info.features.items()
        if isinstance(feature, tfds.features.Image)
    ]
    starts = [0, *itertools.accumulate(shard_lengths)][:-1]
    decoded = 0
    for chunk in range(0, len(starts), VERIFY_CHUNK):
        wanted = starts[chunk : chunk + VERIFY_CHUNK]
        try:
            examples = _first_examples(builder, split, wanted)
        except Exception:  # tf.errors.* when a record does not match features.json
            examples = None
        if examples is None or len(examples) != len(wanted):
            index, reason = _unreadable_shard(builder, split, wanted, chunk)
            raise ClipaError(
                f"{builder_path}: TFDS cannot read the first example of shard {index} "
                f"({names[index]}): {reason}; {unreadable_fix(index) if unreadable_fix else fix}"
            )
        for offset, example in enumerate(examples):
            index = chunk + offset
            expected = first_keys[index]
            if expected is not None and "key" in example and example["key"].decode() != expected:
                raise ClipaError(
                    f"{builder_path}: shard {index} ({names[index]}) starts with key "
                    f"{example['key'].decode()!r} but its source starts with {expected!r}; {fix}"
                )
            for column in image_columns:
                if example[column].ndim != 3:
                    raise ClipaError(
                        f"{builder_path}: shard {index} ({names[index]}): {column} did not "
                        f"decode; {fix}"
                    )
        decoded += len(examples)
    return Verification(
        shards=len(shard_lengths),
        examples_decoded=decoded,
        seconds=time.perf_counter() - started,
    )
