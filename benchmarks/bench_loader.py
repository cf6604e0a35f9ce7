"""Loader throughput: ours against the original CLIPA reader and the best tf.data path.

Run: ``.venv/bin/python -m benchmarks.bench_loader`` (about 10 minutes on 2 cores; the data,
4,096 photo-like 256 px JPEGs with LAION-like captions in 8 shards and their sidecars, is
generated once under ``benchmarks/work/``).

Every single-core figure runs with the process pinned to one core and one thread per library,
in rounds that interleave all pipelines, and reports the median round (samples/s/core).
A measurement takes one warm-up batch (which fills the shuffle buffer), then times 12 batches
of 256.

- ours: ``clipa_train.loader.Loader`` in the main process (``workers=0``), for the five cases;
  2 workers vs 1 worker (unpinned, total samples/s) at 112 px + syntax T16;
- (a) the original path re-created: TFDS ``as_dataset`` with the full-size
  ``decode_jpeg(INTEGER_ACCURATE)`` decoder, ``shuffle``, then per sample PIL bicubic
  RandomResizedCrop (scale 0.4-1) and CLIPA's online syntax masking per caption, as
  ``benchmarks.bench_text`` re-creates it (NLTK ``word_tokenize`` + ``pos_tag`` with NLTK's
  PerceptronTagger, trained offline there because the official tagger data cannot be
  downloaded here; CLIPA's priority rule, re-join, OpenCLIP's tokenizer, truncate), uint8
  collate; also without the text (image-only);
- (b) the best tf.data path we could write: ``TFRecordDataset`` -> shuffle raw records ->
  parallel ``map`` (parse, ``decode_jpeg`` with ``ratio`` or ``decode_and_crop_jpeg``,
  ``sample_distorted_bounding_box``, ``tf.image.resize`` antialiased) -> batch, with the text
  from the sidecars (the same syntax-mask code as ours); the faster variant counts;
- ceiling: the fastest bare decode + resize of the same JPEGs held in memory (no reading,
  parsing, cropping, text or batching).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import command_run, print_table, write_result

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
from benchmarks.loader_data import build

WORK = Path(__file__).resolve().parent / "work"
SHARDS, PER_SHARD = 8, 512
BATCH = 256
TIMED_BATCHES = 12
ROUNDS = 5
SHUFFLE = 1024
CORE = 0
CASES = {
    "112px_syntax_T16": dict(size=112, mask="resize", text=("syntax", 16)),
    "64px_syntax_T16": dict(size=64, mask="resize", text=("syntax", 16)),
    "96px_syntax_T8": dict(size=96, mask="resize", text=("syntax", 8)),
    "224px_truncate_T32": dict(size=224, mask="resize", text=("truncate", 32)),
    "224px_random_mask_0.5": dict(size=224, mask="random", text=("truncate", 32)),
}


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and its live children (loader workers)."""
    total = time.process_time()
    for child in multiprocessing.active_children():
        with open(f"/proc/{child.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rate(batches: Iterator, batch_size: int = BATCH) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second) over ``TIMED_BATCHES`` batches after
    one warm-up batch. On a shared machine the CPU-second rate is what a core of our own would
    give; the wall rate also counts the time other programs held the core."""
    next(batches)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(TIMED_BATCHES):
        next(batches)
    samples = TIMED_BATCHES * batch_size
    return samples / (time.perf_counter() - wall), samples / (cpu_seconds() - cpu)


# --- ours ------------------------------------------------------------------------------------


def ours(builder: Path, case: dict, workers: int = 0) -> Callable[[], tuple[float, float]]:
    from clipa_train.image import ImageConfig
    from clipa_train.loader import Loader
    from clipa_train.reduce import PatchMaskConfig, TextReductionConfig
    from clipa_train.stream import StreamConfig

    config = StreamConfig(
        data=str(builder),
        batch_size=BATCH,
        image=ImageConfig(size=case["size"]),
        patch_mask=PatchMaskConfig(case["mask"], 16, 0.5),
        text=TextReductionConfig(*case["text"]),
        workers=workers,
        shuffle_buffer=SHUFFLE,
        pin_memory=False,
    )

    def measure() -> tuple[float, float]:
        loader = Loader(config)
        try:
            return rate(iter(loader))
        finally:
            loader.close()

    return measure


# --- (a) the original reader -------------------------------------------------------------------


def tf_single_core_options():
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.cpu_budget = 1
    return options


def rrc_params(width: int, height: int, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params (python ``random``)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, width - w), random.randint(0, height - h), w, h
    return 0, 0, width, height


def original_text(length: int) -> Callable[[str], np.ndarray]:
    """CLIPA's syntax_mask_tokenize of one caption: NLTK's tokenizer and PerceptronTagger (the
    data ``bench_text`` trains offline), OpenCLIP's tokenizer (``bench_text``'s re-creation)."""
    from benchmarks import bench_text

    os.environ["NLTK_DATA"] = str(bench_text.NLTK_DATA)
    bench_text.build_nltk_data()
    encode = bench_text.openclip_encoder()
    return lambda caption: bench_text.online_syntax_mask([caption], length, encode)[0]


def original(
    builder: Path, size: int, length: int, with_text: bool = True
) -> Callable[[], tuple[float, float]]:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from PIL import Image

    syntax_online = original_text(length)

    @tfds.decode.make_decoder()
    def decode_full(serialized, feature):
        return tf.image.decode_jpeg(serialized, channels=3, dct_method="INTEGER_ACCURATE")

    def batches() -> Iterator:
        dataset = tfds.builder_from_directory(str(builder)).as_dataset(
            split="train",
            shuffle_files=True,
            decoders={"jpg": decode_full()},
            read_config=tfds.ReadConfig(shuffle_seed=0),
        )
        dataset = dataset.with_options(tf_single_core_options())
        dataset = dataset.repeat().shuffle(SHUFFLE, seed=0).prefetch(BATCH)
        examples = iter(tfds.as_numpy(dataset))
        while True:
            images, texts = [], []
            for _ in range(BATCH):
                example = next(examples)
                image = Image.fromarray(example["jpg"], "RGB")
                x, y, w, h = rrc_params(*image.size)
                image = image.resize((size, size), Image.BICUBIC, box=(x, y, x + w, y + h))
                images.append(np.asarray(image.convert("RGB")))
                if with_text:
                    caption = example["txt"].decode()
                    texts.append(syntax_online(caption))
            yield np.stack(images), np.stack(texts) if texts else None

    return lambda: rate(batches())


# --- (b) the best tf.data path -------------------------------------------------------------------


def tf_decoders(size: int, fixed_ratio: int) -> dict[str, Callable]:
    """The tf.data decode variants of ``tfdata_best``, each JPEG bytes -> the cropped image."""
    import tensorflow as tf

    def crop_window(shape):
        begin, extent, _ = tf.image.sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.zeros([1, 0, 4]),
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.4, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin, extent

    def decode_scaled(jpeg):
        begin, extent = crop_window(tf.io.extract_jpeg_shape(jpeg))
        shorter = tf.minimum(extent[0], extent[1])
        steps = sum(tf.cast(shorter >= k * size, tf.int32) for k in (2, 4, 8))
        branches = [lambda r=r: tf.io.decode_jpeg(jpeg, channels=3, ratio=r) for r in (1, 2, 4, 8)]
        image = tf.switch_case(steps, branches)
        ratio = tf.bitwise.left_shift(1, steps)
        start = tf.concat([begin[:2] // ratio, [0]], 0)
        extent = tf.concat([tf.maximum(extent[:2] // ratio, 1), [3]], 0)
        return tf.slice(image, start, extent)

    def decode_crop(jpeg):
        begin, extent = crop_window(tf.io.extract_jpeg_shape(jpeg))
        window = tf.stack([begin[0], begin[1], extent[0], extent[1]])
        return tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)

    def decode_fixed(jpeg):
        image = tf.io.decode_jpeg(jpeg, channels=3, ratio=fixed_ratio)
        begin, extent = crop_window(tf.shape(image))
        return tf.slice(image, begin, extent)

    return {"scaled": decode_scaled, "crop": decode_crop, "fixed_ratio": decode_fixed}


def tfdata_best(
    builder: Path, size: int, length: int, variant: str
) -> Callable[[], tuple[float, float]]:
    """tf.data with the sidecar text. ``variant``: ``scaled`` decodes at the ``ratio`` that keeps
    the crop >= the target (chosen per element, as ours), ``crop`` decodes only the crop window
    at full size, ``fixed_ratio`` decodes the whole image at one ratio and may upsample the crop
    (cheaper, blurrier: reported, not used for the ratio)."""
    import tensorflow as tf

    from clipa_data.core import layout
    from clipa_data.core.text_reduction import syntax_mask
    from clipa_train.shards import open_split

    reader = open_split(str(builder))
    rows = {}
    for shard in range(len(reader.split.shards)):
        sidecar = reader.sidecar(shard)
        for index, key in enumerate(sidecar.keys):
            rows[key] = (sidecar, index)
    files = [shard.path for shard in layout.read_split(builder, "train").shards]
    fixed_ratio = max(k for k in (1, 2, 4, 8) if 256 // k >= size)
    spec = {
        "key": tf.io.FixedLenFeature([], tf.string),
        "jpg": tf.io.FixedLenFeature([], tf.string),
    }
    decode = tf_decoders(size, fixed_ratio)[variant]

    def transform(raw):
        example = tf.io.parse_single_example(raw, spec)
        crop = decode(example["jpg"])
        resized = tf.image.resize(crop, [size, size], method="bilinear", antialias=True)
        return example["key"], tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    def batches() -> Iterator:
        dataset = tf.data.TFRecordDataset(files).repeat().shuffle(SHUFFLE, seed=0)
        dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(BATCH).prefetch(2).with_options(tf_single_core_options())
        for keys, images in dataset.as_numpy_iterator():
            texts = []
            for key in keys:
                sidecar, index = rows[key.decode()]
                words = sidecar.words(index)
                texts.append(syntax_mask(sidecar.caption_ids(index), *words, length))
            yield images, np.stack(texts)

    return lambda: rate(batches())


# --- the decode + resize ceiling -----------------------------------------------------------------


def ceiling(builder: Path, size: int) -> Callable[[], tuple[float, float]]:
    import cv2
    import simplejpeg

    from clipa_train.shards import open_split

    images = [
        record.image for _, record in zip(range(2048), open_split(str(builder)), strict=False)
    ]
    out = np.empty((size, size, 3), np.uint8)

    def simplejpeg_with(interpolation):
        def run(data):
            pixels = simplejpeg.decode_jpeg(data, min_width=size, min_height=size)
            cv2.resize(pixels, (size, size), dst=out, interpolation=interpolation)

        return run

    def cv2_reduced(data):
        k = max(k for k in (1, 2, 4, 8) if 256 // k >= size)
        flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
        pixels = cv2.imdecode(
            np.frombuffer(data, np.uint8), flag.get(k, cv2.IMREAD_REDUCED_COLOR_8)
        )
        cv2.resize(pixels, (size, size), dst=out, interpolation=cv2.INTER_LINEAR)

    variants = [simplejpeg_with(cv2.INTER_LINEAR), simplejpeg_with(cv2.INTER_AREA), cv2_reduced]

    def measure() -> tuple[float, float]:
        best = (0.0, 0.0)
        for run in variants:
            wall, cpu = time.perf_counter(), time.process_time()
            for data in images:
                run(data)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best = max(best, (len(images) / wall, len(images) / cpu), key=lambda r: r[1])
        return best

    return measure


# --- the run -------------------------------------------------------------------------------------


def pin(cores: set[int]) -> None:
    os.sched_setaffinity(0, cores)


PACKAGES = [
    "torch",
    "numpy",
    "simplejpeg",
    "opencv-python-headless",
    "pillow",
    "tensorflow-cpu",
    "tensorflow-datasets",
    "spacy",
    "nltk",
    "ftfy",
    "protobuf",
    "pyarrow",
]


def measurements(builder: Path) -> tuple[dict, dict]:
    """(single-core pipelines, multi-worker pipelines): name -> a function that measures once."""
    single = {f"ours/{name}": ours(builder, case) for name, case in CASES.items()}
    single["original/112px_syntax_T16"] = original(builder, 112, 16)
    single["original/64px_syntax_T16"] = original(builder, 64, 16)
    single["original_image_only/112px"] = original(builder, 112, 16, with_text=False)
    single["original_image_only/64px"] = original(builder, 64, 16, with_text=False)
    for variant in ("scaled", "crop", "fixed_ratio"):
        single[f"tfdata_{variant}/112px_syntax_T16"] = tfdata_best(builder, 112, 16, variant)
    single["tfdata_scaled/64px_syntax_T16"] = tfdata_best(builder, 64, 16, "scaled")
    single["ceiling/112px"] = ceiling(builder, 112)
    single["ceiling/64px"] = ceiling(builder, 64)
    parallel = {
        f"ours_{n}_workers/112px_syntax_T16": ours(builder, CASES["112px_syntax_T16"], n)
        for n in (1, 2)
    }
    return single, parallel


def run_rounds(single: dict, parallel: dict, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Interleaved rounds: single-core pipelines pinned to one core, then the parallel ones."""
    all_cores = os.sched_getaffinity(0)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in [*single, *parallel]}
    for round_number in range(rounds):
        pin({CORE})
        for name, measure in single.items():
            runs[name].append(measure())
        pin(all_cores)
        for name, measure in parallel.items():
            runs[name].append(measure())
        print(f"round {round_number + 1}/{rounds} done", flush=True)
    return runs


