"""One self-contained HTML report: inline CSS, plots as base64 PNG, no script, no network.

Every user-supplied string (experiment and run names, config values, library
messages) goes through :func:`html.escape`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Optional

from dropkit.lab.report import batchnorm, plots
from dropkit.lab.report.claims import (
    MIN_SEEDS,
    MIXED,
    NOT_MEASURED,
    SUPPORTED,
    Comparison,
    evaluate_claims,
)
from dropkit.lab.report.table import _cell, epoch_words, gap_definition
from dropkit.lab.store import ExperimentRecord, RunStore, set_default_mode
from dropkit.lab.summary import ExperimentSummary, GroupSummary, Stat, summarise

__all__ = ["render_report", "write_report"]

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f2f2f5; } td.left, th.left { text-align: left; }
td:not(.left) { white-space: nowrap; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; } .muted { color: #666; }
figure { margin: 1em 0; } figcaption { color: #666; font-size: 0.9em; max-width: 1040px; }
.verdict { font-weight: bold; }
table.wide th { font-size: 0.9em; } .sem { color: #666; font-size: 0.85em; }
table.claims { font-size: 0.9em; } table.claims td { overflow-wrap: break-word; }
td.verdict-cell { min-width: 16em; } ul.tests { margin: 0.4em 0 0; padding-left: 1.1em; }
ul.tests li { margin-bottom: 0.3em; } p.test { margin: 0.4em 0 0; font-size: 0.9em; }
.supported { color: #17692b; } .not-supported { color: #a11; } .not-measured { color: #777; }
.mixed { color: #9a6200; }
pre { background: #f6f6f8; padding: 0.8em; overflow-x: auto; }
"""


def _img(plot: Optional[plots.Plot], what: str, caption: str = "", missing: str = "") -> str:
    if plot is None:
        return f'<p class="muted">not measured: {escape(missing or f"no data for {what}")}.</p>'
    return plots.figure_html(plot, caption)


def _not_measured_note(summary: ExperimentSummary, name: str) -> str:
    reasons = sorted({
        run.measurements[name]["not_measured"]
        for run in summary.all_runs
        if isinstance(run.measurements.get(name), dict) and "not_measured" in run.measurements[name]
    })
    if not reasons:
        return ""
    return "".join(f'<p class="muted">not measured: {escape(r)}</p>' for r in reasons)


def _stat_cell(stat: Optional[Stat], digits: int = 4) -> str:
    """A table cell's HTML: the mean, and its ± s.e. on a second line so wide tables fit."""
    text = escape(_cell(stat, digits))
    mean, sep, sem = text.partition(" ± ")
    return f'{mean}<br><span class="sem">± {sem}</span>' if sep else text


def _columns(
    summary: ExperimentSummary,
) -> list[tuple[str, Callable[[GroupSummary], Optional[Stat]], int]]:
    """(header, group -> Stat, decimals) of the comparison table after variant, p and seeds."""
    metric = summary.metric.replace("_", " ")
    return [
        (f"train {metric}", lambda g: g.train, 4),
        (f"test {metric}", lambda g: g.test, 4),
        ("test at last epoch", lambda g: g.test_last, 4),
        ("gap", lambda g: g.gap, 4),
        ("gap size", lambda g: g.gap_size, 4),
        ("test loss", lambda g: g.test_loss, 4),
        ("selected epoch", lambda g: g.selected_epoch, 1),
        ("CPU s/epoch", lambda g: g.epoch_cpu_time, 3),
        ("wall s/epoch", lambda g: g.epoch_time, 3),
        ("epochs to target", lambda g: g.epochs_to_target, 1),
    ]


def _table(summary: ExperimentSummary) -> str:
    columns = _columns(summary)
    head = ["variant", "p", "seeds"] + [name for name, _, _ in columns]
    rows = []
    for group in summary.groups:
        cells = "".join(f"<td>{_stat_cell(value(group), digits)}</td>"
                        for _, value, digits in columns)
        rows.append(f'<tr><td class="left">{escape(group.variant)}</td><td>{group.p:g}</td>'
                    f"<td>{len(group.runs)}</td>{cells}</tr>")
    header = "".join(f'<th class="{"left" if i == 0 else ""}">{escape(h)}</th>'
                     for i, h in enumerate(head))
    return f'<table class="wide"><tr>{header}</tr>{"".join(rows)}</table>'


