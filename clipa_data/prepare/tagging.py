"""``clipa-data tag``: tokenise and POS-tag every caption once, into one Arrow sidecar per shard.

Per shard (one process-pool task): read the shard's records in order, tag the raw captions
(``clipa_data.core.taggers``), BPE-encode the caption and every tagger word, and write
``sidecars/<shard>.arrow`` atomically, row i = record i (on an fsspec store: written locally,
then published by ``stores``). A re-run skips shards whose sidecar is finished and valid; a
sidecar that no longer matches (other vocabulary, text field, tagger or row count) stops the run
naming the shard, unless ``overwrite`` re-tags it. The run ends with ``sidecars/tag_summary.json``
(on a store: published last, after every sidecar); a re-run that tags nothing keeps the summary
of the run that did (its tagger, counts and speed).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import pyarrow as pa

from clipa_data.core import layout
from clipa_data.core.atomic import check_writable_folder
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.provenance import package_versions
from clipa_data.core.run_lock import only_run_in
from clipa_data.core.sidecar import (
    MAX_WORDS,
    SidecarInfo,
    TableBuilder,
    read_header,
    write_sidecar,
)
from clipa_data.core.taggers import (
    DEFAULT_BATCH_SIZE,
    TAGGER_CHOICES,
    TaggedWords,
    TaggerSpec,
    load_tagger,
    resolve_tagger,
)
from clipa_data.core.text_reduction import priority_of_tag
from clipa_data.core.tokenizer import default_tokenizer, vocab_sha256
from clipa_data.prepare import stores
from clipa_data.prepare.captions import (
    DEFAULT_TEXT_FIELD,
    Caption,
    check_text_feature,
    read_captions,
)
from clipa_data.prepare.runner import (
    DISTRIBUTORS,
    DistributorField,
    RunnerConfig,
    SparkMasterField,
    default_workers,
    map_shards_timed,
)


@dataclass(frozen=True)
class TagConfig:
    """What ``clipa-data tag`` does."""

    builder_dir: Annotated[
        str | Path,
        Doc(
            "TFDS builder directory from clipa-data convert (or a folder holding exactly one), "
            "or its fsspec URL (gs://, s3://, hdfs://): sidecars are staged locally, then "
            "published."
        ),
    ]
    tagger: Annotated[
        str,
        Doc("auto: NLTK when its data is present, else an installed spaCy English pipeline."),
        Choices(TAGGER_CHOICES),
    ] = "auto"
    spacy_model: Annotated[
        str | None,
        Doc("Installed spaCy English pipeline (package name or folder) for tagger spacy (with "
            "--tagger auto, naming one picks spaCy); default: en_core_web_sm, else the first "
            "English pipeline installed."),
    ] = None  # fmt: skip
    text_field: Annotated[str, Doc("Record feature holding the caption.")] = DEFAULT_TEXT_FIELD
    splits: Annotated[
        tuple[str, ...], Doc("Splits to tag; none given = every split of the builder directory.")
    ] = ()
    workers: Annotated[
        int, Doc("Worker processes, each loading the tagger once (default: all cores).")
    ] = field(default_factory=default_workers)
    overwrite: Annotated[bool, Doc("Re-tag shards that already have a sidecar.")] = False
    batch_size: Annotated[int, Doc("Captions per spaCy nlp.pipe batch.")] = DEFAULT_BATCH_SIZE
    show_progress: Annotated[bool, Doc("Show a progress bar (captions/s, on stderr).")] = True
    distributor: DistributorField = "multiprocessing"
    spark_master: SparkMasterField = None

    def __post_init__(self) -> None:
        # --split train --split train: each shard once (twice, two workers wrote one sidecar)
        object.__setattr__(self, "splits", tuple(dict.fromkeys(self.splits)))
        if self.tagger not in TAGGER_CHOICES:
            raise ClipaError(f"--tagger must be one of {', '.join(TAGGER_CHOICES)}")
        if self.workers < 1:
            raise ClipaError(f"--workers must be at least 1, got {self.workers}")
        if not self.text_field:
            raise ClipaError("--text-field must name a feature, e.g. txt")
        if self.batch_size < 1:
            raise ClipaError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.distributor not in DISTRIBUTORS:
            raise ClipaError(f"--distributor must be one of {', '.join(DISTRIBUTORS)}")
        spacy_only = [
            flag
            for flag, given in (
                ("--spacy-model", self.spacy_model is not None),
                ("--batch-size", self.batch_size != DEFAULT_BATCH_SIZE),
            )
            if given
        ]
        if self.tagger == "nltk" and spacy_only:
            raise ClipaError(
                f"{' and '.join(spacy_only)} would be ignored by --tagger nltk (spaCy options); "
                "drop them, or pass --tagger spacy"
            )


@dataclass(frozen=True)
class ShardJob:
    """One shard to tag (sent to a worker process)."""

    shard: str
    """Path of the tfrecord shard."""
    sidecar: str
    """Where its sidecar goes."""
    num_records: int
    """Records that ``dataset_info.json`` declares for the shard."""
    text_field: str
    """The caption feature."""
    tagger: TaggerSpec
    """The tagger every worker loads."""


@dataclass(frozen=True)
class ShardTagResult:
    """What happened to one shard."""

    shard: str
    """Shard file name."""
    status: str
    """``tagged`` or ``skipped`` (a finished, valid sidecar was already there)."""
    records: int
    """Rows in its sidecar."""
    words: int = 0
    """Tagger words written (tagged shards)."""
    seconds: float = 0.0
    """Wall time of the shard in its worker (tagged shards)."""


@dataclass(frozen=True)
class TagSummary:
    """The outcome of a tag run; ``to_json`` is what ``tag_summary.json`` holds."""

    builder_dir: str
    """The builder directory that was tagged."""
    tagger: TaggerSpec
    """The tagger that was used."""
    text_field: str
    """The caption feature."""
    workers: int
    """Worker processes."""
    seconds: float
    """Wall time of the whole run (tagger resolution, resume checks and summary included)."""
    shards: tuple[ShardTagResult, ...]
    """Per shard, in split and shard order."""
    tagging_seconds: float = 0.0
    """From the start of the progress bar (worker start-up included) to the last shard's
    finish: what the progress bar's captions/s divides by, so both show the same rate."""
    distributor: str = "multiprocessing"
    """Where the shards were tagged (``multiprocessing`` or ``pyspark``)."""

    @property
    def tagged(self) -> list[ShardTagResult]:
        return [result for result in self.shards if result.status == "tagged"]

    @property
    def captions_tagged(self) -> int:
        return sum(result.records for result in self.tagged)

    @property
    def captions_per_second(self) -> float:
        """The progress bar's final rate: captions over ``tagging_seconds``."""
        seconds = self.tagging_seconds
        return self.captions_tagged / seconds if seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "builder_dir": self.builder_dir,
            "tagger": asdict(self.tagger),
            "text_field": self.text_field,
            "vocab_sha256": vocab_sha256(),
            "workers": self.workers,
            "distributor": self.distributor,
            "seconds": round(self.seconds, 3),
            "tagging_seconds": round(self.tagging_seconds, 3),
            "shards_tagged": len(self.tagged),
            "shards_skipped": len(self.shards) - len(self.tagged),
            "captions_tagged": self.captions_tagged,
            "rows_total": sum(result.records for result in self.shards),
            "captions_per_second": round(self.captions_per_second, 1),
            "versions": package_versions(["nltk", "spacy", "pyarrow", "instant-clip-tokenizer"]),
            "shards": [asdict(result) for result in self.shards],
        }


