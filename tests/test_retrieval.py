"""Image-text retrieval: Karpathy-split sets, chunked Recall@k against a dense reference, CLI."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import pytest
import torch
from builders import jpeg_bytes
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from typer.testing import CliRunner

from clipa_data.core.errors import ClipaError
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.model import build_model, load_preset
from clipa_train.retrieval import RetrievalSettings, evaluate_retrieval, recall_at
from clipa_train.retrieval_sets import open_retrieval_set, retrieval_spec

CAPTIONS = 5


def dense_recall(image_emb, text_emb, caption_image, ks=(1, 5, 10)) -> dict[str, float]:
    """The reference: the whole similarity matrix, each query's keys sorted, first right key."""
    scores = (image_emb @ text_emb.T).double()
    result = {}
    order = scores.argsort(dim=1, descending=True)
    right = caption_image[order] == torch.arange(len(image_emb))[:, None]
    first = right.float().argmax(dim=1)
    for k in ks:
        result[f"image_to_text_R@{k}"] = (first < k).double().mean().item()
    order = scores.T.argsort(dim=1, descending=True)
    first = (order == caption_image[:, None]).float().argmax(dim=1)
    for k in ks:
        result[f"text_to_image_R@{k}"] = (first < k).double().mean().item()
    return result


def noisy_pairs(images: int, seed: int = 0, noise: float = 1.2):
    """Caption embeddings near their image's (noisy enough that recall is between 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    image_emb = torch.nn.functional.normalize(torch.randn(images, 16, generator=generator), dim=-1)
    caption_image = torch.arange(images).repeat_interleave(CAPTIONS)
    text = image_emb[caption_image] + noise * torch.randn(
        len(caption_image), 16, generator=generator
    )
    return image_emb, torch.nn.functional.normalize(text, dim=-1), caption_image


def test_chunked_recall_equals_the_dense_reference_for_every_chunk_size():
    image_emb, text_emb, caption_image = noisy_pairs(40)
    reference = dense_recall(image_emb, text_emb, caption_image)
    assert 0 < reference["image_to_text_R@1"] < 1 and 0 < reference["text_to_image_R@5"] < 1
    for chunk in (1, 3, 7, 40, 200, 10_000):
        got = recall_at(image_emb, text_emb, caption_image, chunk_size=chunk)
        assert got == pytest.approx(reference, abs=1e-9), chunk


def test_recall_of_perfect_and_reversed_embeddings():
    image_emb = torch.eye(12)
    caption_image = torch.arange(12).repeat_interleave(CAPTIONS)
    perfect = recall_at(image_emb, image_emb[caption_image], caption_image, chunk_size=5)
    assert set(perfect.values()) == {1.0}
    # Every caption points away from its image: its own image is the last of 12 for text→image.
    worst = recall_at(image_emb, -image_emb[caption_image], caption_image, chunk_size=5)
    assert worst["text_to_image_R@10"] == 0.0 and worst["image_to_text_R@1"] == 0.0
    with pytest.raises(ClipaError, match="chunk size must be positive"):
        recall_at(image_emb, image_emb, torch.arange(12), chunk_size=0)


def test_ties_count_against_the_query():
    """A collapsed model (every embedding the same point) ties every key: no recall, where
    counting only strictly higher wrong keys gave it 100 %."""
    caption_image = torch.arange(12).repeat_interleave(CAPTIONS)
    collapsed = recall_at(torch.ones(12, 4), torch.ones(60, 4), caption_image, chunk_size=5)
    assert set(collapsed.values()) == {0.0}, collapsed
    # One wrong caption tying with image 0's best right one: image 0 ranks second, not first.
    image_emb = torch.eye(12)
    text_emb = image_emb[caption_image].clone()
    text_emb[CAPTIONS] = image_emb[0]  # a caption of image 1 that reads like image 0
    tied = recall_at(image_emb, text_emb, caption_image, chunk_size=5)
    assert tied["image_to_text_R@1"] == pytest.approx(11 / 12)
    assert tied["image_to_text_R@5"] == 1.0


# --- sets on disk ------------------------------------------------------------------------------


def write_karpathy(
    root: Path, images: int, coco: bool = True, missing: int = 0, extra_splits: bool = True
) -> tuple[Path, Path]:
    """A Karpathy-style JSON (COCO's filepath sub-folder or Flickr's flat folder) + images."""
    folder = root / "images"
    entries = []
    for number in range(images):
        filepath = "val2014" if coco else ""
        name = f"COCO_val2014_{number:012d}.jpg" if coco else f"{1000 + number}.jpg"
        sentences = [{"raw": f"picture {number} caption {c} ", "tokens": []} for c in range(6)]
        entry = {"filename": name, "split": "test", "sentences": sentences, "imgid": number}
        entries.append({**entry, "filepath": filepath} if coco else entry)
        if number >= missing:  # the first `missing` images are absent
            (folder / filepath).mkdir(parents=True, exist_ok=True)
            (folder / filepath / name).write_bytes(jpeg_bytes(48, 40, seed=number))
    if extra_splits:
        entries.append({"filename": "train.jpg", "split": "train", "sentences": [{"raw": "x"}]})
        entries.append({"filename": "val.jpg", "split": "restval", "sentences": [{"raw": "x"}]})
    annotations = root / ("dataset_coco.json" if coco else "dataset_flickr30k.json")
    annotations.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return annotations, folder


@pytest.mark.parametrize("coco", [True, False])
def test_open_reads_the_test_split_with_five_captions_per_image(tmp_path, coco):
    annotations, folder = write_karpathy(tmp_path, 4, coco=coco)
    rset = open_retrieval_set(annotations, folder, "coco" if coco else "flickr30k")
    assert len(rset.images) == 4 and not rset.missing
    assert all(Path(path).is_file() for path in rset.images)
    assert len(rset.captions) == 4 * CAPTIONS  # the sixth caption of each image is dropped
    assert rset.caption_image == tuple(i for i in range(4) for _ in range(CAPTIONS))
    assert rset.captions[CAPTIONS] == "picture 1 caption 0"


def test_a_null_filepath_means_the_image_folder_itself(tmp_path):
    """Some Flickr30k exports write ``"filepath": null``: the images are in the folder itself."""
    annotations, folder = write_karpathy(tmp_path, 3, coco=False)
    data = json.loads(annotations.read_text())
    for entry in data["images"]:
        entry["filepath"] = None
    annotations.write_text(json.dumps(data))
    missing = folder / "1000.jpg"
    missing.unlink()
    rset = open_retrieval_set(annotations, folder, "flickr30k", max_missing_fraction=0.5)
    assert [Path(path).name for path in rset.images] == ["1001.jpg", "1002.jpg"]
    assert rset.missing == ("1000.jpg",)


def test_a_few_missing_images_are_skipped_and_listed(tmp_path):
    annotations, folder = write_karpathy(tmp_path, 10, missing=1)
    rset = open_retrieval_set(annotations, folder, "coco", max_missing_fraction=0.1)
    assert rset.missing == (str(Path("val2014") / "COCO_val2014_000000000000.jpg"),)
    assert len(rset.images) == 9 and rset.caption_image[0] == 0 and len(rset.captions) == 45
    assert rset.captions[0] == "picture 1 caption 0"


def test_too_many_missing_images_fail_with_a_count_and_the_first_few(tmp_path):
    annotations, folder = write_karpathy(tmp_path, 10, missing=5)
    with pytest.raises(ClipaError) as error:
        open_retrieval_set(annotations, folder, "coco", max_missing_fraction=0.1)
    message = str(error.value)
    assert "5 of the 10 test images" in message and "\n" not in message
    assert "COCO_val2014_000000000002.jpg" in message and "000000000003" not in message
    with pytest.raises(ClipaError, match="image folder not found"):
        open_retrieval_set(annotations, tmp_path / "nope", "coco")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not readable JSON"),
        ('["a", "b"]', "no 'images' list"),
        ('{"images": [{"filename": "a.jpg", "split": "test"}]}', "images[0] lacks"),
        ('{"images": [{"filename": "a.jpg", "split": "train", "sentences": []}]}', "no images"),
        ('{"images": [{"filename": "a.jpg", "split": "test", "sentences": []}]}', "no captions"),
        ('{"images": [{"filename": "a", "filepath": 3, "sentences": []}]}', "'filepath' is not"),
    ],
)
def test_malformed_annotations_name_the_file(tmp_path, content, fragment):
    (tmp_path / "images").mkdir()
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(ClipaError, match=re.escape(fragment)) as error:
        open_retrieval_set(path, tmp_path / "images", "coco")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ClipaError, match="annotation file not found"):
        open_retrieval_set(tmp_path / "nope.json", tmp_path / "images", "coco")


def test_the_registry_knows_coco_and_flickr30k():
    assert retrieval_spec("coco").test_images == 5000
    assert retrieval_spec("flickr30k").test_images == 1000
    with pytest.raises(ClipaError, match="choose one of coco, flickr30k"):
        retrieval_spec("sbu")


def test_the_registry_locates_a_set_under_a_data_root(tmp_path):
    assert retrieval_spec("flickr30k").locate(tmp_path) is None
    (tmp_path / "flickr30k").mkdir()
    (tmp_path / "flickr30k" / "dataset_flickr30k.json").write_text("{}")
    annotations, images = retrieval_spec("flickr30k").locate(tmp_path)
    assert annotations == tmp_path / "flickr30k" / "dataset_flickr30k.json"
    assert images == tmp_path / "flickr30k" / "flickr30k-images"


# --- with a model ------------------------------------------------------------------------------


def fake_caption_ids(captions: list[str]) -> torch.Tensor:
    """Distinct, deterministic ids per caption in the test model's 512-id vocabulary."""
    rows = []
    for caption in captions:
        generator = torch.Generator().manual_seed(zlib.crc32(caption.encode()))
        body = torch.randint(1, 510, (6,), generator=generator)
        rows.append(torch.cat([torch.tensor([510]), body, torch.tensor([511]), torch.zeros(8)]))
    return torch.stack(rows).long()


