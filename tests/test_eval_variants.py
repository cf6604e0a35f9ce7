"""The ImageNet variants are read from the layouts they download as, with their class handling:
ImageNetV2's numbered folders are labels by value, ImageNet-R/-A score over their 200 classes
(the 1000-class logits restricted to their WordNet ids), ImageNet-Sketch over all 1000,
ObjectNet over its 113 ImageNet classes; a folder with missing classes names them.

Everything runs the real model (test-tiny), the real image decoding and the real evaluation on
small generated folders; only the prompt token ids are made up (the tiny model's vocabulary
has 512 ids, the real tokenizer's 49408).
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import jpeg_bytes

from clipa_data.core.errors import ClipaError
from clipa_train import zeroshot
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.evaluate import EvalSettings, evaluate_zeroshot, open_zeroshot_set
from clipa_train.image import ImageConfig, load_image
from clipa_train.model import build_model, load_preset
from clipa_train.variants import open_variant, variant_classes

IMAGES = 10
SETTINGS = EvalSettings(image_size=32, text_length=16, batch_size=IMAGES, workers=0)


def fake_prompt_ids(prompts: list[str]) -> torch.Tensor:
    """Distinct, deterministic ids per prompt (SOT .. EOT) in the test model's 512-id vocabulary.

    Seeded by a CRC of the text: 1000 class names must not share ids (equal classifier columns
    would tie).
    """
    rows = []
    for prompt in prompts:
        generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        body = torch.randint(1, 510, (6,), generator=generator)
        rows.append(torch.cat([torch.tensor([510]), body, torch.tensor([511]), torch.zeros(8)]))
    return torch.stack(rows).long()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_preset("test-tiny")).eval()


@pytest.fixture(scope="module")
def backend():
    return create_backend(BackendConfig(name="cpu"))


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Path:
    """One template: 1000 classes of prompts stay quick on the tiny model."""
    path = tmp_path_factory.mktemp("templates") / "templates.txt"
    path.write_text("a photo of a {}.\n")
    return path


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [jpeg_bytes(40, 36, seed=seed) for seed in range(IMAGES)]


@pytest.fixture(scope="module")
def imagenet_logits(model, backend, images, templates) -> torch.Tensor:
    """``[images, 1000]``: 100 x cosine against the full ImageNet-1K classifier, computed here."""
    task = zeroshot.imagenet_task()
    task = zeroshot.ZeroShotTask(task.name, task.classnames, ("a photo of a {}.",))
    classifier = zeroshot.build_classifier(model, task, fake_prompt_ids, backend.device)
    pixels = [load_image(jpg, ImageConfig(size=32, crop="center")) for jpg in images]
    batch = backend.images_to_device(torch.from_numpy(np.stack(pixels)))
    with torch.no_grad():
        features = model.encode_image(batch, normalize=True).float()
    return zeroshot.LOGIT_SCALE * features @ classifier


def evaluate(model, backend, zset) -> dict:
    return evaluate_zeroshot(model, backend, zset, SETTINGS, fake_prompt_ids)


def write_folders(root: Path, folders: list[str], placed: dict[int, str], images, suffix=".jpg"):
    """Every class folder of a layout (most empty), image ``i`` in folder ``placed[i]``."""
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, folder in placed.items():
        (root / folder / f"image_{index:03d}{suffix}").write_bytes(images[index])
    return root


def test_imagenetv2_numbered_folders_score_as_the_same_images_in_name_ordered_folders(
    model, backend, images, templates, imagenet_logits, tmp_path
):
    # Each image's label is the class the model ranks first: name-ordered folders score 100 %,
    # and numbered folders read as text ("10" before "2") would move most labels.
    labels = imagenet_logits.argmax(dim=1).tolist()
    assert any(label >= 10 for label in labels)
    wnids = variant_classes()["imagenet_wnids"]
    numbered = [str(label) for label in range(1000)]
    v2 = write_folders(
        tmp_path / "imagenetv2-matched-frequency-format-val",
        numbered,
        {i: str(label) for i, label in enumerate(labels)},
        images,
    )
    named = write_folders(
        tmp_path / "val", wnids, {i: wnids[label] for i, label in enumerate(labels)}, images
    )
    by_name = evaluate(model, backend, open_zeroshot_set(named, templates=str(templates)))
    by_variant = evaluate(model, backend, open_variant("imagenetv2", v2, str(templates)))
    as_folder = evaluate(model, backend, open_zeroshot_set(v2, templates=str(templates)))
    assert by_name["top1"] == 1.0 and by_name["n"] == IMAGES
    assert by_variant == by_name == as_folder


@pytest.mark.parametrize("name", ["imagenet-r", "imagenet-a"])
def test_subset_scores_equal_the_1000_class_logits_restricted_to_its_wnids(
    name, model, backend, images, templates, imagenet_logits, tmp_path
):
    all_wnids = variant_classes()["imagenet_wnids"]
    wnids = variant_classes()[name]
    assert len(wnids) == 200 == len(set(wnids)) and set(wnids) <= set(all_wnids)
    restricted = imagenet_logits[:, [all_wnids.index(wnid) for wnid in wnids]]
    order = restricted.argsort(dim=1, descending=True)
    # ranks 0 (top-1), 3 (top-5 only) and 100 (neither) among the 200 classes
    ranks = [0, 0, 0, 0, 3, 3, 3, 100, 100, 100]
    placed = {i: wnids[int(order[i, rank])] for i, rank in enumerate(ranks)}
    folder = write_folders(tmp_path / name, wnids, placed, images)
    result = evaluate(model, backend, open_variant(name, folder, str(templates)))
    assert result == {"top1": 0.4, "top5": 0.7, "n": IMAGES, "classes": 200, "chance": 1 / 200}
    # The class names are ImageNet-1K's for those ids, in sorted-id order.
    zset = open_variant(name, folder, str(templates))
    imagenet = zeroshot.imagenet_task().classnames
    assert zset.task.classnames == tuple(imagenet[all_wnids.index(w)] for w in wnids)


def test_sketch_reads_1000_wnid_folders_in_imagenet_order(images, templates, tmp_path):
    wnids = variant_classes()["imagenet_wnids"]
    placed = {0: wnids[0], 1: wnids[999], 2: wnids[500]}
    folder = write_folders(tmp_path / "sketch", wnids, placed, images, suffix=".JPEG")
    zset = open_variant("imagenet-sketch", folder, str(templates))
    assert sorted(label for _, label in zset.units) == [0, 500, 999]
    assert zset.task.classnames == zeroshot.imagenet_task().classnames
    assert zset.task.name == "imagenet-sketch"


def test_objectnet_scores_its_113_imagenet_classes_with_its_own_names(
    model, backend, images, tmp_path
):
    classes = variant_classes()["objectnet"]
    folders = [entry["folder"] for entry in classes]
    assert len(folders) == 113 == len(set(folders)) and folders == sorted(folders)
    root = tmp_path / "objectnet" / "objectnet-1.0" / "images"
    # two of the 200 folders with no ImageNet class: their images are not scored
    placed = {0: folders[0], 1: folders[112], 2: "air_freshener", 3: "toothpaste"}
    write_folders(root, [*folders, "air_freshener", "toothpaste"], placed, images, ".png")
    zset = open_variant("objectnet", tmp_path / "objectnet")
    assert zset.source == str(root) and zset.num_images == 2
    assert sorted(label for _, label in zset.units) == [0, 112]
    assert zset.task.classnames[0] == "alarm clock" and len(zset.task.templates) == 80
    assert evaluate(model, backend, zset)["classes"] == 113


@pytest.mark.parametrize(
    ("name", "remove", "fragments"),
    [
        (
            "imagenet-r",
            ["n01443537", "n12267677"],
            ["missing 2 of its 200", "n01443537, n12267677"],
        ),
        ("imagenet-a", ["n01498041"], ["imagenet-a is missing 1 of its 200", "(n01498041)"]),
        ("imagenetv2", ["17", "503"], ["missing 2 of its 1000", "(17, 503)"]),
        ("imagenet-sketch", ["n01440764"], ["missing 1 of its 1000", "(n01440764)"]),
        ("objectnet", ["alarm_clock"], ["objectnet is missing 1 of its 113", "(alarm_clock)"]),
    ],
)
def test_a_variant_folder_with_missing_classes_names_them(
    name, remove, fragments, images, tmp_path
):
    data = variant_classes()
    folders = {
        "imagenetv2": [str(label) for label in range(1000)],
        "imagenet-sketch": data["imagenet_wnids"],
        "objectnet": [entry["folder"] for entry in data["objectnet"]],
    }.get(name) or data[name]
    root = write_folders(tmp_path / name, folders, {0: folders[5]}, images)
    for folder in remove:
        shutil.rmtree(root / folder)
    with pytest.raises(ClipaError) as error:
        open_variant(name, root)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)
    assert "restore the full download" in str(error.value)


def test_a_subset_folder_with_other_classes_names_them(images, tmp_path):
    wnids = variant_classes()["imagenet-r"]
    root = write_folders(tmp_path / "imagenet-r", [*wnids, "n01440764"], {0: wnids[0]}, images)
    with pytest.raises(ClipaError, match=r"1 folders are not imagenet-r classes \(n01440764\)"):
        open_variant("imagenet-r", root)


def test_numbered_image_folder_with_a_gap_names_the_missing_numbers(images, tmp_path):
    root = write_folders(tmp_path / "set", ["0", "1", "3", "5"], {0: "0"}, images)
    with pytest.raises(ClipaError, match=r"labels 0\.\.5, but 2 of them are missing \(2, 4\)"):
        open_zeroshot_set(root)


def test_imagenet_1k_folders_must_be_its_wordnet_ids_or_its_labels(images, tmp_path):
    """1000 folders of any names were scored against ImageNet's class names in sorted order,
    silently (only their count was checked)."""
    wnids = variant_classes()["imagenet_wnids"]
    named = write_folders(
        tmp_path / "named", [f"class_{i:04d}" for i in range(1000)], {0: "class_0000"}, images
    )
    with pytest.raises(ClipaError, match=r"1000 of its 1000 class folders are not ImageNet-1K"):
        open_zeroshot_set(str(named))
    named_ids = [f"{wnid}_{i}" for i, wnid in enumerate(wnids)]  # n01440764_0: by its id
    for folders in (wnids, [str(i) for i in range(1000)], named_ids):  # ids, labels 0-999
        root = write_folders(tmp_path / folders[1], folders, {0: folders[0]}, images)
        assert len(open_zeroshot_set(str(root)).task.classnames) == 1000
