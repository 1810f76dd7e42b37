"""The one pipeline every lab run goes through: plan, claim, train, measure, finish.

Three drivers use it, as nanoGPT's single loop uses ``if ddp:`` branches:

* ``dropkit lab run`` (:mod:`dropkit.lab.run`): :func:`run_grid` over the grid;
* ``dropkit lab run --ddp N`` (:mod:`dropkit.lab.ddp`): the same :func:`run_grid`
  on every rank, with a data-parallel ``train`` and ``share`` broadcasting
  what rank 0 (the only rank with a store) decided;
* ``dropkit lab sweep`` (:mod:`dropkit.lab.sweep`): :func:`execute_run` once
  per Optuna trial, with ``report`` feeding the pruner.

Several processes may drive one store at once: a run is trained only by the
process whose claim on it the store recorded (:meth:`~dropkit.lab.store.SQLiteStore.claim_run`);
runs another live process holds are waited for and taken over if that process
dies, so every run is trained to its last epoch exactly once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from torch import nn

from dropkit.lab import measure
from dropkit.lab.config import ExperimentConfig, RunConfig
from dropkit.lab.store import (
    Claim,
    Claimant,
    ClaimLostError,
    ConfigConflictError,
    ExperimentRecord,
    HeldRun,
    RunStore,
    save_model,
)
from dropkit.lab.tasks import Task, TaskData
from dropkit.lab.train import train_run

__all__ = [
    "GridEvents", "GridResult", "Outcome", "RunData", "StopRun", "execute_run", "plan", "run_grid",
]

#: Seconds between looks at runs another live writer holds.
POLL_SECONDS = 2.0


class StopRun(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a ``report`` callback to end a run early (a pruned trial).

    The run is finished with ``measurements`` and no model: it is a complete
    record of a run that was stopped on purpose, not a crash to resume.
    """

    def __init__(self, measurements: dict):
        super().__init__("run stopped early")
        self.measurements = measurements


@dataclass
class Outcome:
    """What :func:`execute_run` did with one run."""

    #: ``"finished"`` (trained and measured here), ``"stopped"`` (a ``report`` callback
    #: raised :class:`StopRun`), ``"held"`` (a live process trains it), ``"lost"`` (another
    #: writer took the claim over while this one trained: it continues the run), ``"done"``
    #: (finished before this call).
    state: str
    claim: Optional[Claim] = None
    holder: Optional[HeldRun] = None


class RunData:
    """Each run's data, loaded when a run first needs it.

    A task whose folds are chosen by the run seed (:attr:`~dropkit.lab.tasks.Task.data_per_seed`,
    e.g. ``fsdd-speakers``: seed s holds out speaker s mod 6) is loaded once per seed with
    ``task.load(data_dir, seed=run.seed)``; any other task once in all. ``data``, when
    given, is data already loaded (the CLI loads it to refuse bad files before the store
    is opened): it serves its seed (every seed, for a seed-independent task).
    """

    def __init__(self, task: Task, data_dir: Optional[str | Path], *,
                 data: Optional[TaskData] = None):
        self.task = task
        self.data_dir = None if data_dir is None else Path(data_dir)
        self._loaded: dict[Optional[int], TaskData] = {}
        if data is not None:
            self._loaded[data.seed if task.data_per_seed else None] = data

    def for_seed(self, seed: int) -> TaskData:
        key = seed if self.task.data_per_seed else None
        if key not in self._loaded:
            self._loaded[key] = (self.task.load(self.data_dir, seed=seed) if key is not None
                                 else self.task.load(self.data_dir))
        return self._loaded[key]


#: ``train(task, data, run, checkpoint=..., on_epoch=...) -> (model, facts)``.
Trainer = Callable[..., tuple[nn.Module, dict]]


def _single_process(task: Task, data: TaskData, run: RunConfig, *, checkpoint, on_epoch):
    return train_run(task, data, run, checkpoint=checkpoint, on_epoch=on_epoch), {}


def _alone(value: Any) -> Any:
    return value


