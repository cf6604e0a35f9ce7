"""Inputs a new user gets wrong, fed through the real commands in a subprocess: each is either
read as meant (``lr: 1e-3`` in YAML is a float) or refused with one line naming the file, the
thing and the fix, with a non-zero exit and nothing left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import make_builder_dir, make_records
from clipa_cli.common import EXIT_BAD_INPUT

from clipa_data.demo import write_demo_validation

BIN = Path(sys.executable).parent


def run_cli(program: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``program args`` as a user runs it (one CPU thread: the test machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(BIN / program), *(str(arg) for arg in args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 and exactly one ``error:`` line on stderr holding every fragment; no traceback."""
    assert done.returncode == EXIT_BAD_INPUT, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def builder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("input-checks")
    return make_builder_dir(root / "data", [make_records(16, start=i * 16) for i in range(2)])


def tiny_config(path: Path, builder: Path, out: Path, **values: object) -> Path:
    """A YAML config of a clipa-tiny run, written as a user types it (``lr: 1e-3``)."""
    lines = [
        f"data: {builder}", f"out: {out}", "model: clipa-tiny", "image_size: 32",
        "text_length: 8", "text_mask: truncate", "workers: 1", "progress: no",
    ]  # fmt: skip
    lines += [f"{key}: {value}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(builder, tmp_path_factory) -> Path:
    """A run whose YAML config holds values PyYAML reads as text; its final checkpoint."""
    root = tmp_path_factory.mktemp("yaml-run")
    config = tiny_config(
        root / "run.yaml", builder, root / "run",
        lr="1e-3", samples="1.6e1", batch_size="'8'", color_jitter="0.1,0.1,0.1,0",
    )  # fmt: skip
    done = run_cli("clipa-train", "pretrain", "--config", config)
    assert done.returncode == 0, done.stderr[-3000:]
    options = json.loads((root / "run" / "config.json").read_text())["options"]
    assert (options["lr"], options["samples"], options["batch_size"]) == (0.001, 16, 8)
    assert options["color_jitter"] == [0.1, 0.1, 0.1, 0.0]
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    return Path(summary["checkpoint"])


def test_yaml_numbers_written_as_text_are_read_as_numbers(trained):
    assert trained.is_file()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("lr", "fast", "lr must be a number or null, got 'fast'"),
        ("batch_size", "2.5", "batch_size must be a whole number, got 2.5"),
        ("progress", "maybe", "progress must be true or false, got 'maybe'"),
        ("color_jitter", "[0.1, 0.2]", "color_jitter must be a list of 4 numbers or null"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_line(builder, tmp_path, key, value, expected):
    config = tiny_config(tmp_path / "run.yaml", builder, tmp_path / "run", **{key: value})
    done = run_cli("clipa-train", "pretrain", "--config", config)
    assert_one_error_line(done, str(config), expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kept", [0.5, 0.0])
def test_eval_of_a_truncated_checkpoint_says_so(trained, tmp_path, kept):
    """A checkpoint cut short (a copy that stopped, a full disk) is named as damaged with the
    fix, not mistaken for weights without an architecture."""
    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    damaged = tmp_path / trained.name
    data = trained.read_bytes()
    damaged.write_bytes(data[: int(len(data) * kept)])
    done = run_cli(
        "clipa-train", "eval", "--checkpoint", damaged, "--imagenet-val", val.root,
        "--classnames", val.classnames_path, "--workers", 1,
    )  # fmt: skip
    line = assert_one_error_line(
        done, f"checkpoint {damaged} is truncated or corrupt", "use an earlier checkpoint"
    )
    assert "holds no architecture" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", trained.name]
