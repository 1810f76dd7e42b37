"""The comparison table printed by ``dropkit lab run`` and ``dropkit lab compare``."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from dropkit.lab.summary import ExperimentSummary, Stat
from dropkit.lab.tasks import Task

__all__ = ["comparison_table", "epoch_words", "format_stat", "gap_definition"]


def gap_definition(task: Task) -> str:
    """How the generalisation gap is computed for ``task``: positive = better on training data.

    Matches :func:`dropkit.lab.summary._gap` (train - test when higher is better,
    test - train for RMSE, perplexity and bits per character).
    """
    metric = task.metric.replace("_", " ")
    return f"train - test {metric}" if task.higher_is_better else f"test - train {metric}"


def epoch_words(summary: ExperimentSummary) -> str:
    """Which epoch the numbers are read at, with the validation split's size: said once, here."""
    if not summary.by_validation:
        return "at the last epoch (these runs recorded no validation split)"
    size = f" (validation split of {summary.val_examples} examples)" if summary.val_examples else ""
    return f"at each run's best-validation epoch{size}"


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


def _mean(stat: Stat | None, digits: int) -> str:
    return "-" if stat is None else f"{stat.mean:.{digits}f}"


def comparison_table(summary: ExperimentSummary) -> Table:
    """Per (variant, p): the report's comparison table, in a terminal's width.

    Train/test metric, gap, gap size and test loss at the selected epoch; test at
    the last epoch beside them; the selected epoch, CPU and wall seconds per epoch
    and epochs to target as means (their s.e. is in the HTML report).
    """
    metric = summary.metric.replace("_", " ")
    target = "-" if summary.target is None else f"{summary.target:.4f}"
    split = "validation" if summary.target_key.startswith("val_") else "test"
    table = Table(
        title=f"{escape(summary.experiment.name)} ({summary.task.name}; mean ± s.e. over seeds)",
        caption=(
            f"train, test, gap and loss {epoch_words(summary)} (epoch* = that epoch, mean); "
            f"test@last = test {metric} at the last epoch; gap = {gap_definition(summary.task)}, "
            "gap size = max(gap, 0); CPU/wall s/ep = median seconds per epoch (timing claims "
            f"use CPU); to target = epochs until the {split} {metric} reaches {target} (k/n: "
            "runs that reached it; one that never does counts as its epochs + 1)"
        ),
    )
    for column in ("variant", "p", "seeds", f"train {metric}", f"test {metric}", "test@last",
                   "gap", "gap size", "test loss", "epoch*", "CPU s/ep", "wall s/ep",
                   "to target"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for group in summary.groups:
        table.add_row(
            escape(group.variant),
            f"{group.p:g}",
            str(len(group.runs)),
            _cell(group.train),
            _cell(group.test),
            _mean(group.test_last, 4),
            _cell(group.gap),
            _cell(group.gap_size),
            _cell(group.test_loss),
            _mean(group.selected_epoch, 1),
            _mean(group.epoch_cpu_time, 3),
            _mean(group.epoch_time, 3),
            _mean(group.epochs_to_target, 1)
            + ("" if group.reached_target == len(group.runs) else
               f" ({group.reached_target}/{len(group.runs)})"),
        )
    return table
