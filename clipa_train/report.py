"""``clipa-train report``: run directories -> one static HTML page with PNG figures.

The page (``OUT/index.html``) references its figures by relative path beside it, so it opens
from the disk with no server and no network: loss and zero-shot top-1 against samples seen and
against training FLOPs (``clipa_train.flops``), throughput and data-wait share over wall time, a
summary table, each run's options that differ from the first run's (highlighted), and with
``--fit`` the scaling-law fit (``clipa_train.scaling_fit``) and its inverse-scaling figure.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from clipa_data.core import layout
from clipa_data.core.atomic import atomic_writer, write_json
from clipa_data.core.config_fields import Doc
from clipa_data.core.errors import ClipaError
from clipa_train.run_records import RunRecords, read_runs, throughput
from clipa_train.scaling_fit import ScalingFit, fit_groups, plot_scaling

IGNORED_OPTIONS = ("out",)
"""Options that differ between any two runs by construction: never listed as differences."""


@dataclass(frozen=True)
class ReportConfig:
    """Options of ``clipa-train report``."""

    runs: Annotated[
        tuple[str, ...],
        Doc("Run directories (--out of pretrain/finetune runs); a recipe's stages in order."),
    ]
    out: Annotated[str, Doc("Folder for index.html and its figures (created).")]
    fit: Annotated[
        bool, Doc("Fit error = A·C^-α + E per model and token length (3+ finished runs per group).")
    ] = False

    def __post_init__(self) -> None:
        layout.check_local(self.out, "--out")


@dataclass(frozen=True)
class Report:
    """What ``make_report`` wrote."""

    html: Path
    """The page."""
    notes: tuple[str, ...]
    """Problems read past in the runs, one line each."""
    fits: tuple[ScalingFit, ...]
    """The scaling-law fits (empty without --fit)."""


def make_report(config: ReportConfig) -> Report:
    """Read the runs, fit (with ``fit``), draw the figures and write the page."""
    if not config.runs:
        raise ClipaError("report: give at least one run directory")
    runs = read_runs([Path(run) for run in config.runs])
    fits = fit_groups(runs) if config.fit else []  # refusals before anything is written
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        page = _write(runs, fits, out)
    except OSError as error:
        raise ClipaError(
            f"report: cannot write to --out {out} ({error.strerror or error}); "
            "give a writable folder"
        ) from None
    return Report(page, tuple(note for run in runs for note in run.notes), tuple(fits))


def _write(runs: list[RunRecords], fits: list[ScalingFit], out: Path) -> Path:
    """The figures, ``fit.json`` (with fits) and the page; returns the page."""
    figures = [
        ("Loss and zero-shot top-1 against samples seen", _plot_progress(runs, "samples", out)),
        ("Loss and zero-shot top-1 against training FLOPs", _plot_progress(runs, "flops", out)),
        ("Throughput and data-wait share over time", _plot_throughput(runs, out)),
    ]
    if fits:
        plot_scaling(fits, out / "scaling.png")
        figures.append(("Inverse scaling: error against compute, fitted", "scaling.png"))
        write_json(out / "fit.json", {"fits": [fit.to_json() for fit in fits]})
    else:  # an earlier report with --fit in this folder: its fit is not this report's
        for stale in ("scaling.png", "fit.json"):
            (out / stale).unlink(missing_ok=True)
    notes = [note for run in runs for note in run.notes]
    page = out / "index.html"
    with atomic_writer(page) as handle:
        handle.write(_page(runs, figures, fits, notes).encode("utf-8"))
    return page


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour(index: int) -> str:
    """Run ``index``'s colour, the same in every figure (a run without timed records is left
    out of the throughput figure, which shifted the later runs' colours there)."""
    return f"C{index % 10}"


