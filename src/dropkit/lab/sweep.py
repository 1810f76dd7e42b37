"""``dropkit lab sweep``: an Optuna study over dropout variant and rate whose trials are lab runs.

One trial = one lab run of the sampled variant and rate, driven through the
lab's one pipeline (:func:`dropkit.lab.pipeline.execute_run`: claim, train,
measure, finish) and recorded in the run store under the run key
(:attr:`dropkit.lab.config.RunConfig.key`) ``trial=NNNN/<variant>/p=<p>/seed=<seed>``
with ``study`` and ``trial`` in its config; the Optuna trial carries ``run_id``
and ``run_key`` user attributes back.

Search space: the rate in ``[rate_min, rate_max]`` and the variants that
build a different model on the task (:func:`distinct_variants`): on a
dense-only model ``standard``, ``elementwise`` and ``dropblock`` are the same
layer, so only the first of them is searched.

A killed worker loses nothing: its trial stays RUNNING in the study and its
run keeps its checkpoint; the next worker on the study finds the trial's
claimant dead (:meth:`dropkit.lab.store.SQLiteStore.holder`), resumes the run
from its last epoch and tells the study the result.

Objective: the task metric on the **validation** split (``val_<metric>``) at the
epoch the training loop selects (:func:`dropkit.lab.train.select_epoch`); the
pruner sees the per-epoch validation metric through the training loop's
``on_epoch`` callback. The test set chooses nothing: searching on it would
make the best trial's test score an optimistic estimate. Each trial's test
metric at its selected epoch is kept as the user attribute ``test_<metric>``
(and in the run store) for the report.

Sampler: TPE (Bergstra et al., 2011, "Algorithms for hyper-parameter
optimization"); pruner: median stopping on the per-epoch validation metric.

Storage, by worker layout (Optuna's FAQ: SQLite is not safe for parallel workers):

* one worker, no ``--storage``: an SQLite file beside the run store
  (``<store>-optuna.sqlite``);
* ``--workers K`` on one machine, no ``--storage``: Optuna's journal file
  storage beside the run store (``<store>-optuna.journal``), written under a
  file lock, safe for concurrent processes;
* many machines: ``--storage postgresql://...`` (driven by psycopg 3, which the
  ``[postgres]`` extra installs: :func:`rdb_url`); every worker runs the same
  command and joins the study.

Budget: ``--trials N`` is the study's total over all workers. A worker stops
when the study holds N trials; trial numbers are handed out atomically by the
storage, so a trial numbered >= N (two workers asking at the same instant for
the last slot) is never trained: it is closed at once as FAIL with user
attribute ``surplus``. Every trial number below N is trained by exactly one
worker.

Credentials: the storage URL is only ever shown, stored or raised with
``user:password@`` replaced by ``***@`` (:func:`redact`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import torch

from dropkit.functional import validate_p
from dropkit.lab.config import ConfigError, ExperimentConfig, RunConfig
from dropkit.lab.pipeline import RunData, StopRun, execute_run
from dropkit.lab.store import (
    Claimant,
    ExperimentRecord,
    SQLiteStore,
    open_store,
    snapshot_path,
)
from dropkit.lab.tasks import Task, TaskData, get_task
from dropkit.lab.train import select_epoch

__all__ = [
    "StudyConfig",
    "SweepError",
    "WorkerResult",
    "default_storage",
    "distinct_variants",
    "redact",
    "run_sweep",
    "run_worker",
]


class SweepError(RuntimeError):
    """A sweep could not start or a worker failed; the message never holds credentials."""


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]*@")


def redact(text: str, url: Optional[str] = None) -> str:
    """``text`` with every URL's ``user:password@`` replaced by ``***@``.

    With ``url`` given, its password is also blanked wherever it appears on its
    own (a driver may echo it outside a URL).
    """
    text = _USERINFO.sub(r"\g<scheme>***@", str(text))
    if url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            for form in {password, unquote(password)}:
                if len(form) >= 3:
                    text = text.replace(form, "***")
    return text


@dataclass(frozen=True)
class StudyConfig:
    """A validated sweep: the lab experiment settings plus the search space and budget."""

    experiment: ExperimentConfig
    trials: int
    storage: str
    rate_min: float = 0.0
    rate_max: float = 0.8
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"--trials has to be an integer >= 1, but got {self.trials!r}")
        for name in ("rate_min", "rate_max"):
            try:
                validate_p(getattr(self, name), name.replace("_", "-"))
            except (TypeError, ValueError) as error:
                raise ConfigError(str(error)) from None
        if not self.rate_min < self.rate_max < 1.0:
            raise ConfigError(
                "the rate range has to satisfy 0 <= --rate-min < --rate-max < 1, but got "
                f"[{self.rate_min!r}, {self.rate_max!r}]"
            )
        for name in ("pruner_startup_trials", "pruner_warmup_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} has to be an integer >= 0, but got {value!r}")

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def metric(self) -> str:
        """The objective: the validation metric (never the test metric; see the module doc)."""
        return f"val_{get_task(self.experiment.task).metric}"

    @property
    def test_metric(self) -> str:
        """Shown beside the objective, chosen by nothing."""
        return f"test_{get_task(self.experiment.task).metric}"

    @property
    def direction(self) -> str:
        return "maximize" if get_task(self.experiment.task).higher_is_better else "minimize"

    @property
    def variants(self) -> list[str]:
        """The variants searched: those that build a different model on this task."""
        merged = distinct_variants(get_task(self.experiment.task), self.experiment.variants)
        return [variant for variant, first in merged.items() if variant == first]

    def to_dict(self) -> dict:
        """The experiment record's config: never the raw storage URL.

        The grid's ``rates`` list has no meaning here: the searched range is
        ``sweep.rate_range``, and ``variants`` are the ones searched.
        """
        data = self.experiment.to_dict()
        del data["rates"]
        data["variants"] = self.variants
        merged = distinct_variants(get_task(self.experiment.task), self.experiment.variants)
        data["sweep"] = {
            "sampler": "TPE",
            "pruner": {
                "name": "median",
                "startup_trials": self.pruner_startup_trials,
                "warmup_epochs": self.pruner_warmup_epochs,
            },
            "trials": self.trials,
            "storage": redact(self.storage, self.storage),
            "metric": self.metric,
            "test_metric": self.test_metric,
            "direction": self.direction,
            "rate_range": [self.rate_min, self.rate_max],
            "identical_variants": {v: merged[v] for v in merged if merged[v] != v},
        }
        return data


def distinct_variants(task: Task, variants: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Each requested variant mapped to the first one that builds the same model on ``task``.

    Searching two variants that build identical layers (on a dense-only model
    DropBlock and channel dropout fall back to element-wise dropout) only
    splits the trials between equal choices. Keys in the order asked; a variant
    that maps to itself is searched.
    """
    seen: dict[str, str] = {}
    mapping: dict[str, str] = {}
    with torch.random.fork_rng(devices=[]):
        for variant in variants:
            shape = repr(task.build_model(0.5, variant))
            mapping[variant] = seen.setdefault(shape, variant)
    return {variant: mapping[variant] for variant in variants}


