"""``clipa-train``: pre-train, fine-tune and evaluate CLIP with reduced token lengths."""

from __future__ import annotations

import json
from pathlib import Path

from clipa_cli.common import EXIT_INTERRUPTED, make_app, reports_errors, stderr, stdout
from clipa_cli.options import command
from clipa_cli.train_options import eval_options, report_options, train_command
from clipa_cli.wide_table import print_wide_table
from rich.markup import escape
from rich.table import Table

from clipa_data.core.errors import ClipaError
from clipa_train.run_config import STAGE_DEFAULTS

app = make_app(
    "clipa-train",
    "Train CLIP the CLIPA way: pre-train with short image and text token sequences, fine-tune "
    "briefly at full length, and evaluate zero-shot on ImageNet-1K.",
)

PRETRAIN_HELP = "\n\n".join(
    [
        "Pre-train CLIP with reduced image and text token lengths.",
        "Example: clipa-train pretrain --data out/laion400m/1.0.0 --out runs/b16 "
        "--recipe clipa-b16-i50-t16",
        "Options come from (lowest first) the stage defaults, --recipe, --config FILE and the "
        "flags; a flag that contradicts the recipe is an error. The run directory gets "
        "config.json (resolved), metrics.jsonl, checkpoints/ and summary.json; one that already "
        "holds a run needs --resume auto (continue it) or --overwrite (move it aside, start over).",
        "Several GPUs: torchrun --nproc-per-node N $(which clipa-train) pretrain ...; "
        "TPU: --backend xla.",
    ]
)

FINETUNE_HELP = "\n\n".join(
    [
        "Fine-tune a pre-trained checkpoint at full token length.",
        "Example: clipa-train finetune --from runs/b16/checkpoints/step_00037292.pt "
        "--data out/laion400m/1.0.0 --out runs/b16-ft",
        STAGE_DEFAULTS["finetune"].describe() + "; the model is the checkpoint's unless --model "
        "is given.",
    ]
)


def run_training(stage: str, options: dict, config_file: Path | None) -> None:
    """Resolve the options, train, print the summary."""
    from clipa_train.run_config import resolve
    from clipa_train.sharding import is_first_rank, said_once_per_host
    from clipa_train.train_stage import run_stage

    with said_once_per_host():
        from_file = {}
        if config_file is not None:
            from clipa_train.run_config import read_config_file

            from_file = read_config_file(config_file)
        for required in ("data", "out"):  # checked here: the error names both places
            if options.get(required) is None and from_file.get(required) is None:
                raise ClipaError(f"--{required} is required (on the command line or in --config)")
        config = resolve(stage, options, config_file)
    summary = run_stage(config)
    if summary is not None:  # None: a resumed run that had nothing left to do (said so)
        if is_first_rank():
            print_summary(summary)
        if stopped_by_signal(summary):
            raise SystemExit(EXIT_INTERRUPTED)


def stopped_by_signal(summary: dict) -> bool:
    """Whether a signal (Ctrl-C, SIGTERM) stopped the stage before its last step: the command
    then exits 130 as the data commands do, so ``pretrain && finetune`` goes no further (a
    signal after the last step changes nothing, unless a second one cut the final evaluation
    short)."""
    return bool(
        summary.get("signalled") and (summary.get("stopped") or summary.get("final_eval_cut"))
    )