def _comparison_line(comparison: Comparison) -> str:
    """n, effect, its 95% CI and the p-values of one comparison, in one line."""
    if comparison.effect is None or comparison.ci is None:
        return (f"{comparison.label}: n={comparison.n}, need {MIN_SEEDS} paired seeds")
    low, high = comparison.ci
    return (f"{comparison.label}: n={comparison.n}, effect {comparison.effect:+.3g} "
            f"(95% CI {low:+.3g} to {high:+.3g}), p={comparison.p_value:.2g}, "
            f"Holm p={comparison.p_holm:.2g}: {comparison.outcome}")


def _claims(summary: ExperimentSummary) -> str:
    rows = []
    for claim in evaluate_claims(summary):
        css = {SUPPORTED: "supported", MIXED: "mixed", NOT_MEASURED: "not-measured"}.get(
            claim.verdict, "not-supported"
        )
        lines = "".join(f"<li>{escape(_comparison_line(c))}</li>" for c in claim.comparisons)
        # The means per comparison here, the test's numbers in the verdict cell: each once.
        numbers = (
            '<ul class="tests">' + "".join(f"<li>{escape(c.means)}</li>"
                                           for c in claim.comparisons) + "</ul>"
            + (f'<p class="test">{escape(claim.note)}</p>' if claim.note else "")
            if claim.comparisons else escape(claim.numbers))
        tests = (f'<ul class="tests">{lines}</ul>' if lines else "") + (
            f'<p class="muted test">{escape(claim.test)}</p>' if claim.test else "")
        rows.append(
            f'<tr><td class="left">{escape(claim.claim)}</td>'
            f'<td class="left">{escape(claim.measurement)}</td>'
            f'<td class="left">{numbers}</td>'
            f'<td class="left verdict-cell"><span class="verdict {css}">'
            f"{escape(claim.verdict_text)}</span>{tests}</td></tr>"
        )
    return (
        '<table class="claims"><tr><th class="left">claim</th><th class="left">measurement</th>'
        '<th class="left">numbers (mean ± s.e. over seeds)</th>'
        '<th class="left">verdict: per comparison n, effect, 95% CI, test</th></tr>'
        + "".join(rows) + "</table>"
    )


def _stat_table(
    groups: Sequence[GroupSummary],
    columns: Sequence[tuple[str, object]],
    digits: int = 3,
) -> str:
    """Per group, mean ± s.e. over seeds of each column; a column is (header, group -> Stat)."""
    header = '<th class="left">variant</th><th>p</th><th>seeds</th>' + "".join(
        f"<th>{escape(name)}</th>" for name, _ in columns)
    rows = []
    for group in groups:
        cells = "".join(f"<td>{escape(_cell(value(group), digits))}</td>" for _, value in columns)
        rows.append(f'<tr><td class="left">{escape(group.variant)}</td><td>{group.p:.3g}</td>'
                    f"<td>{len(group.runs)}</td>{cells}</tr>")
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _measured(*path: str):
    """Column getter: the value at ``path`` in each run's measurements, over seeds."""
    def value(group: GroupSummary) -> Optional[Stat]:
        numbers = []
        for run in group.runs:
            node = run.measurements
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                numbers.append(float(node))
        return Stat.of(numbers)
    return value


_CALIBRATION_COLUMNS = (
    ("NLL", _measured("uncertainty", "nll")),
    ("Brier", _measured("uncertainty", "brier")),
    ("ECE", _measured("uncertainty", "ece")),
)
_REFERRAL_COLUMNS = (
    ("none referred", _measured("uncertainty", "selective", "accuracy_at_100%")),
    ("10% referred", _measured("uncertainty", "selective", "accuracy_at_90%")),
    ("20% referred", _measured("uncertainty", "selective", "accuracy_at_80%")),
    ("50% referred", _measured("uncertainty", "selective", "accuracy_at_50%")),
    ("area under the curve", _measured("uncertainty", "selective", "area")),
)
# Fitted on the validation split, measured on the test set (lab/measure.py).
_TEMPERATURE_COLUMNS = (
    ("temperature T", _measured("uncertainty", "temperature")),
    ("NLL after", _measured("uncertainty", "after_temperature", "nll")),
    ("ECE after", _measured("uncertainty", "after_temperature", "ece")),
)
_CONFORMAL_SET_COLUMNS = (
    ("coverage (target >= 0.9)", _measured("uncertainty", "conformal", "coverage")),
    ("mean set size", _measured("uncertainty", "conformal", "mean_set_size")),
)
_CONFORMAL_INTERVAL_COLUMNS = (
    ("coverage (target >= 0.9)", _measured("uncertainty", "conformal", "coverage")),
    ("mean width (target units)", _measured("uncertainty", "conformal", "mean_width")),
)
_REGRESSION_COLUMNS = (
    ("RMSE", _measured("uncertainty", "rmse")),
    ("log-likelihood", _measured("uncertainty", "log_likelihood")),
    ("95% interval coverage", _measured("uncertainty", "coverage_95")),
)


