"""The demo's training half: pre-train a tiny CLIP with reduced tokens, fine-tune at full length,
evaluate zero-shot on the held-out set, plot the loss curve.

Each training stage reuses its run directory when it finished with the same options (a re-run
of ``make demo`` is quick) and otherwise trains afresh.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from rich.table import Table

from clipa_data.core.atomic import write_json
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.text_reduction import TEXT_MASKS

STAGE_MARKER = "demo_stage.json"


@dataclass(frozen=True)
class DemoTraining:
    """How the demo trains (sized for 2 CPU cores: a few minutes in all)."""

    model: Annotated[str, Doc("Model preset (patch 8, width 128, 4 + 4 blocks).")] = "clipa-tiny"
    batch_size: Annotated[int, Doc("Global batch of pre-training and fine-tuning.")] = 64
    pretrain_image_size: Annotated[
        int, Doc("Pre-training image side: 16 patches + CLS instead of 64 + CLS at full size.")
    ] = 32
    pretrain_text_length: Annotated[
        int, Doc("Pre-training text length (syntax mask keeps nouns, then adjectives, then verbs).")
    ] = 8
    pretrain_text_mask: Annotated[str, Doc("Pre-training text reduction."), Choices(TEXT_MASKS)] = (
        "syntax"
    )
    pretrain_epochs: Annotated[float, Doc("Passes over the demo data in pre-training.")] = 10
    pretrain_lr: Annotated[
        float,
        Doc("Pre-training peak learning rate (the paper's batch rule is tuned for 32k batches)."),
    ] = 1e-3
    finetune_image_size: Annotated[int, Doc("Fine-tuning at the full downloaded size.")] = 64
    finetune_text_length: Annotated[int, Doc("Fine-tuning text length (truncate).")] = 32
    finetune_epochs: Annotated[float, Doc("Passes over the demo data in fine-tuning.")] = 3
    finetune_lr: Annotated[float, Doc("Fine-tuning peak learning rate.")] = 3e-4
    workers: Annotated[int, Doc("Loader worker processes.")] = 2
    seed: Annotated[int, Doc("Seed of both stages.")] = 0
    eval_every: Annotated[
        int,
        Doc(
            "Steps between in-loop zero-shot evaluations, plotted on the loss curve (0: only at "
            "the end of the stage)."
        ),
    ] = 100


def _zeroshot_options(eval_dir: Path) -> dict:
    return {
        "zeroshot": str(eval_dir),
        "classnames": str(eval_dir / "classnames.txt"),
        "templates": str(eval_dir / "templates.txt"),
    }


def stage_options(training: DemoTraining, stage: str, data: Path, eval_dir: Path) -> dict:
    """The ``clipa-train pretrain|finetune`` options of a demo stage."""
    common = {
        "data": str(data),
        "batch_size": training.batch_size,
        "workers": training.workers,
        "seed": training.seed,
        "log_every": 5,
        "eval_every": training.eval_every,
        **_zeroshot_options(eval_dir),
    }
    if stage == "pretrain":
        return {
            **common,
            "model": training.model,
            "image_size": training.pretrain_image_size,
            "text_length": training.pretrain_text_length,
            "text_mask": training.pretrain_text_mask,
            "epochs": training.pretrain_epochs,
            "lr": training.pretrain_lr,
        }
    return {
        **common,
        "image_size": training.finetune_image_size,
        "text_length": training.finetune_text_length,
        "epochs": training.finetune_epochs,
        "lr": training.finetune_lr,
    }


def train_stage(
    stage: str, options: dict, run_dir: Path, may_reuse: bool = True
) -> tuple[dict, bool]:
    """Run a stage into ``run_dir``, or reuse it when it finished with the same options (and
    ``may_reuse``); returns (summary, reused)."""
    from clipa_train.run_config import resolve
    from clipa_train.train_stage import run_stage

    config = resolve(stage, {**options, "out": str(run_dir)})
    marker, summary = run_dir / STAGE_MARKER, run_dir / "summary.json"
    if (
        may_reuse
        and marker.is_file()
        and summary.is_file()
        and json.loads(marker.read_text()) == config.to_json()
    ):
        return json.loads(summary.read_text()), True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = run_stage(config)
    write_json(marker, config.to_json())
    return result, False


def evaluate_final(checkpoint: str, eval_dir: Path, out: Path) -> dict:
    """Standalone zero-shot evaluation of the fine-tuned checkpoint (``clipa-train eval``)."""
    from clipa_train.eval_stage import EvalConfig, evaluate_checkpoint

    return evaluate_checkpoint(
        EvalConfig(
            checkpoint=checkpoint,
            dataset=str(eval_dir),
            classnames=str(eval_dir / "classnames.txt"),
            templates=str(eval_dir / "templates.txt"),
            out=str(out),
        )
    )


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot_loss_curve(
    runs: list[tuple[str, Path]], chance: float, path: Path, title: str = "clipa demo"
) -> Path:
    """Training loss of the stages one after the other, with zero-shot top-1 on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(8, 4.5))
    top1_axis = loss_axis.twinx()
    offset = 0
    for label, run_dir in runs:
        records = read_metrics(run_dir)
        steps = [offset + r["step"] for r in records if "loss" in r]
        loss_axis.plot(steps, [r["loss"] for r in records if "loss" in r], label=f"{label} loss")
        evals = [r for r in records if "eval/top1" in r]
        top1_axis.plot(
            [offset + r["step"] for r in evals],
            [100 * r["eval/top1"] for r in evals],
            "o--",
            label=f"{label} zero-shot top-1",
        )
        offset = steps[-1] if steps else offset
        loss_axis.axvline(offset, color="grey", linewidth=0.5)
    top1_axis.axhline(100 * chance, color="red", linewidth=0.8, linestyle=":", label="chance")
    loss_axis.set_xlabel("optimiser step")
    loss_axis.set_ylabel("contrastive loss")
    top1_axis.set_ylabel("zero-shot top-1 (%)")
    top1_axis.set_ylim(0, 100)
    lines = loss_axis.get_legend_handles_labels()
    more = top1_axis.get_legend_handles_labels()
    loss_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    loss_axis.set_title(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def training_table(summaries: dict[str, dict], final: dict | None) -> Table:
    """Steps, loss, throughput and zero-shot top-1 per training stage."""
    table = Table(title="demo training", title_justify="left")
    for column in ("stage", "steps", "final loss", "samples/s", "seconds", "zero-shot top-1"):
        table.add_column(column)
    for name, summary in summaries.items():
        zeroshot = summary.get("zeroshot") or {}
        table.add_row(
            name,
            str(summary["steps"]),
            f"{summary['final_loss']:.3f}",
            f"{summary['samples_per_s']:,.0f}",
            f"{summary['wall_seconds']:.0f}",
            f"{zeroshot['top1']:.1%}" if zeroshot else "-",
        )
    if final is not None:
        table.add_row("eval", "", "", "", f"{final['seconds']:.0f}", f"{final['top1']:.1%}")
    return table