def default_storage(store_path: Path, workers: int) -> str:
    """SQLite for one worker, the journal file for several, both beside the run store."""
    base = Path(store_path).resolve()
    if workers == 1:
        return f"sqlite:///{base.with_name(base.stem + '-optuna.sqlite')}"
    return f"journal://{base.with_name(base.stem + '-optuna.journal')}"


def _journal_path(url: str) -> Optional[str]:
    if not url.startswith("journal:"):
        return None
    path = url[len("journal:"):]
    # journal:///abs/path -> /abs/path; journal:relative/path -> relative/path
    return path[2:] if path.startswith("//") else path


def check_storage(url: str, workers: int) -> None:
    """Reject URLs Optuna cannot use or that are unsafe for ``workers`` processes."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"--storage has to be a non-empty URL, but got {url!r}")
    journal = _journal_path(url)
    if journal is not None:
        if not journal:
            raise ConfigError("--storage journal: needs a file path, like journal:///tmp/s.journal")
        return
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme:
        raise ConfigError(
            f"--storage {redact(url, url)!r} is not a URL; expected sqlite:///FILE, "
            "journal:///FILE or postgresql://USER@HOST:PORT/DB"
        )
    if scheme.startswith("sqlite") and workers > 1:
        raise ConfigError(
            f"--storage {redact(url, url)!r} is SQLite, which is not safe for {workers} parallel "
            "Optuna workers (Optuna FAQ); use journal:///FILE on one machine or postgresql://... "
            "across machines"
        )


#: The SQLAlchemy driver the ``[postgres]`` extra installs (psycopg 3, ``psycopg[binary]``).
POSTGRES_DRIVER = "psycopg"


def rdb_url(url: str) -> str:
    """``url`` with a driver-less PostgreSQL scheme pinned to :data:`POSTGRES_DRIVER`.

    SQLAlchemy picks a default driver for ``postgresql://`` that changed between
    releases (psycopg2 up to 2.0, psycopg 3 from 2.1), so the documented URL would
    work or fail depending on which one happens to be installed. Pinning it
    makes ``postgresql://`` mean what the extra installs; an explicit driver
    (``postgresql+psycopg2://``) is kept as given.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("postgresql", "postgres"):
        return f"postgresql+{POSTGRES_DRIVER}://{rest}"
    return url


def _storage(url: str):
    import optuna

    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(journal).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(journal))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    # pool_pre_ping: a long trial outlives idle server connections on busy PostgreSQL hosts.
    return optuna.storages.RDBStorage(rdb_url(url), engine_kwargs={"pool_pre_ping": True})


