"""Zero-shot classification is CLIP's: per class the normalised mean of normalised prompt
embeddings, image logits 100 x cosine, top-1/top-5 counted per image."""

from __future__ import annotations

import pytest
import torch

from clipa_data.core.errors import ClipaError
from clipa_train import zeroshot
from clipa_train.model import build_model, load_preset


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_preset("test-tiny")).eval()


def fake_prompt_ids(prompts: list[str]) -> torch.Tensor:
    """Distinct, deterministic ids per prompt (SOT .. EOT) in the test model's 512-id vocabulary."""
    rows = []
    for prompt in prompts:
        generator = torch.Generator().manual_seed(sum(map(ord, prompt)) * 31 + len(prompt))
        body = torch.randint(1, 510, (6,), generator=generator)
        rows.append(torch.cat([torch.tensor([510]), body, torch.tensor([511]), torch.zeros(8)]))
    return torch.stack(rows).long()


TASK = zeroshot.ZeroShotTask(
    "toy", ("red circle", "blue square", "green star"), ("a {}.", "a photo of a {}.", "{} art")
)


def test_classifier_is_the_normalised_mean_of_normalised_prompt_embeddings(model):
    classifier = zeroshot.build_classifier(
        model, TASK, fake_prompt_ids, torch.device("cpu"), classes_per_batch=2
    )
    assert classifier.shape == (model.config.embed_dim, 3)
    with torch.no_grad():
        for label in range(3):
            embeddings = model.encode_text(fake_prompt_ids(TASK.prompts(label)))
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
            expected = embeddings.mean(dim=0)
            expected = expected / expected.norm()
            torch.testing.assert_close(classifier[:, label], expected, rtol=1e-5, atol=1e-6)


def test_score_counts_top1_and_top5_from_100x_cosine_logits(model):
    classifier = torch.nn.functional.normalize(torch.randn(model.config.embed_dim, 7), dim=0)
    images = torch.randn(10, 3, 32, 32)
    with torch.no_grad():
        features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    logits = 100 * features @ classifier
    order = logits.argsort(dim=1, descending=True)
    labels = torch.cat([order[:4, 0], order[4:7, 3], order[7:, 6]])  # top-1, top-5 only, neither
    result = zeroshot.score(model, classifier, [(images[:6], labels[:6]), (images[6:], labels[6:])])
    assert result == {"top1": 4 / 10, "top5": 7 / 10, "n": 10}


def test_fewer_than_five_classes_counts_every_class_in_top5():
    counts = zeroshot.TopK()
    counts.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([0, 0]))
    assert counts.result() == {"top1": 0.5, "top5": 1.0, "n": 2}


def test_bad_tasks_and_empty_sets():
    with pytest.raises(ClipaError, match="exactly one"):
        zeroshot.ZeroShotTask("toy", ("a",), ("no placeholder",))
    with pytest.raises(ClipaError, match="no class names"):
        zeroshot.ZeroShotTask("toy", (), ("a {}",))
    with pytest.raises(ClipaError, match="saw no images"):
        zeroshot.TopK().result()


def test_imagenet_task_ships_1000_classes_and_80_templates():
    task = zeroshot.imagenet_task()
    assert len(task.classnames) == 1000 and len(task.templates) == 80
    assert task.prompts(0)[0].count(task.classnames[0]) == 1