def loader_ratios(wall: dict, per_cpu: dict) -> dict[str, float]:
    """The ratios the README reports (per CPU second, except two workers vs one)."""
    ours_112 = per_cpu["ours/112px_syntax_T16"]
    tfdata_112 = max(
        per_cpu["tfdata_scaled/112px_syntax_T16"], per_cpu["tfdata_crop/112px_syntax_T16"]
    )
    one, two = "ours_1_workers/112px_syntax_T16", "ours_2_workers/112px_syntax_T16"
    return {
        "vs_original_112": ours_112 / per_cpu["original/112px_syntax_T16"],
        "vs_original_64": per_cpu["ours/64px_syntax_T16"] / per_cpu["original/64px_syntax_T16"],
        "vs_tfdata_112": ours_112 / tfdata_112,
        "two_workers_vs_one": wall[two] / wall[one],
        "share_of_ceiling_112": ours_112 / per_cpu["ceiling/112px"],
    }


def loader_figures(runs: dict, single: dict, parallel: dict, wall: dict, per_cpu: dict) -> dict:
    """Every raw figure behind the ratios."""
    ours_112 = per_cpu["ours/112px_syntax_T16"]
    one, two = "ours_1_workers/112px_syntax_T16", "ours_2_workers/112px_syntax_T16"
    return {
        "samples_per_s_per_core": {n: round(v, 1) for n, v in per_cpu.items() if n in single},
        "samples_per_s_per_core_wall": {n: round(v, 1) for n, v in wall.items() if n in single},
        "samples_per_s_total_wall": {n: round(v, 1) for n, v in wall.items() if n in parallel},
        "samples_per_cpu_second_workers": {
            n: round(v, 1) for n, v in per_cpu.items() if n in parallel
        },
        "two_workers_vs_one_projected": 2 * per_cpu[two] / per_cpu[one],
        "vs_original_112_wall": wall["ours/112px_syntax_T16"] / wall["original/112px_syntax_T16"],
        "vs_original_image_only_112": ours_112 / per_cpu["original_image_only/112px"],
        "vs_original_image_only_64": per_cpu["ours/64px_syntax_T16"]
        / per_cpu["original_image_only/64px"],
        "vs_tfdata_64": per_cpu["ours/64px_syntax_T16"] / per_cpu["tfdata_scaled/64px_syntax_T16"],
        "vs_tfdata_112_wall": wall["ours/112px_syntax_T16"]
        / max(wall["tfdata_scaled/112px_syntax_T16"], wall["tfdata_crop/112px_syntax_T16"]),
        "runs_wall_cpu": {n: [[round(w, 1), round(c, 1)] for w, c in v] for n, v in runs.items()},
    }


