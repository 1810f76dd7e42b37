import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from dropkit.lab.cli import app
from dropkit.lab.store import (
    Claim,
    Claimant,
    ClaimLostError,
    ConfigConflictError,
    HeldRun,
    StoreError,
    default_store_path,
    open_store,
)

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


def _dead_claimant() -> Claimant:
    """A claimant whose process has exited (and was reaped) on this host."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return Claimant(Claimant.current().host, child.pid, None)


def _run(store, key="k"):
    experiment = store.ensure_experiment("e", "digits", {})
    return store.ensure_run(experiment.id, key, RUN)


def test_claim_with_disagreeing_checkpoint_starts_the_run_over(store_path):
    with open_store(store_path) as store:
        run = _run(store)
        store.log_epoch(run.id, 1, {"x": 1.0}, b"s")
        # Simulate a store where the checkpoint is missing (not producible by a transaction).
        store._conn.execute("DELETE FROM checkpoints")
        claim = store.claim_run(run.id, Claimant.current())
        assert isinstance(claim, Claim) and claim.checkpoint is None
        assert store.epochs(run.id) == []


def test_a_live_claim_is_never_taken_and_a_dead_one_is(store_path):
    me = Claimant.current()
    with open_store(store_path) as store:
        run = _run(store)
        parent = Claimant(me.host, os.getppid())  # alive for the whole test
        assert isinstance(store.claim_run(run.id, parent), Claim)
        store.log_epoch(run.id, 1, {"x": 1.0}, b"s1", claimant=parent)
        held = store.claim_run(run.id, me)
        assert isinstance(held, HeldRun) and held.claimant.pid == os.getppid()
        # Writing without the claim is refused and changes nothing.
        with pytest.raises(ClaimLostError, match=f"no longer claimed by {me.host}:{me.pid}"):
            store.log_epoch(run.id, 2, {"x": 2.0}, b"s2", claimant=me)
        assert [e["epoch"] for e in store.epochs(run.id)] == [1]

        dead = _dead_claimant()
        store._conn.execute("UPDATE claims SET pid = ?", (dead.pid,))
        claim = store.claim_run(run.id, me)
        assert isinstance(claim, Claim) and claim.checkpoint == (1, b"s1")
        assert claim.took_over == f"{dead.label} is no longer running"
        store.finish_run(run.id, {}, {}, claimant=me)
        assert store.claim_run(run.id, me) is None  # finished: nothing to claim
        assert store._conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0


def test_a_claim_from_another_host_goes_stale_without_heartbeat(store_path):
    with open_store(store_path, stale_after=60.0) as store:
        run = _run(store)
        remote = Claimant("some-other-machine", 4242)
        store.claim_run(run.id, remote)
        assert isinstance(store.claim_run(run.id, Claimant.current()), HeldRun)
        store._conn.execute("UPDATE claims SET heartbeat = ?", (time.time() - 61.0,))
        claim = store.claim_run(run.id, Claimant.current())
        assert isinstance(claim, Claim) and "sent no heartbeat for 61 s" in claim.took_over


def test_heartbeat_thread_keeps_a_long_epoch_claimed(store_path):
    with open_store(store_path, heartbeat_seconds=0.05, stale_after=0.5) as store:
        run = _run(store)
        claim = store.claim_run(run.id, Claimant.current())
        with store.heartbeat(claim):
            time.sleep(1.0)  # twice stale_after with no epoch written
            age = time.time() - store._conn.execute(
                "SELECT heartbeat FROM claims").fetchone()[0]
        assert age < 0.5
        store.release(claim)
        assert store.holder(run.id) is None


def test_not_sqlite_and_foreign_sqlite_are_clear_errors(tmp_path):
    junk = tmp_path / "s.sqlite"
    junk.write_text("x\n")
    for read_only in (True, False):
        with pytest.raises(StoreError, match="'.*s.sqlite' is not an SQLite database"):
            open_store(junk, read_only=read_only)
    assert junk.read_text() == "x\n"
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE songs (title TEXT)")
    with pytest.raises(StoreError, match="SQLite database but not a dropkit run store"):
        open_store(foreign)


def test_read_only_store_reads_everything_and_refuses_writes(store_path):
    with open_store(store_path) as store:
        run = _run(store)
        store.log_epoch(run.id, 1, {"x": 1.0}, b"s")
    before = store_path.read_bytes()
    with open_store(store_path, read_only=True) as store:
        experiment = store.get_experiment("e")
        assert [r.key for r in store.runs(experiment.id)] == ["k"]
        assert store.epochs(run.id) == [{"epoch": 1, "x": 1.0}]
        with pytest.raises(StoreError, match="opened read-only"):
            store.ensure_experiment("f", "digits", {})
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._conn.execute("DELETE FROM epochs")
    assert store_path.read_bytes() == before
    with pytest.raises(StoreError, match="no run store at"):
        open_store(store_path.with_name("absent.sqlite"), read_only=True)


_OLD_SCHEMA = """
CREATE TABLE experiments (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, task TEXT NOT NULL,
    config TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL, key TEXT NOT NULL,
    variant TEXT NOT NULL, p REAL NOT NULL, seed INTEGER NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL, created REAL NOT NULL, finished REAL, UNIQUE (experiment_id, key));
