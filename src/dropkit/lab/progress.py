"""Progress display of an experiment's runs, for the pipeline to report into.

One bar counts the epochs of every run still to train, so its ETA appears after the
first epoch instead of after the first whole run; a second bar follows the current
run, and turns into a "measuring" line (with a spinner and the time spent) while the
post-training measurements run, which can take as long as an epoch or two.

rich estimates speed over the last ``speed_estimate_period`` seconds (30 by default):
with epochs longer than that the window holds one sample and the ETA vanishes. The
window here spans the whole experiment, so the ETA is total elapsed / epochs done.

Example::

    with RunProgress("digits", show=True) as progress:
        progress.start(remaining_epochs=sum(r.epochs for r in runs))
        progress.run_started("standard/p=0.5/seed=0", epochs=40, done=0)
        progress.epoch_done(1)           # ... after each epoch
        progress.measuring()             # before the final measurements
        progress.run_finished()
"""

from __future__ import annotations

from types import TracebackType
from typing import Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["MEASURING", "RunProgress"]

#: What the run's line says while it is measured after training.
MEASURING = "measuring (MC dropout, ablation, co-adaptation, BatchNorm shift)"

# A week: longer than any experiment, so the speed estimate uses every epoch so far.
_SPEED_WINDOW_S = 7 * 24 * 3600.0


class RunProgress:
    """Bars for ``name``'s runs; every method is a no-op apart from bookkeeping when hidden."""

    def __init__(self, name: str, *, show: bool = True, console: Optional[Console] = None):
        self.name = name
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not show,
            speed_estimate_period=_SPEED_WINDOW_S,
        )
        self._overall: Optional[TaskID] = None
        self._run: Optional[TaskID] = None
        self._run_done = 0
        self._key = ""

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: Optional[type[BaseException]], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self._progress.stop()

    def start(self, remaining_epochs: int) -> None:
        """Begin the overall bar over the ``remaining_epochs`` still to train (resumed
        runs count only the epochs they have left, so the ETA is not skewed by them)."""
        self._overall = self._progress.add_task(
            f"{self.name}: epochs of all runs", total=max(remaining_epochs, 1)
        )

    def run_started(self, key: str, epochs: int, done: int = 0) -> None:
        """A run begins (or resumes after ``done`` epochs)."""
        self._run_done = done
        self._run = self._progress.add_task(f"  {key}: epochs", total=epochs, completed=done)
        self._key = key

    def epoch_done(self, epoch: int) -> None:
        """The current run finished its 1-based ``epoch``."""
        if self._run is not None:
            self._progress.update(self._run, completed=epoch)
        if self._overall is not None:
            self._progress.advance(self._overall, epoch - self._run_done)
        self._run_done = epoch

    def measuring(self) -> None:
        """The current run trained; its final measurements begin."""
        if self._run is not None:
            self._progress.update(self._run, description=f"  {self._key}: {MEASURING}")

    def run_finished(self) -> None:
        if self._run is not None:
            self._progress.remove_task(self._run)
        self._run = None

    @property
    def eta_seconds(self) -> Optional[float]:
        """Seconds left by the overall bar's estimate (None before the first epoch)."""
        if self._overall is None:
            return None
        task = next(t for t in self._progress.tasks if t.id == self._overall)
        return task.time_remaining
