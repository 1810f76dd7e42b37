"""Export an experiment's per-epoch metrics: CSV always, TensorBoard event files when installed."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from dropkit.lab.store import ExperimentRecord, RunStore

__all__ = ["export_csv", "export_tensorboard", "run_folder_name", "tensorboard_available"]

_RUN_COLUMNS = ("experiment", "task", "run", "variant", "p", "seed", "status", "epoch")


def export_csv(store: RunStore, experiment: ExperimentRecord, path: Path) -> int:
    """Write one row per (run, epoch) to ``path``; returns the number of rows."""
    rows = []
    metric_names: dict[str, None] = {}
    for run in store.runs(experiment.id):
        for epoch in store.epochs(run.id):
            metrics = {k: v for k, v in epoch.items() if k != "epoch"}
            metric_names.update(dict.fromkeys(metrics))
            rows.append({
                "experiment": experiment.name, "task": experiment.task, "run": run.key,
                "variant": run.variant, "p": run.p, "seed": run.seed, "status": run.status,
                "epoch": epoch["epoch"], **metrics,
            })
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*_RUN_COLUMNS, *metric_names])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


#: What SummaryWriter names its files; only these are replaced on a re-export.
_EVENT_FILES = "events.out.tfevents.*"


def run_folder_name(run) -> str:
    """``variant_pP_seedS`` (plus ``_trialN`` for sweep trials): run keys contain '/' and '='."""
    name = f"{run.variant}_p{run.p:g}_seed{run.seed}"
    trial = run.config.get("trial") if isinstance(run.config, dict) else None
    return name if trial is None else f"{name}_trial{int(trial):04d}"


def export_tensorboard(store: RunStore, experiment: ExperimentRecord, directory: Path) -> int:
    """One event-file folder per run under ``directory``; returns the number of runs written.

    Exporting again into the same folder replaces each run's event files instead of adding
    a second file beside them: TensorBoard reads every file of a folder, so the old one
    would show every point twice. Other files in the folders are left alone.
    """
    from torch.utils.tensorboard import SummaryWriter

    count = 0
    for run in store.runs(experiment.id):
        folder = directory / run_folder_name(run)
        for stale in folder.glob(_EVENT_FILES):
            stale.unlink()
        with SummaryWriter(log_dir=str(folder)) as writer:
            for epoch in store.epochs(run.id):
                for name, value in epoch.items():
                    if name != "epoch":
                        writer.add_scalar(name, value, epoch["epoch"])
        count += 1
    return count
