"""``dropkit lab run``: train an experiment's grid; finished runs are skipped, unfinished resumed.

The CLI calls :func:`run_experiment`; tests and notebooks can too. The work is
:func:`dropkit.lab.pipeline.run_grid`; this module adds the thread setting and
the progress bars (:mod:`dropkit.lab.progress`).
"""

from __future__ import annotations

from typing import Optional

import torch

from dropkit.lab.config import ExperimentConfig, RunConfig
from dropkit.lab.pipeline import GridResult, run_grid
from dropkit.lab.progress import RunProgress
from dropkit.lab.store import HeldRun, RunStore
from dropkit.lab.tasks import TaskData, get_task

__all__ = ["GridResult", "run_experiment"]


class _Bars:
    """:class:`~dropkit.lab.pipeline.GridEvents` drawn by
    :class:`~dropkit.lab.progress.RunProgress`: one bar over the epochs of every run left
    (its ETA appears after the first epoch), one for the current run, which says
    "measuring ..." during the post-training measurements."""

    def __init__(self, progress: RunProgress):
        self.progress = progress

    def planned(self, total: int, finished: int, remaining_epochs: int) -> None:
        if finished < total:  # nothing to train: no bar at all
            self.progress.start(remaining_epochs)

    def started(self, run: RunConfig, done_epochs: int) -> None:
        self.progress.run_started(run.key, run.epochs, done_epochs)

    def epoch(self, run: RunConfig, epoch: int) -> None:
        self.progress.epoch_done(epoch)

    def measuring(self, run: RunConfig) -> None:
        self.progress.measuring()

    def ended(self, run: RunConfig) -> None:
        self.progress.run_finished()

    def waiting(self, holders: list[HeldRun]) -> None:
        writers = sorted({holder.claimant.label for holder in holders})
        self.progress.waiting(f"waiting for {len(holders)} run(s) held by {', '.join(writers)}")


def run_experiment(
    store: RunStore, config: ExperimentConfig, *, show_progress: bool = True,
    data: Optional[TaskData] = None,
) -> GridResult:
    """Train every run of ``config`` that the store does not hold finished yet.

    ``data``: the task's data if the caller loaded it already (the CLI does, to refuse
    bad files before the store is opened); see :class:`dropkit.lab.pipeline.RunData`.
    """
    # Intra-op threads barely help models this small and, on a shared machine, made
    # epochs 5-18x slower in our measurements; config.threads (default 1) decides.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with RunProgress(config.name, show=show_progress) as progress:
            return run_grid(store, config, get_task(config.task), data=data,
                            events=_Bars(progress))
    finally:
        torch.set_num_threads(threads)