CREATE TABLE epochs (run_id INTEGER NOT NULL, epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch));
CREATE TABLE checkpoints (run_id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, state BLOB);
CREATE TABLE measurements (run_id INTEGER, name TEXT, value TEXT, PRIMARY KEY (run_id, name));
CREATE TABLE artefacts (run_id INTEGER, name TEXT, path TEXT, PRIMARY KEY (run_id, name));
INSERT INTO experiments VALUES (1, 'e', 'digits', '{}', 0);
INSERT INTO runs VALUES (1, 1, 'k', 'standard', 0.5, 0, '{}', 'pending', 0, NULL);
INSERT INTO epochs VALUES (1, 1, '{"x": 1.0}');
INSERT INTO checkpoints VALUES (1, 1, X'73');
"""


def test_a_store_from_before_claims_is_read_as_is_and_migrated_by_a_writer(store_path):
    store_path.parent.mkdir(parents=True)
    with sqlite3.connect(store_path) as conn:
        conn.executescript(_OLD_SCHEMA)
    with open_store(store_path, read_only=True) as store:
        assert store.holder(1) is None and store.epochs(1) == [{"epoch": 1, "x": 1.0}]
    with open_store(store_path) as store:
        assert store.migrated_from == 0
        claim = store.claim_run(1, Claimant.current())
        assert claim.checkpoint == (1, b"s")  # resumes where the old store stopped
    with open_store(store_path) as store:
        assert store.migrated_from is None


@contextmanager
def _unwritable(path):
    """Make ``path`` unwritable even for root (immutable attribute), or skip."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_cli_on_a_read_only_store_reads_and_refuses_to_write(tiny_store, tmp_path):
    source, name = tiny_store
    path = tmp_path / "ro.sqlite"
    shutil.copy(source, path)
    before = path.read_bytes()
    cli = CliRunner()
    with _unwritable(path):
        for command in (["list"], ["show", name], ["compare", name],
                        ["report", name, "-o", str(tmp_path / "r.html")],
                        ["export", name, "-o", str(tmp_path / "m.csv")]):
            result = cli.invoke(app, ["lab", *command, "--store", str(path)])
            assert result.exit_code == 0, (command, result.output)
        result = cli.invoke(app, ["lab", "run", "breast-cancer", "--name", "new", "--epochs", "1",
                                  "--no-progress", "--store", str(path)])
        assert result.exit_code == 2, result.output
        assert f"cannot write the run store {str(path)!r}" in result.output
        assert "read-only" in result.output and "Traceback" not in result.output
    assert path.read_bytes() == before


def test_cli_on_a_file_that_is_not_a_store_exits_2(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_text("x\n")
    cli = CliRunner()
    for command in (["list"], ["show", "e"], ["run", "breast-cancer", "--epochs", "1"]):
        result = cli.invoke(app, ["lab", *command, "--store", str(path)])
        assert result.exit_code == 2, (command, result.output)
        assert "is not an SQLite database" in result.output
    assert path.read_text() == "x\n"


def test_a_live_claimant_on_this_host_keeps_its_claim_however_old_its_heartbeat(store_path):
    with open_store(store_path, stale_after=1.0) as store:
        run = _run(store)
        parent = Claimant(Claimant.current().host, os.getppid())
        store.claim_run(run.id, parent)
        store._conn.execute("UPDATE claims SET heartbeat = ?", (time.time() - 3600.0,))
        assert isinstance(store.claim_run(run.id, Claimant.current()), HeldRun)


def test_a_writer_whose_claim_was_taken_over_stops_writing_that_run(store_path):
    from dropkit.lab.config import RunConfig
    from dropkit.lab.pipeline import execute_run
    from dropkit.lab.tasks import get_task

    task = get_task("breast-cancer")
    data = task.load(None)
    run = RunConfig(task="breast-cancer", variant="standard", p=0.5, seed=0, epochs=3,
                    batch_size=64, lr=1e-3, weight_decay=0.0)
    with open_store(store_path) as store:
        experiment = store.ensure_experiment("e", "breast-cancer", {})
        record = store.ensure_run(experiment.id, run.key, run.to_dict())
        remote = Claimant("some-other-machine", 7)

        def train(task, data, run, *, checkpoint, on_epoch):
            on_epoch(1, {"m": 1.0}, b"c1")
            # Meanwhile a writer elsewhere judged this one dead and took the run over.
            store._conn.execute("UPDATE claims SET host = ?, pid = ?", (remote.host, remote.pid))
            on_epoch(2, {"m": 2.0}, b"c2")
            raise AssertionError("not reached: the epoch-2 write must stop training")

        outcome = execute_run(store, task, data, run, record.id, mc_samples=2, train=train)
        assert outcome.state == "lost"
        assert [e["epoch"] for e in store.epochs(record.id)] == [1]
        assert store.run(record.id).status == "pending"
        assert store.holder(record.id).claimant.host == "some-other-machine"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_model_mode_follows_the_umask(tmp_path, umask):
    # Before: mkstemp's 0600 whatever the umask, so a group sharing results could not read it.
    import stat

    from torch import nn

    from dropkit.lab.store import save_model, set_default_mode

    previous = os.umask(umask)
    try:
        path = save_model(nn.Linear(2, 1), tmp_path / "run-1")
        other = tmp_path / "other"
        other.write_text("x")
        other.chmod(0o600)
        set_default_mode(other)
        # The mask this process has is unchanged (set_default_mode only reads it).
        assert os.umask(umask) == umask
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(other.stat().st_mode) == 0o666 & ~umask
    assert not list(path.parent.glob("*.tmp"))
