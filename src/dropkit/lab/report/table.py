"""The comparison table printed by ``dropkit lab run`` and ``dropkit lab compare``."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from dropkit.lab.summary import ExperimentSummary, Stat
from dropkit.lab.tasks import Task

__all__ = ["comparison_table", "format_stat", "gap_definition"]


def gap_definition(task: Task) -> str:
    """How the generalisation gap is computed for ``task``: positive = better on training data.

    Matches :func:`dropkit.lab.summary._gap` (train - test when higher is better,
    test - train for RMSE, perplexity and bits per character).
    """
    metric = task.metric.replace("_", " ")
    return f"train - test {metric}" if task.higher_is_better else f"test - train {metric}"


def format_stat(stat: Stat | None, digits: int = 4) -> str:
    """``mean ± s.e.`` with ``digits`` decimals (``-`` when unmeasured): how tables print a Stat.

    The BatchNorm table uses ``digits=3``; a claim quoting the same quantity
    formats it the same way, so the reader sees one number, not two roundings.
    """
    if stat is None:
        return "-"
    text = f"{stat.mean:.{digits}f}"
    return text if stat.sem is None else f"{text} ± {stat.sem:.{digits}f}"


_cell = format_stat


def comparison_table(summary: ExperimentSummary) -> Table:
    """Per (variant, p): train/test metric, gap, test loss, time per epoch, epochs to target."""
    metric = summary.metric
    target = "-" if summary.target is None else f"{summary.target:.4f}"
    table = Table(
        title=f"{escape(summary.experiment.name)} ({summary.task.name}; mean ± s.e. over seeds)",
        caption=f"gap = {gap_definition(summary.task)}; target {metric} = {target}"
        " (a run that never reaches it counts as its epochs + 1)",
    )
    for column in ("variant", "p", "seeds", f"train {metric}", f"test {metric}", "gap",
                   "test loss", "s/epoch", "epochs to target"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for group in summary.groups:
        table.add_row(
            escape(group.variant),
            f"{group.p:g}",
            str(len(group.runs)),
            _cell(group.train),
            _cell(group.test),
            _cell(group.gap),
            _cell(group.test_loss),
            _cell(group.epoch_time, 3),
            _cell(group.epochs_to_target, 1)
            + ("" if group.reached_target == len(group.runs) else
               f" ({group.reached_target}/{len(group.runs)} reached)"),
        )
    return table
