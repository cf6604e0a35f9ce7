"""``--reference-exact``: each behaviour where clipa takes a faster path than the original, done
the original's way under the flag, and the flag through the real commands.

- the syntax mask re-joins the tagger's words and re-tokenises even a caption that fits
  (compared with the original's procedure, re-implemented in ``test_syntax_parity``);
- images: a full Pillow decode and a PIL bicubic resize instead of the DCT-scaled decode;
- the zero-shot classifier: built in fp32 without autocast.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import nltk_data
import numpy as np
import pytest
import torch
from builders import jpeg_bytes, make_builder_dir, make_records
from PIL import Image
from test_syntax_parity import captions, original_syntax_mask, tag_into_sidecars
from test_zeroshot import fake_prompt_ids

from clipa_data.core import text_reduction as tr
from clipa_data.core.tokenizer import CLIP_FORMAT, ClipTokenizer
from clipa_train.image import ImageConfig, crop_box, load_image

nltk_data_dir, nltk_env = nltk_data.nltk_data_dir, nltk_data.nltk_env
BIN = Path(sys.executable).parent
LENGTHS = (8, 16, 32)
PUNCTUATED = 'a "red" car, don\'t park.'
"""Fits in 32 tokens; the tagger splits it differently from BPE (quotes, "do n't", "park .")."""


# ---- (a) syntax mask --------------------------------------------------------------------------


def test_reference_syntax_mask_is_the_original_procedure_on_the_parity_captions(tmp_path, nltk_env):
    import nltk

    texts = captions(150)
    shards = tag_into_sidecars(tmp_path, texts, tagger="nltk")
    rows = [(shard, index) for shard in shards for index in range(len(shard))]
    tokenizer = ClipTokenizer(backend="python")
    reference = tr.text_mask("syntax").reducer(reference_exact=True)
    fitting_changed = 0
    for text, (shard, index) in zip(texts, rows, strict=True):
        tagged = nltk.pos_tag(nltk.word_tokenize(text))
        ids, words = shard.caption_ids(index), shard.ranked_words(index)
        for length in LENGTHS:
            ours = reference(ids, length, None, words, CLIP_FORMAT)
            # The original on every caption, also those whose own ids fit in L-2.
            assert ours.tolist() == original_syntax_mask(tagged, length, tokenizer), (text, length)
            fast = tr.reduce_text("syntax", ids, length, words=words)
            fitting_changed += len(ids) <= length - 2 and fast.tolist() != ours.tolist()
    # Without the flag a fitting caption keeps its own ids: here some of them differ.
    assert fitting_changed > 0


def test_reference_syntax_mask_changes_a_fitting_caption_as_the_original():
    tokenizer = ClipTokenizer(backend="python")
    own = np.asarray(tokenizer.encode(PUNCTUATED), dtype=np.int64)
    words = ["a", "``", "red", "''", "car", ",", "do", "n't", "park", "."]
    per_word = [tokenizer.encode_word(word) for word in words]
    ranked = tr.rank_words(
        np.asarray([i for word in per_word for i in word]),
        np.asarray([len(word) for word in per_word]),
        np.full(len(words), 4),
    )
    fast = tr.reduce_text("syntax", own, 32, words=ranked)
    exact = tr.reduce_text("syntax", own, 32, words=ranked, reference_exact=True)
    assert fast.tolist() == tr.truncate(own, 32).tolist()
    rejoined = tokenizer.encode(" ".join(words))
    assert exact.tolist() == tr.truncate(np.asarray(rejoined), 32).tolist() != fast.tolist()
    # The other masks have no reference path: the flag changes nothing for them.
    for name in ("truncate", "random", "block"):
        assert tr.text_mask(name).reducer(True) is tr.text_mask(name).reduce


# ---- (b) image decode and resize --------------------------------------------------------------


def pil_reference(data: bytes, config: ImageConfig, rng) -> np.ndarray:
    """OpenCLIP's PIL transforms written out: full decode, RGB, crop box, bicubic."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    size = config.size
    if config.crop == "center":  # Resize(size) + CenterCrop(size)
        scale = size / min(width, height)
        new = (size, int(height * scale)) if width <= height else (int(width * scale), size)
        image = image.resize(new, Image.BICUBIC)
        left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
        return np.asarray(image.crop((left, top, left + size, top + size)))
    box = crop_box(width, height, config, rng)
    region = image.crop((box.x, box.y, box.x + box.width, box.y + box.height))
    return np.asarray(region.resize((size, size), Image.BICUBIC))


