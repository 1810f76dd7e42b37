"""Run an experiment's grid: skip finished runs, resume unfinished ones, record everything.

The CLI calls :func:`run_experiment`; tests and notebooks can too.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dropkit.lab import measure
from dropkit.lab.config import ExperimentConfig
from dropkit.lab.store import RunStore
from dropkit.lab.tasks import get_task
from dropkit.lab.train import train_run

__all__ = ["SweepResult", "run_experiment"]


@dataclass
class SweepResult:
    experiment_id: int
    trained: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _save_model(model: torch.nn.Module, directory: Path) -> Path:
    # Write then rename, so a kill never leaves a truncated model file behind.
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "model.pt"
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(handle)
    torch.save(model.state_dict(), temporary)
    os.replace(temporary, target)
    return target


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


def run_experiment(
    store: RunStore, config: ExperimentConfig, *, show_progress: bool = True
) -> SweepResult:
    """Train every run of ``config`` that the store does not hold finished yet."""
    # Intra-op threads barely help models this small and, on a shared machine, made
    # epochs 5-18x slower in our measurements; config.threads (default 1) decides.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run_grid(store, config, show_progress)
    finally:
        torch.set_num_threads(threads)


def _run_grid(store: RunStore, config: ExperimentConfig, show_progress: bool) -> SweepResult:
    task = get_task(config.task)
    data_dir = None if config.data_dir is None else Path(config.data_dir)
    existing = store.get_experiment(config.name)
    if existing is not None:
        # Check recorded runs first, so a conflicting invocation changes nothing at all.
        recorded = {record.key for record in store.runs(existing.id)}
        for run in config.runs():
            if run.key in recorded:
                store.ensure_run(existing.id, run.key, run.to_dict())
    experiment = store.ensure_experiment(config.name, config.task, config.to_dict())
    result = SweepResult(experiment.id)
    runs = [(run, store.ensure_run(experiment.id, run.key, run.to_dict())) for run in config.runs()]
    pending = [(run, record) for run, record in runs if record.status != "finished"]
    result.skipped = [run.key for run, record in runs if record.status == "finished"]
    if not pending:
        return result

    start = time.perf_counter()
    data = task.load(data_dir)
    with _progress(show_progress) as progress:
        overall = progress.add_task(f"{config.name}: runs", total=len(runs))
        progress.update(overall, completed=len(result.skipped))
        for run, record in pending:
            saved = store.checkpoint(record.id)
            done = len(store.epochs(record.id))
            if saved is None or saved[0] != done:
                # No usable checkpoint (or one that disagrees with the rows, which a
                # transactional store never produces): start this run over cleanly.
                store.restart_run(record.id)
                saved, done = None, 0
            (result.resumed if saved else result.trained).append(run.key)
            bar = progress.add_task(f"  {run.key}: epochs", total=run.epochs, completed=done)

            def on_epoch(epoch: int, metrics: dict, checkpoint: bytes, run_id=record.id,
                         bar=bar) -> None:
                store.log_epoch(run_id, epoch, metrics, checkpoint)
                progress.update(bar, completed=epoch)

            model = train_run(
                task, data, run, checkpoint=None if saved is None else saved[1], on_epoch=on_epoch
            )
            measurements = measure.final_measurements(
                task, model, data, seed=run.seed, mc_samples=config.mc_samples
            )
            path = _save_model(model, store.artefact_dir(record.id))
            store.finish_run(record.id, measurements, {"model": str(path)})
            progress.remove_task(bar)
            progress.advance(overall)
    result.seconds = time.perf_counter() - start
    return result
