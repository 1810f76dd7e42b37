"""The BatchNorm variance shift: one quantity, defined here, used by every part of the report.

Li et al. (2019), "Understanding the disharmony between dropout and batch
normalization by variance shift": a BatchNorm layer after dropout learns its
running variance from noisy activations and then normalises noise-free ones.
The report measures that with :func:`dropkit.check.variance_shift` (recorded
per layer as ``library_shift`` by :mod:`dropkit.lab.measure`) and nothing
else, so the table, the plot, the findings and the claim quote one number.
"""

from __future__ import annotations

import statistics
from typing import Optional

from dropkit.lab.summary import ExperimentSummary, GroupSummary, RunResult, Stat

__all__ = [
    "DEFINITION",
    "SHORT",
    "after_dropout_layers",
    "layers",
    "run_shift",
    "run_shifts",
    "shift",
]

#: What the number means, printed once beside the table.
DEFINITION = (
    "variance shift (Li et al., 2019; dropkit.check.variance_shift): for each channel, "
    "r = variance of the layer's input at test time / its running variance, and the shift is "
    "the mean over channels of max(r, 1/r); 1 means the running statistics fit, 1.5 that "
    "the variance is off by a factor of 1.5, too large or too small"
)
#: Axis label and column header.
SHORT = "variance shift (1 = none)"


def run_shifts(run: RunResult) -> dict[str, float]:
    """``{BatchNorm layer: shift}`` of one run; empty when it recorded none."""
    return {
        layer["layer"]: float(layer["library_shift"])
        for layer in run.measurements.get("bn_variance_shift", [])
        if isinstance(layer.get("library_shift"), (int, float))
    }


def layers(summary: ExperimentSummary) -> list[tuple[str, bool]]:
    """Every BatchNorm layer with a measured shift, and whether it follows a dropout layer."""
    found: dict[str, bool] = {}
    for run in summary.all_runs:
        for layer in run.measurements.get("bn_variance_shift", []):
            if isinstance(layer.get("library_shift"), (int, float)):
                found[layer["layer"]] = found.get(layer["layer"], False) or layer["after_dropout"]
    return sorted(found.items())


def after_dropout_layers(summary: ExperimentSummary) -> set[str]:
    """The BatchNorm layers that follow a dropout layer: where the shift is expected."""
    return {name for name, after in layers(summary) if after}


def run_shift(run: RunResult, names: Optional[set[str]] = None) -> Optional[float]:
    """One run's shift: its mean over the layers in ``names`` (default: all); None if none."""
    chosen = [v for k, v in run_shifts(run).items() if names is None or k in names]
    return statistics.fmean(chosen) if chosen else None


def shift(group: GroupSummary, names: Optional[set[str]] = None) -> Optional[Stat]:
    """Mean ± s.e. over seeds of the shift, averaged per run over ``names`` (default: all).

    Seeds are the replicates: each run contributes one number (its mean over
    the chosen layers, :func:`run_shift`), so layers do not pass for extra seeds
    in the error bar. The claim's paired test uses the same per-run numbers.
    """
    return Stat.of([value for run in group.runs
                    if (value := run_shift(run, names)) is not None])
