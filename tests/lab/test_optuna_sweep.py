"""`dropkit lab sweep`: Optuna trials as lab runs, on SQLite, the journal file and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dropkit.lab.cli import app
from dropkit.lab.sweep import rdb_url, redact
from tests.lab.test_ddp import run_in_session

optuna = pytest.importorskip("optuna")

runner = CliRunner()
# Tiny: breast-cancer trains an epoch in well under a second; the final
# measurements use 2 MC passes.
TINY = ["--epochs", "2", "--mc-samples", "2", "--batch-size", "64"]


def _lab(*args):
    return runner.invoke(app, ["lab", *map(str, args)])


def _cli(*args, env=None):
    """The real console entry point in a fresh process (workers are spawned processes)."""
    return run_in_session([sys.executable, "-m", "dropkit", "lab", *map(str, args)], env=env)


def _runs(store: Path, experiment: str) -> list[dict]:
    with sqlite3.connect(store) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT runs.id, runs.key, runs.config, runs.status FROM runs JOIN experiments "
            "ON experiments.id = runs.experiment_id WHERE experiments.name = ?", (experiment,)
        ).fetchall()
        result = []
        for row in rows:
            epochs = [e[0] for e in conn.execute(
                "SELECT epoch FROM epochs WHERE run_id = ? ORDER BY epoch", (row["id"],))]
            result.append({"id": row["id"], "key": row["key"], "status": row["status"],
                           "config": json.loads(row["config"]), "epochs": epochs})
    return result


def _check_each_trial_ran_once(study, store: Path, trials: int, epochs: int) -> None:
    states = {t.number: t.state.name for t in study.trials}
    trained = [t for t in study.trials if t.number < trials]
    # Every budgeted trial number finished; numbers past the budget (a race for the
    # last slot) were closed without training.
    assert sorted(states)[:trials] == list(range(trials))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trained), states
    for t in study.trials[trials:]:
        assert t.state.name == "FAIL" and "surplus" in t.user_attrs
    runs = _runs(store, study.study_name)
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run["config"]["trial"], []).append(run)
    assert sorted(by_trial) == list(range(trials))  # one run row per trial, no extra
    assert all(len(rows) == 1 for rows in by_trial.values())
    for t in trained:
        (run,) = by_trial[t.number]
        assert t.user_attrs["run_id"] == run["id"] and t.user_attrs["run_key"] == run["key"]
        assert run["status"] == "finished"
        assert run["config"]["variant"] == t.params["variant"]
        assert run["config"]["p"] == t.params["p"]
        # Epoch rows are exactly 1..k: no epoch trained twice, none skipped.
        expected = epochs if t.state.name == "COMPLETE" else len(t.intermediate_values)
        assert run["epochs"] == list(range(1, expected + 1))
        assert sorted(t.intermediate_values) == run["epochs"]


@pytest.mark.parametrize(
    "text, url, expected",
    [
        ("postgresql://bob:hunter22@db:5432/x", None, "postgresql://***@db:5432/x"),
        ("postgresql+psycopg2://bob@db/x", None, "postgresql+psycopg2://***@db/x"),
        ("sqlite:////tmp/a.sqlite", None, "sqlite:////tmp/a.sqlite"),
        ('FATAL: password "hunter22" rejected', "postgresql://bob:hunter22@db/x",
         'FATAL: password "***" rejected'),
        ("see mysql://u:p%40ss@h/db and x", "mysql://u:p%40ss@h/db", "see mysql://***@h/db and x"),
    ],
)
def test_redact_removes_credentials(text, url, expected):
    assert redact(text, url) == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "0"], "--trials has to be an integer >= 1, but got 0"),
        (["--rate-min", "0.5", "--rate-max", "0.2"], "--rate-min < --rate-max < 1"),
        (["--rate-max", "1.5"], "rate-max"),
        (["--workers", "2", "--storage", "sqlite:////tmp/x.sqlite"], "not safe for 2 parallel"),
        (["--storage", "nonsense"], "'nonsense' is not a URL"),
        (["--variants", "bogus"], "unknown dropout variant 'bogus'"),
        (["--workers", "0"], "--workers has to be an integer >= 1, but got 0"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, args, message):
    store = tmp_path / "lab.sqlite"
    result = _lab("sweep", "breast-cancer", "--store", store, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not store.exists()


def test_one_worker_default_sqlite_records_trials_as_runs_and_reports(tmp_path):
    store = tmp_path / "lab.sqlite"
    report = tmp_path / "report.html"
    result = _lab("sweep", "breast-cancer", "--trials", 3, "--study", "s1", "--store", store,
                  "-o", report, *TINY)
    assert result.exit_code == 0, result.output
    assert "3 complete" in result.output
    storage = f"sqlite:///{tmp_path.resolve() / 'lab-optuna.sqlite'}"
    study = optuna.load_study(study_name="s1", storage=storage)
    _check_each_trial_ran_once(study, store, trials=3, epochs=2)
    html = report.read_text()
    assert "<h2>Sweep</h2>" in html and "Best rate per variant" in html
    best = study.best_trial
    assert f"{best.value:.4g}" in html and best.user_attrs["run_key"] in html
    # Re-running with the same budget trains nothing more.
    again = _lab("sweep", "breast-cancer", "--trials", 3, "--study", "s1", "--store", store,
                 *TINY)
    assert again.exit_code == 0 and len(optuna.load_study(study_name="s1",
                                                          storage=storage).trials) == 3
    # A grid name cannot be reused for a sweep (and the other way round).
    _lab("run", "breast-cancer", "--name", "grid", "--epochs", 1, "--rates", "0", "--seeds", 0,
         "--mc-samples", 2, "--store", store, "--no-progress")
    clash = _lab("sweep", "breast-cancer", "--study", "grid", "--trials", 1, "--store", store,
                 *TINY)
    assert clash.exit_code == 2 and "grid experiment, not a sweep" in clash.output


def test_two_local_workers_on_the_journal_never_run_a_trial_twice(tmp_path):
    store = tmp_path / "lab.sqlite"
    trials = 6
    result = _cli("sweep", "breast-cancer", "--trials", trials, "--workers", 2, "--study", "j",
                  "--store", store, "--prune-after", 2, *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    journal = tmp_path.resolve() / "lab-optuna.journal"
    assert "journal:///" in result.stdout and journal.is_file()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(
        str(journal))))
    _check_each_trial_ran_once(study, store, trials=trials, epochs=2)
    # Each trial's log line comes from exactly one worker.
    for number in range(trials):
        assert result.stdout.count(f"] trial {number}: ") == 1, result.stdout
    workers = {t.user_attrs["worker"] for t in study.trials if t.number < trials}
    assert 1 <= len(workers) <= 2
    snapshot = json.loads((tmp_path / "lab-artefacts" / "sweep-1.json").read_text())
    assert snapshot["finished_trials"] == trials


# --- PostgreSQL: a real server on loopback -------------------------------------------------

_PASSWORD = "Pw-s3cret-7f2a"


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 with password (SCRAM) authentication."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs "
                    "the Debian postgresql package")
    # The server refuses to run as root: run it as `nobody` then.
    user = "nobody" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="dropkit-pg-"))
    os.chmod(root, 0o777)
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    os.chmod(sockets, 0o777)
    pwfile = root / "pw"
    pwfile.write_text(_PASSWORD + "\n")
    os.chmod(pwfile, 0o644)
    port = _free_port()

    def pg(*args, **kwargs):
        return subprocess.run([str(bindir / args[0]), *args[1:]], user=user, capture_output=True,
                              text=True, timeout=120, cwd=root, **kwargs)

    init = pg("initdb", "-D", str(data), "-U", "sweeper", "--auth=scram-sha-256",
              f"--pwfile={pwfile}", "--no-sync")
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr}")
    start = pg("pg_ctl", "-D", str(data), "-w", "-t", "60", "-l", str(root / "log"), "start",
               "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        assert start.returncode == 0, start.stderr + (root / "log").read_text()
        # The URL form docs/scaling.md documents: no driver named.
        yield f"postgresql://sweeper:{_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _without_psycopg2(tmp_path) -> dict:
    """An environment in which ``import psycopg2`` fails, as after ``pip install dropkit[postgres]``
    on a machine without it (the extra installs psycopg 3 only)."""
    blocker = tmp_path / "no-psycopg2" / "psycopg2"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError('psycopg2 is blocked: the [postgres] extra does not install it')\n")
    path = os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def test_documented_postgresql_url_uses_the_driver_the_extra_installs():
    import sys

    from sqlalchemy.engine import make_url

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["postgres"]
    assert [r.split("[")[0].split(">")[0] for r in extra] == ["psycopg"]
    for documented in ("postgresql://u@h:5432/db", "postgres://u@h/db"):
        assert make_url(rdb_url(documented)).get_dialect().driver == "psycopg"
    assert rdb_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert rdb_url("sqlite:///x.db") == "sqlite:///x.db"


def test_two_workers_on_postgresql_complete_every_trial_once(tmp_path, postgres_url):
    pytest.importorskip("psycopg")
    store = tmp_path / "lab.sqlite"
    report = tmp_path / "report.html"
    trials = 4
    result = _cli("sweep", "breast-cancer", "--trials", trials, "--workers", 2, "--study", "pg",
                  "--storage", postgres_url, "--store", store, "-o", report, *TINY,
                  env=_without_psycopg2(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, redact(output, postgres_url)
    study = optuna.load_study(study_name="pg", storage=rdb_url(postgres_url))
    _check_each_trial_ran_once(study, store, trials=trials, epochs=2)
    best = study.best_trial
    assert f"best trial {best.number}:" in output
    snapshot = json.loads((tmp_path / "lab-artefacts" / "sweep-1.json").read_text())
    recorded = {t["number"]: t for t in snapshot["trials"]}
    assert recorded[best.number]["value"] == best.value
    assert best.user_attrs["run_key"] in report.read_text()
    # The password is nowhere: not in output, store, snapshot, report.
    assert "postgresql://***@127.0.0.1" in output
    for blob in (output, store.read_bytes().decode("latin-1"), report.read_text(),
                 json.dumps(snapshot)):
        assert _PASSWORD not in blob

    wrong = postgres_url.replace(_PASSWORD, "Wrong-pw-91c")
    failed = _lab("sweep", "breast-cancer", "--trials", 1, "--study", "pg2", "--storage", wrong,
                  "--store", tmp_path / "other.sqlite", *TINY)
    assert failed.exit_code == 2
    assert "cannot open study 'pg2'" in failed.output and "***@127.0.0.1" in failed.output
    assert "Wrong-pw-91c" not in failed.output


# --- search space and killed workers ------------------------------------------------------


def test_dense_only_model_searches_only_variants_that_differ(tmp_path):
    from dropkit.lab.sweep import distinct_variants
    from dropkit.lab.tasks import VARIANTS, get_task

    # breast-cancer's MLP has dense layers only: channel dropout and DropBlock fall back
    # to element-wise dropout there. digits' CNN has 2-D maps, where all four differ.
    assert distinct_variants(get_task("breast-cancer"), list(VARIANTS)) == {
        "standard": "standard", "elementwise": "standard", "gaussian": "gaussian",
        "dropblock": "standard"}
    digits = distinct_variants(get_task("digits"), list(VARIANTS))
    assert [v for v, first in digits.items() if v == first] == list(VARIANTS)

    store = tmp_path / "lab.sqlite"
    result = _lab("sweep", "breast-cancer", "--trials", 4, "--study", "dense", "--store", store,
                  *TINY)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="dense",
                              storage=f"sqlite:///{tmp_path.resolve() / 'lab-optuna.sqlite'}")
    assert {t.params["variant"] for t in study.trials} <= {"standard", "gaussian"}
    assert study.trials[0].distributions["variant"].choices == ("standard", "gaussian")
    with sqlite3.connect(store) as conn:
        config = json.loads(conn.execute("SELECT config FROM experiments").fetchone()[0])
    # The exact config names the searched range and variants; no grid 'rates' list.
    assert "rates" not in config and config["variants"] == ["standard", "gaussian"]
    assert config["sweep"]["rate_range"] == [0.0, 0.8]
    assert config["sweep"]["identical_variants"] == {"elementwise": "standard",
                                                     "dropblock": "standard"}


def test_a_killed_sweep_resumes_its_running_trial_instead_of_leaving_it_running(tmp_path):
    import signal
    import time

    store = tmp_path / "lab.sqlite"
    epochs = 30
    command = [sys.executable, "-m", "dropkit", "lab", "sweep", "breast-cancer", "--trials", "2",
               "--study", "k", "--store", str(store), "--epochs", str(epochs),
               "--mc-samples", "2", "--batch-size", "64", "--prune-after", "100"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(3 <= len(run["epochs"]) < epochs for run in _safe_runs(store, "k")):
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    storage = f"sqlite:///{tmp_path.resolve() / 'lab-optuna.sqlite'}"
    running = [t.number for t in optuna.load_study(study_name="k", storage=storage).trials
               if t.state.name == "RUNNING"]
    assert len(running) == 1

    again = run_in_session(command)
    assert again.returncode == 0, again.stderr
    assert f"trial {running[0]} (resumed from a dead worker)" in again.stdout
    assert "running" not in again.stdout.split("study 'k'")[1].split("\n")[0]
    study = optuna.load_study(study_name="k", storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
    _check_each_trial_ran_once(study, store, trials=2, epochs=epochs)


def _safe_runs(store: Path, experiment: str) -> list[dict]:
    try:
        return _runs(store, experiment)
    except sqlite3.OperationalError:  # not created yet
        return []


def test_the_objective_and_the_pruner_see_validation_never_test(tmp_path):
    # Before: trials were scored, and pruned, on test_accuracy: a search on the test set.
    from dropkit.lab.store import open_store
    from dropkit.lab.tasks import get_task
    from dropkit.lab.train import select_epoch

    store = tmp_path / "lab.sqlite"
    result = _lab("sweep", "breast-cancer", "--trials", 2, "--study", "v", "--store", store,
                  "--epochs", 3, "--mc-samples", 2, "--batch-size", 64)
    assert result.exit_code == 0, result.output
    assert "val_accuracy" in result.output and "tuned on validation" in result.output
    study = optuna.load_study(study_name="v",
                              storage=f"sqlite:///{tmp_path.resolve() / 'lab-optuna.sqlite'}")
    task = get_task("breast-cancer")
    with open_store(store, read_only=True) as handle:
        for trial in study.trials:
            rows = handle.epochs(trial.user_attrs["run_id"])
            assert trial.intermediate_values == {r["epoch"]: r["val_accuracy"] for r in rows}
            chosen, _ = select_epoch(task, rows)
            assert trial.value == chosen["val_accuracy"]
            assert trial.user_attrs["test_accuracy"] == chosen["test_accuracy"]
        experiment = handle.get_experiment("v")
        assert experiment.config["sweep"]["metric"] == "val_accuracy"
    # The two metrics differ somewhere, so the checks above could tell them apart.
    assert any(r["val_accuracy"] != r["test_accuracy"]
               for t in study.trials for r in _epochs(store, t.user_attrs["run_id"]))


def _epochs(store: Path, run_id: int) -> list[dict]:
    from dropkit.lab.store import open_store

    with open_store(store, read_only=True) as handle:
        return handle.epochs(run_id)
