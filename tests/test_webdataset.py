"""webdataset shards from img2dataset's own writer: counted, read, re-encoded, damage found."""

from __future__ import annotations

import pytest
from img2dataset_shards import make_samples, source_records, write_shard

from clipa_data.core.example import decode_example
from clipa_data.prepare import webdataset
from clipa_data.prepare.webdataset import CorruptTarError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The same rows written by img2dataset's webdataset and tfrecord writers."""
    root = tmp_path_factory.mktemp("wds")
    samples = make_samples(7, 9, failures=2)
    tar = write_shard(root / "wds", 7, samples, output_format="webdataset")
    record = write_shard(root / "tfr", 7, samples, output_format="tfrecord")
    return tar, record


def test_count_reads_headers_only_and_matches_the_samples(shards):
    tar, _ = shards
    samples = list(webdataset.iter_samples(tar))
    assert webdataset.count_samples(tar) == len(samples) == 7
    assert {tuple(sorted(s.files)) for s in samples} == {("jpg", "json", "txt")}


def test_re_encoding_equals_img2dataset_tfrecord_writer(shards):
    tar, record = shards
    ours = [decode_example(raw) for raw in webdataset.iter_examples(tar)]
    assert ours == source_records(record)


def test_webp_and_png_images_keep_their_feature_name(tmp_path):
    samples = make_samples(0, 2, fmt="PNG")
    tar = write_shard(tmp_path, 0, samples, output_format="webdataset", encode_format="png")
    (example,) = {tuple(sorted(decode_example(r))) for r in webdataset.iter_examples(tar)}
    assert "png" in example and "jpg" not in example


def test_feature_rule_matches_img2dataset():
    assert webdataset.feature_of(3) == ("int64", [3])
    assert webdataset.feature_of(True) == ("int64", [True])
    assert webdataset.feature_of(0.5) == ("float", [0.5])
    assert webdataset.feature_of(None) == ("bytes", [b""])
    assert webdataset.feature_of("é") == ("bytes", ["é".encode()])
    assert webdataset.feature_of([1, 2]) == ("int64", [1, 2])
    assert webdataset.feature_of(["a", None]) == ("bytes", [b"a", b""])


def test_truncated_tar_names_the_member_offset(shards, tmp_path):
    tar, _ = shards
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptTarError, match=r"cut\.tar: corrupt tar archive at byte \d+"):
        webdataset.count_samples(cut)
    with pytest.raises(CorruptTarError):
        list(webdataset.iter_samples(cut))


def test_tar_without_end_blocks_is_unfinished(shards, tmp_path):
    tar, _ = shards
    members = list(webdataset.iter_members(tar, read_data=False))
    last, _ = members[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    unfinished = tmp_path / "unfinished.tar"
    unfinished.write_bytes(tar.read_bytes()[:end])
    with pytest.raises(CorruptTarError, match=f"at byte {end}: tar archive cut short"):
        webdataset.count_samples(unfinished)


def test_damaged_header_is_not_taken_for_the_end(shards, tmp_path):
    tar, _ = shards
    members = list(webdataset.iter_members(tar, read_data=False))
    second, _ = members[3]
    data = bytearray(tar.read_bytes())
    data[second.offset + 150] ^= 0xFF  # inside the header checksum field
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CorruptTarError, match=f"at byte {second.offset}"):
        webdataset.count_samples(damaged)


def test_intact_samples_before_a_cut_keep_whole_samples_only(shards, tmp_path):
    tar, _ = shards
    members = [member for member, _ in webdataset.iter_members(tar, read_data=False)]
    whole = list(webdataset.iter_examples(tar))
    data = tar.read_bytes()
    mid_member = members[-1].offset_data + members[-1].size // 2  # the last sample loses its json
    after_members = members[-1].offset_data + -(-members[-1].size // 512) * 512  # no end blocks
    for size, samples in ((mid_member, 6), (after_members, 7)):
        cut = tmp_path / f"cut-{size}.tar"
        cut.write_bytes(data[:size])
        with pytest.raises(CorruptTarError) as damage:
            webdataset.count_samples(cut)
        count, end = webdataset.intact_samples(cut, damage.value.offset)
        assert count == samples and end <= size
        assert list(webdataset.iter_examples(cut, end)) == whole[:samples]


def test_a_json_field_named_like_a_sample_file_is_refused(tmp_path):
    """img2dataset writes saved URL-list columns into the json: one named txt (or jpg) would
    replace the caption (image) in the converted record; it is named, not converted."""
    import io
    import json
    import tarfile

    from builders import jpeg_bytes

    from clipa_data.core.errors import ClipaError

    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        members = {"jpg": jpeg_bytes(8, 8, seed=0), "txt": b"the real caption"}
        members["json"] = json.dumps({"key": "000000000", "txt": "OTHER"}).encode()
        for extension, data in members.items():
            info = tarfile.TarInfo(f"000000000.{extension}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ClipaError, match="json has a field 'txt', which would replace"):
        list(webdataset.iter_examples(path))