_OLDER_RUNS = ("these runs were measured before the lab recorded reliability bins and referral "
               "curves; a new experiment records them")


def _uncertainty(summary: ExperimentSummary) -> str:
    if not summary.task.uncertainty:
        return '<p class="muted">not measured: this task does not report MC uncertainty.</p>'
    parts = [_not_measured_note(summary, "uncertainty")]
    measured = [g for g in summary.groups if any(
        isinstance(r.measurements.get("uncertainty"), dict)
        and "not_measured" not in r.measurements["uncertainty"] for r in g.runs)]
    if any(g.p == 0 for g in measured):
        parts.append('<p class="muted">p = 0 is left out: without dropout every MC pass is the '
                     "same network, so there is no MC-dropout uncertainty to show.</p>")
    groups = [g for g in measured if g.p > 0]
    if not groups:
        if not parts[0]:
            parts.append('<p class="muted">not measured: needs finished runs with p &gt; 0.</p>')
        return "".join(parts)
    classification = summary.task.kind == "classification"
    samples = summary.experiment.config.get("mc_samples")
    passes = f"{samples} stochastic passes" if samples else "stochastic passes"
    if classification:
        parts.append(
            f"<p>MC dropout (Gal &amp; Ghahramani, 2016): the test set's predictive distribution "
            f"is the mean of {passes} with dropout on. Mean ± s.e. over seeds.</p>"
            "<h3>Calibration</h3><p>Negative log-likelihood, Brier score and expected "
            "calibration error (15 equal-width confidence bins): lower is better.</p>")
        parts.append(_stat_table(groups, _CALIBRATION_COLUMNS))
        if _recorded(groups, "temperature"):
            parts.append(
                "<h3>Temperature scaling and conformal sets</h3><p>One temperature (Guo et al., "
                "2017) fitted by NLL on the validation split's MC-averaged probabilities, "
                "applied to the test set; and APS prediction sets (Angelopoulos et al., 2021) "
                "at alpha = 0.1 calibrated on the validation split: on exchangeable data they "
                "contain the true class for at least 90% of test cases.</p>")
            parts.append(_stat_table(groups, _TEMPERATURE_COLUMNS + _CONFORMAL_SET_COLUMNS))
        parts.append(
            "<h3>Referral</h3><p>Accuracy on the cases kept when the most uncertain ones "
            "(highest predictive entropy) are referred to a human; the area is under that "
            "curve over every fraction referred (1 is perfect).</p>")
        parts.append(_stat_table(groups, _REFERRAL_COLUMNS))
        parts.append("<h3>Reliability diagram</h3>")
        parts.append(_img(
            plots.reliability(summary), "the reliability diagram", missing=_OLDER_RUNS,
            caption="Accuracy against mean confidence per confidence bin, seeds pooled (a marker's "
            "area grows with its number of cases), before and (dotted) after temperature "
            "scaling. On the diagonal, a confidence of 0.9 is right 90% of the time; below it, "
            "the model is over-confident."))
        parts.append("<h3>Referral curve</h3>")
        parts.append(_img(
            plots.referral_curves(summary), "the referral curve", missing=_OLDER_RUNS,
            caption="Accuracy on the cases the model keeps as the most uncertain ones are "
            "referred. A curve that rises means the uncertainty finds the errors; a flat one "
            "means referring by uncertainty is no better than referring at random."))
    else:
        parts.append(
            f"<p>MC dropout (Gal &amp; Ghahramani, 2016): mean and variance of {passes} with "
            "dropout on plus the noise variance 1/tau. Mean ± s.e. over seeds; RMSE in the "
            "target's units (lower is better), log-likelihood per case (higher is better), "
            "coverage of the 95% predictive interval (0.95 is calibrated).</p>")
        parts.append(_stat_table(groups, _REGRESSION_COLUMNS))
        if _recorded(groups, "conformal"):
            parts.append(
                "<h3>Conformal intervals</h3><p>Split-conformal intervals at alpha = 0.1 from "
                "the MC mean and standard deviation (normalised residuals), calibrated on the "
                "validation split: on exchangeable data they cover at least 90% of test "
                "targets.</p>")
            parts.append(_stat_table(groups, _CONFORMAL_INTERVAL_COLUMNS))
    return "".join(parts)


