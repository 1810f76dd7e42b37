"""Progress display of an experiment's runs, for the pipeline to report into.

One bar counts the epochs of every run still to train, so its ETA appears after the
first epoch instead of after the first whole run; a second bar follows the current
run, and turns into a "measuring" line (with a spinner and the time spent) while the
post-training measurements run, which can take as long as an epoch or two.

rich's own ETA column estimates speed between the first and last update inside a
30-second window: with epochs (or runs) longer than that the window holds one update
and the ETA stays blank. The ETA here is elapsed time per epoch done, times the
epochs left, so it appears after the first epoch; the elapsed time includes the
measurements, which spreads their cost over the epochs.

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
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

__all__ = ["MEASURING", "RunProgress"]

#: What the run's line says while it is measured after training.
MEASURING = "measuring (MC dropout, ablation, co-adaptation, BatchNorm shift)"


def _eta(task: Task) -> Optional[float]:
    if not task.completed or task.elapsed is None or task.total is None:
        return None
    return task.elapsed / task.completed * max(task.total - task.completed, 0)


class _EtaColumn(ProgressColumn):
    """``ETA h:mm:ss`` from the mean time per completed step since the bar began."""

    def render(self, task: Task) -> Text:
        eta = _eta(task)
        if eta is None:
            return Text("ETA -:--:--", style="progress.remaining")
        minutes, seconds = divmod(int(round(eta)), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"ETA {hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


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
            _EtaColumn(),
            console=console,
            disable=not show,
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

    def waiting(self, why: str) -> None:
        """Every run left is held by another live writer; ``why`` says by whom."""
        if self._overall is not None:
            self._progress.update(self._overall,
                                  description=f"{self.name}: epochs of all runs ({why})")

    def run_finished(self) -> None:
        if self._run is not None:
            self._progress.remove_task(self._run)
        self._run = None

    @property
    def eta_seconds(self) -> Optional[float]:
        """Seconds left by the overall bar's estimate (None before the first epoch)."""
        if self._overall is None:
            return None
        return _eta(next(t for t in self._progress.tasks if t.id == self._overall))
