"""The scaling-law fit of ``clipa-train report --fit``: error = A·C^(−α) + E per model family
and token length, and the inverse-scaling figure.

C is a run's training compute in FLOPs (analytic, ``clipa_train.flops``), the error its final
zero-shot error (1 − top-1) when every run was evaluated, else its final training loss: one point
per run, as scaling-laws-openclip fits final results of runs of different lengths. The fit is a
least-squares fit of log(error) (``scipy.optimize.curve_fit``), so small errors weigh as much as
large ones, over the parameters (ln A, α, ln E), which keeps A and E positive; standard errors
come from the covariance (delta method for A and E). Runs of different stages are never mixed
in one fit: a fine-tune's compute is not comparable to a pre-training's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clipa_data.core.errors import ClipaError
from clipa_train.run_records import RunRecords

PARAMETERS = 3
"""A, α and E: a group needs at least this many runs at distinct compute."""


@dataclass(frozen=True)
class ScalingPoint:
    """One run's final result."""

    run: str
    """The run directory."""
    group: str
    """Model family and image/text token lengths: the runs fitted together."""
    compute: float
    """Training FLOPs of the run (chained earlier stage included)."""
    error: float
    """Zero-shot error (1 − top-1) or final loss, per the fit's metric."""


@dataclass(frozen=True)
class ScalingFit:
    """error = A·C^(−α) + E fitted to one group's points."""

    group: str
    """Model family and token lengths."""
    metric: str
    """What the error is: ``zero-shot error`` or ``loss``."""
    points: tuple[ScalingPoint, ...]
    """The runs fitted."""
    a: float
    """A (scale; error units × FLOPs^α)."""
    a_se: float
    """Standard error of A."""
    alpha: float
    """α, the compute exponent."""
    alpha_se: float
    """Standard error of α."""
    e: float
    """E, the irreducible error."""
    e_se: float
    """Standard error of E."""

    def predict(self, compute: float) -> float:
        return self.a * compute ** (-self.alpha) + self.e

    def describe(self) -> str:
        return (
            f"{self.group}: {self.metric} = A·C^-α + E with A = {self.a:.4g} ± {self.a_se:.2g}, "
            f"α = {self.alpha:.4g} ± {self.alpha_se:.2g}, E = {self.e:.4g} ± {self.e_se:.2g} "
            f"({len(self.points)} runs{self._exact_note()})"
        )

    def _exact_note(self) -> str:
        """3 runs for 3 constants: the curve passes through every point, and the errors say
        nothing of how well the law holds (± inf); a 4th run at other compute gives them."""
        errors = (self.a_se, self.alpha_se, self.e_se)
        if all(math.isfinite(error) for error in errors):
            return ""
        return ": as many runs as constants, no standard errors; a run at other compute adds them"

    def to_json(self) -> dict:
        """The fit as JSON: a standard error that is not finite (3 points leave no degrees of
        freedom) is null, since strict JSON has no Infinity or NaN."""
        fields = ("group", "metric", "a", "a_se", "alpha", "alpha_se", "e", "e_se")
        values = {name: getattr(self, name) for name in fields}
        return {
            **{
                k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in values.items()
            },
            "points": [vars(point) for point in self.points],
        }


def scaling_points(runs: list[RunRecords]) -> tuple[str, list[ScalingPoint]]:
    """(metric, one point per run); refuses runs of different stages in one fit."""
    stages: dict[str, list[str]] = {}
    for run in runs:
        stages.setdefault(run.stage, []).append(run.name)
    if len(stages) > 1:
        mixed = "; ".join(f"{stage}: {', '.join(names)}" for stage, names in stages.items())
        raise ClipaError(
            f"--fit: the runs mix stages ({mixed}); fit one stage's runs at a time "
            "(report the chained stages without --fit)"
        )
    zeroshot = all(run.evals for run in runs)
    points = []
    for run in runs:
        _check_finished(run)
        if run.final_eval_cut:  # also when it made no evaluation before: not a loss fit then
            last = run.evals[-1]["step"] if run.evals else None
            made = f"the last is at step {last} of {run.last_step}" if last else "none before it"
            raise ClipaError(
                f"--fit: {run.path} finished but its final zero-shot evaluation was cut short "
                f"({made}), so it has no final figure to fit; leave it out (summary.json's "
                "eval_command evaluates it)"
            )
        error = 1.0 - run.final_top1 if zeroshot else (run.train[-1]["loss"] if run.train else None)
        if error is None:
            raise ClipaError(f"--fit: {run.path} has no training records to fit")
        group = f"{run.family} img{run.image_tokens} txt{run.text_tokens}"
        points.append(ScalingPoint(str(run.path), group, run.flops(run.last_step), error))
    return ("zero-shot error" if zeroshot else "loss"), points


