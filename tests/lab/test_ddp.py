"""`dropkit lab run --ddp N`: 2 gloo processes, per-rank masks, identical replicas, rank-0 store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dropkit.lab.cli import app

runner = CliRunner()
ARGS = ["--epochs", 1, "--seeds", 0, "--mc-samples", 2, "--batch-size", 64, "--no-progress"]


def run_in_session(command: list[str], env=None, timeout: float = 180):
    """Run ``command``; on a hang kill its whole process group (launchers fork workers)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[:6]} hung for {timeout} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _lab(*args):
    return runner.invoke(app, ["lab", *map(str, args)])


def _store_rows(store: Path) -> tuple[list, dict]:
    with sqlite3.connect(store) as conn:
        runs = conn.execute("SELECT id, key, status FROM runs ORDER BY id").fetchall()
        ddp = {run_id: json.loads(value) for run_id, value in conn.execute(
            "SELECT run_id, value FROM measurements WHERE name = 'ddp'")}
        epochs = conn.execute("SELECT run_id, epoch FROM epochs ORDER BY run_id, epoch").fetchall()
    return runs, {"ddp": ddp, "epochs": epochs}


def _model(store: Path, run_id: int) -> dict:
    path = store.with_name(store.stem + "-artefacts") / f"run-{run_id}" / "model.pt"
    return torch.load(path, weights_only=True)


def test_two_gloo_ranks_differ_in_masks_agree_in_weights_and_reproduce(tmp_path):
    first, second = tmp_path / "a" / "lab.sqlite", tmp_path / "b" / "lab.sqlite"
    result = _lab("run", "breast-cancer", "--ddp", 2, "--rates", 0.5, "--store", first, *ARGS)
    assert result.exit_code == 0, result.output
    assert "trained 1, resumed 0, already finished 0" in result.output

    runs, rows = _store_rows(first)
    assert runs == [(1, "standard/p=0.5/seed=0/ddp=2", "finished")]
    assert rows["epochs"] == [(1, 1)]  # written once, by rank 0 only
    facts = rows["ddp"][1]
    assert facts["world_size"] == 2 and facts["backend"] == "gloo"
    seeds = facts["first_step_stream_seeds"]
    # The rank is folded into each step's Philox key: the ranks' masks differ.
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    # DDP all-reduced the gradients: replicas bit-identical after the epoch.
    assert facts["replica_max_abs_diff"] == 0.0

    # Reproducible: the same command under torchrun (another launcher, same seed)
    # draws the same per-rank streams and ends with the same weights.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = run_in_session(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node", "2", "-m", "dropkit", "lab", "run", "breast-cancer", "--rates", "0.5",
         "--store", str(second), *map(str, ARGS)],
        env=env,
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert launched.stdout.count("trained 1, resumed 0") == 1  # only rank 0 reports
    again = _store_rows(second)[1]["ddp"][1]
    assert again["first_step_stream_seeds"] == seeds
    for name, tensor in _model(first, 1).items():
        assert torch.equal(tensor, _model(second, 1)[name]), name


