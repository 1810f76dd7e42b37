"""Matplotlib figures of an experiment, each returned as a base64 PNG for embedding."""

from __future__ import annotations

import base64
import io
import statistics
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # headless: the report is written without a display
import matplotlib.pyplot as plt  # noqa: E402

from dropkit.lab.summary import ExperimentSummary, GroupSummary, Stat  # noqa: E402

__all__ = [
    "ablation_curves",
    "bn_shift",
    "co_adaptation",
    "learning_curves",
    "mc_vs_weight_scaling",
    "metric_vs_p",
    "time_and_convergence",
]


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(group: GroupSummary) -> str:
    return f"{group.variant} p={group.p:g}"


def _mean_curve(group: GroupSummary, key: str) -> tuple[list[int], list[float], list[float]]:
    length = min(len(run.epochs) for run in group.runs)
    epochs, means, sems = [], [], []
    for i in range(length):
        stat = Stat.of([run.epochs[i][key] for run in group.runs])
        epochs.append(group.runs[0].epochs[i]["epoch"])
        means.append(stat.mean)
        sems.append(stat.sem or 0.0)
    return epochs, means, sems


def learning_curves(summary: ExperimentSummary) -> str:
    """Train vs test metric and loss per epoch, one column per (variant, p); bands are ±1 s.e."""
    groups = summary.groups
    figure, axes = plt.subplots(2, len(groups), figsize=(3.2 * len(groups), 5.4), squeeze=False,
                                sharey="row")
    for column, group in enumerate(groups):
        for row, (key, name) in enumerate(((summary.metric, summary.metric), ("loss", "loss"))):
            axis = axes[row][column]
            for split, colour in (("train", "tab:blue"), ("test", "tab:red")):
                epochs, mean, sem = _mean_curve(group, f"{split}_{key}")
                axis.plot(epochs, mean, color=colour, label=split)
                low = [m - s for m, s in zip(mean, sem, strict=True)]
                high = [m + s for m, s in zip(mean, sem, strict=True)]
                axis.fill_between(epochs, low, high, color=colour, alpha=0.2)
            if row == 0:
                axis.set_title(_label(group))
            if column == 0:
                axis.set_ylabel(name)
            if row == 1:
                axis.set_xlabel("epoch")
                axis.set_yscale("log")
    axes[0][0].legend()
    return _png(figure)


def metric_vs_p(summary: ExperimentSummary) -> str:
    """Final test metric and generalisation gap against p, error bars ±1 s.e. over seeds."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for variant in sorted({g.variant for g in summary.groups}):
        groups = [g for g in summary.groups if g.variant == variant]
        for axis, attribute in zip(axes, ("test", "gap"), strict=True):
            stats = [getattr(g, attribute) for g in groups]
            axis.errorbar([g.p for g in groups], [s.mean for s in stats],
                          yerr=[s.sem or 0.0 for s in stats], marker="o", capsize=4, label=variant)
    axes[0].set_ylabel(f"final test {summary.metric}")
    axes[1].set_ylabel("generalisation gap")
    for axis in axes:
        axis.set_xlabel("dropout rate p")
        axis.legend()
    return _png(figure)


def ablation_curves(summary: ExperimentSummary) -> Optional[str]:
    """Test metric as a growing fraction of the last hidden layer's units is zeroed."""
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    drawn = False
    for group in summary.groups:
        curves = [r.measurements["ablation"] for r in group.runs if "ablation" in r.measurements]
        if not curves:
            continue
        fractions = curves[0]["fractions"]
        mean = [statistics.fmean(c["metric"][i] for c in curves) for i in range(len(fractions))]
        axis.plot(fractions, mean, marker="o", label=_label(group))
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axis.set_xlabel("fraction of hidden units zeroed")
    axis.set_ylabel(f"test {summary.metric}")
    axis.legend()
    return _png(figure)


def co_adaptation(summary: ExperimentSummary) -> Optional[str]:
    """Every numeric co-adaptation measurement against p (when dropkit.analysis measured it)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for group in summary.groups:
        for run in group.runs:
            value = run.measurements.get("co_adaptation", {})
            if not isinstance(value, dict) or "not_measured" in value:
                continue
            for name, number in value.items():
                if isinstance(number, (int, float)):
                    series.setdefault(name, []).append((group.p, float(number)))
    if not series:
        return None
    figure, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.4), squeeze=False)
    for axis, (name, points) in zip(axes[0], sorted(series.items()), strict=True):
        axis.scatter([p for p, _ in points], [v for _, v in points])
        axis.set_xlabel("dropout rate p")
        axis.set_ylabel(name)
    return _png(figure)


def mc_vs_weight_scaling(summary: ExperimentSummary) -> Optional[str]:
    """MC average of T passes vs T, with weight scaling and the mean single pass as lines."""
    groups = [g for g in summary.groups
              if any("mc" in r.measurements.get("mc_vs_weight_scaling", {}) for r in g.runs)]
    if not groups:
        return None
    figure, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.4), squeeze=False,
                                sharey=True)
    for axis, group in zip(axes[0], groups, strict=True):
        results = [r.measurements["mc_vs_weight_scaling"] for r in group.runs]
        results = [r for r in results if "mc" in r]
        samples = sorted(int(t) for t in results[0]["mc"])
        mc = [statistics.fmean(r["mc"][str(t)] for r in results) for t in samples]
        axis.plot(samples, mc, marker="o", label="MC average")
        axis.axhline(statistics.fmean(r["weight_scaling"] for r in results), color="tab:green",
                     linestyle="--", label="weight scaling")
        axis.axhline(statistics.fmean(r["single_pass_mean"] for r in results), color="tab:grey",
                     linestyle=":", label="single pass")
        axis.set_xscale("log")
        axis.set_xlabel("stochastic passes T")
        axis.set_title(_label(group))
    axes[0][0].set_ylabel(f"test {summary.metric}")
    axes[0][0].legend()
    return _png(figure)


def time_and_convergence(summary: ExperimentSummary) -> str:
    """Seconds per epoch and epochs to the common target per (variant, p), ±1 s.e."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    labels = [_label(g) for g in summary.groups]
    for axis, attribute, name in ((axes[0], "epoch_time", "s per epoch (median)"),
                                  (axes[1], "epochs_to_target", "epochs to target")):
        stats = [getattr(g, attribute) for g in summary.groups]
        axis.bar(labels, [0.0 if s is None else s.mean for s in stats],
                 yerr=[0.0 if s is None or s.sem is None else s.sem for s in stats], capsize=4)
        axis.set_ylabel(name)
        axis.tick_params(axis="x", rotation=30)
    return _png(figure)


def bn_shift(summary: ExperimentSummary) -> Optional[str]:
    """Running variance / test-time variance per BatchNorm layer against p (1 = no shift)."""
    points: dict[str, list[tuple[float, float]]] = {}
    for group in summary.groups:
        for run in group.runs:
            for layer in run.measurements.get("bn_variance_shift", []):
                name = layer["layer"] + (" (after dropout)" if layer["after_dropout"] else "")
                points.setdefault(name, []).append((group.p, layer["ratio"]))
    if not points:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    for name, values in sorted(points.items()):
        axis.scatter([p for p, _ in values], [r for _, r in values], label=name)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xlabel("dropout rate p")
    axis.set_ylabel("running var / test var")
    axis.legend(fontsize=8)
    return _png(figure)
