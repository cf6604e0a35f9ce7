"""The typed convert manifest: JSON round trip, the file form earlier versions wrote, identity."""

from __future__ import annotations

import json

import pytest

from clipa_data.core import layout
from clipa_data.core.errors import ClipaError
from clipa_data.prepare.manifest import ConvertManifest, read_manifest, write_manifest


def shard(index: int, source: str, records: int, **extra) -> dict:
    return {
        "index": index,
        "target": layout.shard_filename("demo", "train", index, 2),
        "source": source,
        "records": records,
        "source_bytes": 1000 + index,
        "source_mtime_ns": 1_700_000_000_000_000_000 + index,
        "stats_successes": records if index else None,
        "first_key": f"0000{index}0000" if index else None,
        **extra,
    }


def plan_json() -> dict:
    """A plan as the dict-building code before the typed manifest wrote it (key order too)."""
    return {
        "manifest_version": 1,
        "dataset": {"name": "demo", "version": "1.0.0", "split": "train"},
        "source": {"folder": "/data/raw", "format": "webdataset"},
        "config": {
            "method": "encode",
            "verify": "crc",
            "schema_records": 0,
            "drop_columns": ["exif"],
            "skip_bad_shards": True,
        },
        "schema": {
            "features": {"key": {"kind": "bytes", "list": False, "type": "text"}},
            "dropped": ["exif"],
        },
        "shards": [shard(0, "00000.tar", 5), shard(1, "00002.tar", 4)],
        "dropped_empty": ["00003.tar"],
        "skipped_bad": [{"source": "00001.tar", "problem": "00001.tar: corrupt"}],
        "totals": {"shards": 2, "records": 9},
        "versions": {"clipa": "0.1.0", "img2dataset": None},
    }


def finished_json() -> dict:
    """The same manifest after placement: every shard's bytes and the total."""
    finished = plan_json()
    finished["shards"] = [shard(0, "00000.tar", 5, bytes=700), shard(1, "00002.tar", 4, bytes=600)]
    finished["totals"]["bytes"] = 1300
    return finished


@pytest.mark.parametrize("make", [plan_json, finished_json])
def test_earlier_file_form_reads_and_writes_back_byte_identical(make):
    data = make()
    manifest = ConvertManifest.from_json(data)
    assert json.dumps(manifest.to_json(), indent=2) == json.dumps(data, indent=2)
    assert ConvertManifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest


def test_typed_fields_and_placement():
    plan = ConvertManifest.from_json(plan_json())
    assert plan.dataset.split == "train" and plan.source.format == "webdataset"
    assert plan.config.drop_columns == ("exif",) and plan.skipped_bad[0].source == "00001.tar"
    assert plan.records == 9 and plan.num_bytes is None
    finished = plan.with_placed([700, 600])
    assert finished.to_json() == finished_json()
    assert finished.num_bytes == 1300 and plan.num_bytes is None  # frozen: the plan is unchanged
    assert finished.identity() == plan.identity()


def test_identity_names_what_differs():
    plan = ConvertManifest.from_json(plan_json())
    other = plan_json()
    other["source"]["folder"] = "/elsewhere"
    other["shards"][1]["records"] = 3
    other["versions"] = {"clipa": "9.9.9"}  # versions never make another conversion
    assert plan.difference(ConvertManifest.from_json(other)) == "different source, shards"
    split = plan_json()
    split["dataset"]["split"] = "validation"
    assert plan.difference(ConvertManifest.from_json(split)) == (
        "different dataset: --split train → validation; a builder directory holds the one split "
        "it was converted with"
    )


def test_read_and_write_a_builder_folder(tmp_path):
    assert read_manifest(tmp_path) is None
    manifest = ConvertManifest.from_json(finished_json())
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    path = tmp_path / layout.CONVERT_MANIFEST
    assert path.read_text() == json.dumps(finished_json(), indent=2) + "\n"


@pytest.mark.parametrize(("text", "fragment"), [("{", "damaged (not JSON)"), ("{}", "can read")])
def test_unreadable_manifest_is_one_clear_line(tmp_path, text, fragment):
    (tmp_path / layout.CONVERT_MANIFEST).write_text(text)
    with pytest.raises(ClipaError) as raised:
        read_manifest(tmp_path)
    message = str(raised.value)
    assert "\n" not in message and fragment in message
    assert message.endswith(f"remove {tmp_path}")


def test_a_salvaged_shard_round_trips_typed():
    data = finished_json()
    damage = {
        "problem": "00000.tar: corrupt tar archive at byte 512",
        "intact_bytes": 512,
        "lost": 2,
    }
    data["shards"][0]["damage"] = damage
    manifest = ConvertManifest.from_json(data)
    (entry,) = manifest.damaged
    assert (entry.source, entry.records, entry.damage.lost) == ("00000.tar", 5, 2)
    assert entry.damage.intact_bytes == 512
    assert manifest.to_json() == data and "damage" not in manifest.to_json()["shards"][1]
    assert manifest.difference(ConvertManifest.from_json(finished_json())) == "different shards"