def _sampler_seed(config: StudyConfig, worker: int, workers: int) -> Optional[int]:
    # One local SQLite worker replays exactly. Parallel workers differ by design (who
    # asks first depends on timing), so each gets its own stream instead of sampling
    # the same points as its siblings.
    if workers == 1 and config.storage.startswith("sqlite"):
        return config.experiment.seeds[0]
    return None


def open_study(config: StudyConfig, *, worker: int = 0, workers: int = 1):
    """Create or join the study of ``config`` (errors have the URL redacted)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=_sampler_seed(config, worker, workers),
        # constant_liar: running trials count as (bad) observations, so parallel
        # workers do not all sample the same promising point.
        constant_liar=workers > 1 or not config.storage.startswith("sqlite"),
    )
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=config.pruner_startup_trials,
        n_warmup_steps=config.pruner_warmup_epochs,
    )
    try:
        study = optuna.create_study(
            storage=_storage(config.storage), sampler=sampler, pruner=pruner,
            study_name=config.name, direction=config.direction, load_if_exists=True,
        )
    except Exception as error:  # noqa: BLE001 - any driver error: re-raise without secrets
        shown = redact(config.storage, config.storage)
        raise SweepError(
            f"cannot open study {config.name!r} in storage {shown!r}: "
            f"{redact(f'{type(error).__name__}: {error}', config.storage)}"
        ) from None
    wanted = optuna.study.StudyDirection.MAXIMIZE if config.direction == "maximize" else (
        optuna.study.StudyDirection.MINIMIZE)
    if study.direction != wanted:
        raise SweepError(
            f"study {config.name!r} exists with direction {study.direction.name.lower()}, but "
            f"task {config.experiment.task!r} needs {config.direction}; choose another --study"
        )
    return study


def ensure_sweep_experiment(store: SQLiteStore, config: StudyConfig) -> ExperimentRecord:
    """The run store's experiment of this study (created if needed; safe if a worker races)."""
    existing = store.get_experiment(config.name)
    if existing is not None and "sweep" not in existing.config:
        raise SweepError(
            f"experiment {config.name!r} in the run store is a grid experiment, not a sweep; "
            "choose another --study name"
        )
    # One transaction in the store: two workers creating it at once get the same record.
    return store.ensure_experiment(config.name, config.experiment.task, config.to_dict())


@dataclass
class WorkerResult:
    """What one worker did: trial numbers by final state."""

    complete: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)
    surplus: list[int] = field(default_factory=list)
    #: Trials a dead worker left RUNNING that this worker resumed and finished.
    adopted: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _trial_dict(trial) -> dict:
    from optuna.distributions import distribution_to_json

    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
        "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "user_attrs": trial.user_attrs,
        "start": None if trial.datetime_start is None else trial.datetime_start.isoformat(),
        "complete": None if trial.datetime_complete is None else
        trial.datetime_complete.isoformat(),
    }


def write_snapshot(store: SQLiteStore, experiment: ExperimentRecord, config: StudyConfig,
                   study) -> Path:
    """Copy every trial of the study (all workers, all machines) into a JSON file for the report.

    Written under a lock and only if it holds at least as many finished trials as
    the file already there, so a slow worker never replaces a newer view with an older one.
    """
    trials = [_trial_dict(t) for t in study.get_trials(deepcopy=False)]
    done = sum(t["state"] in ("COMPLETE", "PRUNED") for t in trials)
    document = {
        "study": config.name,
        "storage": redact(config.storage, config.storage),
        "metric": config.metric,
        "test_metric": config.test_metric,
        "direction": config.direction,
        "budget": config.trials,
        "taken": time.time(),
        "finished_trials": done,
        "trials": trials,
    }
    path = snapshot_path(store, experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            try:
                if json.loads(path.read_text())["finished_trials"] > done:
                    return path
            except (ValueError, KeyError):
                pass  # unreadable: replace it
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, indent=1))
        os.replace(temporary, path)
    return path


