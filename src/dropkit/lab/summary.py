"""Aggregate an experiment's runs over seeds: the numbers behind the table, plots and claims.

Every number is read at each run's *reported* epoch, the one with the best
validation metric (:func:`dropkit.lab.train.select_epoch`); last-epoch test
numbers are kept beside, labelled as such. Runs stay addressable by seed
(:meth:`GroupSummary.per_seed`), because the claims compare a p>0 run with the
p=0 run of the same seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

from dropkit.lab.store import ExperimentRecord, RunRecord, RunStore
from dropkit.lab.tasks import Task, get_task
from dropkit.lab.train import select_epoch

__all__ = [
    "ExperimentSummary",
    "GroupSummary",
    "RunResult",
    "Stat",
    "gap_size",
    "signed_gap",
    "summarise",
]

#: Wall time per epoch above this multiple of CPU time means the run waited for a core.
_LOADED = 1.25


@dataclass(frozen=True)
class Stat:
    """Mean over seeds and its standard error (``None`` with a single seed)."""

    mean: float
    sem: Optional[float]
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Optional[Stat]:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return None
        sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
        return cls(statistics.fmean(values), sem, len(values))

    def __str__(self) -> str:
        return f"{self.mean:.4g}" + ("" if self.sem is None else f" ± {self.sem:.2g}")


@dataclass
class RunResult:
    record: RunRecord
    epochs: list[dict]
    measurements: dict
    #: The reported epoch's row (best validation metric; the last one without validation).
    selected: Optional[dict] = None
    by_validation: bool = False

    @property
    def finished(self) -> bool:
        return self.record.status == "finished"

    @property
    def seed(self) -> int:
        return self.record.seed

    @property
    def last(self) -> dict:
        return self.epochs[-1]


@dataclass
class GroupSummary:
    """One (variant, p) cell of the grid, aggregated over its finished seeds.

    ``test``, ``train``, ``gap``, ``gap_size``, ``val`` and ``test_loss`` are at each
    run's validation-selected epoch; ``test_last`` is the last epoch's test metric.
    ``epoch_time`` is the median wall-clock seconds per epoch, ``epoch_cpu_time`` the
    median CPU seconds (what timing claims use).
    """

    variant: str
    p: float
    runs: list[RunResult]
    test: Optional[Stat] = None
    train: Optional[Stat] = None
    gap: Optional[Stat] = None
    test_loss: Optional[Stat] = None
    epoch_time: Optional[Stat] = None
    epochs_to_target: Optional[Stat] = None
    reached_target: int = 0
    gap_size: Optional[Stat] = None
    val: Optional[Stat] = None
    test_last: Optional[Stat] = None
    epoch_cpu_time: Optional[Stat] = None
    selected_epoch: Optional[Stat] = None
    #: Per run: the first epoch reaching the common target (its length + 1 if never).
    epochs_to_target_by_seed: dict[int, float] = field(default_factory=dict)

    def per_seed(self, value: Callable[[RunResult], Optional[float]]) -> dict[int, float]:
        """``{seed: value(run)}`` over the runs where ``value`` is a finite number."""
        out = {}
        for run in self.runs:
            number = value(run)
            if isinstance(number, (int, float)) and math.isfinite(number):
                out[run.seed] = float(number)
        return out


@dataclass
class ExperimentSummary:
    experiment: ExperimentRecord
    task: Task
    groups: list[GroupSummary]
    all_runs: list[RunResult]
    target: Optional[float] = None
    notes: list[str] = field(default_factory=list)
    #: Test examples per run (the smallest, if runs differ): accuracy moves in steps of 1/this.
    test_examples: Optional[int] = None
    val_examples: Optional[int] = None
    #: Whether every finished run's reported epoch was chosen on validation data.
    by_validation: bool = False
    #: Median over runs of (median wall s/epoch) / (median CPU s/epoch); None without CPU time.
    wall_over_cpu: Optional[float] = None
    #: The per-epoch metric the convergence target is read from (validation when recorded).
    target_key: str = ""

    @property
    def metric(self) -> str:
        return self.task.metric

    @property
    def resolution(self) -> float:
        """The smallest test-metric step one test example makes: 1/N for accuracy, else 0.

        Continuous metrics (RMSE, perplexity) have no such step; their ties are left to
        the significance test.
        """
        if self.task.kind == "classification" and self.test_examples:
            return 1.0 / self.test_examples
        return 0.0

    def baseline(self, variant: str) -> Optional[GroupSummary]:
        return next((g for g in self.groups if g.variant == variant and g.p == 0.0), None)


def signed_gap(task: Task, row: dict) -> float:
    """train - test metric (test - train for lower-is-better metrics); < 0 means underfitting."""
    train, test = row[f"train_{task.metric}"], row[f"test_{task.metric}"]
    return train - test if task.higher_is_better else test - train


def gap_size(task: Task, row: dict) -> float:
    """How much the model overfits: ``max(signed gap, 0)``; an underfit model's is 0."""
    return max(signed_gap(task, row), 0.0)


def _reaches(task: Task, value: float, target: float) -> bool:
    return value >= target if task.higher_is_better else value <= target


