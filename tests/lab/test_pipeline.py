"""The one pipeline: each run's data (per seed where the task needs it) and the progress hooks."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from dropkit.lab import measure, pipeline
from dropkit.lab import run as run_module
from dropkit.lab.config import build_config
from dropkit.lab.pipeline import RunData
from dropkit.lab.progress import MEASURING, RunProgress
from dropkit.lab.run import run_experiment
from dropkit.lab.store import open_store
from dropkit.lab.tasks import TaskData, get_task
from tests.lab.datasets.test_datasets_fsdd import make_fsdd


@pytest.fixture
def fsdd_root(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DROPKIT_DATA", raising=False)
    root = tmp_path / "data"
    make_fsdd(root / "fsdd" / "recordings", speakers=("alice", "bob"), takes=range(4))
    return root


def test_a_per_seed_task_trains_and_measures_each_seed_on_its_own_fold(
        fsdd_root, store_path, monkeypatch):
    # Before: the grid loaded seed 0's fold once and the seed-1 run stopped at
    # train.check_data_for_run's RuntimeError.
    trained, measured = {}, {}
    real_train, real_measure = pipeline.train_run, measure.final_measurements

    def spy_train(task, data, run, **kw):
        trained[run.seed] = data
        return real_train(task, data, run, **kw)

    def spy_measure(task, model, data, **kw):
        measured[kw["seed"]] = data
        return real_measure(task, model, data, **kw)

    monkeypatch.setattr(pipeline, "train_run", spy_train)
    monkeypatch.setattr(measure, "final_measurements", spy_measure)
    config = build_config("fsdd-speakers", name="speakers", rates=[0.0], seeds=[0, 1],
                          epochs=1, mc_samples=2, batch_size=32, data_dir=str(fsdd_root))
    with open_store(store_path) as store:
        result = run_experiment(store, config, show_progress=False)
        assert sorted(result.trained) == ["standard/p=0/seed=0", "standard/p=0/seed=1"]
        assert all(record.status == "finished"
                   for record in store.runs(result.experiment_id))
    assert sorted(trained) == [0, 1] and {s: d.seed for s, d in trained.items()} == {0: 0, 1: 1}
    # Seed s tests on sorted(speakers)[s % 2] and trains on the other speaker (the fixture's
    # speakers record the same tones, so the notes, not the tensors, tell the folds apart).
    assert "test speaker 'alice'" in trained[0].notes[1]
    assert "test speaker 'bob'" in trained[1].notes[1]
    assert "trained on ['bob']" in trained[0].notes[1]
    assert "trained on ['alice']" in trained[1].notes[1]
    # The measurements see the same fold the run trained on.
    assert measured[0] is trained[0] and measured[1] is trained[1]


class _Counting:
    def __init__(self, task):
        self.task, self.calls = task, []
        self.data_per_seed = task.data_per_seed

    def load(self, data_dir, seed=0):
        self.calls.append(seed)
        x = torch.zeros(4, 1)
        return TaskData(x, torch.zeros(4), x, torch.zeros(4), seed=seed)


def test_run_data_loads_once_per_seed_only_where_the_task_needs_it():
    per_seed = _Counting(get_task("fsdd-speakers"))
    data = RunData(per_seed, None)
    assert data.for_seed(1).seed == 1 and data.for_seed(0).seed == 0
    assert data.for_seed(1) is data.for_seed(1)
    assert per_seed.calls == [1, 0]

    shared = _Counting(get_task("breast-cancer"))
    data = RunData(shared, None)
    assert data.for_seed(3) is data.for_seed(0)
    assert shared.calls == [0]

    # Data already loaded (the CLI's check) is used as it is: no second load.
    given = shared.load(None)
    shared.calls.clear()
    assert RunData(shared, None, data=given).for_seed(5) is given and shared.calls == []
    given = per_seed.load(None, seed=0)
    per_seed.calls.clear()
    data = RunData(per_seed, None, data=given)
    assert data.for_seed(0) is given and per_seed.calls == []
    assert data.for_seed(2).seed == 2 and per_seed.calls == [2]


def test_the_grid_drives_the_progress_bars_through_every_step(store_path, monkeypatch):
    # Before: run.py drew its own per-run bars (an ETA only after a whole run, nothing
    # while measuring); RunProgress was never called.
    calls = []
    console = Console(file=io.StringIO(), force_terminal=True, width=200)

    class Recording(RunProgress):
        def __init__(self, name, *, show=True):
            super().__init__(name, show=show, console=console)

        def start(self, remaining_epochs):
            calls.append(("start", remaining_epochs))
            super().start(remaining_epochs)

        def run_started(self, key, epochs, done=0):
            calls.append(("run_started", key, epochs, done))
            super().run_started(key, epochs, done)

        def epoch_done(self, epoch):
            calls.append(("epoch_done", epoch))
            super().epoch_done(epoch)

        def measuring(self):
            calls.append(("measuring", [t.description for t in self._progress.tasks]))
            super().measuring()
            calls.append(("shown", [t.description for t in self._progress.tasks]))

        def run_finished(self):
            calls.append(("run_finished",))
            super().run_finished()

    monkeypatch.setattr(run_module, "RunProgress", Recording)
    config = build_config("breast-cancer", name="bars", rates=[0.0, 0.5], seeds=[0], epochs=2,
                          mc_samples=2)
    with open_store(store_path) as store:
        run_experiment(store, config, show_progress=True)
    names = [call[0] for call in calls]
    assert calls[0] == ("start", 4)  # 2 runs x 2 epochs, all still to train
    assert names[1:] == ["run_started", "epoch_done", "epoch_done", "measuring", "shown",
                         "run_finished"] * 2
    assert calls[1] == ("run_started", "standard/p=0/seed=0", 2, 0)
    assert [c[1] for c in calls if c[0] == "epoch_done"] == [1, 2, 1, 2]
    shown = [c[1] for c in calls if c[0] == "shown"]
    assert all(any(MEASURING in d for d in descriptions) for descriptions in shown)
    assert "ETA" in console.file.getvalue()


def test_no_progress_draws_nothing(store_path, capsys):
    config = build_config("breast-cancer", name="quiet", rates=[0.0], seeds=[0], epochs=1,
                          mc_samples=2)
    with open_store(store_path) as store:
        run_experiment(store, config, show_progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
