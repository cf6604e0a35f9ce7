"""What ``--reference-exact`` costs and what the fast paths give up, side by side in one run.

Run: ``.venv/bin/python -m benchmarks.bench_reference_exact`` (about a minute on 2 cores).

(a) Images: the loader benchmark's photo-like 256 px JPEGs (``benchmarks.loader_data.photo``,
    img2dataset's usual size) and some at 512 px, through ``load_image`` with the fast path
    (DCT-scaled libjpeg-turbo decode + area-style resize) and the reference path (full Pillow
    decode + PIL bicubic), at 64/112/224 px with the training crop (``random``, the same boxes
    for both paths) and the eval crop (``center``). Time per image (medians of interleaved
    rounds, one thread) and the mean absolute pixel difference of the two outputs (0-255).
(b) Syntax mask: the loader benchmark's captions tagged by ``clipa-data tag`` (spaCy); the
    share of rows whose ids change when the re-joined words are re-tokenised, and the time per
    caption of both paths.
(c) Zero-shot classifier of ``clipa-tiny`` (random weights, 20 classes x 80 templates) on the
    CPU: bf16 autocast vs fp32, time and how far the bf16 classifier is from the fp32 one. CPU
    bf16 times say nothing about a GPU's; the difference of the classifiers does.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import median_seconds, print_table, write_result
from benchmarks.loader_data import build, photo

WORK = Path(__file__).resolve().parent / "work" / "reference_exact"
IMAGES = {256: 160, 512: 40}
"""Source side -> how many photos."""
SIZES = (64, 112, 224)
CROPS = ("random", "center")
ROUNDS = 5
CAPTIONS = 600
LENGTHS = (8, 16, 32)
PACKAGES = ["numpy", "pillow", "simplejpeg", "opencv-python-headless", "torch", "spacy"]


def photos() -> dict[int, list[bytes]]:
    rng = np.random.default_rng(0)
    return {side: [photo(rng, side) for _ in range(count)] for side, count in IMAGES.items()}


def _pass(images: list[bytes], config) -> tuple[float, list[np.ndarray]]:
    """Seconds for one pass over ``images`` and the outputs (crop boxes seeded per image)."""
    from clipa_train.image import load_image

    outputs = []
    start = time.perf_counter()
    for index, data in enumerate(images):
        outputs.append(load_image(data, config, np.random.default_rng(index)))
    return time.perf_counter() - start, outputs


def image_case(images: list[bytes], size: int, crop: str, rounds: int) -> dict:
    """Fast vs reference on one (source size, output size, crop), interleaved rounds."""
    from clipa_train.image import ImageConfig

    fast = ImageConfig(size=size, crop=crop)
    exact = ImageConfig(size=size, crop=crop, reference_exact=True)
    times: dict[str, list[float]] = {"fast": [], "reference": []}
    for _ in range(rounds):
        seconds, fast_out = _pass(images, fast)
        times["fast"].append(seconds)
        seconds, exact_out = _pass(images, exact)
        times["reference"].append(seconds)
    differences = [
        np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
        for a, b in zip(fast_out, exact_out, strict=True)
    ]
    per_image = {k: statistics.median(v) / len(images) * 1e6 for k, v in times.items()}
    return {
        "us_per_image": {k: round(v, 1) for k, v in per_image.items()},
        "speedup": per_image["reference"] / per_image["fast"],
        "mean_abs_pixel_diff": float(np.mean(differences)),
        "max_image_mean_abs_diff": float(np.max(differences)),
        "images": len(images),
    }


def bench_images(rounds: int) -> dict[str, dict]:
    sources = photos()
    cases = {}
    for side, images in sources.items():
        for crop in CROPS:
            for size in SIZES:
                cases[f"{crop}_{side}to{size}"] = image_case(images, size, crop, rounds)
    return cases


def bench_syntax() -> dict:
    """Rows changed by the reference syntax mask, and time per caption of both paths."""
    from clipa_data.core import layout, sidecar
    from clipa_data.core import text_reduction as tr

    builder = build(WORK, shards=1, per_shard=CAPTIONS)
    shard = layout.read_split(builder, "train").shards[0]
    rows = sidecar.SidecarRows(sidecar.read_table(layout.sidecar_path(builder, shard.path)), None)
    strategy = tr.text_mask("syntax")
    rows.ranked_words(0)  # the ranks of the whole file are computed once, on first use
    result = {}
    for length in LENGTHS:
        outputs, seconds = {}, {}
        for name, reduce in (
            ("fast", strategy.reducer(False)),
            ("reference", strategy.reducer(True)),
        ):
            start = time.perf_counter()
            outputs[name] = [
                reduce(rows.caption_ids(row), length, None, rows.ranked_words(row))
                for row in range(len(rows))
            ]
            seconds[name] = time.perf_counter() - start
        changed = sum(
            not np.array_equal(a, b)
            for a, b in zip(outputs["fast"], outputs["reference"], strict=True)
        )
        fits = sum(len(rows.caption_ids(row)) <= length - 2 for row in range(len(rows)))
        result[f"L{length}"] = {
            "rows_changed_share": changed / len(rows),
            "rows_fitting_share": fits / len(rows),
            "us_per_caption": {k: round(v / len(rows) * 1e6, 2) for k, v in seconds.items()},
        }
    return result


def bench_classifier() -> dict:
    """``clipa-tiny``'s zero-shot classifier under bf16 autocast vs fp32 on the CPU."""
    import torch

    from clipa_train.backend import BackendConfig, create_backend
    from clipa_train.evaluate import EvalSettings, build_classifier, prompt_encoder
    from clipa_train.model import build_model, load_preset
    from clipa_train.zeroshot import ZeroShotTask, imagenet_task

    torch.manual_seed(0)
    model = build_model(load_preset("clipa-tiny")).eval()
    length = model.config.text.context_length
    imagenet = imagenet_task()
    task = ZeroShotTask("imagenet-20", imagenet.classnames[:20], imagenet.templates)
    backend = create_backend(BackendConfig(name="cpu", precision="bf16"))
    encode = prompt_encoder(length, "truncate")
    encode([p for label in range(20) for p in task.prompts(label)])  # tokenise once, cached
    built, seconds = {}, {}
    for name, exact in (("bf16_autocast", False), ("fp32", True)):
        settings = EvalSettings(image_size=model.config.vision.image_size, text_length=length,
                                reference_exact=exact)  # fmt: skip
        built[name] = build_classifier(model, backend, task, encode, settings)
        seconds[name] = median_seconds(
            lambda s=settings: build_classifier(model, backend, task, encode, s), repeats=3
        )
    difference = (built["bf16_autocast"] - built["fp32"]).abs()
    cosine = torch.nn.functional.cosine_similarity(built["bf16_autocast"], built["fp32"], dim=0)
    agree = (built["bf16_autocast"].T @ built["fp32"]).argmax(dim=1) == torch.arange(20)
    return {
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "max_abs_diff": float(difference.max()),
        "min_column_cosine": float(cosine.min()),
        "classes_nearest_to_their_fp32_column": int(agree.sum()),
        "classes": 20,
        "templates": len(task.templates),
    }