def execute_run(
    store: Optional[RunStore],
    task: Task,
    data: TaskData | RunData,
    run: RunConfig,
    run_id: int,
    *,
    mc_samples: int,
    claimant: Optional[Claimant] = None,
    train: Trainer = _single_process,
    report: Optional[Callable[[int, dict], None]] = None,
    extra: Optional[Callable[[dict], dict]] = None,
    share: Callable[[Any], Any] = _alone,
    on_epoch: Optional[Callable[[int], None]] = None,
    on_measure: Optional[Callable[[], None]] = None,
) -> Outcome:
    """Claim, train (resuming), measure and finish one run.

    ``store`` is ``None`` on data-parallel ranks other than 0: they train, and
    ``share`` (a broadcast from rank 0) tells them what rank 0's store decided.
    ``extra(facts)`` adds measurements from what ``train`` returned besides the
    model (the DDP facts). ``data`` is the run's data, or a :class:`RunData` that loads
    the data of the run's seed once the claim says the run is to be trained here.
    ``on_epoch(epoch)`` and ``on_measure()`` (before the final measurements) are the
    progress display's hooks, called on the lead process only. On any error the claim
    is released, so a rerun resumes at once; on a kill the claim goes stale instead.
    """
    lead = store is not None
    claimant = claimant or Claimant.current()
    decision = store.claim_run(run_id, claimant) if lead else None
    decision = share(decision)
    if decision is None:
        return Outcome("done")
    if isinstance(decision, HeldRun):
        return Outcome("held", holder=decision)
    claim: Claim = decision

    def epoch_done(epoch: int, metrics: dict, checkpoint: bytes) -> None:
        if lead:
            store.log_epoch(run_id, epoch, metrics, checkpoint, claimant=claim.claimant)
            if on_epoch is not None:
                on_epoch(epoch)
        if report is not None:
            report(epoch, metrics)

    with store.heartbeat(claim) if lead else contextlib.nullcontext():
        try:
            if isinstance(data, RunData):
                data = data.for_seed(run.seed)
            model, facts = train(task, data, run, on_epoch=epoch_done,
                                 checkpoint=None if claim.checkpoint is None
                                 else claim.checkpoint[1])
        except StopRun as stop:
            if lead:
                store.finish_run(run_id, stop.measurements, {}, claimant=claim.claimant)
            return Outcome("stopped", claim=claim)
        except ClaimLostError:
            # Only after a silence longer than stale_after (another host took over): the
            # new claimant resumes from the last epoch this process committed.
            return Outcome("lost", claim=claim)
        except BaseException:
            if lead:
                store.release(claim)
            raise
        if lead:
            try:
                model = model.cpu()
                if on_measure is not None:
                    on_measure()
                measurements = measure.final_measurements(
                    task, model, data, seed=run.seed, mc_samples=mc_samples
                )
                if extra is not None:
                    measurements.update(extra(facts))
                path = save_model(model, store.artefact_dir(run_id))
                store.finish_run(run_id, measurements, {"model": str(path)},
                                 claimant=claim.claimant)
            except ClaimLostError:
                return Outcome("lost", claim=claim)
            except BaseException:
                store.release(claim)
                raise
    return Outcome("finished", claim=claim)


def plan(store: RunStore, config: ExperimentConfig, *, ddp: Optional[int] = None
         ) -> tuple[ExperimentRecord, list[tuple[RunConfig, Any]]]:
    """Record the experiment and its runs; return each run's config and record.

    Conflicts are checked before anything is written, so a conflicting
    invocation changes nothing at all.
    """
    runs = config.runs(ddp=ddp)
    existing = store.get_experiment(config.name)
    if existing is not None:
        if "sweep" in existing.config:
            raise ConfigConflictError(
                f"experiment {config.name!r} is an Optuna sweep, not a grid; choose another --name"
            )
        if existing.config.get("ddp") != ddp:
            was = existing.config.get("ddp")
            raise ConfigConflictError(
                f"experiment {config.name!r} was trained with "
                f"{'one process' if was is None else f'ddp={was}'}, not "
                f"{'one process' if ddp is None else f'ddp={ddp}'}; choose another --name"
            )
        recorded = {record.key for record in store.runs(existing.id)}
        for run in runs:
            if run.key in recorded:
                store.ensure_run(existing.id, run.key, run.to_dict())
    wanted = config.to_dict() if ddp is None else {**config.to_dict(), "ddp": ddp}
    experiment = store.ensure_experiment(config.name, config.task, wanted)
    return experiment, [(run, store.ensure_run(experiment.id, run.key, run.to_dict()))
                        for run in runs]


@dataclass
class GridResult:
    """What one :func:`run_grid` call did, by run key."""

    experiment_id: int
    trained: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: Runs this call took over from a dead or silent writer (also in trained/resumed).
    taken_over: list[str] = field(default_factory=list)
    #: Runs another live writer finished while this call waited for them.
    finished_elsewhere: list[str] = field(default_factory=list)
    seconds: float = 0.0


