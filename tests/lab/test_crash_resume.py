"""Kill a training subprocess mid-run, resume it, and check nothing was lost or duplicated."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from dropkit.lab.config import build_config
from dropkit.lab.run import run_experiment
from dropkit.lab.store import open_store

EPOCHS = 40
ARGS = ["breast-cancer", "--name", "crash", "--epochs", str(EPOCHS), "--rates", "0,0.5",
        "--seeds", "7", "--mc-samples", "2", "--no-progress"]


def _epoch_counts(path):
    if not path.exists():
        return {}
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return dict(connection.execute("SELECT run_id, COUNT(*) FROM epochs GROUP BY run_id"))
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        connection.close()


def _final_metrics(path):
    return _final_metrics_named(path, "crash")


def test_killed_run_resumes_without_losing_or_duplicating_epochs(tmp_path):
    store = tmp_path / "crash.sqlite"
    command = [sys.executable, "-m", "dropkit", "lab", "run", *ARGS, "--store", str(store)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        # Kill while the second run (p=0.5) is part-way: the first is finished by then.
        while time.monotonic() < deadline and process.poll() is None:
            counts = _epoch_counts(store)
            if counts.get(2, 0) >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stderr.close()

    with open_store(store) as handle:
        experiment = handle.get_experiment("crash")
        first, second = handle.runs(experiment.id)
        assert first.status == "finished" and second.status == "pending"
        done = [e["epoch"] for e in handle.epochs(second.id)]
        assert done == list(range(1, len(done) + 1)) and 3 <= len(done) < EPOCHS
        assert handle.checkpoint(second.id)[0] == done[-1]

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "trained 0, resumed 1, already finished 1" in resumed.stdout

    # The same experiment, never interrupted, in another store: identical epochs.
    reference = tmp_path / "reference.sqlite"
    config = build_config("breast-cancer", name="crash", epochs=EPOCHS, rates=[0.0, 0.5],
                          seeds=[7], mc_samples=2)
    with open_store(reference) as handle:
        run_experiment(handle, config, show_progress=False)
    resumed_epochs, reference_epochs = _final_metrics(store), _final_metrics(reference)
    for key, epochs in reference_epochs.items():
        assert [e["epoch"] for e in resumed_epochs[key]] == list(range(1, EPOCHS + 1))
        assert resumed_epochs[key] == epochs, key


# --- several writers on one store, some killed with SIGKILL ----------------------------

GRID = ["breast-cancer", "--name", "cr", "--epochs", "6", "--rates", "0,0.2,0.5",
        "--seeds", "0,1", "--mc-samples", "2", "--no-progress"]


def _claimants(path):
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return [pid for (pid,) in connection.execute("SELECT pid FROM claims")]
    except sqlite3.OperationalError:
        return []
    finally:
        connection.close()


def _wait_for(condition, deadline, message):
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def _check_every_run_finished_once(store, reference):
    expected = _final_metrics_named(reference, "cr")
    assert _final_metrics_named(store, "cr") == expected
    connection = sqlite3.connect(store)
    try:
        statuses = dict(connection.execute("SELECT key, status FROM runs"))
        assert connection.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        assert connection.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0
        measured = {key for (key,) in connection.execute(
            "SELECT runs.key FROM runs JOIN measurements ON measurements.run_id = runs.id "
            "WHERE measurements.name = 'ablation'")}
    finally:
        connection.close()
    assert statuses == {key: "finished" for key in expected}
    assert measured == set(expected)


def _final_metrics_named(path, name):
    with open_store(path, read_only=True) as store:
        experiment = store.get_experiment(name)
        return {
            run.key: [
                # Timing fields differ between any two runs; everything else must not.
                {k: v for k, v in e.items() if k not in ("epoch_time", "epoch_cpu_time")}
                for e in store.epochs(run.id)
            ]
            for run in store.runs(experiment.id)
        }


def _reference(tmp_path):
    reference = tmp_path / "reference.sqlite"
    config = build_config("breast-cancer", name="cr", epochs=6, rates=[0.0, 0.2, 0.5],
                          seeds=[0, 1], mc_samples=2)
    with open_store(reference) as handle:
        run_experiment(handle, config, show_progress=False)
    return reference


def test_two_writers_started_apart_train_every_run_exactly_once(tmp_path):
    store = tmp_path / "c.sqlite"
    command = [sys.executable, "-m", "dropkit", "lab", "run", *GRID, "--store", str(store)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The case: the second writer starts while the first has runs in flight.
    _wait_for(lambda: _epoch_counts(store), time.monotonic() + 120, "first writer never wrote")
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    for process, (_, stderr) in zip((first, second), outputs, strict=True):
        assert process.returncode == 0, stderr
    trained = 0
    for stdout, _ in outputs:
        counts = stdout.split("store ", 1)[1].split(" run(s)")[0]
        trained += int(counts.split("trained ")[1].split(",")[0])
        trained += int(counts.split("resumed ")[1].split(",")[0])
    assert trained == 6  # each of the 6 runs trained by exactly one of the two writers
    _check_every_run_finished_once(store, _reference(tmp_path))


def test_writers_killed_at_random_lose_nothing_and_survivors_finish_the_grid(tmp_path):
    store = tmp_path / "c.sqlite"
    command = [sys.executable, "-m", "dropkit", "lab", "run", *GRID, "--store", str(store)]

    def start():
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    processes = [start() for _ in range(3)]
    deadline = time.monotonic() + 300
    killed = []
    try:
        # Kill -9 a writer that holds a claim, twice, at moments picked by epoch counts
        # (mid-run: the claim table names a training process); start one more writer.
        for threshold in (4, 14):
            _wait_for(lambda t=threshold: sum(_epoch_counts(store).values()) >= t
                      and set(_claimants(store)) & {p.pid for p in processes if p.poll() is None},
                      deadline, "no writer got to its epochs")
            live = {p.pid: p for p in processes if p.poll() is None}
            victim = live[sorted(set(_claimants(store)) & set(live))[0]]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=60)  # reaped, as a shell would
            killed.append(victim)
            processes.append(start())
        for process in processes:
            if process in killed:
                continue
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert all(p.returncode == -signal.SIGKILL for p in killed)
    _check_every_run_finished_once(store, _reference(tmp_path))
    again = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    assert "trained 0, resumed 0, already finished 6" in again.stdout
