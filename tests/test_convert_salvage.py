"""``clipa-data convert --skip-bad-shards`` salvages every whole record before a shard's damage.

Through the installed console script, as a user runs it: a tfrecord shard of 100 records cut
short by 100 bytes and one with a bad data checksum in its fourth record, then a webdataset tar
cut in the middle of its last member. Without the flag: the one-line refusal (exit 2), nothing
in OUT. With it: exit 0, one console line per damaged shard with the salvaged and lost counts,
the counts in the manifest and summary, TFDS's metadata and reader seeing exactly the salvaged
records, each shard the bytes an undamaged conversion writes for those records, the source
untouched (sha256 before and after), and a re-run a no-op.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from img2dataset_shards import make_samples, write_shard

from clipa_data.core import layout, tfrecord
from clipa_data.prepare import info, webdataset
from clipa_data.prepare.manifest import read_manifest

NAME = "salvage"


def convert(src: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "clipa-data"
    command = [str(script), "convert", str(src), str(out), "--name", NAME, "--no-progress"]
    return subprocess.run(
        [*command, "--workers", "1", *options], capture_output=True, text=True, timeout=300
    )


def sha256s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def record_starts(shard: Path) -> list[int]:
    """Byte offset of every record of a tfrecord file, and its end."""
    sizes = [
        tfrecord.HEADER_SIZE + len(r) + tfrecord.FOOTER_SIZE for r in tfrecord.read_records(shard)
    ]
    return [0, *itertools.accumulate(sizes)]


def tfds_split(builder: Path) -> tuple[list[int], list[dict]]:
    """Shard lengths of TFDS's metadata and every record as TFDS's reader gives it."""
    import tensorflow_datasets as tfds

    loaded = tfds.builder_from_directory(str(builder))
    dataset = loaded.as_dataset(
        split="train",
        shuffle_files=False,
        decoders={"jpg": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(interleave_cycle_length=1),
    )
    return list(loaded.info.splits["train"].shard_lengths), list(dataset.as_numpy_iterator())


def assert_refused(src: Path, out: Path, shard: str) -> None:
    done = convert(src, out)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert shard in lines[0] and "--skip-bad-shards" in lines[0], lines[0]
    assert not out.exists() or not any(out.rglob("*"))


def assert_tfds_reads(builder: Path, expected: list[list[bytes]]) -> None:
    """TFDS's metadata and reader: exactly ``expected`` (serialized Examples per shard)."""
    from clipa_data.core.example import decode_example

    lengths, loaded = tfds_split(builder)
    assert lengths == [len(shard) for shard in expected]
    originals = [decode_example(raw) for raw in itertools.chain(*expected)]
    assert len(loaded) == len(originals)
    for got, want in zip(loaded, originals, strict=True):
        assert got["key"] == want["key"][1][0]
        assert got["jpg"] == want["jpg"][1][0]
        assert got["txt"] == want["txt"][1][0]


def test_tfrecord_shards_cut_short_or_with_a_bad_checksum(tmp_path):
    pristine = tmp_path / "pristine"
    write_shard(pristine, 0, make_samples(0, 100))
    write_shard(pristine, 1, make_samples(1, 6))
    src = tmp_path / "raw"
    shutil.copytree(pristine, src)
    cut = src / "00000.tfrecord"
    cut.write_bytes(cut.read_bytes()[:-100])
    starts = {
        shard: record_starts(pristine / shard) for shard in ("00000.tfrecord", "00001.tfrecord")
    }
    assert starts["00000.tfrecord"][-1] - starts["00000.tfrecord"][-2] > 100  # only one cut
    flipped = src / "00001.tfrecord"
    data = bytearray(flipped.read_bytes())
    data[starts["00001.tfrecord"][3] + 40] ^= 0xFF  # inside the fourth record's payload
    flipped.write_bytes(bytes(data))
    before = sha256s(src)
    out = tmp_path / "out"

    assert_refused(src, out, str(cut))

    done = convert(src, out, "--skip-bad-shards", "--verify", "crc")
    assert done.returncode == 0, done.stderr
    assert "damaged shard 00000.tfrecord: salvaged 99 records, lost 1 (" in done.stdout
    assert "damaged shard 00001.tfrecord: salvaged 3 records, lost 3 (" in done.stdout
    assert "data checksum mismatch" in done.stdout and "runs past the end" in done.stdout
    builder = layout.builder_dir(out, NAME, "1.0.0")

    manifest = read_manifest(builder)
    assert [(s.source, s.records, s.damage.lost) for s in manifest.damaged] == [
        ("00000.tfrecord", 99, 1),
        ("00001.tfrecord", 3, 3),
    ]
    assert manifest.skipped_bad == () and manifest.records == 102
    summary = json.loads(layout.convert_summary_path(builder).read_text())
    assert [
        (d["source"], d["records_salvaged"], d["records_lost"]) for d in summary["damaged_shards"]
    ] == [
        ("00000.tfrecord", 99, 1),
        ("00001.tfrecord", 3, 3),
    ]

    # Each shard holds the bytes of the undamaged shard's records before the damage.
    targets = [builder / shard.target for shard in manifest.shards]
    kept = [("00000.tfrecord", 99), ("00001.tfrecord", 3)]
    for target, (source, records) in zip(targets, kept, strict=True):
        assert target.read_bytes() == (pristine / source).read_bytes()[: starts[source][records]]
    originals = [list(tfrecord.read_records(pristine / s))[:n] for s, n in kept]
    assert_tfds_reads(builder, originals)

    provenance = info.provenance_section(info.load_builder(builder)).data
    assert provenance["damaged_shards_salvaged"] == [
        {"source": "00000.tfrecord", "records": 99, "lost": 1},
        {"source": "00001.tfrecord", "records": 3, "lost": 3},
    ]

    again = convert(src, out, "--skip-bad-shards", "--verify", "crc")
    assert again.returncode == 0, again.stderr
    assert "clipa-data convert: up to date" in again.stdout
    assert sha256s(src) == before  # the source was never written