def test_model_recall_equals_the_dense_reference_and_ignores_the_chunk_size(tmp_path):
    """12 images x 5 captions through a tiny model: the evaluation equals a dense computation
    on the same model's embeddings, for every chunk size and batch size."""
    from clipa_train.image import ImageConfig, load_image

    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny")).eval()
    annotations, folder = write_karpathy(tmp_path, 12)
    rset = open_retrieval_set(annotations, folder, "coco")
    backend = create_backend(BackendConfig(name="cpu"))
    with torch.no_grad():
        pixels = torch.stack(
            [
                torch.from_numpy(load_image(Path(p).read_bytes(), ImageConfig(32, "center")))
                for p in rset.images
            ]
        )
        image_emb = model.encode_image(backend.images_to_device(pixels)).float()
        text_emb = model.encode_text(fake_caption_ids(list(rset.captions))).float()
    reference = dense_recall(image_emb, text_emb, torch.tensor(rset.caption_image))
    seen = []
    for chunk, batch, workers in ((1, 5, 0), (7, 12, 2), (100, 64, 0)):
        settings = RetrievalSettings(32, batch_size=batch, workers=workers, chunk_size=chunk)
        result = evaluate_retrieval(model, backend, rset, settings, fake_caption_ids, seen.append)
        assert {k: result[k] for k in reference} == pytest.approx(reference, abs=1e-6)
        assert (result["images"], result["captions"], result["missing_images"]) == (12, 60, 0)
    assert sum(seen) == 3 * (12 + 60)