def print_summary(summary: dict) -> None:
    """The stage summary as a table."""
    table = Table(title=f"{summary['stage']} summary", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    zeroshot = summary.get("zeroshot") or {}
    rows = [
        ("steps", f"{summary['steps']} of {summary['total_steps']}"
         + (" (stopped; resume with --resume auto)" if summary["stopped"] else "")),
        ("final loss", "n/a" if summary["final_loss"] is None else f"{summary['final_loss']:.4f}"),
        ("samples/s", f"{summary['samples_per_s']:,.0f}" if summary["samples_per_s"] else "n/a"),
        ("zero-shot top-1", _zeroshot_row(summary, zeroshot)),
        ("bad images skipped", _bad_images(summary["stream"])),
        ("checkpoint", str(summary["checkpoint"])),
        ("summary", f"{summary['run_dir']}/summary.json"),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, escape(value))  # paths and bad-image messages are text, not markup
    stdout().print(table)


def _zeroshot_row(summary: dict, zeroshot: dict) -> str:
    if summary.get("final_eval_cut"):
        return f"final evaluation cut short by the signal; evaluate with: {summary['eval_command']}"
    if zeroshot:
        early = zeroshot.get("step", summary["steps"]) < summary["steps"]
        where = f" at step {zeroshot['step']}" if early else ""
        return f"{zeroshot['top1']:.1%}{where} (chance {zeroshot['chance']:.1%})"
    return "not evaluated (--zeroshot DIR)"


def _bad_images(stream: dict, shown: int = 3) -> str:
    """The count of bad images (and of unreadable records, if any) and the first messages (the
    rest are in summary.json)."""
    unreadable = stream.get("unreadable") or 0
    count = f"{stream['bad_images']}" + (
        f" (and {unreadable} unreadable records)" * bool(unreadable)
    )
    lines = [count, *stream["messages"][:shown]]
    if len(stream["messages"]) > shown:
        lines.append("(more in summary.json)")
    return "\n".join(lines)


app.command("pretrain", help=PRETRAIN_HELP)(reports_errors(train_command("pretrain", run_training)))
app.command("finetune", help=FINETUNE_HELP)(reports_errors(train_command("finetune", run_training)))


def _recipe_command() -> None:
    from clipa_cli.recipe_command import recipe_body, recipe_help, recipe_parameters

    body = reports_errors(command(recipe_body, recipe_parameters()))
    app.command("recipe", help=recipe_help())(body)


_recipe_command()


def note_on_stderr(line: str) -> None:
    """A note (where a classifier came from, images skipped), on stderr."""
    stderr().print(escape(line), soft_wrap=True)


def eval_body(as_json: bool = False, **options) -> None:
    """Zero-shot top-1/top-5 of a checkpoint on ImageNet-1K or any folder of class folders.

    With --suite paper --data-root DIR, every set of the paper's table found under DIR; with
    --retrieval coco|flickr30k, image-text Recall@1/5/10 on a Karpathy test split."""
    from clipa_cli.retrieval_command import retrieval_body, split_retrieval_options

    from clipa_train.eval_stage import EvalConfig, evaluate_checkpoint, evaluate_suite

    retrieval = split_retrieval_options(options)
    config = EvalConfig(**options)
    if retrieval.retrieval is not None:
        return retrieval_body(config, retrieval, as_json)
    if config.suite is not None:
        from clipa_cli.suite_output import note_skipped, print_suite

        result = evaluate_suite(
            config,
            note_skipped=note_skipped,
            note=note_on_stderr,
            max_missing=retrieval.max_missing,
            chunk_size=retrieval.chunk_size,
        )
        print_suite(result, config.result_path(), as_json)
        return
    if config.dataset is None:
        raise ClipaError(
            "give one set with --imagenet-val DIR or a suite with --suite paper --data-root DIR "
            "(or --retrieval coco|flickr30k --annotations FILE --images DIR)"
        )
    result = evaluate_checkpoint(config, note=note_on_stderr)
    if as_json:
        print(json.dumps(result))
        return
    stdout().print(
        f"zero-shot {result['task']}: top-1 {result['top1']:.2%}  top-5 {result['top5']:.2%}  "
        f"({result['n']} images, {result['classes']} classes, chance {result['chance']:.2%}) "
        f"-> {config.result_path()}"
    )


app.command("eval")(reports_errors(command(eval_body, eval_options())))


def report_body(runs: list[str], out: str, fit: bool) -> None:
    """HTML report of run directories (loss, zero-shot, throughput, config differences).

    Loss and zero-shot accuracy against samples and FLOPs, throughput, config differences;
    --fit adds the scaling-law fit.

    Example: clipa-train report runs/a runs/b --out report/"""
    from clipa_train.report import ReportConfig, make_report

    report = make_report(ReportConfig(runs=tuple(str(r) for r in runs), out=str(out), fit=fit))
    for note in report.notes:
        stderr().print(f"warning: {escape(note)}")
    for fit_result in report.fits:
        stdout().print(escape(fit_result.describe()))
    stdout().print(f"report: {escape(str(report.html))} (open it in a browser)")


app.command("report")(reports_errors(command(report_body, report_options())))


def models_body(**options) -> None:
    """Every bundled model preset with its sizes, parameters and forward GFLOPs.

    Image size, patch, text context, parameters and forward GFLOPs per sample (2 FLOPs per
    multiply-add, training costs 3x), at the preset's own size and at each --sizes stage size.

    Example: clipa-train models --sizes 84/8,224/32,336/32"""
    from clipa_train.model_zoo import ModelsConfig, model_rows

    config = ModelsConfig(**options)
    sizes = config.stage_sizes()
    headers = ["name", "image", "patch", "context", "params", "GFLOPs"]
    headers += [f"GFLOPs @{image}/{text}" for image, text in sizes]
    rows = [
        [
            row.name,
            str(row.image_size),
            str(row.patch_size),
            str(row.context_length),
            f"{row.params / 1e6:.2f}M",
            f"{row.gflops:.2f}",
            *("-" if g is None else f"{g:.2f}" for g in row.stage_gflops),
        ]
        for row in model_rows(config)
    ]
    print_wide_table(stdout(), "model presets", headers, rows)


def _models_options():
    from clipa_cli.options import config_options

    from clipa_train.model_zoo import ModelsConfig

    return config_options(ModelsConfig)


app.command("models")(reports_errors(command(models_body, _models_options())))


def _register_evaluation_tools() -> None:
    """``export`` and ``probe`` (their bodies live in their own modules)."""
    from clipa_cli.export_command import export_command
    from clipa_cli.probe_command import probe_command

    app.command("export")(export_command)
    app.command("probe")(probe_command)


_register_evaluation_tools()


def main() -> None:
    """Console-script entry point."""
    app()