def build_table(captions: list[Caption], tagged: list[TaggedWords], info: SidecarInfo) -> pa.Table:
    """The sidecar table: per caption its BPE ids and, per tagger word, its ids and priority."""
    tokenizer = default_tokenizer()
    encode, encode_word = tokenizer.encode, tokenizer.encode_word
    priorities: dict[str, int] = {}  # a few dozen tags: look each up once

    def priority(tag: str) -> int:
        return priorities.get(tag) or priorities.setdefault(tag, priority_of_tag(tag))

    builder = TableBuilder()
    for caption, words in zip(captions, tagged, strict=True):
        builder.add(
            caption.key,
            encode(caption.text),
            ((encode_word(word), priority(tag)) for word, tag in words),
        )
    return builder.table(info)


def sidecar_info(tagger: TaggerSpec, text_field: str, shard: str) -> SidecarInfo:
    return SidecarInfo(
        tagger=tagger.name,
        tagger_version=tagger.version,
        tagger_model=tagger.model_id,
        vocab_sha256=vocab_sha256(),
        text_field=text_field,
        shard=Path(shard).name,
    )


CONTEXT_CHUNKS = 64
"""Whitespace-separated chunks kept after the ``MAX_WORDS``-th, so the tags of the last kept
words see the words after them as in the whole caption."""
TAGGER_CHARS = 100_000
"""At most this many characters of a caption reach the tagger (spaCy refuses texts over its
``max_length``, 1,000,000, and needs memory in proportion)."""