@pytest.mark.parametrize("crop", ["random", "center", "square"])
@pytest.mark.parametrize(("width", "height"), [(320, 240), (200, 300)])
def test_reference_images_are_pil_bicubic_of_the_full_decode(crop, width, height):
    data = jpeg_bytes(width, height, seed=width + height)
    config = ImageConfig(size=64, crop=crop)
    exact = ImageConfig(size=64, crop=crop, reference_exact=True)
    ours = load_image(data, exact, np.random.default_rng(1))
    expected = pil_reference(data, config, np.random.default_rng(1))
    assert ours.dtype == np.uint8 and np.array_equal(ours, expected)
    fast = load_image(data, config, np.random.default_rng(1))
    assert not np.array_equal(fast, expected)  # the default path is another resize
    # ... of the same crop (two unrelated noise images differ by ~85 on average).
    assert np.abs(fast.astype(int) - expected).mean() < 25


def test_reference_images_read_what_pillow_reads():
    png = jpeg_bytes(90, 70, seed=3, mode="L", fmt="PNG")
    out = load_image(png, ImageConfig(size=32, crop="square", reference_exact=True))
    assert out.shape == (32, 32, 3) and (out[..., 0] == out[..., 2]).all()


# ---- (c) zero-shot classifier -----------------------------------------------------------------


def test_reference_classifier_is_built_in_fp32_without_autocast():
    from clipa_train.backend import BackendConfig, create_backend
    from clipa_train.evaluate import EvalSettings, build_classifier
    from clipa_train.model import build_model, load_preset
    from clipa_train.zeroshot import ZeroShotTask

    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny")).eval()
    # bf16 autocast on the CPU: what the loop's evaluation runs under with --precision bf16.
    backend = create_backend(BackendConfig(name="cpu", precision="bf16"))
    task = ZeroShotTask("shapes", ("circle", "square"), ("a {}.", "a photo of a {}."))
    encode = fake_prompt_ids  # ids in the test model's 512-id vocabulary
    dtypes: list[torch.dtype] = []
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    handles = [
        m.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype)) for m in linears
    ]
    try:
        settings = EvalSettings(image_size=32, text_length=8)
        fast = build_classifier(model, backend, task, encode, settings)
        fast_dtypes, dtypes[:] = set(dtypes), []
        exact_settings = EvalSettings(image_size=32, text_length=8, reference_exact=True)
        exact = build_classifier(model, backend, task, encode, exact_settings)
    finally:
        for handle in handles:
            handle.remove()
    assert fast_dtypes == {torch.bfloat16} and set(dtypes) == {torch.float32}
    assert exact.dtype == torch.float32 and not torch.equal(fast, exact)
    with torch.no_grad():  # fp32 without autocast is the plain forward
        from clipa_train import zeroshot

        plain = zeroshot.build_classifier(model, task, encode, torch.device("cpu"))
    assert torch.equal(exact, plain)


# ---- the flag through the real commands -------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A spaCy-tagged builder whose first caption fits and is punctuated, and a 20-class folder."""
    from sidecars import write_sidecars

    from clipa_data.demo import write_demo_validation

    root = tmp_path_factory.mktemp("reference-exact")
    others = [f"A blue square on a striped background, stock photo {i}" for i in range(23)]
    records = make_records(24, captions=[PUNCTUATED, *others])
    builder = make_builder_dir(root / "data", [records])
    write_sidecars(builder)
    val = write_demo_validation(root / "eval", per_class=1, seed=0)
    return {"builder": builder, "eval": val.root, "classnames": val.classnames_path}


