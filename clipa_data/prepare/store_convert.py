"""``clipa-data convert`` into an fsspec store (``gs://``, ``s3://``, ``hdfs://``, ``memory://``).

The same plan, bytes and metadata as a local conversion, written in the order that makes the
store's view safe without a folder rename (object stores have none):

1. the plan (the convert manifest without sizes) is published to the staging prefix
   ``<out>/<name>/.<version>.partial/`` (how a re-run tells its own unfinished run from another);
2. every shard goes straight to its final key in ``<out>/<name>/<version>/`` through
   ``stores.publish`` (temporary key, then copy): a copied tfrecord is put from SRC itself, a
   re-encoded one is first written to a local temporary folder exactly as ``placement`` writes
   it locally. A shard whose final key exists with the planned size (re-encoded: the planned
   record count) is kept, as local resume keeps a placed one;
3. ``features.json``, ``dataset_info.json`` (TFDS's writer, in a local folder) and last the
   complete manifest: the commit point. A run that finds it at the final prefix reuses it.

TFDS's reader reads local files (and only the stores TensorFlow has plugins for), so on a store
it does not run: every published shard's size is checked against its staged bytes instead
(``verify_published``). Only ``--mode copy`` (or ``auto``) applies on a store.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clipa_data.core import layout, tfrecord
from clipa_data.core.errors import ClipaError
from clipa_data.prepare import stores, tfds_metadata
from clipa_data.prepare.manifest import ConvertManifest, write_manifest
from clipa_data.prepare.placement import ENCODE, Placed, PlaceTask, place_shard
from clipa_data.prepare.runner import RunnerConfig, map_shards
from clipa_data.prepare.schema import Schema
from clipa_data.prepare.source_format import source_format
from clipa_data.prepare.tfds_metadata import Verification

if TYPE_CHECKING:  # convert imports this module
    from clipa_data.prepare.convert import ConvertConfig

STORE_MODES = ("auto", "copy")
"""``--mode`` values that work on a store (links and renames need one local filesystem)."""


def check_mode(mode: str, out: str) -> None:
    """Refuse hardlink, symlink and move into a store, in one line."""
    if mode not in STORE_MODES:
        raise ClipaError(
            f"--mode {mode}: OUT {out} is an fsspec store, where shards can only be copied "
            "(hardlink, symlink and move need a local OUT); use --mode copy"
        )


def read_manifest(folder: str) -> ConvertManifest | None:
    """The convert manifest under a store folder, or None if there is none."""
    url = str(layout.convert_manifest_path(folder))
    data = stores.read_json(url)
    if data is None:
        return None
    try:
        return ConvertManifest.from_json(data)
    except (KeyError, TypeError, ValueError) as error:
        raise ClipaError(
            f"{url} is not a convert manifest this version can read ({error!r}); remove {folder}"
        ) from None


def existing_conversion(
    final: str, staging: str, plan: ConvertManifest, overwrite: bool
) -> ConvertManifest | None:
    """The committed manifest when ``final`` holds this very conversion, else None.

    Raises when the store holds another (finished or unfinished) conversion, unless
    ``overwrite`` may delete it, or anything convert did not write.
    """
    previous = read_manifest(final)
    if previous is not None and previous.covers(plan):  # or was checked more thoroughly
        stores.remove_tree(staging)  # the plan of a run killed right after its commit
        return previous
    unfinished = read_manifest(staging)
    if previous is not None or (unfinished and unfinished.identity() != plan.identity()):
        kind, other = ("another", previous) if previous else ("an unfinished", unfinished)
        if not overwrite:
            raise ClipaError(
                f"{final} holds {kind} conversion ({other.difference(plan)}); pass "
                "--overwrite to replace it, or choose another --version or OUT"
            )
        stores.remove_tree(final)
        stores.remove_tree(staging)
    elif unfinished is None and not stores.is_empty(final):
        raise ClipaError(
            f"{final} exists but was not written by clipa-data convert; "
            "remove it yourself, or choose another --version or OUT"
        )
    return None


def _is_published(task: PlaceTask) -> bool:
    """Whether an earlier run published this shard (final keys only ever appear complete)."""
    stored = stores.size(task.target)
    if stored is None:
        return False
    if task.method == ENCODE:
        return sum(1 for _ in tfrecord.read_records(task.target)) == task.records
    return stored == (task.num_bytes if task.intact_bytes is None else task.intact_bytes)


def publish_shard(task: PlaceTask) -> Placed:
    """Put one shard at its final key ``task.target`` (skipped when already there)."""
    if _is_published(task):
        return Placed(task.target, stores.size(task.target) or 0, reused=True)
    if task.method == ENCODE or task.intact_bytes is not None:  # a salvage: its intact part
        with stores.staged(task.target) as local:
            staged = place_shard(dataclasses.replace(task, target=str(local)))
        return Placed(task.target, staged.num_bytes, reused=False)
    # A copy stages nothing: SRC's file is already the complete local file to put.
    return Placed(task.target, stores.publish(Path(task.source), task.target), reused=False)


def publish_all(config: ConvertConfig, final: str, manifest: ConvertManifest) -> list[Placed]:
    """Publish every planned shard (those already on the store are kept)."""
    shard_format = source_format(manifest.source.format)
    src = config.src.resolve()
    tasks = [
        PlaceTask(
            source=str(src / shard.source),
            target=str(layout.join(final, shard.target)),
            method=manifest.config.method,
            source_format=shard_format,
            records=shard.records,
            num_bytes=shard.source_bytes,
            intact_bytes=shard.damage.intact_bytes if shard.damage is not None else None,
        )
        for shard in manifest.shards
    ]
    plan = RunnerConfig(
        f"publishing ({manifest.config.method})",
        config.workers,
        "shards",
        config.show_progress,
        config.distributor,
        config.spark_master,
    )
    return map_shards(
        publish_shard, tasks, plan, units_of=lambda _: 1, name_of=lambda task: task.source
    )


def _commit(final: str, staging: str, manifest: ConvertManifest, schema: Schema) -> None:
    """Publish the metadata, then the complete manifest (the commit), then drop the plan."""
    with tempfile.TemporaryDirectory(prefix="clipa-metadata-") as folder:
        local = Path(folder)
        shards = {shard.target for shard in manifest.shards}
        for name in shards:  # TFDS's writer finds the shards by their names; it reads none
            (local / name).touch()
        tfds_metadata.write_for(local, manifest, schema)
        write_manifest(local, manifest)
        commit_order = [layout.DATASET_INFO, layout.CONVERT_MANIFEST]
        written = {p.name for p in local.iterdir()} - shards - set(commit_order)
        others = sorted(written)
        for name in [*others, *commit_order]:
            stores.publish(local / name, str(layout.join(final, name)))
    stores.remove_tree(staging)


def verify_published(final: str, manifest: ConvertManifest) -> Verification:
    """Every shard of ``manifest`` is on the store with its size (one listing), or raise."""
    started = time.perf_counter()
    stored = stores.sizes(final)
    for shard in manifest.shards:
        if stored.get(shard.target) != shard.bytes:
            found = "missing" if shard.target not in stored else f"{stored[shard.target]} bytes"
            raise ClipaError(
                f"{final}: shard {shard.target} is {found} but the manifest says "
                f"{shard.bytes} bytes; delete {final} and re-run clipa-data convert"
            )
    return Verification(len(manifest.shards), 0, time.perf_counter() - started)


def convert_into_store(
    config: ConvertConfig, staging: str, final: str, plan: ConvertManifest, schema: Schema
) -> tuple[str, ConvertManifest, int, dict[str, float], Verification]:
    """Plan, publish, commit and check; returns status, manifest, reused, phases, check."""
    resuming = read_manifest(staging) is not None  # same plan: existing_conversion checked
    stores.write_json(layout.convert_manifest_path(staging), plan.to_json())
    stores.remove_temporaries(final)  # of a run killed mid-upload
    placing = time.perf_counter()
    placed = publish_all(config, final, plan)
    stores.remove_temporaries(final)  # of a worker that died mid-upload (Spark retried it)
    placed_seconds = time.perf_counter() - placing
    started = time.perf_counter()
    manifest = plan.with_placed([result.num_bytes for result in placed])
    # Checked before the commit: a shard missing now (e.g. written by a worker to its own
    # memory:// store) must not stand behind a manifest that says the builder is complete.
    verification = verify_published(final, manifest)
    _commit(final, staging, manifest, schema)
    phases = {"place": placed_seconds, "metadata": time.perf_counter() - started}
    reused = sum(result.reused for result in placed)
    status = "resumed" if resuming else "converted"
    return status, manifest, reused, phases, verification