def tagger_text(caption: str) -> str:
    """The start of ``caption`` that holds every word the sidecar keeps: it keeps the first
    ``MAX_WORDS`` tagger words, and every whitespace-separated chunk holds at least one, so the
    first ``MAX_WORDS`` chunks (and some context) hold them all. Real captions are whole."""
    limit = MAX_WORDS + CONTEXT_CHUNKS
    if len(caption) < 2 * limit:  # n chunks take at least 2n - 1 characters
        return caption
    chunks = itertools.islice(re.finditer(r"\S+", caption), limit)
    end = max((chunk.end() for chunk in chunks), default=0)
    return caption[: min(end, TAGGER_CHARS)]


def tag_shard(job: ShardJob) -> ShardTagResult:
    """Tag one shard into its sidecar (runs in a worker process)."""
    start = time.perf_counter()
    captions = read_captions(job.shard, job.text_field)
    if len(captions) != job.num_records:
        raise ClipaError(
            f"{job.shard}: has {len(captions)} records but dataset_info.json declares "
            f"{job.num_records}; re-create the builder directory with clipa-data convert"
        )
    tagged = load_tagger(job.tagger).tag([tagger_text(caption.text) for caption in captions])
    table = build_table(captions, tagged, sidecar_info(job.tagger, job.text_field, job.shard))
    stores.write_to(job.sidecar, lambda path: write_sidecar(path, table))
    return ShardTagResult(
        shard=Path(job.shard).name,
        status="tagged",
        records=table.num_rows,
        words=len(table.column("word_priority").combine_chunks().values),
        seconds=time.perf_counter() - start,
    )


def finished(job: ShardJob) -> bool:
    """Whether ``job``'s sidecar exists and is valid for this run; raises if it conflicts."""
    conflicts = _conflicts(job)
    if conflicts is None:
        return False
    if conflicts:
        raise ClipaError(
            f"{job.sidecar}: existing sidecar of shard {Path(job.shard).name} does not match "
            f"this run: {'; '.join(conflicts)}; pass --overwrite to re-tag it"
        )
    return True


def shard_jobs(builder: str | Path, config: TagConfig, tagger: TaggerSpec) -> list[ShardJob]:
    """Every shard of the chosen splits, in split and shard order."""
    splits = config.splits or tuple(layout.split_names(builder))
    return [
        ShardJob(
            shard=shard.path,
            sidecar=str(layout.sidecar_path(builder, shard.path)),
            num_records=shard.num_records,
            text_field=config.text_field,
            tagger=tagger,
        )
        for split in splits
        for shard in layout.read_split(builder, split).shards
    ]


def _conflicts(job: ShardJob) -> list[str] | None:
    """How ``job``'s existing sidecar differs from what this run writes (empty: it does not);
    None when there is no sidecar."""
    if not layout.exists(job.sidecar):
        return None
    info, rows = read_header(job.sidecar)
    expected = sidecar_info(job.tagger, job.text_field, job.shard)
    conflicts = [
        f"{name} {getattr(info, name)!r} (this run: {getattr(expected, name)!r})"
        for name in ("vocab_sha256", "text_field", "tagger", "tagger_model", "shard")
        if getattr(info, name) != getattr(expected, name)
    ]
    if rows != job.num_records:
        conflicts.append(f"{rows} rows for {job.num_records} records")
    return conflicts