class GridEvents(Protocol):
    """Progress hooks of :func:`run_grid` (the CLI's progress bars)."""

    def planned(self, total: int, finished: int, remaining_epochs: int) -> None: ...
    def started(self, run: RunConfig, done_epochs: int) -> None: ...
    def epoch(self, run: RunConfig, epoch: int) -> None: ...
    def measuring(self, run: RunConfig) -> None: ...
    def ended(self, run: RunConfig) -> None: ...
    def waiting(self, holders: list[HeldRun]) -> None: ...


def run_grid(
    store: Optional[RunStore],
    config: ExperimentConfig,
    task: Task,
    *,
    ddp: Optional[int] = None,
    train: Trainer = _single_process,
    extra: Optional[Callable[[dict], dict]] = None,
    share: Callable[[Any], Any] = _alone,
    data: Optional[TaskData | RunData] = None,
    events: Optional[GridEvents] = None,
    poll_seconds: float = POLL_SECONDS,
) -> GridResult:
    """Train every run of ``config`` the store does not hold finished yet.

    Runs that another live writer holds are left to it; when the pass over the
    grid is done, this call waits for them and takes over any whose writer
    died, so it returns only when the whole grid is finished.

    ``data`` is the task's data already loaded (see :class:`RunData`); without it the
    data is loaded when the first run is trained, once per seed for a task with
    ``data_per_seed``.
    """
    lead = store is not None
    planned: Any = None
    if lead:
        try:
            experiment, runs = plan(store, config, ddp=ddp)
            # Epochs already recorded: the progress bar counts only the ones left to train.
            planned = (experiment.id, [
                (run.to_dict(), record.id, record.status,
                 0 if record.status == "finished" else len(store.epochs(record.id)))
                for run, record in runs])
        except ConfigConflictError as error:
            planned = error
    planned = share(planned)
    if isinstance(planned, ConfigConflictError):
        raise planned
    experiment_id, items = planned
    result = GridResult(experiment_id)
    pending = []
    remaining_epochs = 0
    for run_dict, run_id, status, done_epochs in items:
        run = RunConfig.from_dict(run_dict)
        if status == "finished":
            result.skipped.append(run.key)
        else:
            pending.append((run, run_id))
            remaining_epochs += max(run.epochs - done_epochs, 0)
    if events is not None:
        events.planned(len(items), len(result.skipped), remaining_epochs)
    if not pending:
        return result

    start = time.perf_counter()
    if not isinstance(data, RunData):
        data = RunData(task, config.data_dir, data=data)
    claimant = Claimant.current()

    def attempt(run: RunConfig, run_id: int) -> Outcome:
        def started_epoch(epoch: int) -> None:
            if events is not None:
                events.epoch(run, epoch)

        def measuring() -> None:
            if events is not None:
                events.measuring(run)

        def announce(decision: Any) -> Any:
            # Tell the progress display where the run starts, once the claim is known.
            decision = share(decision)
            if events is not None and isinstance(decision, Claim):
                events.started(run, 0 if decision.checkpoint is None else decision.checkpoint[0])
            return decision

        outcome = execute_run(store, task, data, run, run_id, mc_samples=config.mc_samples,
                              claimant=claimant, train=train, extra=extra, share=announce,
                              on_epoch=started_epoch, on_measure=measuring)
        if outcome.state == "lost":
            if events is not None:
                events.ended(run)  # its bar goes; the run itself is waited for below
            # Its new claimant finishes it; wait for that like for any held run.
            return Outcome("held", holder=store.holder(run_id) if lead else None)
        if outcome.claim is not None:
            (result.resumed if outcome.claim.checkpoint else result.trained).append(run.key)
            if outcome.claim.took_over is not None:
                result.taken_over.append(run.key)
        if events is not None and outcome.state != "held":
            events.ended(run)
        return outcome

    waiting = []
    for run, run_id in pending:
        outcome = attempt(run, run_id)
        if outcome.state == "held":
            waiting.append((run, run_id, outcome.holder))
    while waiting:
        if events is not None:
            events.waiting([holder for _, _, holder in waiting if holder is not None])
        time.sleep(poll_seconds)
        still = []
        for run, run_id, _ in waiting:
            outcome = attempt(run, run_id)
            if outcome.state == "held":
                still.append((run, run_id, outcome.holder))
            elif outcome.state == "done":
                result.finished_elsewhere.append(run.key)
        waiting = still
    result.seconds = time.perf_counter() - start
    return result
