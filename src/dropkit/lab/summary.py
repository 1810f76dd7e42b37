"""Aggregate an experiment's runs over seeds: the numbers behind the table, plots and claims."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional

from dropkit.lab.store import ExperimentRecord, RunRecord, RunStore
from dropkit.lab.tasks import Task, get_task

__all__ = ["ExperimentSummary", "GroupSummary", "RunResult", "Stat", "summarise"]


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

    @property
    def finished(self) -> bool:
        return self.record.status == "finished"


@dataclass
class GroupSummary:
    """One (variant, p) cell of the grid, aggregated over its finished seeds."""

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


@dataclass
class ExperimentSummary:
    experiment: ExperimentRecord
    task: Task
    groups: list[GroupSummary]
    all_runs: list[RunResult]
    target: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.task.metric

    def baseline(self, variant: str) -> Optional[GroupSummary]:
        return next((g for g in self.groups if g.variant == variant and g.p == 0.0), None)


def _gap(task: Task, last: dict) -> float:
    train, test = last[f"train_{task.metric}"], last[f"test_{task.metric}"]
    # Positive gap = better on the training data than on unseen data.
    return train - test if task.higher_is_better else test - train


def _reaches(task: Task, value: float, target: float) -> bool:
    return value >= target if task.higher_is_better else value <= target


def _target(task: Task, groups: list[GroupSummary]) -> Optional[float]:
    # Every group's mean learning curve reaches the target: 99% of the weakest group's
    # best mean test accuracy (or 101% of the largest best RMSE).
    bests = []
    key = f"test_{task.metric}"
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
            cells.setdefault((result.record.variant, result.record.p), []).append(result)
    groups = [GroupSummary(variant, p, runs) for (variant, p), runs in sorted(cells.items())]
    metric = task.metric
    for group in groups:
        lasts = [r.epochs[-1] for r in group.runs]
        group.test = Stat.of([last[f"test_{metric}"] for last in lasts])
        group.train = Stat.of([last[f"train_{metric}"] for last in lasts])
        group.gap = Stat.of([_gap(task, last) for last in lasts])
        group.test_loss = Stat.of([last["test_loss"] for last in lasts])
        # The median resists the first epoch's warm-up and other jobs' bursts on the CPU.
        group.epoch_time = Stat.of(
            [statistics.median(e["epoch_time"] for e in r.epochs) for r in group.runs]
        )
    summary = ExperimentSummary(experiment, task, groups, results)
    summary.target = _target(task, groups)
    if summary.target is not None:
        for group in groups:
            firsts = []
            for run in group.runs:
                hit = next(
                    (e["epoch"] for e in run.epochs
                     if _reaches(task, e[f"test_{metric}"], summary.target)),
                    None,
                )
                # A run that never reaches the target counts as one epoch past its end: a
                # lower bound, so slow runs pull the mean up instead of dropping out of it.
                firsts.append(len(run.epochs) + 1 if hit is None else hit)
                group.reached_target += hit is not None
            group.epochs_to_target = Stat.of(firsts)
    unfinished = [r.record.key for r in results if not r.finished]
    if unfinished:
        summary.notes.append(
            f"{len(unfinished)} run(s) unfinished and left out: {', '.join(unfinished)}"
        )
    return summary