def _recorded(groups: Sequence[GroupSummary], key: str) -> bool:
    return any(key in r.measurements.get("uncertainty", {}) for g in groups for r in g.runs)


#: A dropkit.check sentence quoting a measured ratio ("1.76x the variance", "off by 1.58x"):
#: the report shows the variance shift once, in its own table, so such sentences are left out.
_MEASURED_RATIO = re.compile(r"\d+\.\d+x\b")


def _finding_text(message: str) -> str:
    # A sentence ends at a full stop followed by a space: "features.5" is not an end.
    sentences = re.split(r"(?<=\.)\s+", message.strip())
    text = " ".join(s for s in sentences if not _MEASURED_RATIO.search(s))
    # A swept rate is quoted at full precision ("p=0.06970343976123257"): 3 digits say it.
    return re.sub(r"\d+\.\d{4,}", lambda m: f"{float(m.group()):.3g}", text)


def _check(summary: ExperimentSummary) -> str:
    """dropkit.check findings, each listed once with the (variant, p) groups it was raised on."""
    note = _not_measured_note(summary, "check")
    found: dict[tuple[str, ...], dict[str, int]] = {}
    for group in summary.groups:
        for run in group.runs:
            findings = run.measurements.get("check")
            if not isinstance(findings, list):
                continue
            for finding in findings:
                key = tuple(str(finding.get(k, "")) for k in ("severity", "module", "message",
                                                              "fix"))
                key = (key[0], key[1], _finding_text(key[2]), key[3])
                where = found.setdefault(key, {})
                where[f"{group.variant} p={group.p:.3g}"] = where.get(
                    f"{group.variant} p={group.p:.3g}", 0) + 1
    if not found:
        return note
    rows = []
    for (severity, module, message, fix), where in found.items():
        runs = ", ".join(f"{label} ({n} run{'s' if n > 1 else ''})" for label, n in where.items())
        rows.append("<tr>" + "".join(f'<td class="left">{escape(x)}</td>'
                                     for x in (severity, module, message, fix, runs)) + "</tr>")
    shift = ('<p class="muted">Findings about BatchNorm quote no ratio here: the variance '
             "shift is the table above.</p>") if batchnorm.layers(summary) else ""
    return (note + shift + '<table><tr><th class="left">severity</th><th class="left">layer</th>'
            '<th class="left">finding</th><th class="left">fix</th><th class="left">raised on'
            "</th></tr>" + "".join(rows) + "</table>")


def _data_notes(summary: ExperimentSummary) -> str:
    """Where the data came from (e.g. a documented substitute split), as each run recorded it."""
    notes: list[str] = []
    for run in summary.all_runs:
        for note in run.measurements.get("data_notes", []) + [
            run.measurements.get("measured_on", "")
        ]:
            if isinstance(note, str) and note and note not in notes:
                notes.append(note)
    return "".join(f'<p class="muted">Data: {escape(n)}</p>' for n in notes)


def _batchnorm(summary: ExperimentSummary) -> str:
    """The variance shift (:mod:`.batchnorm`): one definition, one table, one plot."""
    found = batchnorm.layers(summary)
    if not found:
        has_bn = any(run.measurements.get("bn_variance_shift") for run in summary.all_runs)
        reason = ("these runs recorded no dropkit.check.variance_shift" if has_bn else
                  "this task's model has no BatchNorm layer")
        return f'<p class="muted">not measured: {reason}.</p>'
    columns = [
        (f"{layer}{' (after dropout)' if after else ''}",
         lambda g, n=layer: batchnorm.shift(g, {n}))
        for layer, after in found
    ]
    return (f"<p>{escape(batchnorm.DEFINITION[0].upper() + batchnorm.DEFINITION[1:])}. "
            "Mean ± s.e. over seeds, per BatchNorm layer.</p>"
            + _stat_table(summary.groups, columns)
            + _img(plots.bn_shift(summary), "the BatchNorm variance shift"))


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{content}</section>'


