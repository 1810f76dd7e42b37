import sqlite3

import pytest

from dropkit.lab.store import ConfigConflictError, default_store_path, open_store

RUN = {"task": "digits", "variant": "standard", "p": 0.5, "seed": 0, "epochs": 3,
       "batch_size": 8, "lr": 0.001, "weight_decay": 0.0}


def test_default_path_honours_dropkit_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DROPKIT_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "lab.sqlite"
    monkeypatch.delenv("DROPKIT_HOME")
    assert default_store_path().name == "lab.sqlite"
    assert "dropkit" in str(default_store_path())


def test_epoch_and_checkpoint_commit_together(store_path):
    with open_store(store_path) as store:
        experiment = store.ensure_experiment("e", "digits", {"a": 1})
        run = store.ensure_run(experiment.id, "k", RUN)
        store.log_epoch(run.id, 1, {"test_accuracy": 0.5}, b"state-1")
        # A second row for the same epoch violates the primary key: the whole
        # transaction rolls back, so the checkpoint is not replaced either.
        with pytest.raises(sqlite3.IntegrityError):
            store.log_epoch(run.id, 1, {"test_accuracy": 0.9}, b"state-2")
        assert store.checkpoint(run.id) == (1, b"state-1")
        assert store.epochs(run.id) == [{"epoch": 1, "test_accuracy": 0.5}]


def test_finish_run_records_results_and_drops_checkpoint(store_path):
    with open_store(store_path) as store:
        experiment = store.ensure_experiment("e", "digits", {})
        run = store.ensure_run(experiment.id, "k", RUN)
        store.log_epoch(run.id, 1, {"x": 1.0}, b"s")
        store.finish_run(run.id, {"ablation": {"metric": [1.0]}}, {"model": "/m.pt"})
    with open_store(store_path) as store:  # reopened: everything was committed
        run = store.runs(store.get_experiment("e").id)[0]
        assert run.status == "finished"
        assert store.checkpoint(run.id) is None
        assert store.measurements(run.id) == {"ablation": {"metric": [1.0]}}
        assert store.artefacts(run.id) == {"model": "/m.pt"}


def test_changed_run_config_is_an_error_not_an_overwrite(store_path):
    with open_store(store_path) as store:
        experiment = store.ensure_experiment("e", "digits", {})
        store.ensure_run(experiment.id, "k", RUN)
        with pytest.raises(ConfigConflictError, match=r"lr: stored 0.001, asked 0.1"):
            store.ensure_run(experiment.id, "k", {**RUN, "lr": 0.1})
        assert store.runs(experiment.id)[0].config == RUN


def test_experiment_name_is_bound_to_its_task(store_path):
    with open_store(store_path) as store:
        store.ensure_experiment("e", "digits", {})
        with pytest.raises(ConfigConflictError, match="exists for task 'digits', not 'diabetes'"):
            store.ensure_experiment("e", "diabetes", {})


def test_restart_run_forgets_partial_progress(store_path):
    with open_store(store_path) as store:
        experiment = store.ensure_experiment("e", "digits", {})
        run = store.ensure_run(experiment.id, "k", RUN)
        store.log_epoch(run.id, 1, {"x": 1.0}, b"s")
        store.restart_run(run.id)
        assert store.epochs(run.id) == [] and store.checkpoint(run.id) is None
