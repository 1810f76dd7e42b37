"""The explainer's claims about dropout, each judged from this experiment's numbers.

A difference counts when it exceeds two standard errors of the difference
(seeds are the replicates; ``se = sqrt(se_a^2 + se_b^2)``). With a single
seed there is no error bar: the verdict then follows the sign and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from dropkit.lab.summary import ExperimentSummary, GroupSummary, Stat

__all__ = ["Claim", "evaluate_claims", "SUPPORTED", "MIXED", "NOT_SUPPORTED", "NOT_MEASURED"]

SUPPORTED, NOT_SUPPORTED, NOT_MEASURED = "supported", "not supported", "not measured"
#: Some rates support the claim beyond noise while others contradict it beyond noise.
MIXED = "mixed"
_SIGMAS = 2.0
#: Weight scaling "approximates" MC averaging when within this much accuracy (or 2% RMSE).
_WS_TOLERANCE_ACC = 0.01
_WS_TOLERANCE_REL = 0.02
#: A BatchNorm variance ratio this far from 1 is a shift worth caring about.
_BN_SHIFT = 0.05


@dataclass(frozen=True)
class Claim:
    claim: str
    measurement: str
    numbers: str
    verdict: str


def _better(a: Stat, b: Stat, sign: float = 1.0) -> tuple[bool, str]:
    """Whether ``sign * (a - b)`` is positive beyond noise, and the difference as text."""
    diff = sign * (a.mean - b.mean)
    if a.sem is None or b.sem is None:
        return diff > 0, f"difference {diff:+.4g} (single seed: no error bar)"
    se = math.sqrt(a.sem**2 + b.sem**2)
    return diff > _SIGMAS * se, f"difference {diff:+.4g}, {_SIGMAS:g} s.e. = {_SIGMAS * se:.3g}"


def _pairs(summary: ExperimentSummary) -> list[tuple[GroupSummary, GroupSummary]]:
    """(baseline p=0, dropout group) for every p>0 group whose variant has a p=0 baseline."""
    pairs = []
    for group in summary.groups:
        base = summary.baseline(group.variant)
        if group.p > 0 and base is not None:
            pairs.append((base, group))
    return pairs


def _label(group: GroupSummary) -> str:
    return f"{group.variant} p={group.p:g}"


def _compare_claim(
    summary: ExperimentSummary,
    claim: str,
    measurement: str,
    stat: Callable[[GroupSummary], Optional[Stat]],
    sign: float,
) -> Claim:
    """Supported when some p>0 beats its p=0 baseline on ``stat`` (direction ``sign``)."""
    pairs = [(b, g) for b, g in _pairs(summary) if stat(b) is not None and stat(g) is not None]
    if not pairs:
        return Claim(claim, measurement, "needs p=0 and p>0 runs", NOT_MEASURED)
    lines, supporting, contradicting = [], [], []
    for base, group in pairs:
        better, text = _better(stat(group), stat(base), sign)
        worse, _ = _better(stat(group), stat(base), -sign)
        if better:
            supporting.append(_label(group))
        elif worse:
            contradicting.append(_label(group))
        lines.append(f"{_label(group)}: {stat(group)} vs p=0: {stat(base)} ({text})")
    if supporting and contradicting:
        # Saying "supported" here would hide the rates where dropout did the opposite.
        lines.append(
            f"supported at {', '.join(supporting)}; contradicted at {', '.join(contradicting)}"
        )
        verdict = MIXED
    else:
        verdict = SUPPORTED if supporting else NOT_SUPPORTED
    return Claim(claim, measurement, "; ".join(lines), verdict)


def _ablation_drop(summary: ExperimentSummary, group: GroupSummary) -> Optional[Stat]:
    drops = []
    for run in group.runs:
        curve = run.measurements.get("ablation", {})
        if "metric" not in curve or 0.5 not in curve.get("fractions", []):
            continue
        full, half = curve["metric"][0], curve["metric"][curve["fractions"].index(0.5)]
        drops.append(full - half if summary.task.higher_is_better else half - full)
    return Stat.of(drops)


def _co_adaptation(summary: ExperimentSummary, group: GroupSummary) -> Optional[Stat]:
    values = []
    for run in group.runs:
        result = run.measurements.get("co_adaptation", {})
        key = next((k for k in result if "corr" in k), None) if isinstance(result, dict) else None
        if key is not None and isinstance(result[key], (int, float)):
            values.append(float(result[key]))
    return Stat.of(values)


def _not_measured_reason(summary: ExperimentSummary, name: str) -> Optional[str]:
    for run in summary.all_runs:
        value = run.measurements.get(name)
        if isinstance(value, dict) and "not_measured" in value:
            return value["not_measured"]
    return None


def _ensemble(summary: ExperimentSummary) -> Claim:
    claim = "Dropout acts like an ensemble of subnetworks"
    measurement = (
        "test metric of single stochastic passes vs the average of T passes (MC) vs the "
        f"eval-mode network (weight scaling); supported when MC beats a single subnetwork and "
        f"weight scaling is within {_WS_TOLERANCE_ACC:g} accuracy (or {_WS_TOLERANCE_REL:.0%} "
        "RMSE) of MC"
    )
    higher = summary.task.higher_is_better
    sign = 1.0 if higher else -1.0
    lines, verdicts = [], []
    for group in summary.groups:
        results = [r.measurements.get("mc_vs_weight_scaling", {}) for r in group.runs]
        results = [r for r in results if "mc" in r]
        if group.p == 0 or not results:
            continue
        t_max = str(max(int(t) for t in results[0]["mc"]))
        mc = Stat.of([r["mc"][t_max] for r in results])
        single = Stat.of([r["single_pass_mean"] for r in results])
        ws = Stat.of([r["weight_scaling"] for r in results])
        gain, text = _better(mc, single, sign)
        tolerance = _WS_TOLERANCE_ACC if higher else _WS_TOLERANCE_REL * abs(mc.mean)
        close = abs(ws.mean - mc.mean) <= tolerance
        verdicts.append(gain and close)
        lines.append(
            f"{_label(group)}: single pass {single}, MC T={t_max} {mc} ({text}), "
            f"weight scaling {ws} (|WS-MC| = {abs(ws.mean - mc.mean):.3g})"
        )
    if not lines:
        return Claim(claim, measurement, "needs runs with p>0", NOT_MEASURED)
    verdict = SUPPORTED if any(verdicts) else NOT_SUPPORTED
    return Claim(claim, measurement, "; ".join(lines), verdict)


def _bn_shift(group: GroupSummary, layers: set[str]) -> Optional[Stat]:
    # The p=0 model has the same layers; compare like with like.
    values = [
        abs(layer["ratio"] - 1.0)
        for run in group.runs
        for layer in run.measurements.get("bn_variance_shift", [])
        if layer["layer"] in layers
    ]
    return Stat.of(values)


def _batchnorm(summary: ExperimentSummary) -> Claim:
    claim = "Dropout needs care with batch normalisation (variance shift)"
    measurement = (
        "for BatchNorm layers that follow a dropout layer: running variance (learnt with "
        "dropout on) / test-time input variance; supported when the shift |ratio-1| at p>0 "
        f"exceeds the p=0 model's by {_SIGMAS:g} s.e. and is above {_BN_SHIFT:g}"
    )
    lines, verdicts = [], []
    for base, group in _pairs(summary):
        after_dropout = {
            layer["layer"]
            for run in group.runs
            for layer in run.measurements.get("bn_variance_shift", [])
            if layer["after_dropout"]
        }
        if not after_dropout:
            continue
        ours, theirs = _bn_shift(group, after_dropout), _bn_shift(base, after_dropout)
        if ours is None or theirs is None:
            continue
        larger, text = _better(ours, theirs)
        verdicts.append(larger and ours.mean > _BN_SHIFT)
        lines.append(f"{_label(group)}: |ratio-1| = {ours} vs p=0: {theirs} ({text})")
    if not lines:
        return Claim(
            claim, measurement,
            "this task's model has no BatchNorm layer after a dropout layer", NOT_MEASURED,
        )
    verdict = SUPPORTED if any(verdicts) else NOT_SUPPORTED
    return Claim(claim, measurement, "; ".join(lines), verdict)


def _best_rate(summary: ExperimentSummary) -> Claim:
    claim = "Dropout works best at rates around 0.2-0.5"
    measurement = "rate with the best mean final test metric, among the rates tried"
    groups = [g for g in summary.groups if g.test is not None]
    rates = sorted({g.p for g in groups})
    if len(rates) < 2 or not any(0.2 <= p <= 0.5 for p in rates):
        numbers = f"rates tried: {rates}; needs one in [0.2, 0.5] and another"
        return Claim(claim, measurement, numbers, NOT_MEASURED)
    pick = max if summary.task.higher_is_better else min
    best = pick(groups, key=lambda g: g.test.mean)
    numbers = f"rates tried {rates}; best {_label(best)} with test {summary.metric} {best.test}; "
    numbers += ", ".join(f"{_label(g)}: {g.test}" for g in groups)
    verdict = SUPPORTED if 0.2 <= best.p <= 0.5 else NOT_SUPPORTED
    return Claim(claim, measurement, numbers, verdict)


def evaluate_claims(summary: ExperimentSummary) -> list[Claim]:
    """Every claim of the explainer with its measurement, numbers and verdict."""
    higher = 1.0 if summary.task.higher_is_better else -1.0
    metric = summary.metric
    claims = [
        _compare_claim(
            summary, "Dropout reduces overfitting",
            f"generalisation gap (train - test {metric}, both in eval mode) at the last epoch; "
            "supported when a p>0 gap is smaller than p=0's",
            lambda g: g.gap, -1.0,
        ),
        _compare_claim(
            summary, f"Dropout improves test {metric}",
            f"final test {metric}; supported when a p>0 beats p=0",
            lambda g: g.test, higher,
        ),
        _compare_claim(
            summary, "Dropout improves robustness (to losing hidden units)",
            f"loss of test {metric} when 50% of the last hidden layer's units are zeroed "
            "(no rescaling); supported when a p>0 model loses less",
            lambda g: _ablation_drop(summary, g), -1.0,
        ),
    ]
    reason = _not_measured_reason(summary, "co_adaptation")
    if reason is not None:
        claims.append(Claim(
            "Dropout prevents co-adaptation of units",
            "mean |correlation| of the last hidden layer's units (dropkit.analysis)",
            reason, NOT_MEASURED,
        ))
    else:
        claims.append(_compare_claim(
            summary, "Dropout prevents co-adaptation of units",
            "mean |correlation| of the last hidden layer's activations on the test set; "
            "supported when a p>0 model's is lower",
            lambda g: _co_adaptation(summary, g), -1.0,
        ))
    claims += [
        _ensemble(summary),
        _compare_claim(
            summary, "Dropout costs training time",
            "median seconds per epoch of optimisation (evaluation excluded), on a shared CPU; "
            "supported when a p>0 epoch is slower",
            lambda g: g.epoch_time, 1.0,
        ),
        _compare_claim(
            summary, "Dropout may slow convergence",
            f"epochs until test {metric} first reaches the common target "
            f"({'-' if summary.target is None else f'{summary.target:.4g}'}; a run that never "
            "reaches it counts as its length + 1); supported when a p>0 needs more epochs",
            lambda g: g.epochs_to_target, 1.0,
        ),
        _batchnorm(summary),
        _best_rate(summary),
    ]
    return claims
