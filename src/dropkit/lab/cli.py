"""``dropkit lab ...``: parse the command line and delegate; no logic of its own.

Exit codes: 0 success, 2 bad input (unknown task or experiment, bad rate,
missing or damaged data, malformed TOML, conflicting config) with nothing
written, 130 interrupted (Ctrl-C; rerunning the command resumes).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="dropkit: dropout for PyTorch.", no_args_is_help=True, add_completion=False)
lab = typer.Typer(
    help="Train with and without dropout on real tasks, record every run, report the claims.",
    no_args_is_help=True,
)
app.add_typer(lab, name="lab")

# Not a terminal (CI logs, pipes): wide enough that the comparison table is not squeezed.
_console = Console(width=None if sys.stdout.isatty() else 160)
_errors = Console(stderr=True)

_STORE_HELP = (
    "SQLite run store. Default: $DROPKIT_HOME/lab.sqlite, else the platform's user data dir "
    "(see `dropkit lab list`)."
)
StoreOption = typer.Option(None, "--store", help=_STORE_HELP, dir_okay=False)


def _fail(message: str) -> NoReturn:
    # Escaped: messages quote user input such as "[training]", which rich would eat as markup.
    _errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


#: Longest accepted experiment (and study) name: it heads reports, tables and file names.
MAX_NAME_LENGTH = 100

_EXAMPLES = {float: "0,0.2,0.5", int: "0,1,2", str: "standard,gaussian"}
_KIND_NAMES = {float: "numbers", int: "integers", str: "names"}


def _list_option(text: Optional[str], name: str, kind: type) -> Optional[list]:
    """``--NAME a,b,c`` as a list of ``kind``; empty entries and repeats are refused, naming them.

    A repeat would silently collapse into one grid point, and an empty entry is
    usually a typo for a missing value, so both are errors rather than guesses.
    """
    if text is None:
        return None
    expected = f"comma-separated {_KIND_NAMES[kind]} like {_EXAMPLES[kind]}"
    parts = [part.strip() for part in text.split(",")]
    empty = [i for i, part in enumerate(parts, start=1) if not part]
    if empty:
        _fail(f"--{name} {text!r} has an empty entry (position {empty[0]} of {len(parts)}); "
              f"expected {expected}")
    try:
        values = [kind(part) for part in parts]
    except ValueError:
        bad = next(p for p in parts if not _parses(kind, p))
        _fail(f"--{name} has to be {expected}, but got {text!r} ({bad!r} is not "
              f"{'an integer' if kind is int else 'a number'})")
    repeated = sorted({parts[i] for i, v in enumerate(values) if values.index(v) != i})
    if repeated:
        _fail(f"--{name} {text!r} repeats {', '.join(repeated)}; give each value once")
    return values


def _parses(kind: type, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _check_name(name: str, option: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        _fail(f"{option} has to be at most {MAX_NAME_LENGTH} characters, but got "
              f"{len(name)} ({name[:40]!r}...)")


def _check_output_file(path: Optional[Path], option: str) -> None:
    """Refuse an output path that is a folder before anything runs or is recorded."""
    if path is not None and path.is_dir():
        _fail(f"{option} {str(path)!r} is a folder; give a file path, e.g. "
              f"{str(path / 'report.html')!r}")


def _check_data(experiment_config):
    """Load the task's data before the store is opened: a missing, truncated or corrupted
    file exits 2 naming it, and nothing is recorded. Returns the loaded ``TaskData``."""
    from dropkit.lab.errors import LabError
    from dropkit.lab.tasks import get_task

    task = get_task(experiment_config.task)
    data_dir = experiment_config.data_dir
    try:
        return task.load(None if data_dir is None else Path(data_dir))
    except LabError as error:
        _fail(f"task {task.name!r}: {error}")


@contextlib.contextmanager
def _interruptible(path: Path) -> Iterator[None]:
    """Ctrl-C exits 130 (the shell's code for SIGINT) and says that rerunning resumes."""
    try:
        yield
    except KeyboardInterrupt:
        _errors.print(
            f"\ninterrupted: the store {escape(str(path))} keeps every finished run and every "
            f"completed epoch; rerun the same command to resume where it stopped",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(code=130) from None


def _store_path(store: Optional[Path]) -> Path:
    from dropkit.lab.store import default_store_path

    return store if store is not None else default_store_path()


def _open_existing(store: Optional[Path]):
    """The store for a read-only command: opened ``mode=ro``, so it works on a file the user
    may not write and never changes it."""
    from dropkit.lab.store import StoreError, open_store

    path = _store_path(store)
    if not path.exists():
        _fail(f"no run store at {str(path)!r}; run `dropkit lab run TASK` first or pass --store")
    try:
        return open_store(path, read_only=True)
    except StoreError as error:
        _fail(str(error))


def _open_for_writing(path: Path):
    from dropkit.lab.store import StoreError, open_store

    try:
        handle = open_store(path)
    except StoreError as error:
        _fail(str(error))
    if handle.migrated_from is not None:
        _errors.print(f"note: upgraded run store {path} from schema {handle.migrated_from} to "
                      "1 (added the claims table: which process trains which run)",
                      highlight=False)
    return handle


def _experiment(handle, name: str):
    experiment = handle.get_experiment(name)
    if experiment is None:
        known = [e.name for e in handle.experiments()]
        _fail(f"unknown experiment {name!r}; the store holds {known}")
    return experiment


def _write_report(handle, experiment, output: Path) -> None:
    from dropkit.lab.report.html import write_report
    from dropkit.lab.store import set_default_mode

    _check_output_file(output, "--output")
    try:
        path = write_report(handle, experiment, output)
        set_default_mode(path)  # written via mkstemp (0600); see set_default_mode
    except OSError as error:
        _fail(f"cannot write the report to {str(output)!r}: {error.strerror or error}")
    _console.print(f"report written to {path.resolve()}", highlight=False)


@lab.command()
def run(
    task: Optional[str] = typer.Argument(None, help="Task name (see `dropkit lab tasks`)."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="TOML experiment file; flags given here override it."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", "-n", help="Experiment name (default: the task name). Re-running a name "
        "resumes it: finished runs are skipped, unfinished ones continue from their last epoch."
    ),
    rates: Optional[str] = typer.Option(None, help="Dropout rates p, comma-separated: 0,0.2,0.5."),
    seeds: Optional[str] = typer.Option(None, help="Seeds, comma-separated: 0,1."),
    variants: Optional[str] = typer.Option(
        None, help="Dropout variants, comma-separated (standard, elementwise)."
    ),
    epochs: Optional[int] = typer.Option(None, help="Epochs per run."),
    batch_size: Optional[int] = typer.Option(None, help="Minibatch size."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    weight_decay: Optional[float] = typer.Option(None, help="Adam weight decay."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads (default 1)."),
    mc_samples: Optional[int] = typer.Option(
        None, help="Stochastic passes for MC averaging vs weight scaling (default 10)."
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder with the task's data files (default: $DROPKIT_DATA)."
    ),
    store: Optional[Path] = StoreOption,
    report: Optional[Path] = typer.Option(
        None, "--report", "-o", help="Also write the HTML report to this path."
    ),
    progress: bool = typer.Option(True, help="Show progress bars with ETA."),
    ddp: Optional[int] = typer.Option(
        None, "--ddp", help="Train each run data-parallel on N local processes (gloo on CPU, "
        "NCCL on GPUs); under torchrun the ranks are torchrun's. See docs/scaling.md."
    ),
) -> None:
    """Train a grid of variants x rates x seeds on one task, then print the comparison table."""
    from dropkit.lab.config import ConfigError, build_config
    from dropkit.lab.ddp import launched_by_torchrun, run_experiment_ddp
    from dropkit.lab.errors import LabError
    from dropkit.lab.report.table import comparison_table
    from dropkit.lab.run import run_experiment
    from dropkit.lab.store import ConfigConflictError, StoreError
    from dropkit.lab.summary import summarise

    try:
        experiment_config = build_config(
            task, config, name=name, rates=_list_option(rates, "rates", float),
            seeds=_list_option(seeds, "seeds", int),
            variants=_list_option(variants, "variants", str),
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            threads=threads, mc_samples=mc_samples,
            data_dir=None if data_dir is None else str(data_dir),
        )
    except ConfigError as error:
        _fail(str(error))
    _check_name(experiment_config.name, "experiment name (--name)")
    _check_output_file(report, "--report")
    path = _store_path(store)
    data_parallel = ddp is not None or launched_by_torchrun()
    with _interruptible(path):
        # Loaded once: checked here, before the store is opened, then trained on.
        data = _check_data(experiment_config)
        if data_parallel:
            try:
                result = run_experiment_ddp(path, experiment_config, ddp, data=data)
            except (ConfigError, ConfigConflictError, StoreError, LabError) as error:
                _fail(str(error))
            if result is None:
                return  # a torchrun rank other than 0: rank 0 reports
        with _open_for_writing(path) as handle:
            existing = handle.get_experiment(experiment_config.name)
            if existing is not None and existing.task != experiment_config.task:
                _fail(f"experiment {experiment_config.name!r} exists for task {existing.task!r}, "
                      f"not {experiment_config.task!r}; choose another --name")
            try:
                if not data_parallel:
                    result = run_experiment(handle, experiment_config, show_progress=progress,
                                            data=data)
            except (ConfigConflictError, StoreError, LabError) as error:
                _fail(str(error))
            others = ""
            if result.finished_elsewhere or result.taken_over:
                others = (f" ({len(result.finished_elsewhere)} finished by another writer "
                          f"meanwhile, {len(result.taken_over)} taken over from dead writers)")
            _console.print(
                f"store {path}: trained {len(result.trained)}, resumed {len(result.resumed)}, "
                f"already finished {len(result.skipped)} run(s) in {result.seconds:.1f} s{others}",
                highlight=False,
            )
            experiment = handle.get_experiment(experiment_config.name)
            _console.print(comparison_table(summarise(handle, experiment)))
            if report is not None:
                _write_report(handle, experiment, report)


@lab.command()
def sweep(
    task: Optional[str] = typer.Argument(None, help="Task name (see `dropkit lab tasks`)."),
    trials: int = typer.Option(20, help="Total trials of the study, over all workers."),
    storage: Optional[str] = typer.Option(
        None, help="Optuna storage URL: sqlite:///FILE, journal:///FILE or "
        "postgresql://USER@HOST:PORT/DB (password: PGPASSWORD or ~/.pgpass). Default: SQLite "
        "beside the run store for one worker, the journal file for several."
    ),
    workers: int = typer.Option(1, help="Local worker processes; each joins the same study."),
    study: Optional[str] = typer.Option(
        None, "--study", help="Study name, also the run store's experiment name "
        "(default: TASK-sweep). Workers with the same name and storage share the study."
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML experiment file."),
    variants: Optional[str] = typer.Option(
        None, help="Dropout variants to search, comma-separated (default: all)."
    ),
    rate_min: float = typer.Option(0.0, help="Lower end of the searched dropout rate."),
    rate_max: float = typer.Option(0.8, help="Upper end of the searched dropout rate."),
    seed: int = typer.Option(0, help="Training seed of every trial (and of a lone worker's TPE)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per trial."),
    batch_size: Optional[int] = typer.Option(None, help="Minibatch size."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    weight_decay: Optional[float] = typer.Option(None, help="Adam weight decay."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads per worker."),
    mc_samples: Optional[int] = typer.Option(None, help="Stochastic passes for MC averaging."),
    prune_after: int = typer.Option(
        5, help="Median pruning starts once this many trials have finished."
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with the data."),
    store: Optional[Path] = StoreOption,
    report: Optional[Path] = typer.Option(
        None, "--report", "-o", help="Also write the HTML report to this path."
    ),
    progress: bool = typer.Option(True, help="Print a line per finished trial."),
) -> None:
    """Search dropout variant and rate with Optuna (TPE, median pruning); trials are lab runs."""
    from dropkit.lab.config import ConfigError, build_config
    from dropkit.lab.errors import LabError
    from dropkit.lab.store import StoreError
    from dropkit.lab.sweep import (
        StudyConfig,
        SweepError,
        default_storage,
        redact,
        run_sweep,
    )
    from dropkit.lab.tasks import VARIANTS

    chosen = list(VARIANTS) if variants is None else _list_option(variants, "variants", str)
    if study is not None:
        _check_name(study, "--study")
    _check_output_file(report, "--report")
    try:
        experiment_config = build_config(
            task, config, name=study or (f"{task}-sweep" if task else None),
            rates=[rate_min], seeds=[seed], variants=chosen, epochs=epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, threads=threads,
            mc_samples=mc_samples, data_dir=None if data_dir is None else str(data_dir),
        )
        _check_name(experiment_config.name, "--study")
        path = _store_path(store)
        study_config = StudyConfig(
            experiment_config, trials=trials,
            storage=storage or default_storage(path, workers), rate_min=rate_min,
            rate_max=rate_max, pruner_startup_trials=prune_after,
        )
        with _interruptible(path):
            data = _check_data(experiment_config)
            summary = run_sweep(path, study_config, workers=workers, verbose=progress,
                                data=data)
    except (ConfigError, SweepError, StoreError, LabError) as error:
        _fail(redact(str(error), storage))
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary["counts"].items()))
    _console.print(
        f"study {study_config.name!r} in {redact(study_config.storage, storage)}: {counts} "
        f"after {summary['seconds']:.1f} s; run store {path}", highlight=False,
    )
    if summary["best"] is not None:
        best = summary["best"]
        test = "" if best.get("test") is None else (
            f" (tuned on validation; {study_config.test_metric} {best['test']:.4g})")
        _console.print(f"best trial {best['number']}: {best['params']} -> "
                       f"{study_config.metric} {best['value']:.4g}{test}", highlight=False)
    if report is not None:
        with _open_existing(path) as handle:
            _write_report(handle, handle.get_experiment(study_config.name), report)


@lab.command("list")
def list_experiments(store: Optional[Path] = StoreOption) -> None:
    """List the experiments in the store with their run counts."""
    from rich.table import Table

    path = _store_path(store)
    _console.print(f"store: {path}", highlight=False)
    if not path.exists():
        _console.print("(empty: no run store yet)")
        return
    with _open_existing(store) as handle:
        table = Table("experiment", "task", "runs", "finished")
        for experiment in handle.experiments():
            runs = handle.runs(experiment.id)
            finished = sum(r.status == "finished" for r in runs)
            table.add_row(experiment.name, experiment.task, str(len(runs)), str(finished))
        _console.print(table)


@lab.command()
def show(
    experiment: str = typer.Argument(..., help="Experiment name."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Show an experiment's exact config and every run's status and last epoch."""
    import json

    from rich.table import Table

    with _open_existing(store) as handle:
        record = _experiment(handle, experiment)
        _console.print(f"experiment {record.name} (task {record.task})", highlight=False)
        _console.print_json(json.dumps(record.config))
        table = Table("run", "status", "epochs", "last epoch metrics")
        for run in handle.runs(record.id):
            epochs = handle.epochs(run.id)
            last = "" if not epochs else ", ".join(
                f"{k}={v:.4g}" for k, v in epochs[-1].items() if k != "epoch"
            )
            table.add_row(run.key, run.status, f"{len(epochs)}/{run.config['epochs']}", last)
        _console.print(table)


@lab.command()
def compare(
    experiment: str = typer.Argument(..., help="Experiment name."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Print the comparison table (mean ± standard error over seeds) of an experiment."""
    from dropkit.lab.report.table import comparison_table
    from dropkit.lab.summary import summarise

    with _open_existing(store) as handle:
        _console.print(comparison_table(summarise(handle, _experiment(handle, experiment))))


@lab.command()
def report(
    experiment: str = typer.Argument(..., help="Experiment name."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Write one self-contained HTML report (plots embedded, works offline)."""
    with _open_existing(store) as handle:
        _write_report(handle, _experiment(handle, experiment), output)


@lab.command()
def export(
    experiment: str = typer.Argument(..., help="Experiment name."),
    output: Path = typer.Option(
        Path("metrics.csv"), "--output", "-o", help="CSV file: one row per run and epoch."
    ),
    tensorboard: Optional[Path] = typer.Option(
        None, help="Also write TensorBoard event files into this folder (needs tensorboard); "
        "exporting again replaces each run's event files."
    ),
    store: Optional[Path] = StoreOption,
) -> None:
    """Export per-epoch metrics as CSV (and TensorBoard event files)."""
    from dropkit.lab.export import export_csv, export_tensorboard, tensorboard_available

    if tensorboard is not None and not tensorboard_available():
        _fail("--tensorboard needs the tensorboard package: pip install tensorboard")
    _check_output_file(output, "--output")
    if tensorboard is not None and tensorboard.exists() and not tensorboard.is_dir():
        _fail(f"--tensorboard {str(tensorboard)!r} is a file; give a folder for the event files")
    with _open_existing(store) as handle:
        record = _experiment(handle, experiment)
        try:
            rows = export_csv(handle, record, output)
            _console.print(f"{rows} rows written to {output.resolve()}", highlight=False)
            if tensorboard is not None:
                runs = export_tensorboard(handle, record, tensorboard)
                _console.print(f"{runs} runs written to {tensorboard.resolve()}",
                               highlight=False)
        except OSError as error:
            _fail(f"cannot write {str(error.filename or output)!r}: {error.strerror or error}")


@lab.command()
def tasks(
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder to look for data files in (default: $DROPKIT_DATA)."
    ),
) -> None:
    """List the tasks, what each trains, and whether its data is present."""
    from rich.table import Table

    from dropkit.lab.tasks import available_tasks

    folder = data_dir or (Path(os.environ["DROPKIT_DATA"]) if os.environ.get("DROPKIT_DATA")
                          else None)
    table = Table("task", "kind", "metric", "data", "description")
    for name, task in available_tasks().items():
        status = task.data_status(folder)
        if status.present:
            data = f"present ({status.location})"
        elif status.damaged:
            data = f"DAMAGED: {status.location}. {status.hint}"
        else:
            data = f"MISSING at {status.location}: {status.hint}"
        table.add_row(name, task.kind, task.metric, data, task.description)
    _console.print(table)


@lab.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def uci(ctx: typer.Context) -> None:
    """The UCI regression benchmark of MC dropout (Gal & Ghahramani 2016) vs published numbers.

    Options are those of the benchmark's own parser (see dropkit lab uci --help); python -m
    dropkit.uci is an alias of this command.
    """
    from dropkit.lab import uci as benchmark

    try:
        code = benchmark.main(ctx.args, prog="dropkit lab uci")
    except SystemExit as exit_:  # --help, or bad input with the message already printed
        raise typer.Exit(code=exit_.code if isinstance(exit_.code, int) else 2) from None
    raise typer.Exit(code=code)


@lab.command("reproduce")
def reproduce(
    name: Optional[str] = typer.Argument(
        None, help="Protocol name (see --list), e.g. srivastava2014-mnist."
    ),
    list_protocols: bool = typer.Option(False, "--list", help="List the paper protocols."),
    epochs: Optional[int] = typer.Option(
        None, help="Budget in the protocol's unit (see --list); default: the protocol's own."
    ),
    seeds: Optional[str] = typer.Option(
        None, help="Seeds, comma-separated (default: the protocol's, see --list; verdicts need "
        "at least 3). For gal2016-uci they are split indices."
    ),
    threads: int = typer.Option(
        1, help="torch intra-op threads (default 1: on a shared machine more threads contend)."
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder with the data sets (default: $DROPKIT_DATA)."
    ),
    store: Optional[Path] = StoreOption,
    progress: bool = typer.Option(True, help="Print each epoch as it finishes (stderr)."),
) -> None:
    """Run a paper's protocol (resumable, recorded in the store); print the paper beside ours."""
    from rich.table import Table

    from dropkit.lab.reproduce import PROTOCOLS, ReproduceError, get_protocol
    from dropkit.lab.reproduce._base import check_budget
    from dropkit.lab.store import ConfigConflictError, open_store

    if list_protocols:
        table = Table("protocol", "paper", "what it runs", "default budget")
        for protocol in PROTOCOLS.values():
            table.add_row(protocol.name, protocol.citation, protocol.description,
                          f"--epochs {protocol.default_epochs} ({protocol.budget_unit}), seeds "
                          f"{','.join(map(str, protocol.default_seeds))}: {protocol.budget_note}")
        _console.print(table)
        return
    if name is None:
        _fail("name a protocol (e.g. dropkit lab reproduce srivastava2014-mnist) or pass --list")
    if threads < 1:
        _fail(f"--threads has to be >= 1, but got {threads}")
    try:
        protocol = get_protocol(name)
        chosen_seeds = _list_option(seeds, "seeds", int)
        budget, seed_list = check_budget(
            name, protocol.default_epochs if epochs is None else epochs,
            protocol.default_seeds if chosen_seeds is None else chosen_seeds,
        )
        protocol.check_data(data_dir)
    except ReproduceError as error:
        _fail(str(error))
    import torch

    torch.set_num_threads(threads)
    path = _store_path(store)
    with open_store(path) as handle:
        try:
            result = protocol.run(handle, data_dir, budget, seed_list, progress)
        except (ReproduceError, ConfigConflictError) as error:
            _fail(str(error))
    _console.print(result.markdown(), markup=False, highlight=False, soft_wrap=True)
    _console.print(f"store: {path}", highlight=False)


@app.command()
def info() -> None:
    """Print what serves dropout here (versions, kernels, eager route), for bug reports."""
    from dropkit.kernels import describe

    for key, value in describe().items():
        _console.print(f"{key + ':':18s} {value}", markup=False, highlight=False)


def main() -> None:
    """Console-script entry point (``dropkit``) and ``python -m dropkit``."""
    try:
        app(prog_name="dropkit")
    except SystemExit as done:
        ddp = sys.modules.get("dropkit.lab.ddp")
        if ddp is not None and ddp.trained_data_parallel():
            # A torchrun rank: leave before finalization (see exit_rank for why).
            code = done.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
            ddp.exit_rank(code if isinstance(code, int) else 0 if code is None else 1)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