def test_ddp_without_dropout_matches_single_process_training(tmp_path):
    # With p=0 nothing is random but the shuffle, which both share: DDP's sliced,
    # rescaled losses must give the single-process gradient of the whole minibatch.
    # Only the summation order differs, hence a float32 rounding tolerance.
    ddp_store, single_store = tmp_path / "d" / "lab.sqlite", tmp_path / "s" / "lab.sqlite"
    assert _lab("run", "breast-cancer", "--ddp", 2, "--rates", 0, "--store", ddp_store,
                *ARGS).exit_code == 0
    assert _lab("run", "breast-cancer", "--rates", 0, "--store", single_store,
                *ARGS).exit_code == 0
    parallel, single = _model(ddp_store, 1), _model(single_store, 1)
    for name, tensor in single.items():
        torch.testing.assert_close(parallel[name], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_process_count_is_a_clear_error(tmp_path, value):
    result = _lab("run", "breast-cancer", "--ddp", value, "--store", tmp_path / "s.sqlite", *ARGS)
    assert result.exit_code == 2
    assert f"--ddp has to be an integer >= 1 (processes), but got {value}" in result.output


def test_ddp_and_plain_runs_do_not_mix_in_one_experiment(tmp_path):
    store = tmp_path / "lab.sqlite"
    assert _lab("run", "breast-cancer", "--rates", 0, "--store", store, *ARGS).exit_code == 0
    result = _lab("run", "breast-cancer", "--ddp", 2, "--rates", 0, "--store", store, *ARGS)
    assert result.exit_code == 2
    assert "was trained with one process, not ddp=2; choose another --name" in result.output
    # And the other way: a data-parallel experiment is not continued by a plain run.
    assert _lab("run", "breast-cancer", "--ddp", 2, "--rates", 0, "--name", "d", "--store", store,
                *ARGS).exit_code == 0
    result = _lab("run", "breast-cancer", "--rates", 0, "--name", "d", "--store", store, *ARGS)
    assert result.exit_code == 2
    assert "was trained with ddp=2, not one process; choose another --name" in result.output


def test_ddp_returns_and_resumes_the_best_validation_epoch_like_a_plain_run(tmp_path):
    # Before: train_run_ddp returned the last epoch's weights, kept no best epoch in its
    # checkpoint and recorded no CPU time. One in-process gloo rank is enough to check it.
    import io

    import torch.distributed as dist

    from dropkit.lab.config import RunConfig
    from dropkit.lab.ddp import train_run_ddp
    from dropkit.lab.tasks import TaskData, get_task
    from dropkit.lab.train import select_epoch, train_run

    task = get_task("diabetes")
    loaded = task.load(None)
    # Validation targets of the opposite sign: the better the fit, the worse the
    # validation RMSE, so validation picks an early epoch, not the last.
    data = TaskData(loaded.x_train, loaded.y_train, loaded.x_test, loaded.y_test,
                    loaded.y_scale, x_val=loaded.x_train[:64], y_val=-loaded.y_train[:64])
    config = RunConfig(task="diabetes", variant="standard", p=0.0, seed=3, epochs=4,
                       batch_size=32, lr=1e-2, weight_decay=0.0)

    def record(rows, blobs):
        return lambda epoch, metrics, blob: (rows.append({**metrics, "epoch": epoch}),
                                             blobs.append(blob))

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                            rank=0, world_size=1)
    try:
        rows, blobs = [], []
        model, _ = train_run_ddp(task, data, config, device=torch.device("cpu"),
                                 on_epoch=record(rows, blobs))
        resumed_rows, resumed_blobs = [], []
        resumed, _ = train_run_ddp(task, data, config, device=torch.device("cpu"),
                                   checkpoint=blobs[1], on_epoch=record(resumed_rows,
                                                                        resumed_blobs))
    finally:
        dist.destroy_process_group()

    chosen, by_validation = select_epoch(task, rows)
    assert by_validation and chosen["epoch"] < config.epochs
    assert all(row["epoch_cpu_time"] >= 0 for row in rows)
    last = torch.load(io.BytesIO(blobs[-1]), weights_only=True)
    assert last["best"]["epoch"] == chosen["epoch"]
    returned = model.state_dict()
    assert all(torch.equal(returned[k], v) for k, v in last["best"]["model"].items())
    assert not all(torch.equal(returned[k], v) for k, v in last["model"].items())
    # Resumed after epoch 2, the checkpoint's best epoch survives and is returned.
    assert [row["epoch"] for row in resumed_rows] == [3, 4]
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in returned.items())
    # A plain run of the same config (p=0: nothing random but the shared shuffle) picks
    # the same epoch.
    plain_rows = []
    train_run(task, data, config,
              on_epoch=lambda epoch, metrics, blob: plain_rows.append({**metrics, "epoch": epoch}))
    assert select_epoch(task, plain_rows)[0]["epoch"] == chosen["epoch"]


def test_ddp_clips_gradients_like_a_plain_run(tmp_path):
    # The data-parallel branch of the one training loop clips as the plain one does
    # (before the loops were one, train_run_ddp ignored task.clip_grad_norm). With a
    # single rank and p=0 the two runs must end with the same weights.
    import torch.distributed as dist

    from dropkit.lab.config import RunConfig
    from dropkit.lab.ddp import train_run_ddp
    from dropkit.lab.tasks import get_task
    from dropkit.lab.train import train_run

    base = type(get_task("diabetes"))
    task = type("ClippedDiabetes", (base,), {"clip_grad_norm": 1e-3})()
    data = task.load(None)
    config = RunConfig(task="diabetes", variant="standard", p=0.0, seed=1, epochs=2,
                       batch_size=32, lr=1e-1, weight_decay=0.0)
    plain = train_run(task, data, config).state_dict()
    unclipped = train_run(get_task("diabetes"), data, config).state_dict()
    assert not all(torch.equal(plain[k], v) for k, v in unclipped.items())  # clipping bites
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                            rank=0, world_size=1)
    try:
        parallel, facts = train_run_ddp(task, data, config, device=torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    assert facts["world_size"] == 1
    for name, tensor in parallel.state_dict().items():
        torch.testing.assert_close(tensor, plain[name], rtol=0, atol=1e-7)


@pytest.mark.parametrize("code, status", [(None, 0), (0, 0), (2, 2), ("bad input", 1)])
def test_a_data_parallel_rank_leaves_through_exit_rank_with_the_command_status(
        monkeypatch, capsys, code, status):
    # A torchrun rank that trained must not reach interpreter finalization (gloo's
    # threads abort it there); the CLI hands the command's exit status to exit_rank.
    from dropkit.lab import cli, ddp

    left = []
    monkeypatch.setattr(ddp, "trained_data_parallel", lambda: True)
    monkeypatch.setattr(ddp, "exit_rank", left.append)

    def command(**_):
        raise SystemExit(code)

    monkeypatch.setattr(cli, "app", command)
    with pytest.raises(SystemExit):  # the real exit_rank never returns; the stand-in does
        cli.main()
    assert left == [status]
    if isinstance(code, str):
        assert code in capsys.readouterr().err


def test_other_processes_exit_normally(monkeypatch):
    from dropkit.lab import cli, ddp

    monkeypatch.setattr(ddp, "exit_rank", lambda code: pytest.fail("exit_rank was called"))

    def command(**_):
        raise SystemExit(3)

    monkeypatch.setattr(cli, "app", command)
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 3 and not ddp.trained_data_parallel()
