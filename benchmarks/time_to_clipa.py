"""Time to a CLIPA model: each recipe's projected wall time on 8 GPUs, from measured step rates.

Not a timing of its own: it reads the compiled ViT-B/16 training steps measured on a GPU
(``benchmarks/results/step_gpu.json``, written by ``benchmarks/gpu_check.sh``), takes the MFU of
the measured case whose image-token count is nearest each stage's, and projects

    days = stage samples × training FLOPs per sample / (8 × peak bf16 FLOP/s × MFU) / 86,400

on 8× A100-80GB (312 TFLOP/s dense bf16) and 8× H100 SXM (989 TFLOP/s). Stated assumptions:
the MFU measured for ViT-B/16 on the H200 carries over to the other towers and GPUs (larger
towers usually reach a higher MFU: this errs long for L/16); no gradient checkpointing (the
recipes turn it on; it adds one forward, ~1/3 more time, where memory needs it); perfect 8-GPU
scaling; the loader keeps up. The result JSON has the per-stage figures; the README shows them
next to the paper's ~2 / 3 / 4 days on 8× A100.

    .venv/bin/python -m benchmarks.time_to_clipa
"""

from __future__ import annotations

from benchmarks.common import load_result, print_table, write_result
from clipa_train.flops import train_flops_per_sample
from clipa_train.model.config import load_preset
from clipa_train.recipes import LAION_400M_SAMPLES, V1_RECIPE_NAMES, StageRecipe, get_recipe

GPUS = 8
CLUSTERS = {"8x A100-80GB": 312e12, "8x H100 SXM": 989e12}
"""Cluster name -> dense bf16 peak FLOP/s of one of its GPUs."""
PAPER_DAYS = {"clipa-b16-i50-t16": 2, "clipa-l16-i17-t16": 3, "clipa-l16-i37-t8": 4}
"""The paper's wall time (pre-training + fine-tuning) on 8× A100, in days."""
MEASURED_VARIANT = "compile"
"""The step variant whose MFU is projected: the compiled step `clipa-train --compile` runs."""


def stage_samples(stage: StageRecipe) -> int:
    """Samples the stage sees (epochs of LAION-400M as CLIPA counted it, or a sample budget)."""
    return stage.samples if stage.samples is not None else int(stage.epochs * LAION_400M_SAMPLES)


def stage_flops(stage: StageRecipe) -> float:
    """Training FLOPs of one sample of the stage (3 × forward, no recomputation)."""
    config = load_preset(stage.model).replace(
        image_size=stage.image_size, context_length=stage.text_length
    )
    return train_flops_per_sample(config, config.vision.num_patches, stage.text_length)


def measured_mfu(step_gpu: dict, image_tokens: int) -> tuple[str, float]:
    """(case name, MFU) of the measured compiled case with the nearest image-token count."""
    cases = step_gpu["figures"][MEASURED_VARIANT]

    def distance(item: tuple[str, dict]) -> int:
        return abs((item[1]["image_size"] // 16) ** 2 - image_tokens)

    name, figures = min(cases.items(), key=distance)
    return name, figures["mfu"]


def project(step_gpu: dict) -> dict[str, dict]:
    """Per recipe: each stage's samples, FLOPs, MFU used and days per cluster, and the totals."""
    projections = {}
    for name in V1_RECIPE_NAMES:  # the paper's days are the v1 recipes'
        recipe = get_recipe(name)
        stages = {}
        for stage_name, stage in (("pretrain", recipe.pretrain), ("finetune", recipe.finetune)):
            case, mfu = measured_mfu(step_gpu, (stage.image_size // 16) ** 2)
            total = stage_samples(stage) * stage_flops(stage)
            days = {c: total / (GPUS * peak * mfu) / 86_400 for c, peak in CLUSTERS.items()}
            stages[stage_name] = {
                "samples": stage_samples(stage),
                "train_gflops_per_sample": stage_flops(stage) / 1e9,
                "mfu_from": case,
                "mfu": mfu,
                "days": days,
            }
        totals = {c: sum(s["days"][c] for s in stages.values()) for c in CLUSTERS}
        projections[name] = {
            "stages": stages,
            "days": totals,
            "paper_days_8x_a100": PAPER_DAYS[name],
        }
    return projections


def main() -> None:
    step_gpu = load_result("step_gpu")
    projections = project(step_gpu)
    rows = [
        [name, *(f"{p['days'][c]:.2f}" for c in CLUSTERS), f"~{p['paper_days_8x_a100']}"]
        for name, p in projections.items()
    ]
    print_table("Projected days (pre-train + fine-tune)", ["recipe", *CLUSTERS, "paper"], rows)
    a100 = next(iter(CLUSTERS))
    write_result(
        "time_to_clipa",
        ratios={
            f"{name}_8x_a100_vs_paper": p["days"][a100] / p["paper_days_8x_a100"]
            for name, p in projections.items()
        },
        figures=projections,
        config={
            "from": f"step_gpu.json ({step_gpu['device']}, {step_gpu['date']}), "
            f"variant {MEASURED_VARIANT}",
            "peak_bf16_flops": CLUSTERS,
            "gpus": GPUS,
            "assumptions": "ViT-B/16 MFU of the nearest measured image-token count for every "
            "tower and GPU; no gradient checkpointing; perfect scaling; loader keeps up",
        },
        packages=["torch"],
        command="python -m benchmarks.time_to_clipa",
    )


if __name__ == "__main__":
    import argparse

    # No options: --help says what it does instead of running it (and rewriting its result).
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    main()