def last_member(shard: Path) -> tarfile.TarInfo:
    with tarfile.open(shard) as archive:
        return archive.getmembers()[-1]


@pytest.mark.parametrize("shards", [100])
def test_webdataset_tar_cut_mid_member(tmp_path, shards):
    pristine = tmp_path / "pristine"
    write_shard(pristine, 0, make_samples(0, shards), output_format="webdataset")
    src = tmp_path / "raw"
    shutil.copytree(pristine, src)
    shard = src / "00000.tar"
    member = last_member(shard)
    shard.write_bytes(shard.read_bytes()[: member.offset_data + member.size // 2])
    before = sha256s(src)
    out = tmp_path / "out"

    assert_refused(src, out, str(shard))

    done = convert(src, out, "--skip-bad-shards")
    assert done.returncode == 0, done.stderr
    assert f"damaged shard 00000.tar: salvaged {shards - 1} records, lost 1 (" in done.stdout
    builder = layout.builder_dir(out, NAME, "1.0.0")
    (entry,) = read_manifest(builder).damaged
    assert (entry.records, entry.damage.lost) == (shards - 1, 1)

    # The bytes converting the undamaged tar writes for its first 99 samples.
    expected = list(webdataset.iter_examples(pristine / "00000.tar"))[: shards - 1]
    written = (builder / entry.target).read_bytes()
    assert written == b"".join(tfrecord.frame(example) for example in expected)
    assert_tfds_reads(builder, [expected])
    assert sha256s(src) == before


def test_a_record_that_does_not_parse_under_an_intact_framing_is_cut_there(tmp_path):
    """Checksums that match bytes that are not an Example (written so): no --verify crc finds
    it, the schema pass does, and only the records from it on are lost."""
    pristine = tmp_path / "pristine"
    write_shard(pristine, 0, make_samples(0, 6))
    src = tmp_path / "raw"
    shutil.copytree(pristine, src)
    records = list(tfrecord.read_records(pristine / "00000.tfrecord"))
    with open(src / "00000.tfrecord", "wb") as handle:
        tfrecord.write_records(handle, [*records[:2], b"\xff\xff not an Example", *records[3:]])
    out = tmp_path / "out"

    refused = convert(src, out)
    assert refused.returncode == 2 and "record 2 is not a tf.train.Example" in refused.stderr

    done = convert(src, out, "--skip-bad-shards")
    assert done.returncode == 0, done.stderr
    assert "damaged shard 00000.tfrecord: salvaged 2 records, lost 4 (" in done.stdout
    builder = layout.builder_dir(out, NAME, "1.0.0")
    assert_tfds_reads(builder, [records[:2]])


def test_a_tfrecord_shard_cut_exactly_between_two_records_keeps_its_whole_records(tmp_path):
    """A tfrecord copy cut between two records has no damaged framing to find (a tar has its
    missing end-of-archive blocks): only the stats file's ``successes`` shows the loss. Refused
    without the flag, as before; salvaged with it like a cut anywhere else (it was left out)."""
    pristine = tmp_path / "pristine"
    write_shard(pristine, 0, make_samples(0, 10))
    write_shard(pristine, 1, make_samples(1, 4))
    src = tmp_path / "raw"
    shutil.copytree(pristine, src)
    shard = src / "00000.tfrecord"
    shard.write_bytes(shard.read_bytes()[: record_starts(shard)[7]])
    out = tmp_path / "out"

    refused = convert(src, out)
    assert refused.returncode == 2, refused.stderr
    assert "reports 10 successes" in refused.stderr, refused.stderr

    done = convert(src, out, "--skip-bad-shards")
    assert done.returncode == 0, done.stderr
    assert "damaged shard 00000.tfrecord: salvaged 7 records, lost 3 (" in done.stdout
    assert "cut short between two records" in done.stdout
    assert "(hardlink; the 1 salvaged copied; 0 reused)" in done.stdout
    builder = layout.builder_dir(out, NAME, "1.0.0")
    manifest = read_manifest(builder)
    assert [(s.source, s.records, s.damage.lost) for s in manifest.damaged] == [
        ("00000.tfrecord", 7, 3)
    ]
    assert manifest.records == 11 and manifest.skipped_bad == ()
    expected = [list(tfrecord.read_records(pristine / f"0000{i}.tfrecord")) for i in (0, 1)]
    assert_tfds_reads(builder, [expected[0][:7], expected[1]])
