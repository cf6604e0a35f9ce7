"""Demo data: deterministic scenes, learnable alt-text captions, the local server, LAION-like
metadata, the held-out validation set, and the ``make demo`` entry point."""

from __future__ import annotations

import colorsys
import io
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from clipa_cli.demo import SETTINGS_FILE, DemoSettings, prepare_output
from PIL import Image
from rich.console import Console

from clipa_data.core.errors import ClipaError
from clipa_data.demo import (
    BROKEN_KINDS,
    CLASS_FOLDERS,
    CLASS_NAMES,
    COLOURS,
    SCHEMA,
    SHAPES,
    serve_demo_images,
    write_demo_metadata,
    write_demo_validation,
)
from clipa_data.demo.captions import NUMBER_WORDS, caption_scene
from clipa_data.demo.scenes import encode_jpeg, render_scene, scene_rng, training_scene


@pytest.fixture(scope="module")
def base_url():
    with serve_demo_images() as url:
        yield url


def fetch(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, dict(response.headers), response.read()


# --- scenes and captions -----------------------------------------------------------------------


def test_scenes_are_a_pure_function_of_seed_and_index():
    first = encode_jpeg(render_scene(training_scene(7, 11)))
    assert encode_jpeg(render_scene(training_scene(7, 11))) == first
    assert encode_jpeg(render_scene(training_scene(7, 12))) != first
    assert encode_jpeg(render_scene(training_scene(8, 11))) != first


def test_concept_space_is_small_and_in_folder_order():
    assert len(COLOURS) == 5 and len(SHAPES) == 4 and len(CLASS_NAMES) == 20
    assert list(CLASS_FOLDERS) == sorted(CLASS_FOLDERS)
    assert [name.replace(" ", "_") for name in CLASS_NAMES] == list(CLASS_FOLDERS)


def test_scenes_vary_in_kind_count_and_background():
    scenes = [training_scene(0, i) for i in range(300)]
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3} and counts[1] > counts[3]
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.colour for s in scenes for o in s.objects} == set(COLOURS)
    assert len({s.background for s in scenes}) == 5
    assert len({(s.width, s.height) for s in scenes}) > 50


def test_every_caption_names_colour_shape_and_count_of_what_it_shows():
    for index in range(400):
        scene = training_scene(1, index)
        caption = caption_scene(scene, scene_rng(1, index, 3)).lower()
        for (colour, shape), count in Counter((o.colour, o.shape) for o in scene.objects).items():
            assert colour in caption and shape in caption, (caption, colour, shape)
            if count > 1:
                words = NUMBER_WORDS[count]
                assert any(w in caption for w in words) or f"x{count}" in caption, caption


def test_captions_look_like_alt_text():
    captions = [caption_scene(training_scene(2, i), scene_rng(2, i, 3)) for i in range(400)]
    assert len(set(captions)) > 350
    assert sum(c != c.lower() for c in captions) > 60  # casing noise
    fillers = ("stock photo", "wallpaper", "image of", "clipart", "royalty free")
    assert sum(any(f in c.lower() for f in fillers) for c in captions) > 60
    # word order varies: colour before shape, and "<shape> in <colour>"
    assert any(
        re.search(r"\b(circle|square|triangle|star)s? in [a-z]+", c.lower()) for c in captions
    )


def test_validation_images_show_their_class_colour(tmp_path):
    val = write_demo_validation(tmp_path / "eval", per_class=3, seed=0)
    hues = {name: COLOURS[name.split()[0]][0] for name in val.class_names}
    for folder, name in zip(CLASS_FOLDERS, val.class_names, strict=True):
        for path in sorted((val.image_dir / folder).glob("*.jpg")):
            pixels = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
            hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels.reshape(-1, 3)[::3]])
            vivid = hsv[hsv[:, 1] > 0.5]  # the object; backgrounds are low-saturation
            assert len(vivid) > 0.05 * len(hsv), path
            hue = np.degrees(np.angle(np.exp(1j * 2 * np.pi * vivid[:, 0]).mean())) % 360
            distance = min(abs(hue - hues[name]), 360 - abs(hue - hues[name]))
            assert distance < 20, (path, hue)


