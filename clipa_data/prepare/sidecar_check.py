"""Sidecars against their shards: ``clipa-data tag --check`` and the coverage ``info`` shows.

The check reads every shard's keys and proves, per shard, that its sidecar exists, was made
with this vocabulary and text field, has one row per record and the same key in every row.
Coverage only reads sidecar headers (metadata and row counts): cheap enough for ``info``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from clipa_data.core import layout
from clipa_data.core.config_fields import Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.sidecar import SidecarExpectation, check_keys, load_sidecar, read_header
from clipa_data.core.tokenizer import vocab_sha256
from clipa_data.prepare import stores
from clipa_data.prepare.captions import DEFAULT_TEXT_FIELD, iter_captions
from clipa_data.prepare.runner import RunnerConfig, default_workers, map_shards


@dataclass(frozen=True)
class CheckConfig:
    """What ``clipa-data tag --check`` verifies."""

    builder_dir: Annotated[
        str | Path,
        Doc("TFDS builder directory from clipa-data convert (or a folder holding exactly one)."),
    ]
    text_field: Annotated[
        str, Doc("The caption feature the sidecars must have been made from.")
    ] = DEFAULT_TEXT_FIELD
    splits: Annotated[tuple[str, ...], Doc("Splits to check; none given = every split.")] = ()
    workers: Annotated[int, Doc("Worker processes reading shards (default: all cores).")] = field(
        default_factory=default_workers
    )
    show_progress: Annotated[bool, Doc("Show a progress bar (on stderr).")] = True

    def __post_init__(self) -> None:
        # --split train --split train: each shard once (twice, two workers wrote one sidecar)
        object.__setattr__(self, "splits", tuple(dict.fromkeys(self.splits)))
        if self.workers < 1:
            raise ClipaError(f"--workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class CheckJob:
    """One shard and its sidecar (sent to a worker)."""

    builder: str
    """The builder directory (the sidecar's tokenizer vocabulary is checked against it)."""
    shard: str
    """The shard's path, as the split's metadata names it."""
    sidecar: str
    """The shard's sidecar path (``layout.sidecar_path``)."""
    num_records: int
    """Records the split's metadata gives the shard: the sidecar must hold as many rows."""
    text_field: str
    """The record feature the sidecar must have been tagged from."""


@dataclass(frozen=True)
class ShardCheck:
    """The verdict on one shard's sidecar."""

    shard: str
    """Shard file name."""
    records: int
    """Records the shard declares."""
    problem: str = ""
    """Empty when the sidecar matches; else one line naming the shard and the fix."""
    tagger: str = ""
    """The tagger and model that wrote the sidecar (empty without one)."""


@dataclass(frozen=True)
class CheckReport:
    """Every shard's verdict."""

    builder_dir: str
    """The builder directory checked."""
    shards: tuple[ShardCheck, ...]
    """One verdict per shard, in split and shard order."""

    @property
    def problems(self) -> list[ShardCheck]:
        return [shard for shard in self.shards if shard.problem]

    def raise_for_problems(self) -> None:
        """One ``ClipaError`` naming the first bad shard and how many failed."""
        bad = self.problems
        if bad:
            raise ClipaError(
                f"{len(bad)} of {len(self.shards)} shards failed the sidecar check; "
                f"first: {bad[0].problem}"
            )


def check_shard(job: CheckJob) -> ShardCheck:
    """Check one sidecar against its shard: metadata, row count, then every key."""
    name = Path(job.shard).name
    if not layout.exists(job.sidecar):
        try:  # a shard gone or damaged is the problem to fix first: tag would stop on it
            for _ in iter_captions(job.shard, job.text_field):
                pass
        except ClipaError as error:
            return ShardCheck(name, job.num_records, str(error))
        return ShardCheck(
            name,
            job.num_records,
            f"{job.sidecar}: sidecar of shard {name} is missing; create it with: "
            f"{layout.tag_command(job.builder, job.text_field)}",
        )
    expected = SidecarExpectation(
        shard=name,
        num_records=job.num_records,
        vocab_sha256=vocab_sha256(),
        text_field=job.text_field,
    )
    try:
        rows = load_sidecar(job.sidecar, expected)
        keys = [caption.key for caption in iter_captions(job.shard, job.text_field)]
        check_keys(rows, keys, job.sidecar, name)
    except ClipaError as error:
        return ShardCheck(name, job.num_records, str(error))
    info, _ = read_header(job.sidecar)
    return ShardCheck(name, job.num_records, tagger=f"{info.tagger} {info.tagger_model}".strip())


def one_tagger(checks: list[ShardCheck], builder: str, text_field: str) -> list[ShardCheck]:
    """``checks`` with a problem for each sidecar not written by the tagger most shards have:
    the syntax mask would rank the words of some captions by one tagger, others by another."""
    counts: dict[str, int] = {}
    for check in checks:
        if check.tagger:
            counts[check.tagger] = counts.get(check.tagger, 0) + 1
    if len(counts) < 2:
        return checks
    main = max(counts, key=counts.get)
    name, _, model = main.partition(" ")
    fix = f"{layout.tag_command(builder, text_field, overwrite=True)} --tagger {name}"
    fix += f" --spacy-model {model}" if name == "spacy" and model else ""
    return [
        replace(
            check,
            problem=f"sidecar of shard {check.shard} was tagged by {check.tagger}, most shards by "
            f"{main}: one builder's captions must be ranked by one tagger; re-tag them all with: "
            f"{fix}",
        )
        if check.tagger and check.tagger != main
        else check
        for check in checks
    ]


def check_sidecars(config: CheckConfig) -> CheckReport:
    """Check every shard's sidecar; the report lists each shard's problem (if any)."""
    builder = layout.resolve_builder_dir(stores.output_location(config.builder_dir, "BUILDER_DIR"))
    splits = config.splits or tuple(layout.split_names(builder))
    jobs = [
        CheckJob(
            builder=str(builder),
            shard=shard.path,
            sidecar=str(layout.sidecar_path(builder, shard.path)),
            num_records=shard.num_records,
            text_field=config.text_field,
        )
        for split in splits
        for shard in layout.read_split(builder, split).shards
    ]
    plan = RunnerConfig(
        description="checking",
        workers=config.workers,
        unit="records",
        show_progress=config.show_progress,
        resumes=False,
    )
    results = map_shards(check_shard, jobs, plan, units_of=lambda result: result.records)
    checked = one_tagger(results, str(builder), config.text_field)
    return CheckReport(builder_dir=str(builder), shards=tuple(checked))


def sidecar_coverage(builder_dir: str | Path) -> dict:
    """Which shards have sidecars, their rows, taggers and vocabularies (headers only).

    Returns ``{"sidecar_dir", "shards", "with_sidecar", "without_sidecar", "missing" (up to
    10 shard names), "unreadable" (shard names), "records", "rows", "taggers", "text_fields",
    "vocab_sha256", "vocab_matches", "splits": {split: {"shards", "with_sidecar", "records",
    "rows"}}}``; ``taggers`` are ``"<name> <version> (<model>)"`` strings.
    """
    builder = layout.resolve_builder_dir(builder_dir)
    splits = [layout.read_split(builder, name) for name in layout.split_names(builder)]
    return coverage_of_splits(builder, splits)


def coverage_of_splits(builder: str | Path, splits: Sequence[layout.SplitInfo]) -> dict:
    """``sidecar_coverage`` for splits that were already read (``clipa-data info``)."""
    per_split: dict[str, dict] = {}
    missing: list[str] = []
    unreadable: list[str] = []
    taggers, fields, vocabs = set(), set(), set()
    for split in splits:
        counts = {"shards": 0, "with_sidecar": 0, "records": 0, "rows": 0}
        for shard in split.shards:
            name = Path(shard.path).name
            counts["shards"] += 1
            counts["records"] += shard.num_records
            path = layout.sidecar_path(builder, shard.path)
            if not layout.exists(path):
                missing.append(name)
                continue
            try:
                info, rows = read_header(path)
            except ClipaError:
                unreadable.append(name)
                continue
            counts["with_sidecar"] += 1
            counts["rows"] += rows
            taggers.add(f"{info.tagger} {info.tagger_version} ({info.tagger_model})")
            fields.add(info.text_field)
            vocabs.add(info.vocab_sha256)
        per_split[split.name] = counts
    with_sidecar = sum(counts["with_sidecar"] for counts in per_split.values())
    total = sum(counts["shards"] for counts in per_split.values())
    return {
        "sidecar_dir": str(layout.sidecar_dir(builder)),
        "shards": total,
        "with_sidecar": with_sidecar,
        "without_sidecar": total - with_sidecar,
        "missing": missing[:10],
        "unreadable": unreadable,
        "records": sum(counts["records"] for counts in per_split.values()),
        "rows": sum(counts["rows"] for counts in per_split.values()),
        "taggers": sorted(taggers),
        "text_fields": sorted(fields),
        "vocab_sha256": sorted(vocabs),
        "vocab_matches": vocabs <= {vocab_sha256()},
        "splits": per_split,
    }