def loader_config(rounds: int) -> dict:
    """How the figures were measured."""
    return {
        "records": SHARDS * PER_SHARD,
        "shards": SHARDS,
        "source_image": "256x256 JPEG q90 4:2:0, photo-like, ~16.5 KiB",
        "batch_size": BATCH,
        "timed_batches": TIMED_BATCHES,
        "rounds": rounds,
        "shuffle_buffer": SHUFFLE,
        "single_core": f"pinned to core {CORE}, 1 thread per library, median of rounds",
        "per_core": "samples per CPU second of the pipeline's own processes (the machine is "
        "shared); wall-clock figures alongside",
        "two_workers_vs_one": "wall-clock throughput, unpinned; *_projected = 2 x the ratio of "
        "samples per CPU second (what two free cores would give)",
        "original_text": "benchmarks.bench_text.online_syntax_mask per caption: nltk "
        "word_tokenize + pos_tag (PerceptronTagger trained offline by bench_text, the official "
        "data cannot be downloaded here), CLIPA's priority rule, OpenCLIP's tokenizer "
        "(ftfy + pure-Python BPE)",
        "cases": CASES,
    }


def main(rounds: int = ROUNDS) -> None:
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    builder = build(WORK, shards=SHARDS, per_shard=PER_SHARD)
    load_before = os.getloadavg()
    single, parallel = measurements(builder)
    runs = run_rounds(single, parallel, rounds)
    wall = {name: statistics.median(w for w, _ in values) for name, values in runs.items()}
    per_cpu = {name: statistics.median(c for _, c in values) for name, values in runs.items()}
    ratios = loader_ratios(wall, per_cpu)
    figures = loader_figures(runs, single, parallel, wall, per_cpu)
    figures["load_average_before_after"] = [load_before, os.getloadavg()]
    path = write_result(
        "loader",
        ratios=ratios,
        figures=figures,
        config=loader_config(rounds),
        packages=PACKAGES,
        command=command_run(".venv/bin/python -m benchmarks.bench_loader"),
    )
    rows = [[name, per_cpu[name], wall[name]] for name in runs]
    print_table("loader (median)", ["pipeline", "samples/CPU-s", "samples/wall-s"], rows)
    print_table("ratios", ["ratio", "value"], [[k, v] for k, v in ratios.items()])
    print(f"wrote {path}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds (median)")
    main(parser.parse_args().rounds)