def _log(message: str, config: StudyConfig) -> None:
    print(redact(message, config.storage), flush=True)


def run_worker(store_path: Path, config: StudyConfig, *, worker: int = 0, workers: int = 1,
               verbose: bool = True, data: Optional[TaskData] = None) -> WorkerResult:
    """Run trials of ``config``'s study until it holds ``config.trials`` trials.

    First it resumes the trials that dead workers left RUNNING, then asks new ones.
    ``data``: the task's data if already loaded in this process (:class:`RunData`).
    """
    import optuna

    threads = torch.get_num_threads()
    torch.set_num_threads(config.experiment.threads)
    start = time.perf_counter()
    result = WorkerResult()
    try:
        study = open_study(config, worker=worker, workers=workers)
        with open_store(store_path) as store:
            experiment = ensure_sweep_experiment(store, config)
            task = get_task(config.experiment.task)
            # Loaded when a trial first trains, per run seed where the task needs it.
            run_data = RunData(task, config.experiment.data_dir, data=data)
            claimant = Claimant.current()

            def run(trial, adopted: bool) -> None:
                outcome = _run_trial(store, experiment, config, study, trial, task, run_data,
                                     claimant)
                if outcome is None:
                    return  # another live worker resumed it first
                state, value = outcome
                (result.complete if state == "COMPLETE" else result.pruned).append(trial.number)
                if adopted:
                    result.adopted.append(trial.number)
                write_snapshot(store, experiment, config, study)
                if verbose:
                    _log(f"[{claimant.label}] trial {trial.number}"
                         f"{' (resumed from a dead worker)' if adopted else ''}: "
                         f"{trial.params} -> {config.metric} {value:.4g} ({state.lower()})",
                         config)

            for frozen in abandoned_trials(study, store):
                # Optuna has no public way to reopen a RUNNING trial; Trial(study, id) is
                # what study.ask() itself returns, and tell() accepts it from any process.
                run(optuna.trial.Trial(study, frozen._trial_id), adopted=True)
            while len(study.get_trials(deepcopy=False)) < config.trials:
                trial = study.ask()
                trial.set_user_attr("worker", claimant.label)
                if trial.number >= config.trials:
                    trial.set_user_attr("surplus", f"budget of {config.trials} trials was full")
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    result.surplus.append(trial.number)
                    break
                run(trial, adopted=False)
            write_snapshot(store, experiment, config, study)
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - start
    return result


def abandoned_trials(study, store: SQLiteStore, stale_after: Optional[float] = None) -> list:
    """RUNNING trials whose worker is gone: its run has no live claimant in the store.

    A trial killed before it recorded its run is judged by its ``worker`` user
    attribute (a dead process on this host), else by its age.
    """
    import optuna

    stale_after = store.stale_after if stale_after is None else stale_after
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    found = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_id = trial.user_attrs.get("run_id")
        if run_id is not None:
            if store.holder(run_id) is None:
                found.append(trial)
            continue
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if host and pid.isdigit():
            alive = Claimant(host, int(pid)).alive_here()
            if alive is False:
                found.append(trial)
                continue
            if alive:
                continue
        started = trial.datetime_start
        if started is not None and (now - started.replace(tzinfo=None)).total_seconds() > (
                stale_after):
            found.append(trial)
    return found