# --- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An untrained clipa-tiny as plain weights (loaded with --model clipa-tiny)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("retrieval-weights") / "tiny.pt"
    torch.save(build_model(load_preset("clipa-tiny")).state_dict(), path)
    return path


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def retrieval_args(weights: Path, annotations: Path, folder: Path, out: Path) -> list[object]:
    return [
        "eval", "--checkpoint", weights, "--model", "clipa-tiny", "--image-size", 32,
        "--retrieval", "coco", "--annotations", annotations, "--images", folder,
        "--out", out, "--workers", 0, "--batch-size", 8, "--chunk-size", 4,
    ]  # fmt: skip


def test_cli_retrieval_prints_json_and_writes_eval_json(weights, tmp_path):
    annotations, folder = write_karpathy(tmp_path, 12, missing=1)
    args = retrieval_args(weights, annotations, folder, tmp_path / "eval.json")
    result = invoke(*args, "--json", "--max-missing", 0.1)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "eval.json").read_text())
    assert (printed["images"], printed["captions"], printed["missing_images"]) == (11, 55, 1)
    assert printed["retrieval"] == "coco" and printed["text_length"] == 32
    for direction in ("image_to_text", "text_to_image"):
        recalls = [printed[f"{direction}_R@{k}"] for k in (1, 5, 10)]
        assert 0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1
    assert "1 of 12 images" in result.stderr and "missing and skipped" in result.stderr
    assert "lists 12 test images, not the 5000" in result.stderr

    table = invoke(*args, "--max-missing", 0.1)
    assert table.exit_code == 0, table.output
    assert "coco retrieval (11 images, 55 captions)" in table.stdout
    assert "image → text" in table.stdout and "R@10" in table.stdout


def test_cli_retrieval_bad_input(weights, tmp_path):
    annotations, folder = write_karpathy(tmp_path, 10, missing=3)
    args = retrieval_args(weights, annotations, folder, tmp_path / "eval.json")
    assert_one_line_error(invoke(*args), "3 of the 10 test images", "missing")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    args = retrieval_args(weights, broken, folder, tmp_path / "eval.json")
    assert_one_line_error(invoke(*args), str(broken), "not readable JSON")
    no_images = invoke("eval", "--checkpoint", weights, "--retrieval", "coco")
    assert_one_line_error(no_images, "--annotations FILE", "--images DIR")
    assert_one_line_error(
        invoke("eval", "--checkpoint", weights), "give one set with --imagenet-val DIR"
    )
    stray = invoke("eval", "--checkpoint", weights, "--imagenet-val", folder, "--images", folder)
    assert_one_line_error(stray, "--annotations and --images go with --retrieval")
    args = retrieval_args(weights, annotations, folder, tmp_path / "eval.json")
    assert_one_line_error(invoke(*args, "--chunk-size", 0), "--chunk-size must be positive")
    mixed = invoke(*args, "--no-text-cache", "--templates", folder)
    assert_one_line_error(mixed, "--templates, --no-text-cache: zero-shot options")
    assert_one_line_error(invoke(*args, "--retrieval", "sbu"), "--retrieval", "coco, flickr30k")
    assert not (tmp_path / "eval.json").exists()
