"""The explainer's claims about dropout, each judged from this experiment's numbers.

How a claim is judged (the plain-words version is in docs/lab.md, "How the claims are
judged"):

1. Every number is read at each run's validation-selected epoch (``summary.py``).
2. Runs are paired by seed: a p>0 run and the p=0 run of the same variant and seed share
   initial weights, data and batch order (``train.py``), so their difference ``d_s`` is
   dropout's effect on that seed. Other claims pair within a run (MC vs a single pass) or
   between rates (best rate in [0.2, 0.5] vs each rate outside it).
3. With fewer than :data:`MIN_SEEDS` pairs a comparison is *not measured*: with one or
   two differences no test has a usable error bar (two seeds give the t quantile 12.7).
4. Otherwise a two-sided paired t-test on ``d`` at level :data:`ALPHA`, with the mean
   difference and its 95% confidence interval reported beside the verdict.
5. A claim tried at several rates makes several comparisons: their p-values are
   Holm-corrected (Holm, 1979) before any is called significant.
6. A mean difference no larger than one test example (1/N for accuracy) is a *tie*,
   whatever the p-value: the test set cannot resolve it.
7. The claim is *supported* when some comparison supports it beyond noise and none
   contradicts it, *mixed* when some support and others contradict, otherwise *not
   supported*; the numbers say which comparison did what.

:class:`Claim` carries everything a renderer needs: the one-line ``numbers`` (every
comparison's n, effect, interval and p-values, then the test used), ``verdict`` (one of
the four constants, for styling) and ``verdict_text`` (the verdict with its reason).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from dropkit.lab.report import batchnorm
from dropkit.lab.report.table import epoch_words, format_stat, gap_definition
from dropkit.lab.stats import ALPHA, holm, paired_t_test
from dropkit.lab.summary import (
    ExperimentSummary,
    GroupSummary,
    RunResult,
    Stat,
    gap_size,
    signed_gap,
)

__all__ = [
    "ALPHA",
    "Claim",
    "Comparison",
    "MIN_SEEDS",
    "MIXED",
    "NOT_MEASURED",
    "NOT_SUPPORTED",
    "SUPPORTED",
    "evaluate_claims",
    "holm",
    "paired_t_test",
]

SUPPORTED, NOT_SUPPORTED, NOT_MEASURED = "supported", "not supported", "not measured"
#: Some rates support the claim beyond noise while others contradict it beyond noise.
MIXED = "mixed"
#: Paired seeds a comparison needs before it is tested at all.
MIN_SEEDS = 3

# Outcomes of one comparison.
SUPPORTS, CONTRADICTS, TIE = "supports", "contradicts", "tie"
NO_DIFFERENCE, UNDERFITS, TOO_FEW = "no difference beyond noise", "underfits", "not measured"

#: Weight scaling "approximates" MC averaging when within this much accuracy (or 2% RMSE).
_WS_TOLERANCE_ACC = 0.01
_WS_TOLERANCE_REL = 0.02
#: Dropout layers that respect a conv map's or a sequence's structure (vs element-wise).
_STRUCTURED = {"Dropout1d", "Dropout2d", "Dropout3d", "DropBlock2d", "LockedDropout",
               "WeightDrop", "EmbeddingDropout"}


@dataclass(frozen=True)
class Comparison:
    """One tested difference: ``effect`` = mean over seeds of (ours - reference)."""

    label: str
    n: int
    outcome: str
    text: str
    effect: Optional[float] = None
    ci: Optional[tuple[float, float]] = None
    p_value: Optional[float] = None
    p_holm: Optional[float] = None
    #: The two sides' mean ± s.e. (and any remark), without the test: the report's numbers.
    means: str = ""


@dataclass(frozen=True)
class Claim:
    claim: str
    measurement: str
    numbers: str
    verdict: str
    #: The test used, e.g. "paired t-test over 3 seeds, two-sided, alpha 0.05, Holm over 2".
    test: str = ""
    comparisons: tuple[Comparison, ...] = ()
    #: The verdict with its reason: "not measured (2 seeds; need 3)", "mixed (...)".
    verdict_text: str = ""
    #: A remark about the whole claim (e.g. machine load), also at the end of ``numbers``.
    note: str = ""

    def __post_init__(self) -> None:
        if not self.verdict_text:
            object.__setattr__(self, "verdict_text", self.verdict)


@dataclass
class _Pair:
    """Inputs of one comparison: seed -> value for the reference and for ours."""

    label: str
    reference: dict[int, float]
    ours: dict[int, float]
    reference_name: str = "p=0"
    #: An outcome that replaces the test's (e.g. underfitting), once there are enough seeds.
    override: Optional[str] = None
    #: (condition, why): what a support needs besides the test (e.g. weight scaling close).
    requires: Optional[tuple[bool, str]] = None
    extra: str = ""
    #: What the comparison's text starts with, instead of "label: ours vs reference".
    head: Optional[str] = None


def _fmt(value: float) -> str:
    return f"{value:+.3g}"


def _judge(
    claim: str,
    measurement: str,
    pairs: list[_Pair],
    direction: float,
    resolution: float = 0.0,
    empty: str = "needs p=0 and p>0 runs",
) -> Claim:
    """Test every pair, Holm-correct, and combine the outcomes into one verdict.

    ``direction`` +1: the claim predicts ours > reference; -1: ours < reference.
    """
    if not pairs:
        return Claim(claim, measurement, empty, NOT_MEASURED)
    stats = []
    for pair in pairs:
        seeds = sorted(pair.reference.keys() & pair.ours.keys())
        if len(seeds) < MIN_SEEDS:
            stats.append((seeds, None))
            continue
        differences = [pair.ours[s] - pair.reference[s] for s in seeds]
        stats.append((seeds, paired_t_test(differences)))
    tested = [i for i, (_, result) in enumerate(stats) if result is not None]
    adjusted = dict(zip(tested, holm([stats[i][1][2] for i in tested]), strict=True))

    comparisons = []
    for i, (pair, (seeds, result)) in enumerate(zip(pairs, stats, strict=True)):
        ours = Stat.of([pair.ours[s] for s in seeds] or list(pair.ours.values()))
        reference = Stat.of([pair.reference[s] for s in seeds] or list(pair.reference.values()))
        head = pair.head or f"{pair.label}: {ours} vs {pair.reference_name} {reference}"
        if result is None:
            text = f"{head}; {len(seeds)} paired seed(s), need {MIN_SEEDS}"
            comparisons.append(Comparison(pair.label, len(seeds), TOO_FEW, text, means=head))
            continue
        mean, (low, high), p = result
        if pair.override is not None:
            outcome = pair.override
        elif abs(mean) <= resolution * (1 + 1e-9):
            outcome = TIE
        elif adjusted[i] < ALPHA:
            outcome = SUPPORTS if mean * direction > 0 else CONTRADICTS
            if outcome == SUPPORTS and pair.requires is not None and not pair.requires[0]:
                outcome = f"falls short: {pair.requires[1]}"
        else:
            outcome = NO_DIFFERENCE
        text = (
            f"{head}; n={len(seeds)}, difference {_fmt(mean)} (95% CI {_fmt(low)} to "
            f"{_fmt(high)}), p={p:.2g}, Holm p={adjusted[i]:.2g}: {outcome}{pair.extra}"
        )
        comparisons.append(
            Comparison(pair.label, len(seeds), outcome, text, mean, (low, high), p, adjusted[i],
                       means=head + pair.extra)
        )

    test = (
        f"paired t-test over seeds, two-sided, alpha {ALPHA:g}, Holm-corrected over "
        f"{len(tested)} comparison(s); 95% CI of the mean paired difference"
        + (f"; a difference of at most one test example ({resolution:.2g}) is a tie"
           if resolution > 0 else "")
    )
    numbers = "; ".join(c.text for c in comparisons) + f". Test: {test}."
    if not tested:
        n = max(c.n for c in comparisons)
        return Claim(claim, measurement, numbers, NOT_MEASURED, test, tuple(comparisons),
                     f"not measured ({n} seed{'' if n == 1 else 's'}; need {MIN_SEEDS})")

    def where(outcome: str) -> list[str]:
        return [c.label for c in comparisons if c.outcome.startswith(outcome)]

    supporting, contradicting = where(SUPPORTS), where(CONTRADICTS)
    if supporting and contradicting:
        # Saying "supported" here would hide the comparisons where dropout did the opposite.
        verdict = MIXED
        text = (f"mixed (supported at {', '.join(supporting)}; contradicted at "
                f"{', '.join(contradicting)})")
    elif supporting:
        verdict, text = SUPPORTED, f"supported at {', '.join(supporting)}"
        if where(UNDERFITS):  # too much dropout at other rates: worth saying beside it
            text += f" (underfits at {', '.join(where(UNDERFITS))})"
    else:
        verdict = NOT_SUPPORTED
        reasons = [f"{name} at {', '.join(where(name))}"
                   for name in (CONTRADICTS, UNDERFITS, "falls short", TIE) if where(name)]
        text = f"not supported ({'; '.join(reasons) or NO_DIFFERENCE})"
    return Claim(claim, measurement, numbers, verdict, test, tuple(comparisons), text)


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


def _rate_pairs(
    summary: ExperimentSummary, value: Callable[[RunResult], Optional[float]]
) -> list[_Pair]:
    """Each p>0 group against its p=0 baseline, on ``value`` per run; empty sides dropped."""
    pairs = []
    for base, group in _pairs(summary):
        reference, ours = base.per_seed(value), group.per_seed(value)
        if reference and ours:
            pairs.append(_Pair(_label(group), reference, ours))
    return pairs


def _selected(summary: ExperimentSummary, split: str) -> Callable[[RunResult], Optional[float]]:
    key = f"{split}_{summary.metric}"
    return lambda run: run.selected.get(key)


def _overfitting(summary: ExperimentSummary) -> Claim:
    task, resolution = summary.task, summary.resolution
    gap = gap_definition(task)
    measurement = (
        f"size of the generalisation gap, max({gap}, 0) (both in eval mode), "
        f"{epoch_words(summary)}; supported when a p>0 gap is smaller than p=0's. A p>0 model "
        "whose test metric is better than its train metric underfits: reported as such, never "
        "as less overfitting"
    )
    pairs = []
    for base, group in _pairs(summary):
        size = group.per_seed(lambda r: gap_size(task, r.selected))
        signed = group.per_seed(lambda r: signed_gap(task, r.selected))
        base_signed = base.per_seed(lambda r: signed_gap(task, r.selected))
        if not signed or not base_signed:  # every run of one side diverged (NaN metrics)
            continue
        pair = _Pair(_label(group), base.per_seed(lambda r: gap_size(task, r.selected)), size)
        mean_signed = statistics.fmean(signed.values())
        if mean_signed < -resolution:
            pair.override = UNDERFITS
            pair.extra = f" (mean {gap} {_fmt(mean_signed)}: test better than train)"
        if statistics.fmean(base_signed.values()) < -resolution:
            pair.extra += " (p=0 underfits too)"
        pairs.append(pair)
    return _judge("Dropout reduces overfitting", measurement, pairs, -1.0, resolution)


def _test_metric(summary: ExperimentSummary, claim: str, where: str) -> Claim:
    higher = 1.0 if summary.task.higher_is_better else -1.0
    measurement = (
        f"test {summary.metric} on {where}, {epoch_words(summary)}; supported when a p>0 "
        "beats p=0 (last-epoch test in brackets, for reference only)"
    )
    pairs = _rate_pairs(summary, _selected(summary, "test"))
    for pair in pairs:
        base, group = next((b, g) for b, g in _pairs(summary) if _label(g) == pair.label)
        pair.extra = f" [last epoch: {group.test_last} vs p=0 {base.test_last}]"
    return _judge(claim, measurement, pairs, higher, summary.resolution)


def _ablation_drop(summary: ExperimentSummary, run: RunResult) -> Optional[float]:
    curve = run.measurements.get("ablation", {})
    if "metric" not in curve or 0.5 not in curve.get("fractions", []):
        return None
    full, half = curve["metric"][0], curve["metric"][curve["fractions"].index(0.5)]
    return full - half if summary.task.higher_is_better else half - full


def _co_adaptation(run: RunResult) -> Optional[float]:
    result = run.measurements.get("co_adaptation", {})
    key = next((k for k in result if "corr" in k), None) if isinstance(result, dict) else None
    if key is not None and isinstance(result[key], (int, float)):
        return float(result[key])
    return None


def _not_measured_reason(summary: ExperimentSummary, name: str) -> Optional[str]:
    for run in summary.all_runs:
        value = run.measurements.get(name)
        if isinstance(value, dict) and "not_measured" in value:
            return value["not_measured"]
    return None


def _ensemble(summary: ExperimentSummary) -> Claim:
    claim = "Dropout acts like an ensemble of subnetworks"
    measurement = (
        "test metric of single stochastic passes vs the average of T passes (MC), paired within "
        "each run, and the eval-mode network (weight scaling); supported when MC beats a single "
        f"subnetwork and weight scaling is within {_WS_TOLERANCE_ACC:g} accuracy (or "
        f"{_WS_TOLERANCE_REL:.0%} RMSE) of MC"
    )
    higher = summary.task.higher_is_better
    pairs = []
    for group in summary.groups:
        results = {r.seed: r.measurements.get("mc_vs_weight_scaling", {}) for r in group.runs}
        results = {seed: r for seed, r in results.items() if "mc" in r}
        if group.p == 0 or not results:
            continue
        t_max = str(max(int(t) for t in next(iter(results.values()))["mc"]))
        mc = {seed: r["mc"][t_max] for seed, r in results.items() if t_max in r["mc"]}
        single = {seed: r["single_pass_mean"] for seed, r in results.items()}
        ws_mean = statistics.fmean(r["weight_scaling"] for r in results.values())
        mc_mean = statistics.fmean(mc.values())
        tolerance = _WS_TOLERANCE_ACC if higher else _WS_TOLERANCE_REL * abs(mc_mean)
        gap = abs(ws_mean - mc_mean)
        pairs.append(_Pair(
            f"{_label(group)} MC T={t_max}", single, mc, reference_name="single pass",
            requires=(gap <= tolerance, f"|weight scaling - MC| = {gap:.3g} > {tolerance:.3g}"),
            extra=f" (weight scaling {ws_mean:.4g}, |WS-MC| = {gap:.3g})",
        ))
    return _judge(claim, measurement, pairs, 1.0 if higher else -1.0, summary.resolution,
                  empty="needs runs with p>0")


def _batchnorm(summary: ExperimentSummary) -> Claim:
    claim = "Dropout needs care with batch normalisation (variance shift)"
    layers = batchnorm.after_dropout_layers(summary)
    measurement = (
        f"{batchnorm.DEFINITION}. Averaged per run over the BatchNorm layers that follow a "
        f"dropout layer ({', '.join(sorted(layers)) or 'none'}), mean ± s.e. over seeds (the "
        "BatchNorm table's number); supported when a p>0 model's shift exceeds the p=0 "
        "model's on the same layers"
    )
    if not layers:
        recorded = any(run.measurements.get("bn_variance_shift") for run in summary.all_runs)
        return Claim(claim, measurement,
                     "these runs recorded no dropkit.check.variance_shift" if recorded else
                     "this task's model has no BatchNorm layer after a dropout layer",
                     NOT_MEASURED)
    pairs = []
    for base, group in _pairs(summary):
        ours = group.per_seed(lambda r: batchnorm.run_shift(r, layers))
        theirs = base.per_seed(lambda r: batchnorm.run_shift(r, layers))
        if not ours or not theirs:
            continue
        # Quoted as the BatchNorm table prints it: one number, one rounding.
        numbers = (f"variance shift {format_stat(batchnorm.shift(group, layers), 3)} vs p=0: "
                   f"{format_stat(batchnorm.shift(base, layers), 3)}")
        pairs.append(_Pair(_label(group), theirs, ours, head=f"{_label(group)}: {numbers}"))
    return _judge(claim, measurement, pairs, 1.0,
                  empty="needs p=0 and p>0 runs with a measured variance shift")


def _cpu_time(run: RunResult) -> Optional[float]:
    values = [e["epoch_cpu_time"] for e in run.epochs if "epoch_cpu_time" in e]
    return statistics.median(values) if values else None


def _training_time(summary: ExperimentSummary) -> Claim:
    measurement = (
        "median CPU seconds per epoch of optimisation (evaluation excluded): CPU time, not "
        "wall-clock, so other jobs on the machine do not count; supported when a p>0 epoch "
        "is slower"
    )
    pairs = _rate_pairs(summary, _cpu_time)
    claim = _judge("Dropout costs training time", measurement, pairs, 1.0,
                   empty="no CPU time per epoch recorded (runs from before the lab kept it)")
    if summary.wall_over_cpu is not None:
        note = next((n for n in summary.notes if n.startswith("machine load")), None)
        ratio = (f"Wall-clock / CPU time per epoch: median {summary.wall_over_cpu:.2g}x."
                 + (f" Note: {note}." if note else ""))
        claim = Claim(claim.claim, claim.measurement, f"{claim.numbers} {ratio}",
                      claim.verdict, claim.test, claim.comparisons, claim.verdict_text, ratio)
    return claim


def _convergence(summary: ExperimentSummary) -> Claim:
    split = "validation" if summary.target_key.startswith("val_") else "test"
    target = "-" if summary.target is None else f"{summary.target:.4g}"
    measurement = (
        f"epochs until the {split} {summary.metric} first reaches the common target ({target}; "
        "a run that never reaches it counts as its length + 1); supported when a p>0 needs "
        "more epochs"
    )
    pairs = []
    for base, group in _pairs(summary):
        if base.epochs_to_target_by_seed and group.epochs_to_target_by_seed:
            pairs.append(_Pair(_label(group), base.epochs_to_target_by_seed,
                               group.epochs_to_target_by_seed))
    return _judge("Dropout may slow convergence", measurement, pairs, 1.0)


def _best_rate(summary: ExperimentSummary) -> Claim:
    claim = "Dropout works best at rates around 0.2-0.5"
    measurement = (
        f"test {summary.metric} {epoch_words(summary)}: the best rate inside [0.2, 0.5] "
        "against every rate tried outside it, same variant, paired by seed; supported when it "
        "beats some beyond noise and none beats it"
    )
    higher = summary.task.higher_is_better
    value = _selected(summary, "test")
    pairs = []
    for variant in sorted({g.variant for g in summary.groups}):
        groups = [g for g in summary.groups if g.variant == variant and g.test is not None]
        inside = [g for g in groups if 0.2 <= g.p <= 0.5]
        outside = [g for g in groups if not 0.2 <= g.p <= 0.5]
        if not inside or not outside:
            continue
        pick = max if higher else min
        best = pick(inside, key=lambda g: g.test.mean)
        for other in outside:
            pairs.append(_Pair(f"{_label(best)} vs p={other.p:g}", other.per_seed(value),
                               best.per_seed(value), reference_name=f"p={other.p:g}"))
    rates = sorted({g.p for g in summary.groups})
    return _judge(claim, measurement, pairs, 1.0 if higher else -1.0, summary.resolution,
                  empty=f"rates tried: {rates}; needs one in [0.2, 0.5] and one outside it")


def _layout_text(summary: ExperimentSummary, variant: str) -> str:
    layers = summary.task.dropout_layout(variant)
    if not layers:
        return f"{variant}: (layout needs the task's data loaded)"
    return f"{variant}: " + ", ".join(f"{name} {layer}" for name, layer in layers)


def _variants(summary: ExperimentSummary) -> Optional[Claim]:
    """Which dropout went where in a CNN or LSTM, and structured vs element-wise if both ran."""
    standard = summary.task.dropout_layout("standard")
    if not any(layer.split("(")[0] in _STRUCTURED for _, layer in standard):
        return None  # an MLP: every variant is element-wise there
    claim = ("In CNNs and LSTMs, structured dropout (channel / DropBlock on conv maps, "
             "LockedDropout / WeightDrop in LSTMs) beats element-wise dropout")
    ran = sorted({g.variant for g in summary.groups})
    layouts = "; ".join(_layout_text(summary, v) for v in ran)
    measurement = (
        f"dropout layers per variant (shown at p=0.5): {layouts}. Test {summary.metric} "
        f"{epoch_words(summary)} of each structured variant against the elementwise variant "
        "at the same p, paired by seed"
    )
    if "elementwise" not in ran:
        return Claim(claim, measurement,
                     f"ran only {ran}; add the elementwise variant (--variants "
                     f"{','.join(ran)},elementwise) to compare", NOT_MEASURED)
    value = _selected(summary, "test")
    pairs = []
    for variant in ran:
        layers = summary.task.dropout_layout(variant)
        if not any(layer.split("(")[0] in _STRUCTURED for _, layer in layers):
            continue
        for group in summary.groups:
            reference = next((g for g in summary.groups if g.variant == "elementwise"
                              and g.p == group.p), None)
            if group.variant == variant and group.p > 0 and reference is not None:
                pairs.append(_Pair(_label(group), reference.per_seed(value),
                                   group.per_seed(value),
                                   reference_name=f"elementwise p={group.p:g}"))
    higher = 1.0 if summary.task.higher_is_better else -1.0
    return _judge(claim, measurement, pairs, higher, summary.resolution,
                  empty="needs a structured variant and elementwise at a common p>0")


def _application(summary: ExperimentSummary) -> Optional[Claim]:
    if summary.task.application_claim is None:
        return None
    claim, where = summary.task.application_claim
    if where is None:
        return Claim(claim, f"test {summary.metric} where the claim's words point",
                     summary.task.application_not_measured, NOT_MEASURED)
    return _test_metric(summary, claim, where)


def evaluate_claims(summary: ExperimentSummary) -> list[Claim]:
    """Every claim of the explainer with its measurement, numbers, test and verdict."""
    claims = [
        _overfitting(summary),
        _test_metric(summary, f"Dropout improves test {summary.metric}", "the test set"),
        _judge(
            "Dropout improves robustness (to losing hidden units)",
            f"loss of test {summary.metric} when 50% of the last hidden layer's units are zeroed "
            "(no rescaling), on the selected epoch's weights; supported when a p>0 model loses "
            "less",
            _rate_pairs(summary, lambda r: _ablation_drop(summary, r)), -1.0,
            summary.resolution,
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
        claims.append(_judge(
            "Dropout prevents co-adaptation of units",
            "mean |correlation| of the last hidden layer's activations on the test set; "
            "supported when a p>0 model's is lower",
            _rate_pairs(summary, _co_adaptation), -1.0,
        ))
    claims += [
        _ensemble(summary),
        _training_time(summary),
        _convergence(summary),
        _batchnorm(summary),
        _best_rate(summary),
    ]
    claims += [c for c in (_application(summary), _variants(summary)) if c is not None]
    return claims