def _check_finished(run: RunRecords) -> None:
    """Refuse a run that did not make all its steps: its last loss and evaluation are
    mid-schedule (the learning rate had not decayed), not the end of a run of that compute."""
    if run.finished:
        return
    total = (run.summary or {}).get("total_steps")
    where = f"stopped at step {run.last_step}" + (f" of {total}" if total else "")
    raise ClipaError(
        f"--fit: {run.path} is unfinished ({where}): its last figures are mid-schedule, not a "
        "finished run's; finish it (its command again with --resume auto) or leave it out"
    )


def fit_groups(runs: list[RunRecords]) -> list[ScalingFit]:
    """One fit per model family and token length, in the order groups first appear."""
    metric, points = scaling_points(runs)
    groups: dict[str, list[ScalingPoint]] = {}
    for point in points:
        groups.setdefault(point.group, []).append(point)
    fits = []
    for group, members in groups.items():
        distinct = len({point.compute for point in members})
        if distinct < PARAMETERS:
            raise ClipaError(
                f"--fit: {group} has {distinct} run(s) at distinct compute, fewer than the "
                f"{PARAMETERS} parameters of A·C^-α + E; give at least {PARAMETERS} runs of "
                "different lengths"
            )
        fits.append(fit_power_law(group, metric, tuple(members)))
    return fits


def fit_power_law(group: str, metric: str, points: tuple[ScalingPoint, ...]) -> ScalingFit:
    """error = A·C^(−α) + E, least squares in log(error) over (ln A, α, ln E)."""
    import warnings

    import numpy as np
    from scipy.optimize import OptimizeWarning, curve_fit

    for point in points:
        if not (math.isfinite(point.error) and point.error > 0 and point.compute > 0):
            raise ClipaError(
                f"--fit: run {point.run} ({group}) has error {point.error} and compute "
                f"{point.compute:g}; the fit takes logs of positive, finite values: leave the "
                "run out of the fit"
            )
    x = np.log([point.compute for point in points])
    y = np.log([point.error for point in points])

    def model(x, log_a, alpha, log_e):
        return np.logaddexp(log_a - alpha * x, log_e)

    try:
        with warnings.catch_warnings():
            # Exactly 3 points leave no degrees of freedom: the covariance is inf, reported so.
            warnings.simplefilter("ignore", OptimizeWarning)
            params, covariance = curve_fit(model, x, y, p0=_initial_guess(x, y), maxfev=20000)
    except (RuntimeError, ValueError) as error:
        raise ClipaError(
            f"--fit: {group}: the fit did not converge ({error}); give runs spread wider in compute"
        ) from None
    se = np.sqrt(np.abs(np.diag(covariance)))
    log_a, alpha, log_e = (float(v) for v in params)
    a, e = math.exp(log_a), math.exp(log_e)
    return ScalingFit(
        group, metric, points, a, a * float(se[0]), alpha, float(se[1]), e, e * float(se[2])
    )


def _initial_guess(x, y) -> list[float]:
    """E at half the smallest error; α and A from a line through log(error − E) in log C."""
    import numpy as np

    error = np.exp(y)
    e0 = 0.5 * float(error.min())
    slope, intercept = np.polyfit(x, np.log(error - e0), 1)
    return [float(intercept), max(float(-slope), 1e-3), math.log(e0)]


def plot_scaling(fits: list[ScalingFit], path) -> None:
    """The inverse-scaling figure: each group's points against compute with its fitted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for fit in fits:
        compute = [point.compute for point in fit.points]
        (dots,) = axis.plot(compute, [point.error for point in fit.points], "o")
        line = np.geomspace(min(compute), max(compute), 100)
        axis.plot(
            line,
            [fit.predict(c) for c in line],
            color=dots.get_color(),
            label=f"{fit.group}: α={fit.alpha:.3g}, E={fit.e:.3g}",
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("training compute C (FLOPs)")
    axis.set_ylabel(fits[0].metric if fits else "error")
    axis.set_title("error = A·C^-α + E per model and token length")
    axis.legend(fontsize="small")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
