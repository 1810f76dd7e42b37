"""``dropkit lab run``: train an experiment's grid; finished runs are skipped, unfinished resumed.

The CLI calls :func:`run_experiment`; tests and notebooks can too. The work is
:func:`dropkit.lab.pipeline.run_grid`; this module adds the thread setting and
the progress bars.
"""

from __future__ import annotations

import torch

from dropkit.lab.config import ExperimentConfig, RunConfig
from dropkit.lab.pipeline import GridResult, run_grid
from dropkit.lab.store import HeldRun, RunStore
from dropkit.lab.tasks import get_task

__all__ = ["GridResult", "run_experiment"]


def _progress(show: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not show,
    )


class _Bars:
    """:class:`~dropkit.lab.pipeline.GridEvents` drawn as rich progress bars."""

    def __init__(self, progress, name: str):
        self.progress, self.name = progress, name
        self.overall = None
        self.bars: dict[str, int] = {}

    def planned(self, total: int, finished: int) -> None:
        self.overall = self.progress.add_task(f"{self.name}: runs", total=total,
                                              completed=finished)

    def started(self, run: RunConfig, done_epochs: int) -> None:
        self.bars[run.key] = self.progress.add_task(
            f"  {run.key}: epochs", total=run.epochs, completed=done_epochs)

    def epoch(self, run: RunConfig, epoch: int) -> None:
        self.progress.update(self.bars[run.key], completed=epoch)

    def ended(self, run: RunConfig) -> None:
        if run.key in self.bars:
            self.progress.remove_task(self.bars.pop(run.key))
        self.progress.advance(self.overall)

    def waiting(self, holders: list[HeldRun]) -> None:
        writers = sorted({holder.claimant.label for holder in holders})
        self.progress.update(
            self.overall,
            description=f"{self.name}: runs (waiting for {len(holders)} held by "
                        f"{', '.join(writers)})",
        )


def run_experiment(
    store: RunStore, config: ExperimentConfig, *, show_progress: bool = True
) -> GridResult:
    """Train every run of ``config`` that the store does not hold finished yet."""
    # Intra-op threads barely help models this small and, on a shared machine, made
    # epochs 5-18x slower in our measurements; config.threads (default 1) decides.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with _progress(show_progress) as progress:
            return run_grid(store, config, get_task(config.task),
                            events=_Bars(progress, config.name))
    finally:
        torch.set_num_threads(threads)