def _curve_key(task: Task, groups: list[GroupSummary]) -> str:
    # Convergence is judged on validation data when every run has it, like selection.
    runs = [r for g in groups for r in g.runs]
    val = f"val_{task.metric}"
    return val if runs and all(val in r.epochs[0] for r in runs) else f"test_{task.metric}"


def _target(task: Task, groups: list[GroupSummary], key: str) -> Optional[float]:
    # Every group's mean learning curve reaches the target: 99% of the weakest group's
    # best mean accuracy (or 101% of the largest best RMSE).
    bests = []
    for group in groups:
        curves = [r.epochs for r in group.runs if r.epochs]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        mean_curve = [statistics.fmean(c[i][key] for c in curves) for i in range(length)]
        bests.append(max(mean_curve) if task.higher_is_better else min(mean_curve))
    if not bests:
        return None
    return 0.99 * min(bests) if task.higher_is_better else 1.01 * max(bests)


def _median_of(run: RunResult, key: str) -> Optional[float]:
    values = [e[key] for e in run.epochs if isinstance(e.get(key), (int, float))]
    # The median resists the first epoch's warm-up and other jobs' bursts on the CPU.
    return statistics.median(values) if values else None


def _load_note(summary: ExperimentSummary) -> Optional[str]:
    ratios = []
    for run in summary.all_runs:
        wall, cpu = _median_of(run, "epoch_time"), _median_of(run, "epoch_cpu_time")
        if wall and cpu:
            ratios.append(wall / cpu)
    if not ratios:
        return None
    summary.wall_over_cpu = statistics.median(ratios)
    worst = max(ratios)
    if worst > _LOADED:
        return (
            f"machine load: wall-clock time per epoch was up to {worst:.2g}x the CPU time "
            f"(median {summary.wall_over_cpu:.2g}x): the runs waited for cores other jobs held, "
            "so wall-clock times are inflated; timing claims use CPU time"
        )
    if min(ratios) < 1 / _LOADED:
        return (
            f"CPU time per epoch was up to {1 / min(ratios):.2g}x the wall-clock time: runs used "
            "several threads; CPU time counts all of them"
        )
    return None


def summarise(store: RunStore, experiment: ExperimentRecord) -> ExperimentSummary:
    """Load every run of ``experiment`` and aggregate finished ones per (variant, p)."""
    task = get_task(experiment.task)
    results = [
        RunResult(record, store.epochs(record.id), store.measurements(record.id))
        for record in store.runs(experiment.id)
    ]
    cells: dict[tuple[str, float], list[RunResult]] = {}
    for result in results:
        if result.finished and result.epochs:
            result.selected, result.by_validation = select_epoch(task, result.epochs)
            cells.setdefault((result.record.variant, result.record.p), []).append(result)
    groups = [GroupSummary(variant, p, runs) for (variant, p), runs in sorted(cells.items())]
    metric = task.metric
    for group in groups:
        chosen = [r.selected for r in group.runs]
        group.test = Stat.of([row[f"test_{metric}"] for row in chosen])
        group.test_last = Stat.of([r.last[f"test_{metric}"] for r in group.runs])
        group.train = Stat.of([row[f"train_{metric}"] for row in chosen])
        group.val = Stat.of([row.get(f"val_{metric}") for row in chosen])
        group.gap = Stat.of([signed_gap(task, row) for row in chosen])
        group.gap_size = Stat.of([gap_size(task, row) for row in chosen])
        group.test_loss = Stat.of([row["test_loss"] for row in chosen])
        group.selected_epoch = Stat.of([row["epoch"] for row in chosen])
        group.epoch_time = Stat.of([_median_of(r, "epoch_time") for r in group.runs])
        group.epoch_cpu_time = Stat.of([_median_of(r, "epoch_cpu_time") for r in group.runs])
    finished = [r for g in groups for r in g.runs]
    summary = ExperimentSummary(experiment, task, groups, results)
    sizes = [r.last["test_examples"] for r in finished if "test_examples" in r.last]
    summary.test_examples = min(sizes) if sizes else None
    val_sizes = [r.last["val_examples"] for r in finished if "val_examples" in r.last]
    summary.val_examples = min(val_sizes) if val_sizes else None
    summary.by_validation = bool(finished) and all(r.by_validation for r in finished)
    if finished and not summary.by_validation:
        summary.notes.append(
            "some runs have no validation metric (recorded before the lab held a validation "
            "split out): their numbers are at the last epoch"
        )

    key = summary.target_key = _curve_key(task, groups)
    summary.target = _target(task, groups, key)
    if summary.target is not None:
        for group in groups:
            firsts = []
            for run in group.runs:
                hit = next(
                    (e["epoch"] for e in run.epochs if _reaches(task, e[key], summary.target)),
                    None,
                )
                # A run that never reaches the target counts as one epoch past its end: a
                # lower bound, so slow runs pull the mean up instead of dropping out of it.
                firsts.append(len(run.epochs) + 1 if hit is None else hit)
                group.epochs_to_target_by_seed[run.seed] = float(firsts[-1])
                group.reached_target += hit is not None
            group.epochs_to_target = Stat.of(firsts)
    note = _load_note(summary)
    if note is not None:
        summary.notes.append(note)
    unfinished = [r.record.key for r in results if not r.finished]
    if unfinished:
        summary.notes.append(
            f"{len(unfinished)} run(s) unfinished and left out: {', '.join(unfinished)}"
        )
    return summary
