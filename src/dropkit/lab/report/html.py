"""One self-contained HTML report: inline CSS, plots as base64 PNG, no script, no network.

Every user-supplied string (experiment and run names, config values, library
messages) goes through :func:`html.escape`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from html import escape
from pathlib import Path
from typing import Optional

from dropkit.lab.report import plots
from dropkit.lab.report.claims import MIXED, NOT_MEASURED, SUPPORTED, evaluate_claims
from dropkit.lab.report.table import _cell
from dropkit.lab.store import ExperimentRecord, RunStore
from dropkit.lab.summary import ExperimentSummary, summarise

__all__ = ["render_report", "write_report"]

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f2f2f5; } td.left, th.left { text-align: left; }
img { max-width: 100%; } .muted { color: #666; }
.verdict { font-weight: bold; white-space: nowrap; }
.supported { color: #17692b; } .not-supported { color: #a11; } .not-measured { color: #777; }
.mixed { color: #9a6200; }
pre { background: #f6f6f8; padding: 0.8em; overflow-x: auto; }
"""


def _img(data: Optional[str], alt: str) -> str:
    if data is None:
        return f'<p class="muted">not measured: no data for {escape(alt)}.</p>'
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _not_measured_note(summary: ExperimentSummary, name: str) -> str:
    reasons = sorted({
        run.measurements[name]["not_measured"]
        for run in summary.all_runs
        if isinstance(run.measurements.get(name), dict) and "not_measured" in run.measurements[name]
    })
    if not reasons:
        return ""
    return "".join(f'<p class="muted">not measured: {escape(r)}</p>' for r in reasons)


def _table(summary: ExperimentSummary) -> str:
    metric = escape(summary.metric)
    head = ["variant", "p", "seeds", f"train {metric}", f"test {metric}", "gap", "test loss",
            "s/epoch", "epochs to target"]
    rows = []
    for group in summary.groups:
        cells = [escape(group.variant), f"{group.p:g}", str(len(group.runs)), _cell(group.train),
                 _cell(group.test), _cell(group.gap), _cell(group.test_loss),
                 _cell(group.epoch_time, 3), _cell(group.epochs_to_target, 1)]
        rows.append("<tr>" + "".join(
            f'<td class="{"left" if i == 0 else ""}">{escape(c)}</td>' for i, c in enumerate(cells)
        ) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _claims(summary: ExperimentSummary) -> str:
    rows = []
    for claim in evaluate_claims(summary):
        css = {SUPPORTED: "supported", MIXED: "mixed", NOT_MEASURED: "not-measured"}.get(
            claim.verdict, "not-supported"
        )
        rows.append(
            f'<tr><td class="left">{escape(claim.claim)}</td>'
            f'<td class="left">{escape(claim.measurement)}</td>'
            f'<td class="left">{escape(claim.numbers)}</td>'
            f'<td class="left verdict {css}">{escape(claim.verdict)}</td></tr>'
        )
    return (
        '<table><tr><th class="left">claim</th><th class="left">measurement</th>'
        '<th class="left">numbers (mean ± s.e. over seeds)</th><th class="left">verdict</th></tr>'
        + "".join(rows) + "</table>"
    )


def _uncertainty(summary: ExperimentSummary) -> str:
    if not summary.task.uncertainty:
        return '<p class="muted">not measured: this task does not report MC uncertainty.</p>'
    note = _not_measured_note(summary, "uncertainty")
    rows = []
    for run in summary.all_runs:
        value = run.measurements.get("uncertainty")
        if isinstance(value, dict) and "not_measured" not in value:
            numbers = escape(json.dumps(value, indent=1))
            rows.append(f'<tr><td class="left">{escape(run.record.key)}</td>'
                        f'<td class="left"><pre>{numbers}</pre></td></tr>')
    table = ("<table><tr><th>run</th><th>MC-dropout measurements</th></tr>" + "".join(rows)
             + "</table>") if rows else ""
    return note + table


def _check(summary: ExperimentSummary) -> str:
    note = _not_measured_note(summary, "check")
    rows = []
    for run in summary.all_runs:
        findings = run.measurements.get("check")
        if isinstance(findings, list):
            for finding in findings:
                rows.append("<tr>" + "".join(
                    f'<td class="left">{escape(str(x))}</td>'
                    for x in (run.record.key, finding.get("severity"), finding.get("message"),
                              finding.get("fix"))
                ) + "</tr>")
    if rows:
        note += ("<table><tr><th>run</th><th>severity</th><th>finding</th><th>fix</th></tr>"
                 + "".join(rows) + "</table>")
    return note


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


def _bn_library(summary: ExperimentSummary) -> str:
    """dropkit.check.variance_shift per BatchNorm layer: mean over channels of max(r, 1/r)."""
    rows = [
        (run.record.key, layer["layer"], layer["library_shift"])
        for run in summary.all_runs
        for layer in run.measurements.get("bn_variance_shift", [])
        if isinstance(layer.get("library_shift"), (int, float))
    ]
    if not rows:
        return ""
    body = "".join(
        f'<tr><td class="left">{escape(key)}</td><td class="left">{escape(name)}</td>'
        f"<td>{shift:.3f}</td></tr>"
        for key, name, shift in rows
    )
    return ("<p>dropkit.check.variance_shift: mean over channels of max(r, 1/r), r = test-time "
            "input variance / running variance (1 = no shift).</p><table><tr><th>run</th>"
            f"<th>BatchNorm layer</th><th>shift</th></tr>{body}</table>")


def render_report(summary: ExperimentSummary, sections: str = "") -> str:
    """The report of ``summary`` as one HTML string; ``sections``: extra HTML after the body."""
    experiment = summary.experiment
    if not summary.groups:
        body = '<p class="muted">No finished runs yet.</p>'
    else:
        body = f"""
<h2>Comparison</h2>{_table(summary)}
<p class="muted">gap = train - test {escape(summary.metric)} (test - train for RMSE), both
evaluated in eval mode at the last epoch. Epochs to target: first epoch whose test
{escape(summary.metric)} reaches {escape(_fmt(summary.target))}, a level every rate's mean
curve reaches.</p>
<h2>Claims</h2>{_claims(summary)}
<h2>Learning curves</h2>{_img(plots.learning_curves(summary), "learning curves")}
<h2>Test metric and generalisation gap vs p</h2>{_img(plots.metric_vs_p(summary), "metric vs p")}
<h2>Robustness to unit ablation</h2>{_img(plots.ablation_curves(summary), "ablation curves")}
<h2>Co-adaptation</h2>{_not_measured_note(summary, "co_adaptation")}
{_img(plots.co_adaptation(summary), "co-adaptation") if not
 _not_measured_note(summary, "co_adaptation") else ""}
<h2>MC averaging vs weight scaling</h2>
{_img(plots.mc_vs_weight_scaling(summary), "MC averaging vs weight scaling")}
<h2>Time per epoch and convergence</h2>
{_img(plots.time_and_convergence(summary), "time and convergence")}
<h2>BatchNorm variance shift</h2>{_img(plots.bn_shift(summary), "BatchNorm layers")}
{_bn_library(summary)}
<h3>dropkit.check findings</h3>{_check(summary)}
<h2>MC-dropout uncertainty</h2>{_uncertainty(summary)}
"""
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
    os.replace(temporary, path)
    return path