def main(rounds: int = ROUNDS) -> None:
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    started = time.perf_counter()
    images = bench_images(rounds)
    syntax = bench_syntax()
    classifier = bench_classifier()
    ratios = {f"image_speedup_{name}": case["speedup"] for name, case in images.items()}
    ratios |= {
        "classifier_fp32_vs_bf16_cpu_time": classifier["seconds"]["fp32"]
        / classifier["seconds"]["bf16_autocast"]
    }
    figures = {
        "images": images,
        "syntax": syntax,
        "classifier": classifier,
        "seconds": round(time.perf_counter() - started, 1),
    }
    show(images, syntax, classifier)
    if rounds != ROUNDS:  # a quick look must not replace the committed figures
        print(f"not written: results/reference_exact.json keeps the default run ({ROUNDS} rounds)")
        return
    path = write_result(
        "reference_exact",
        ratios=ratios,
        figures=figures,
        config={
            "images": IMAGES,
            "sizes": SIZES,
            "crops": CROPS,
            "rounds": rounds,
            "captions": CAPTIONS,
            "lengths": LENGTHS,
            "threads": 1,
        },
        packages=PACKAGES,
        command=".venv/bin/python -m benchmarks.bench_reference_exact",
    )
    print(f"wrote {path}")


def show(images: dict, syntax: dict, classifier: dict) -> None:
    """The three tables of a run."""
    rows = [
        [name, c["us_per_image"]["fast"], c["us_per_image"]["reference"], c["speedup"],
         c["mean_abs_pixel_diff"]]
        for name, c in images.items()
    ]  # fmt: skip
    print_table("images", ["case", "fast µs", "reference µs", "speed-up", "mean |Δ| px"], rows)
    rows = [[k, v["rows_changed_share"], v["rows_fitting_share"]] for k, v in syntax.items()]
    print_table("syntax mask", ["length", "rows changed", "rows fitting"], rows)
    print_table("classifier", ["figure", "value"], [[k, str(v)] for k, v in classifier.items()])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS,
        help=f"interleaved rounds (median); results/ is written only for the default {ROUNDS}",
    )  # fmt: skip
    main(parser.parse_args().rounds)