def _run_trial(store, experiment, config: StudyConfig, study, trial, task, data,
               claimant: Claimant) -> Optional[tuple[str, float]]:
    """One trial through the pipeline; ``None`` when another live worker holds its run."""
    import optuna

    exp = config.experiment
    # A trial resumed from an older invocation keeps the choices it was sampled from
    # (Optuna refuses a second, different distribution for one parameter of a trial).
    known = trial.distributions.get("variant")
    variant = trial.suggest_categorical(
        "variant", config.variants if known is None else list(known.choices))
    p = trial.suggest_float("p", config.rate_min, config.rate_max)
    run = RunConfig(
        task=exp.task, variant=variant, p=p, seed=exp.seeds[0], epochs=exp.epochs,
        batch_size=exp.batch_size, lr=exp.lr, weight_decay=exp.weight_decay,
        study=config.name, trial=trial.number,
    )
    record = store.ensure_run(experiment.id, run.key, run.to_dict())
    trial.set_user_attr("run_id", record.id)
    trial.set_user_attr("run_key", run.key)
    trial.set_user_attr("worker", claimant.label)
    recorded = store.epochs(record.id)
    if recorded:
        # Resuming a trial a dead worker left: it may have died between recording an
        # epoch and reporting it, and the pruner should see every epoch once.
        (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
        for row in recorded:
            if row["epoch"] not in frozen.intermediate_values:
                trial.report(_objective(row, config), row["epoch"])

    def report(epoch: int, metrics: dict) -> None:
        trial.report(_objective(metrics, config), epoch)
        if trial.should_prune():
            raise StopRun({"optuna": {"trial": trial.number, "state": "PRUNED", "epoch": epoch,
                                      "value": _objective(metrics, config)}})

    def chosen() -> dict:
        # The epoch the run reports (best validation metric), as train_run returns it.
        return select_epoch(task, store.epochs(record.id))[0]

    try:
        outcome = execute_run(
            store, task, data, run, record.id, mc_samples=exp.mc_samples, claimant=claimant,
            report=report,
            extra=lambda facts: {"optuna": {"trial": trial.number, "state": "COMPLETE",
                                            "value": _objective(chosen(), config)}},
        )
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if outcome.state == "held":
        return None
    # Killed after the run was recorded pruned but before the study was told: pruned too.
    pruned = outcome.state == "stopped" or (
        outcome.state == "done"
        and store.measurements(record.id).get("optuna", {}).get("state") == "PRUNED")
    # A pruned trial is judged where it stopped, a complete one at its selected epoch.
    row = store.epochs(record.id)[-1] if pruned else chosen()
    value = _objective(row, config)
    trial.set_user_attr(config.test_metric, row[config.test_metric])
    if pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "PRUNED", value
    study.tell(trial, value)
    return "COMPLETE", value


def _objective(metrics: dict, config: StudyConfig) -> float:
    try:
        return metrics[config.metric]
    except KeyError:
        raise SweepError(
            f"task {config.experiment.task!r} recorded no {config.metric!r} (no validation "
            "split), and a sweep never tunes on the test set"
        ) from None


def _worker_entry(store_path: str, config: StudyConfig, worker: int, workers: int,
                  verbose: bool) -> None:
    try:
        run_worker(Path(store_path), config, worker=worker, workers=workers, verbose=verbose)
    except Exception as error:  # noqa: BLE001 - report without secrets, exit non-zero
        message = redact(f"{type(error).__name__}: {error}", config.storage)
        print(f"error: worker {worker}: {message}", flush=True)
        raise SystemExit(1) from None


def run_sweep(store_path: Path, config: StudyConfig, *, workers: int = 1,
              verbose: bool = True, data: Optional[TaskData] = None) -> dict[str, Any]:
    """Run the sweep with ``workers`` local processes (1: in this process); return a summary.

    The summary counts the study's trials by state after all local workers ended
    (workers on other machines may still be running). ``data`` (the task's data, already
    loaded) is used by a single in-process worker; spawned workers load their own.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers has to be an integer >= 1, but got {workers!r}")
    check_storage(config.storage, workers)
    start = time.perf_counter()
    # Create the study and the experiment once before forking, so workers only join.
    study = open_study(config, workers=workers)
    with open_store(store_path) as store:
        ensure_sweep_experiment(store, config)
    if workers == 1:
        run_worker(store_path, config, verbose=verbose, data=data)
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        processes = [
            context.Process(target=_worker_entry,
                            args=(str(store_path), config, index, workers, verbose))
            for index in range(workers)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        failed = [i for i, process in enumerate(processes) if process.exitcode != 0]
        if failed:
            raise SweepError(f"sweep worker(s) {failed} failed; see their messages above")
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    best = None
    try:
        best = {"number": study.best_trial.number, "value": study.best_value,
                "params": study.best_params,
                "test": study.best_trial.user_attrs.get(config.test_metric)}
    except ValueError:
        pass  # no complete trial yet
    return {"counts": counts, "best": best, "seconds": time.perf_counter() - start}
