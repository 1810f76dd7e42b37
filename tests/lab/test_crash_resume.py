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
    with open_store(path) as store:
        experiment = store.get_experiment("crash")
        return {
            run.key: [
                {k: v for k, v in e.items() if k != "epoch_time"} for e in store.epochs(run.id)
            ]
            for run in store.runs(experiment.id)
        }


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