def _plot_progress(runs: list[RunRecords], axis: str, out: Path) -> str:
    """Loss (left) and zero-shot top-1 (right) against samples seen or FLOPs; the file name."""
    plt = _pyplot()
    figure, (loss_axis, top1_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, run in enumerate(runs):
        at = run.samples if axis == "samples" else run.flops
        loss_axis.plot(
            [at(r["step"]) for r in run.train],
            [r["loss"] for r in run.train],
            color=_colour(index),
        )
        top1_axis.plot(
            [at(r["step"]) for r in run.evals],
            [100 * r["eval/top1"] for r in run.evals],
            "o-",
            color=_colour(index),
            label=run.name,
        )
    label = "samples seen" if axis == "samples" else "training FLOPs (analytic)"
    for ax, ylabel in ((loss_axis, "training loss"), (top1_axis, "zero-shot top-1 (%)")):
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    top1_axis.legend(fontsize="small")
    name = f"progress_{axis}.png"
    figure.tight_layout()
    figure.savefig(out / name)
    plt.close(figure)
    return name


def _plot_throughput(runs: list[RunRecords], out: Path) -> str:
    """Samples/s and data-wait share against wall time since each run's first record (runs
    made at different times, or on different machines, share one axis)."""
    plt = _pyplot()
    figure, (rate_axis, wait_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, run in enumerate(runs):
        timed = [r for r in run.train if {"time", "samples_per_s", "data_wait_share"} <= set(r)]
        if not timed:  # stopped before its first record (its colour stays its own)
            continue
        seconds = [r["time"] - timed[0]["time"] for r in timed]
        style = {"color": _colour(index), "label": run.name}
        rate_axis.plot(seconds, [r["samples_per_s"] for r in timed], **style)
        wait_axis.plot(seconds, [100 * r["data_wait_share"] for r in timed], **style)
    for ax, ylabel in ((rate_axis, "samples/s"), (wait_axis, "data-wait share (%)")):
        ax.set_xlabel("wall time in the run (s)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if rate_axis.get_legend_handles_labels()[0]:  # no run has a timed record: no legend
        rate_axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out / "throughput.png")
    plt.close(figure)
    return "throughput.png"


def summary_rows(runs: list[RunRecords]) -> list[list[str]]:
    """The summary table: header first."""
    rows = [
        ["run", "stage", "model", "image tokens", "text tokens", "steps", "samples seen",
         "training FLOPs", "final loss", "zero-shot top-1", "samples/s", "data wait"],
    ]  # fmt: skip
    for run in runs:
        rate, wait = throughput(list(run.train))
        rows.append(
            [
                run.name,
                run.stage,
                run.family,
                str(run.image_tokens),
                str(run.text_tokens),
                str(run.last_step) + ("" if run.finished else " (unfinished)"),
                f"{run.samples(run.last_step):,}",
                f"{run.flops(run.last_step):.3g}",
                f"{run.train[-1]['loss']:.4f}" if run.train else "n/a",
                _top1_cell(run),
                "n/a" if rate is None else f"{rate:,.1f}",
                "n/a" if wait is None else f"{wait:.1%}",
            ]
        )
    return rows


def _top1_cell(run: RunRecords) -> str:
    if run.final_eval_cut:
        return "final evaluation cut short"
    return "n/a" if run.final_top1 is None else f"{run.final_top1:.1%}"


def config_differences(runs: list[RunRecords]) -> list[tuple[str, list[str]]]:
    """(option, value per run) for every option whose value differs from the first run's."""
    names = [n for run in runs for n in run.options if n not in IGNORED_OPTIONS]
    ordered = list(dict.fromkeys(names))
    values = [[json.dumps(run.options.get(n)) for run in runs] for n in ordered]
    return [(n, v) for n, v in zip(ordered, values, strict=True) if len(set(v)) > 1]


def _table(rows: list[list[str]], highlight=None) -> str:
    """An HTML table; ``highlight(row, column)`` marks a body cell."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = []
    for i, row in enumerate(rows[1:]):
        cells = []
        for j, cell in enumerate(row):
            marked = ' class="diff"' if highlight and highlight(i, j) else ""
            cells.append(f"<td{marked}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _differences_html(runs: list[RunRecords]) -> str:
    differences = config_differences(runs)
    if len(runs) < 2:
        return "<p>One run: nothing to compare.</p>"
    if not differences:
        return "<p>The runs' options are the same (apart from --out).</p>"
    rows = [["option", *(run.name for run in runs)]]
    rows += [[name, *values] for name, values in differences]
    # Highlight each value that differs from the first run's (column 1).
    return _table(rows, lambda i, j: j > 1 and rows[i + 1][j] != rows[i + 1][1])


def _page(runs, figures, fits, notes) -> str:
    """The HTML page: summary, figures, config differences, fits and notes."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>clipa report</title>",
        f"<style>{STYLE}</style></head><body><h1>clipa report</h1>",
        "<p>Runs: " + ", ".join(html.escape(str(run.path)) for run in runs) + "</p>",
        "<h2>Summary</h2>",
        _table(summary_rows(runs)),
        "<h2>Options that differ from the first run</h2>",
        _differences_html(runs),
    ]
    if fits:
        parts.append("<h2>Scaling-law fit</h2><ul>")
        parts += [f"<li>{html.escape(fit.describe())}</li>" for fit in fits]
        parts.append("</ul><p>Constants ± one standard error (fit.json has every point).</p>")
    for title, name in figures:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{html.escape(name)}' alt=''>")
    if notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{html.escape(note)}</li>" for note in notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}"
    "td.diff{background:#ffe08a;font-weight:bold}"
    "img{max-width:100%;display:block}"
)