# --- the server ---------------------------------------------------------------------------------


def test_server_serves_the_scene_named_by_the_url(base_url):
    status, headers, body = fetch(f"{base_url}/images/4/9.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    scene = training_scene(4, 9)
    assert Image.open(io.BytesIO(body)).size == (scene.width, scene.height)
    assert body == encode_jpeg(render_scene(scene))
    assert "X-Robots-Tag" not in headers


def test_server_failure_routes(base_url):
    status, headers, body = fetch(f"{base_url}/optout/4/9.jpg")
    assert status == 200 and headers["X-Robots-Tag"] == "noai"
    status, headers, body = fetch(f"{base_url}/broken/3.jpg")
    assert status == 200 and body.startswith(b"<!doctype html>")
    with pytest.raises(urllib.error.HTTPError, match="404"):
        fetch(f"{base_url}/gone/3.jpg")


def test_server_stops_when_the_block_ends():
    with serve_demo_images() as url:
        assert fetch(url + "/images/0/0.jpg")[0] == 200
    with pytest.raises(urllib.error.URLError):
        fetch(url + "/images/0/0.jpg")


# --- metadata -----------------------------------------------------------------------------------


def test_metadata_is_laion_like_without_nulls(base_url, tmp_path):
    meta = write_demo_metadata(tmp_path / "m.parquet", base_url, count=60, seed=5)
    table = pq.read_table(meta.path)
    assert table.schema == SCHEMA and table.num_rows == 60 == meta.rows
    assert all(table[name].null_count == 0 for name in table.column_names)
    assert table["SAMPLE_ID"].to_pylist() == list(range(60))
    assert set(table["NSFW"].to_pylist()) <= {"UNLIKELY", "UNSURE"}
    assert all(0.28 <= s <= 0.42 for s in table["similarity"].to_pylist())
    assert sorted(kind for _, kind in meta.broken) == sorted(BROKEN_KINDS)
    assert meta.expected_successes == 55


def test_metadata_urls_answer_as_planted(base_url, tmp_path):
    meta = write_demo_metadata(tmp_path / "m.parquet", base_url, count=30, seed=1)
    urls = pq.read_table(meta.path)["URL"].to_pylist()
    broken = dict(meta.broken)
    for index, url in enumerate(urls):
        kind = broken.get(index)
        if kind in ("http_404", "dead_port"):
            with pytest.raises(urllib.error.URLError):
                fetch(url)
            continue
        _, headers, body = fetch(url)
        if kind == "not_an_image":
            assert headers["Content-Type"] == "text/html"
        else:
            assert Image.open(io.BytesIO(body)).format == "JPEG"
            assert (headers.get("X-Robots-Tag") == "noai") == (kind == "opt_out")


def test_metadata_is_deterministic_and_validated(base_url, tmp_path):
    one = write_demo_metadata(tmp_path / "a.parquet", base_url, count=20, seed=2)
    two = write_demo_metadata(tmp_path / "b.parquet", base_url, count=20, seed=2)
    assert pq.read_table(one.path).equals(pq.read_table(two.path))
    clean = write_demo_metadata(tmp_path / "c.parquet", base_url, count=3, broken=False)
    assert clean.broken == () and clean.expected_successes == 3
    with pytest.raises(ClipaError, match="at least 6 rows"):
        write_demo_metadata(tmp_path / "d.parquet", base_url, count=5)
    with pytest.raises(ClipaError, match="is a folder"):
        write_demo_metadata(tmp_path, base_url, count=20)


# --- validation set -----------------------------------------------------------------------------


def test_validation_set_is_an_image_folder_with_class_names(tmp_path):
    val = write_demo_validation(tmp_path / "eval", per_class=2, seed=0, size=48)
    assert [p.name for p in sorted(val.image_dir.iterdir())] == list(CLASS_FOLDERS)
    assert val.classnames_path.read_text().splitlines() == list(CLASS_NAMES)
    templates = val.templates_path.read_text().splitlines()
    assert templates and all(t.count("{}") == 1 for t in templates)
    images = sorted(val.image_dir.glob("*/*.jpg"))
    assert len(images) == val.images == 40
    assert Image.open(images[0]).size == (48, 48)
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind


def test_validation_set_is_reproducible_and_never_overwritten(tmp_path):
    one = write_demo_validation(tmp_path / "a", per_class=1, seed=3, templates=False)
    two = write_demo_validation(tmp_path / "b", per_class=1, seed=3, templates=False)
    assert one.templates_path is None and not (tmp_path / "a" / "templates.txt").exists()
    for path in sorted(one.image_dir.glob("*/*.jpg")):
        assert path.read_bytes() == (two.image_dir / path.relative_to(one.image_dir)).read_bytes()
    with pytest.raises(ClipaError, match="already exists and is not empty"):
        write_demo_validation(tmp_path / "a", per_class=1)


# --- the demo entry point -----------------------------------------------------------------------


def run_demo(*args: str):
    return subprocess.run(
        [sys.executable, "-m", "clipa_cli.demo", *args], capture_output=True, text=True, timeout=300
    )


def test_demo_runs_then_reuses(tmp_path):
    out = tmp_path / "demo_out"
    small = ["--out", str(out), "--count", "30", "--samples-per-shard", "15", "--processes", "1"]
    # 25 records, batches of 8: 3 pre-training and 3 fine-tuning steps (learning is tested in
    # test_end_to_end.py; this checks the demo's plumbing, outputs and reuse).
    small += ["--image-size", "32", "--batch-size", "8", "--pretrain-epochs", "1"]
    small += ["--finetune-epochs", "1", "--eval-every", "0"]
    first = run_demo(*small)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "demo stages" in first.stdout and "download summary" in first.stdout
    assert "zero-shot top-1 on the held-out demo set" in first.stdout
    assert sorted(p.name for p in (out / "raw").glob("*.tfrecord")) == [
        "00000.tfrecord",
        "00001.tfrecord",
    ]
    summary = json.loads((out / "raw" / "_clipa" / "download_summary.json").read_text())
    assert summary["summary"]["successes"] == 25
    # img2dataset's own lines are in its log, not on the console (issue 16: one bar of ours).
    for line in ("Starting the downloading", "bwm-ng", "worker  - success", "oneDNN"):
        assert line not in first.stdout + first.stderr
    assert "bwm-ng" in (out / "raw" / "_clipa" / "img2dataset.log").read_text()
    assert (out / "eval" / "classnames.txt").is_file()
    demo = json.loads((out / "demo_summary.json").read_text())
    assert [stage["stage"] for stage in demo["stages"]][-3:] == ["pretrain", "finetune", "eval"]
    assert demo["training"]["pretrain"]["steps"] == 3 and demo["training"]["finetune"]["steps"] == 3
    assert demo["zeroshot"]["n"] == 400 and demo["zeroshot"]["chance"] == 0.05
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert demo["report"] == str(out / "report" / "index.html") and "report of the" in first.stdout
    assert "<img" in (out / "report" / "index.html").read_text()
    assert json.loads((out / "eval.json").read_text())["top1"] == demo["zeroshot"]["top1"]

    again = run_demo(*small)
    assert again.returncode == 0 and "reusing" in again.stderr
    assert "by an earlier run, skipped" in again.stdout
    assert again.stdout.count("reused;") == 4  # tag, both training stages and eval
    assert "0 captions tagged" not in again.stdout
    assert json.loads((out / "demo_summary.json").read_text())["zeroshot"] == demo["zeroshot"]

    # A pre-training that is redone (here: its marker removed) takes the fine-tune with it.
    (out / "runs" / "pretrain" / "demo_stage.json").unlink()
    third = run_demo(*small)
    assert third.returncode == 0 and third.stdout.count("reused;") == 1  # the tag stage's


def test_demo_rebuilds_its_own_folder_when_settings_change(tmp_path):
    console = Console(file=io.StringIO(), soft_wrap=True)
    before = DemoSettings(out=tmp_path / "demo_out", count=30)
    prepare_output(before, rebuild=False, console=console)
    (before.out / "raw").mkdir()
    (before.out / "raw" / "00000_stats.json").write_text("{}")

    prepare_output(before, rebuild=False, console=console)
    assert (before.out / "raw" / "00000_stats.json").exists()  # same settings: reused

    after = DemoSettings(out=before.out, count=40)
    prepare_output(after, rebuild=False, console=console)
    assert not (before.out / "raw").exists()
    assert json.loads((before.out / SETTINGS_FILE).read_text()) == after.fingerprint()
    assert "settings changed" in console.file.getvalue()


def test_demo_settings_and_output_are_checked(tmp_path):
    with pytest.raises(ClipaError, match="--count >= 6"):
        DemoSettings(count=3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClipaError, match="is a file"):
        prepare_output(DemoSettings(out=tmp_path / "file"), False, Console(file=io.StringIO()))
    with pytest.raises(ClipaError, match="per_class >= 1"):
        write_demo_validation(tmp_path / "val", per_class=0)


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    done = run_demo("--out", str(tmp_path / "mine"))
    assert done.returncode == 2 and "was not written by the demo" in done.stderr
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_the_inspect_commands_run_as_printed_from_a_folder_with_a_space(tmp_path):
    """The hints at the end of ``make demo`` are pasted into a shell: a path with a space (or a
    quote) must stay one argument, and the Python one-liner must read the shard it names."""
    from clipa_cli.demo import where_to_look

    from clipa_data.core.example import encode_example
    from clipa_data.core.tfrecord import write_records

    settings = DemoSettings(out=tmp_path / "my demo's out")
    (settings.raw_dir / "_clipa").mkdir(parents=True)
    (settings.raw_dir / "_clipa" / "download_summary.json").write_text('{"ok": 1}')
    with (settings.raw_dir / "00000.tfrecord").open("wb") as stream:
        write_records(stream, [encode_example({"txt": ("bytes", [b"a red circle"])})])
    lines = where_to_look(settings).splitlines()
    listing = next(line for line in lines if line.strip().startswith("ls "))
    python = next(line for line in lines if " -c " in line).strip()
    info = next(line for line in lines if " info " in line).strip()
    elsewhere = tmp_path / "elsewhere"  # not the checkout: .venv/bin/... would not be found
    elsewhere.mkdir()
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p)
    for command, expected in ((listing, '{"ok": 1}'), (python, "a red circle"), (info, "")):
        done = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, cwd=elsewhere,
            env={**os.environ, "PATH": path},
        )  # fmt: skip
        assert done.returncode != 127, (command, done.stderr)  # the shell found the program
        assert expected in done.stdout, (command, done.stderr)
        if command != info:  # info of this stand-in folder is refused: it is no builder
            assert done.returncode == 0, (command, done.stderr)


def test_a_demo_stage_whose_final_evaluation_was_cut_short_says_so(tmp_path, monkeypatch):
    """summary.json has no zero-shot figures when the final evaluation was cut short (Ctrl-C
    twice during it); the demo's stage line read them anyway: a TypeError traceback."""
    import clipa_cli.demo as demo

    summary = {"steps": 150, "final_loss": 1.0, "zeroshot": None, "final_eval_cut": True}
    monkeypatch.setattr(demo, "train_stage", lambda *args, **kwargs: (summary, False))
    run = demo.DemoRun(settings=DemoSettings(out=tmp_path), base_url="http://127.0.0.1:9")
    line = demo._train(run, "pretrain")
    assert line == "150 steps, loss 1.000, final evaluation cut short"
