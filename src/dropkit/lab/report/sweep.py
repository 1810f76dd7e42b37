"""The report's sweep section: best rate per variant, parameter importance, every trial.

It reads the study snapshot that ``dropkit lab sweep`` workers keep beside the
run store (:func:`dropkit.lab.sweep.write_snapshot`), so the report needs
no connection to the study's storage and shows the trials of every machine.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Optional

from dropkit.lab.report import plots
from dropkit.lab.store import ExperimentRecord, RunStore

__all__ = ["load_snapshot", "parameter_importance", "sweep_section"]

_FINISHED = ("COMPLETE", "PRUNED")


def load_snapshot(store: RunStore, experiment: ExperimentRecord) -> Optional[dict]:
    """The latest study snapshot of a sweep experiment, or ``None`` (grid experiment / none yet)."""
    if "sweep" not in experiment.config or not hasattr(store, "path"):
        return None
    from dropkit.lab.store import snapshot_path

    path: Path = snapshot_path(store, experiment)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def parameter_importance(snapshot: dict) -> dict:
    """fANOVA importance (Hutter et al., 2014) of the searched parameters over complete trials.

    Returns ``{"evaluator": name, "values": {param: share}}``, or
    ``{"not_measured": reason}`` when Optuna or scikit-learn is missing or the
    trials cannot support it (fewer than two complete trials, nothing varied).
    """
    complete = [t for t in snapshot["trials"] if t["state"] == "COMPLETE"]
    if len(complete) < 2:
        return {"not_measured": f"{len(complete)} complete trial(s); importance needs at least 2"}
    try:
        import optuna
        from optuna.distributions import json_to_distribution
    except ImportError:
        return {"not_measured": "optuna is not installed (pip install 'dropkit[lab]')"}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=snapshot["direction"])
    study.add_trials([
        optuna.trial.create_trial(
            params=t["params"],
            distributions={k: json_to_distribution(v) for k, v in t["distributions"].items()},
            value=t["value"],
        )
        for t in complete
    ])
    try:
        # Seeded: the forest behind fANOVA is random, and a report must not change on re-render.
        values = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except Exception as error:  # noqa: BLE001 - a report section must not sink the report
        return {"not_measured": f"fANOVA failed: {type(error).__name__}: {error}"}
    if not values:
        return {"not_measured": "no searched parameter varied across complete trials"}
    return {"evaluator": "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)",
            "values": dict(values)}


def best_per_variant(snapshot: dict) -> list[dict]:
    """Per variant: trial counts and the complete trial with the best value."""
    maximize = snapshot["direction"] == "maximize"
    rows: dict[str, dict] = {}
    for trial in snapshot["trials"]:
        if trial["state"] not in _FINISHED or "variant" not in trial["params"]:
            continue
        row = rows.setdefault(trial["params"]["variant"],
                              {"complete": 0, "pruned": 0, "best": None})
        row[trial["state"].lower()] += 1
        if trial["state"] == "COMPLETE":
            best = row["best"]
            if best is None or (trial["value"] > best["value"] if maximize
                                else trial["value"] < best["value"]):
                row["best"] = trial
    return [{"variant": name, **row} for name, row in sorted(rows.items())]


@plots._styled
def _plot(snapshot: dict) -> Optional[plots.Plot]:
    """Every finished trial's value against p, a colour per variant (pruned: open markers)."""
    finished = [t for t in snapshot["trials"] if t["state"] in _FINISHED and "p" in t["params"]]
    if not finished:
        return None
    figure, ((axis,),) = plots._grid(1, (620, 360))
    variants = sorted({t["params"]["variant"] for t in finished})
    for index, variant in enumerate(variants):
        colour = f"C{index}"
        for state, face in (("COMPLETE", colour), ("PRUNED", "none")):
            points = [t for t in finished
                      if t["params"]["variant"] == variant and t["state"] == state]
            if points:
                axis.scatter([t["params"]["p"] for t in points], [t["value"] for t in points],
                             facecolors=face, edgecolors=colour,
                             label=f"{variant} ({state.lower()})")
    axis.set_xlabel("dropout rate p")
    axis.set_ylabel(snapshot["metric"].replace("_", " ") + "\n(pruned: at the pruning epoch)")
    axis.legend()
    return plots._plot(figure, "sweep: metric vs p")


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def sweep_section(store: RunStore, experiment: ExperimentRecord) -> str:
    """The HTML of the sweep section, or ``""`` for an experiment that is not a sweep."""
    if "sweep" not in experiment.config:
        return ""
    snapshot = load_snapshot(store, experiment)
    if snapshot is None:
        return ('<section id="sweep"><h2>Sweep</h2><p class="muted">not measured: no trial has '
                "finished yet.</p></section>")
    counts: dict[str, int] = {}
    for trial in snapshot["trials"]:
        counts[trial["state"]] = counts.get(trial["state"], 0) + 1
    state_text = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    parts = [
        '<section id="sweep"><h2>Sweep</h2>',
        f"<p>Optuna study <b>{escape(snapshot['study'])}</b> in "
        f"<code>{escape(snapshot['storage'])}</code>: TPE sampler, median pruning; "
        f"{escape(snapshot['direction'])} {escape(snapshot['metric'])}, budget "
        f"{snapshot['budget']} trials; {escape(state_text)}.</p>",
        "<h3>Best rate per variant</h3>",
        "<table><tr><th class=\"left\">variant</th><th>complete</th><th>pruned</th>"
        f"<th>best {escape(snapshot['metric'])}</th><th>at p</th><th>trial</th>"
        "<th class=\"left\">run</th></tr>",
    ]
    for row in best_per_variant(snapshot):
        best = row["best"] or {"value": None, "params": {}, "number": "-", "user_attrs": {}}
        parts.append(
            f'<tr><td class="left">{escape(row["variant"])}</td><td>{row["complete"]}</td>'
            f'<td>{row["pruned"]}</td><td>{_fmt(best["value"])}</td>'
            f'<td>{_fmt(best["params"].get("p"))}</td><td>{escape(str(best["number"]))}</td>'
            f'<td class="left">{escape(str(best["user_attrs"].get("run_key", "-")))}</td></tr>'
        )
    parts.append("</table>")
    importance = parameter_importance(snapshot)
    parts.append("<h3>Parameter importance</h3>")
    if "not_measured" in importance:
        parts.append(f'<p class="muted">not measured: {escape(importance["not_measured"])}</p>')
    else:
        parts.append(f'<p class="muted">{escape(importance["evaluator"])}, over complete '
                     "trials; shares sum to 1.</p><table><tr><th class=\"left\">parameter</th>"
                     "<th>importance</th></tr>")
        parts.extend(f'<tr><td class="left">{escape(name)}</td><td>{value:.3f}</td></tr>'
                     for name, value in importance["values"].items())
        parts.append("</table>")
    plot = _plot(snapshot)
    if plot is not None:
        parts.append(plots.figure_html(plot))
    parts.append("<h3>Trials</h3><table><tr><th>trial</th><th class=\"left\">state</th>"
                 "<th class=\"left\">variant</th><th>p</th><th>value</th><th>epochs</th>"
                 "<th class=\"left\">worker</th><th class=\"left\">run</th></tr>")
    for trial in snapshot["trials"]:
        attrs = trial["user_attrs"]
        parts.append(
            f'<tr><td>{trial["number"]}</td><td class="left">{escape(trial["state"])}</td>'
            f'<td class="left">{escape(str(trial["params"].get("variant", "-")))}</td>'
            f'<td>{_fmt(trial["params"].get("p"))}</td><td>{_fmt(trial["value"])}</td>'
            f'<td>{len(trial["intermediate"])}</td>'
            f'<td class="left">{escape(str(attrs.get("worker", "-")))}</td>'
            f'<td class="left">{escape(str(attrs.get("run_key", attrs.get("surplus", "-"))))}'
            "</td></tr>"
        )
    parts.append("</table></section>")
    return "\n".join(parts)