OVERWRITE_MARK = "tag_overwrite_started.json"
"""In ``sidecars/``: written when an ``--overwrite`` run starts, removed when it ends. A re-run
finds the sidecars the stopped one re-tagged (newer than the mark, with this run's settings)
and skips them, so ``--overwrite`` resumes like any other run."""


def _retagged_by_a_stopped_overwrite(builder, jobs: list[ShardJob]) -> dict[str, ShardJob]:
    """Under ``--overwrite``: the sidecars a stopped ``--overwrite`` run with these settings
    already wrote (none on a store: no modification times to go by); marks this run's start."""
    if layout.is_url(builder):
        return {}
    mark = Path(layout.sidecar_dir(builder)) / OVERWRITE_MARK
    if not mark.is_file():
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        return {}
    since = mark.stat().st_mtime_ns
    return {
        job.shard: job
        for job in jobs
        if _conflicts(job) == [] and Path(job.sidecar).stat().st_mtime_ns >= since
    }


def tag_builder(config: TagConfig) -> TagSummary:
    """Tag every shard of a builder directory that has no finished sidecar; write the summary."""
    start = time.perf_counter()
    location = stores.output_location(config.builder_dir, "BUILDER_DIR")
    stores.check_workers_reach(location, config.workers, config.distributor, "BUILDER_DIR")
    builder = layout.resolve_builder_dir(location)
    check_text_feature(builder, config.text_field)
    tagger = resolve_tagger(config.tagger, config.spacy_model, config.batch_size)
    jobs = shard_jobs(builder, config, tagger)
    if layout.is_url(builder):
        return _tag_jobs(config, builder, tagger, jobs, start)
    check_writable_folder(Path(layout.sidecar_dir(builder)), "the sidecars")
    # A second tag of the same builder meanwhile replaced this one's sidecars (another
    # --text-field) or tagged every shard twice: refused.
    with only_run_in(Path(builder), "clipa-data tag"):
        return _tag_jobs(config, builder, tagger, jobs, start)


def _tag_jobs(
    config: TagConfig, builder: str | Path, tagger: TaggerSpec, jobs: list[ShardJob], start: float
) -> TagSummary:
    """Tag the shards without a finished sidecar (all with ``--overwrite``); write the summary."""
    stores.remove_temporaries(layout.sidecar_dir(builder))
    if config.overwrite:
        skipped = _retagged_by_a_stopped_overwrite(builder, jobs)
    else:
        skipped = {job.shard: job for job in jobs if finished(job)}
    todo = [job for job in jobs if job.shard not in skipped]
    plan = RunnerConfig(
        description="tagging",
        workers=config.workers,
        unit="captions",
        show_progress=config.show_progress,
        distributor=config.distributor,
        spark_master=config.spark_master,
    )
    done, tagging_seconds = map_shards_timed(
        tag_shard,
        todo,
        plan,
        units_of=lambda result: result.records,
        name_of=lambda job: Path(job.shard).name,
    )
    stores.remove_temporaries(layout.sidecar_dir(builder))  # of workers killed mid-write
    if not layout.is_url(builder):  # every shard tagged: no stopped --overwrite to resume (a
        # plain run after one keeps the older sidecars; a later --overwrite starts afresh)
        (Path(layout.sidecar_dir(builder)) / OVERWRITE_MARK).unlink(missing_ok=True)
    by_shard = {job.shard: result for job, result in zip(todo, done, strict=True)}
    results = tuple(
        by_shard.get(job.shard)
        or ShardTagResult(shard=Path(job.shard).name, status="skipped", records=job.num_records)
        for job in jobs
    )
    summary = TagSummary(
        builder_dir=str(builder),
        tagger=tagger,
        text_field=config.text_field,
        workers=min(config.workers, max(1, len(todo))),  # the pool starts no more than that
        seconds=time.perf_counter() - start,
        shards=results,
        tagging_seconds=tagging_seconds,
        distributor=config.distributor,
    )
    path = layout.tag_summary_path(builder)
    if todo or not layout.exists(path):  # a re-run that tagged nothing keeps the run that did
        stores.write_json(path, summary.to_json())
    return summary