def _learning_curves(summary: ExperimentSummary) -> str:
    if plots.longest_run(summary) < 2:
        return ('<p class="muted">Every run trained for one epoch, so there is no curve to '
                "draw: each run's one train and test value is in the comparison table.</p>")
    return _img(plots.learning_curves(summary), "learning curves",
                "Train (blue) and test (red) per epoch, mean over seeds with ±1 s.e. bands; "
                "the metric above, the loss below each panel.")


def _co_adaptation(summary: ExperimentSummary) -> str:
    note = _not_measured_note(summary, "co_adaptation")
    if note:
        return note
    return _img(plots.co_adaptation(summary), "co-adaptation",
                "dropkit.analysis on the last hidden layer's activations over the test set; "
                "mean ± s.e. over seeds, one colour per variant.")


def render_report(summary: ExperimentSummary, sections: str = "") -> str:
    """The report of ``summary`` as one HTML string; ``sections``: extra HTML after the body."""
    experiment = summary.experiment
    if not summary.groups:
        body = '<p class="muted">No finished runs yet.</p>'
    else:
        metric = escape(summary.metric.replace("_", " "))
        body = "\n".join(_section(*part) for part in (
            ("comparison", "Comparison", _table(summary) + _comparison_notes(summary, metric)),
            ("claims", "Claims", _claims(summary)),
            ("learning-curves", "Learning curves", _learning_curves(summary)),
            ("metric-vs-p", "Test metric and generalisation gap vs p",
             _img(plots.metric_vs_p(summary), "metric vs p",
                  f"Test {summary.metric.replace('_', ' ')} and gap {epoch_words(summary)}; "
                  "mean ± 1 s.e. over seeds.")),
            ("ablation", "Robustness to unit ablation",
             _img(plots.ablation_curves(summary), "ablation curves")),
            ("co-adaptation", "Co-adaptation", _co_adaptation(summary)),
            ("mc-vs-weight-scaling", "MC averaging vs weight scaling",
             _img(plots.mc_vs_weight_scaling(summary), "MC averaging vs weight scaling")),
            ("time", "Time per epoch and convergence",
             _img(plots.time_and_convergence(summary), "time and convergence")),
            ("batchnorm", "BatchNorm variance shift", _batchnorm(summary)
             + "<h3>dropkit.check findings</h3>" + _check(summary)),
            ("uncertainty", "MC-dropout uncertainty", _uncertainty(summary)),
        ))
    notes = "".join(f'<p class="muted">{escape(n)}</p>' for n in summary.notes)
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<link rel="icon" href="data:,">
<title>dropkit lab: {escape(experiment.name)}</title>
<style>{_CSS}</style></head>
<body>
<h1>dropkit lab report: {escape(experiment.name)}</h1>
<p>Task <b>{escape(summary.task.name)}</b>: {escape(summary.task.description)}</p>
{_data_notes(summary)}
<p class="muted">Generated {generated}. {len(summary.all_runs)} run(s) recorded.</p>{notes}
{body}
{sections}
<h2>Exact config</h2><pre>{escape(json.dumps(experiment.config, indent=2, sort_keys=True))}</pre>
</body></html>
"""


def _comparison_notes(summary: ExperimentSummary, metric: str) -> str:
    split = "validation" if summary.target_key.startswith("val_") else "test"
    return f"""
<p class="muted">Train, test, gap, gap size and test loss are read {escape(epoch_words(summary))}
("selected epoch"); "test at last epoch" is the last epoch's, for reference only.
gap = {escape(gap_definition(summary.task))}, both evaluated in eval mode (positive: better on
the training data); gap size = max(gap, 0), what "reduces overfitting" is judged on. CPU s/epoch:
median CPU seconds of an epoch's optimisation (what timing claims use); wall s/epoch: median
wall-clock seconds. Epochs to target: first epoch whose {split} {metric} reaches
{escape(_fmt(summary.target))}, a level every rate's mean curve reaches.</p>"""


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def write_report(store: RunStore, experiment: ExperimentRecord, path: Path) -> Path:
    """Render ``experiment``'s report and write it atomically to ``path``."""
    from dropkit.lab.report.sweep import sweep_section

    text = render_report(summarise(store, experiment), sweep_section(store, experiment))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".html.tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    set_default_mode(temporary)  # mkstemp makes 0600; a report is a file like any other
    os.replace(temporary, path)
    return path