def first_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def pretrain(data, out: Path, *more: object) -> subprocess.CompletedProcess:
    args = [
        "pretrain", "--data", data["builder"], "--out", out, "--model", "clipa-tiny",
        "--image-size", 32, "--text-length", 8, "--text-mask", "truncate", "--batch-size", 8,
        "--samples", 8, "--workers", 1, "--log-every", 1, "--no-progress", *more,
    ]  # fmt: skip
    return subprocess.run(
        [str(BIN / "clipa-train"), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_the_flag_reaches_the_loader_and_the_evaluation_through_the_cli(data, tmp_path):
    from clipa_cli.train_app import app
    from typer.testing import CliRunner

    zeroshot = ["--zeroshot", data["eval"], "--classnames", data["classnames"]]
    exact = pretrain(data, tmp_path / "exact", "--reference-exact", *zeroshot)
    assert exact.returncode == 0, exact.stderr
    fast = pretrain(data, tmp_path / "fast")
    assert fast.returncode == 0, fast.stderr
    config = json.loads((tmp_path / "exact" / "config.json").read_text())
    assert config["options"]["reference_exact"] is True
    # Same seed, same records, text truncated alike: only the images differ (PIL bicubic).
    assert first_losses(tmp_path / "exact") != first_losses(tmp_path / "fast")
    summary = json.loads((tmp_path / "exact" / "summary.json").read_text())
    assert summary["zeroshot"]["n"] == 20
    checkpoint = next((tmp_path / "exact" / "checkpoints").glob("step_*.pt"))
    result = CliRunner().invoke(
        app,
        [
            "eval", "--checkpoint", str(checkpoint), "--imagenet-val", str(data["eval"]),
            "--classnames", str(data["classnames"]), "--out", str(tmp_path / "eval.json"),
            "--workers", "0", "--reference-exact",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval.json").read_text())["reference_exact"] is True


def test_a_reference_exact_syntax_run_says_its_spacy_tags_are_not_the_originals(data, tmp_path):
    done = pretrain(data, tmp_path / "run", "--reference-exact", "--text-mask", "syntax")
    assert done.returncode == 0, done.stderr
    assert "note: --reference-exact, but the sidecars were tagged with spacy" in done.stderr


def test_the_flag_reaches_the_text_reducer_of_a_resolved_stage(data, tmp_path):
    from clipa_train.reduce import TextReducer
    from clipa_train.resolved_stage import resolve_stage
    from clipa_train.run_config import resolve

    options = {"data": str(data["builder"]), "out": str(tmp_path / "run"), "model": "clipa-tiny"}
    options |= {"text_mask": "syntax", "text_length": 32, "reference_exact": True}
    stage = resolve_stage(resolve("pretrain", options))
    assert stage.image.reference_exact and stage.text.reference_exact
    assert stage.text.needs_sidecars
    plain = resolve_stage(resolve("pretrain", {**options, "reference_exact": None}))
    assert not plain.image.reference_exact and not plain.text.reference_exact
    from clipa_data.core import layout, sidecar

    shard = layout.read_split(data["builder"], "train").shards[0]
    rows = sidecar.SidecarRows(
        sidecar.read_table(layout.sidecar_path(data["builder"], shard.path)), None
    )
    rng = np.random.default_rng(0)
    exact = TextReducer(stage.text)(PUNCTUATED, rows, 0, rng)
    own = TextReducer(plain.text)(PUNCTUATED, rows, 0, rng)
    assert own.tolist() == tr.truncate(rows.caption_ids(0), 32).tolist() != exact.tolist()


def test_preview_shows_the_reference_syntax_mask(data):
    def preview(*more: str) -> list[dict]:
        args = ["preview", str(data["builder"]), "--text-length", "32", "--n", "2", "--json"]
        done = subprocess.run(
            [str(BIN / "clipa-data"), *args, *more], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    fast, exact = preview(), preview("--reference-exact")
    assert fast[0]["caption"] == PUNCTUATED
    # spaCy's "do" + "n't" re-tokenise into other ids than the caption's own "don't".
    assert "don 't" in fast[0]["text"] and "do n 't" in exact[0]["text"]
    assert fast[0]["ids"] != exact[0]["ids"]
    assert fast[1] == exact[1]  # where the re-join gives the same ids, nothing changes


@pytest.mark.parametrize("mask", ["truncate", "random", "block"])
def test_preview_refuses_the_flag_where_it_changes_nothing(mask):
    from clipa_data.core.errors import ClipaError
    from clipa_data.prepare.preview import PreviewConfig

    with pytest.raises(ClipaError, match=f"nothing in a preview of the {mask} mask.*drop --ref"):
        PreviewConfig(builder_dir="b", text_mask=mask, reference_exact=True)
    PreviewConfig(builder_dir="b", text_mask=mask)
    PreviewConfig(builder_dir="b", text_mask="syntax", reference_exact=True)


def test_retrieval_images_take_the_reference_path(tmp_path):
    from test_retrieval import write_karpathy

    from clipa_train.backend import BackendConfig, create_backend
    from clipa_train.model import build_model, load_preset
    from clipa_train.retrieval import RetrievalSettings, image_features
    from clipa_train.retrieval_sets import open_retrieval_set

    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny")).eval()
    rset = open_retrieval_set(*write_karpathy(tmp_path, 4), "coco")
    backend = create_backend(BackendConfig(name="cpu"))
    exact = ImageConfig(32, "center", reference_exact=True)
    pixels = torch.stack(
        [torch.from_numpy(load_image(Path(p).read_bytes(), exact)) for p in rset.images]
    )
    with torch.no_grad():
        expected = model.encode_image(backend.images_to_device(pixels), normalize=True)
        settings = RetrievalSettings(32, workers=0, reference_exact=True)
        ours = image_features(model, backend, rset, settings, lambda done: None)
        settings = RetrievalSettings(32, workers=0)
        fast = image_features(model, backend, rset, settings, lambda done: None)
    assert torch.allclose(ours, expected, atol=1e-6) and not torch.allclose(fast, expected)
