import csv
import os
import stat
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dropkit.lab.cli import app

runner = CliRunner()


def _lab(*args):
    return runner.invoke(app, ["lab", *map(str, args)])


def test_run_list_show_compare_report_export_end_to_end(tmp_path):
    store = tmp_path / "s.sqlite"
    report = tmp_path / "out" / "report.html"
    result = _lab("run", "diabetes", "--name", "cli", "--epochs", 2, "--rates", "0,0.5",
                  "--seeds", "0", "--mc-samples", 2, "--store", store, "--no-progress",
                  "-o", report)
    assert result.exit_code == 0, result.output
    assert "trained 2, resumed 0, already finished 0" in result.output
    assert "rmse" in result.output and report.is_file()

    again = _lab("run", "diabetes", "--name", "cli", "--epochs", 2, "--rates", "0,0.5",
                 "--seeds", "0", "--mc-samples", 2, "--store", store, "--no-progress")
    assert "trained 0, resumed 0, already finished 2" in again.output

    listed = _lab("list", "--store", store)
    assert listed.exit_code == 0 and "cli" in listed.output and "diabetes" in listed.output

    shown = _lab("show", "cli", "--store", store)
    assert shown.exit_code == 0
    assert '"lr": 0.001' in shown.output and "standard/p=0.5/seed=0" in shown.output
    assert "2/2" in shown.output

    compared = _lab("compare", "cli", "--store", store)
    assert compared.exit_code == 0 and "test rmse" in compared.output

    written = _lab("report", "cli", "--store", store, "-o", tmp_path / "r2.html")
    assert written.exit_code == 0 and (tmp_path / "r2.html").read_text().startswith("<!DOCTYPE")

    exported = _lab("export", "cli", "--store", store, "-o", tmp_path / "m.csv")
    assert exported.exit_code == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(rows) == 4  # 2 runs x 2 epochs
    assert {r["run"] for r in rows} == {"standard/p=0/seed=0", "standard/p=0.5/seed=0"}
    assert all(float(r["test_rmse"]) > 0 for r in rows)


def test_toml_config_with_flag_override(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(
        '[experiment]\nname = "from-toml"\ntask = "breast-cancer"\nrates = [0.0, 0.3]\n'
        'seeds = [4]\n[train]\nepochs = 5\nbatch_size = 64\n[measure]\nmc_samples = 2\n'
    )
    store = tmp_path / "s.sqlite"
    result = _lab("run", "-c", config, "--epochs", 2, "--store", store, "--no-progress")
    assert result.exit_code == 0, result.output
    shown = _lab("show", "from-toml", "--store", store)
    assert "standard/p=0.3/seed=4" in shown.output
    assert '"epochs": 2' in shown.output and '"batch_size": 64' in shown.output


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        (["run", "imagenet"], None, "unknown task 'imagenet'; expected one of"),
        (["run", "digits", "--rates", "0,1.5"], None, "between 0 and 1, but got 1.5"),
        (["run", "digits", "--rates", "0,half"], None, "comma-separated numbers like 0,0.2,0.5"),
        (["run", "digits", "--epochs", "0"], None, "epochs has to be an integer >= 1, but got 0"),
        (["run", "digits", "--variants", "shake"], None, "unknown dropout variant 'shake'"),
        (["run", "digits", "--data-dir", "/no/such/dir"], None, "'/no/such/dir' does not exist"),
        (["run"], '[experiment\ntask = "digits"', "is not valid TOML"),
        (["run"], '[experiment]\ntask = "digits"\nrate = 0.5', "unknown key 'rate'"),
        (["run"], '[training]\nepochs = 3', "unknown section [training]"),
        (["run"], '[experiment]\ntask = "digits"\nrates = [0.2, -1]', "but got -1"),
        (["show", "nothing"], None, "no run store at"),
    ],
)
def test_bad_input_exits_2_with_a_clear_error_and_writes_nothing(tmp_path, args, toml, message):
    store = tmp_path / "store" / "s.sqlite"
    extra = []
    if toml is not None:
        (tmp_path / "bad.toml").write_text(toml)
        extra = ["--config", tmp_path / "bad.toml"]
    result = _lab(*args, *extra, "--store", store)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output
    assert not store.parent.exists()


def test_unknown_experiment_lists_the_known_ones(tiny_store):
    path, name = tiny_store
    result = _lab("report", "nope", "--store", path)
    assert result.exit_code == 2
    assert "unknown experiment 'nope'" in result.output and "alert" in result.output


def test_tasks_command_reports_data_presence():
    result = _lab("tasks")
    assert result.exit_code == 0
    for name in ("digits", "mnist1d", "breast-cancer", "diabetes"):
        assert name in result.output


def test_python_dash_m_dropkit_is_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "dropkit", "lab", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "report" in result.stdout and "export" in result.stdout


def test_task_with_absent_data_says_where_to_put_it(tmp_path, monkeypatch):
    from dropkit.lab import tasks

    class Absent(tasks.Task):
        name = "absent-data"
        description = "a task whose files are missing"
        defaults = {"rates": [0.0], "seeds": [0], "epochs": 1, "batch_size": 1, "lr": 0.1,
                    "weight_decay": 0.0}

        def data_status(self, data_dir):
            folder = (data_dir or tmp_path) / "absent"
            return tasks.DataStatus(False, str(folder),
                                    f"put train.gz into {folder} or pass --data-dir")

    tasks.available_tasks()  # discover the real tasks first, then add this one
    monkeypatch.setitem(tasks._REGISTRY, "absent-data", Absent())
    store = tmp_path / "store" / "s.sqlite"
    result = _lab("run", "absent-data", "--data-dir", tmp_path, "--store", store)
    assert result.exit_code == 2
    output = result.output.replace("\n", "")
    assert f"put train.gz into {tmp_path / 'absent'} or pass --data-dir" in output
    assert not store.parent.exists()
    listed = _lab("tasks", "--data-dir", tmp_path)
    assert "MISSING" in listed.output


def test_missing_lab_extra_gives_an_install_hint():
    code = ("import sys; sys.modules['typer'] = None\n"
            "from dropkit.lab import main\nmain()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert "needs the lab extra (typer is missing): pip install 'dropkit[lab]'" in result.stderr


def test_export_tensorboard_writes_every_epoch_of_every_run(tiny_store, tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (it comes with the dev extra)",
    )
    path, name = tiny_store
    folder = tmp_path / "tb"
    result = _lab("export", name, "--store", path, "-o", tmp_path / "m.csv",
                  "--tensorboard", folder)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    runs = sorted(p for p in folder.iterdir() if p.is_dir())
    assert len(runs) == len({r["run"] for r in rows}) >= 2
    scalars = 0
    for run in runs:
        events = event_accumulator.EventAccumulator(str(run))
        events.Reload()
        loss = events.Scalars("test_loss")
        variant, p, seed = run.name.split("_")
        key = f"{variant}/p={p[1:]}/seed={seed[4:]}"
        expected = [float(r["test_loss"]) for r in rows if r["run"] == key]
        assert [e.value for e in loss] == pytest.approx(expected, rel=1e-6)
        scalars += len(loss)
    assert scalars == len(rows)


def test_uci_command_runs_resumes_and_reports(tmp_path):
    from tests.lab.test_uci import _write_dataset

    _write_dataset(tmp_path / "data")
    args = ("uci", "--out", tmp_path / "out", "--data-dir", tmp_path / "data", "--datasets", "toy",
            "--splits", "0-1", "--epochs-multiplier", "1", "--samples", "8", "--val-samples", "4")
    result = _lab(*args)
    assert result.exit_code == 0, result.output
    assert "toy split 1: rmse" in result.output and "| toy | 2 |" in result.output
    again = _lab(*args)
    assert "toy split 0: already in" in again.output
    table = _lab("uci", "--out", tmp_path / "out", "--datasets", "toy", "--samples", "8",
                 "--val-samples", "4", "--epochs-multiplier", "1", "--report")
    assert table.exit_code == 0 and "| toy | 2 |" in table.output


def test_uci_command_help_is_the_benchmark_options():
    result = _lab("uci", "--help")
    assert result.exit_code == 0
    assert "usage: dropkit lab uci" in result.output and "--val-samples" in result.output


def test_uci_command_rejects_bad_input_before_training(tmp_path):
    from tests.lab.test_uci import _write_dataset

    _write_dataset(tmp_path / "data")
    result = _lab("uci", "--out", tmp_path / "out", "--data-dir", tmp_path / "data",
                  "--datasets", "toy,nope")
    assert result.exit_code == 2
    assert "no UCI data set 'nope'" in result.output and "found: toy" in result.output
    assert not (tmp_path / "out" / "results.jsonl").exists()  # toy did not start either
    result = _lab("uci", "--out", tmp_path / "out", "--samples", "0")
    assert result.exit_code == 2 and "samples must be an int >= 1, but got 0" in result.output


# --------------------------------------------------------------------------- issue 12, defect 7


@pytest.mark.parametrize(
    ("args", "message", "absent"),
    [
        (["--seeds", "abc"], "--seeds has to be comma-separated integers like 0,1,2", "0,0.2"),
        (["--seeds", "0,1.5"], "'1.5' is not an integer", None),
        (["--rates", "0,x"], "comma-separated numbers like 0,0.2,0.5", None),
        (["--rates", "0,,0.5"], "'0,,0.5' has an empty entry (position 2 of 3)", None),
        (["--rates", "0,0.5,"], "has an empty entry (position 3 of 3)", None),
        (["--rates", "0,0.5,.5"], "'0,0.5,.5' repeats .5; give each value once", None),
        (["--seeds", "0,1,1"], "repeats 1", None),
        (["--variants", "standard,standard"], "repeats standard", None),
        (["--name", "x" * 5000], "at most 100 characters, but got 5000", None),
    ],
)
def test_list_and_name_options_are_refused_naming_the_problem(tmp_path, args, message, absent):
    store = tmp_path / "store" / "s.sqlite"
    result = _lab("run", "digits", *args, "--store", store)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert message in output and "Traceback" not in output
    assert absent is None or absent not in output
    assert not store.parent.exists()


def test_report_to_a_folder_is_refused_before_anything_runs(tiny_store, tmp_path):
    path, name = tiny_store
    result = _lab("report", name, "--store", path, "-o", tmp_path)
    assert result.exit_code == 2
    assert "is a folder; give a file path" in " ".join(result.output.split())
    store = tmp_path / "store" / "s.sqlite"
    result = _lab("run", "digits", "--store", store, "--report", tmp_path)
    assert result.exit_code == 2 and not store.parent.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_report_file_mode_follows_the_umask(tiny_store, tmp_path, umask):
    path, name = tiny_store
    previous = os.umask(umask)
    try:
        result = _lab("report", name, "--store", path, "-o", tmp_path / "r.html")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "r.html").stat().st_mode) == 0o666 & ~umask


def test_exporting_tensorboard_twice_does_not_duplicate_points(tiny_store, tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (it comes with the dev extra)",
    )
    path, name = tiny_store
    folder = tmp_path / "tb"
    for _ in range(2):
        result = _lab("export", name, "--store", path, "-o", tmp_path / "m.csv",
                      "--tensorboard", folder)
        assert result.exit_code == 0, result.output
    epochs = {r["run"] for r in csv.DictReader((tmp_path / "m.csv").open())}
    for run in (p for p in folder.iterdir() if p.is_dir()):
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        events = event_accumulator.EventAccumulator(str(run))
        events.Reload()
        steps = [e.step for e in events.Scalars("test_loss")]
        assert steps == sorted(set(steps)) and len(steps) == 3  # TINY trains 3 epochs
    assert len(epochs) == len(list(folder.iterdir()))


def test_ctrl_c_exits_130_and_says_rerunning_resumes(tmp_path, monkeypatch):
    import dropkit.lab.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dropkit.lab.run, "run_experiment", interrupted)
    store = tmp_path / "s.sqlite"
    result = _lab("run", "digits", "--epochs", 1, "--store", store, "--no-progress")
    assert result.exit_code == 130
    output = " ".join(result.output.split())
    assert f"interrupted: the store {store} keeps every finished run" in output
    assert "rerun the same command to resume" in output


def test_sweep_no_progress_prints_no_trial_lines(tmp_path):
    store = tmp_path / "s.sqlite"
    args = ("sweep", "breast-cancer", "--trials", 2, "--epochs", 1, "--mc-samples", 2,
            "--variants", "standard", "--store", store)
    quiet = _lab(*args, "--no-progress")
    assert quiet.exit_code == 0, quiet.output
    assert "] trial 0:" not in quiet.output and "2 complete" in quiet.output
    # The flag only silences the per-trial lines; help documents it.
    assert "--no-progress" in _lab("sweep", "--help").output


# --------------------------------------------------------------------------- issue 12, defect 2


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def _damaged_data(kind, root, monkeypatch):
    """Write a small data folder for ``kind``, damage one file; return (task, file, message)."""
    from tests.lab.datasets.test_datasets_fsdd import make_fsdd
    from tests.lab.datasets.test_datasets_idx import make_mnist_dir, publish_fixture_md5
    from tests.lab.test_uci import _write_dataset

    if kind in ("gz-flipped", "gz-truncated", "idx-truncated"):
        folder = root / "mnist"
        make_mnist_dir(folder, gz=kind != "idx-truncated")
        publish_fixture_md5(monkeypatch, folder)  # the files are sound until damaged below
        stem = "train-images-idx3-ubyte"
        if kind == "gz-flipped":
            path = folder / f"{stem}.gz"
            _flip_middle_byte(path)
            return "mnist-mlp", path, "is a damaged gzip file"
        if kind == "gz-truncated":
            path = folder / f"{stem}.gz"
            _truncate(path, 5000)
            return "mnist-mlp", path, "is a damaged gzip file (5000 bytes)"
        path = folder / stem
        _truncate(path, 20000)
        return "mnist-cnn", path, "needs 31376 bytes including the header, the file has 20000"
    if kind == "uci-row":
        folder = _write_dataset(root / "uci", name="yacht")
        path = folder / "data.txt"
        lines = path.read_text().splitlines()
        lines[2] = lines[2].replace(lines[2].split()[1], "n/a", 1)
        path.write_text("\n".join(lines) + "\n")
        return "uci-yacht", path, "could not convert string 'n/a' to float64 at row 2"
    if kind == "wav-truncated":
        folder = make_fsdd(root / "fsdd" / "recordings", speakers=("alice",), takes=range(6))
        path = folder / "3_alice_5.wav"
        _truncate(path, 1000)
        return "fsdd", path, "is truncated: header says"
    path = root / "tinyshakespeare" / "input.txt"
    path.parent.mkdir(parents=True)
    path.write_text("First Citizen:\nSpeak, speak.\n" * 200)
    _flip_middle_byte(path)
    return "shakespeare", path, "is not UTF-8 text: byte 2900 of 5800"


@pytest.mark.parametrize(
    "kind",
    ["gz-flipped", "gz-truncated", "idx-truncated", "uci-row", "wav-truncated", "text-corrupted"],
)
def test_damaged_data_file_exits_2_naming_it_and_records_nothing(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DROPKIT_DATA", raising=False)
    task, path, message = _damaged_data(kind, tmp_path / "data", monkeypatch)
    store = tmp_path / "store" / "new.sqlite"
    result = _lab("run", task, "--data-dir", tmp_path / "data", "--store", store, "--epochs", 1,
                  "--no-progress")
    output = "".join(result.output.split("\n"))
    assert result.exit_code == 2, result.output
    assert str(path) in output and message in output, result.output
    assert "Traceback" not in output
    assert not store.parent.exists()  # no store, so no experiment and no pending runs


# --------------------------------------------------------------------------- progress


def test_progress_eta_appears_after_the_first_epoch_and_measuring_is_shown(monkeypatch):
    import io

    from rich.console import Console

    from dropkit.lab import progress as progress_module

    clock = iter(float(t) for t in range(0, 10_000, 40))  # every reading 40 s later
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    with progress_module.RunProgress("exp", console=console) as bars:
        monkeypatch.setattr(bars._progress, "get_time", lambda: next(clock))
        bars.start(remaining_epochs=6)
        bars.run_started("standard/p=0/seed=0", epochs=3)
        assert bars.eta_seconds is None  # nothing measured yet
        bars.epoch_done(1)
        # Epochs of 40 s are longer than rich's default 30 s speed window, which made the
        # ETA vanish; here it is estimated from the whole run so far.
        first = bars.eta_seconds
        assert first is not None and first > 0
        bars.epoch_done(2)
        bars.epoch_done(3)
        bars.measuring()
        described = [t.description for t in bars._progress.tasks]
        assert any(progress_module.MEASURING in d for d in described)
        bars.run_finished()
        bars.run_started("standard/p=0.5/seed=0", epochs=3, done=1)  # resumed after 1 epoch
        bars.epoch_done(2)
        overall = bars._progress.tasks[0]
        assert overall.completed == 4 and bars.eta_seconds is not None


# --------------------------------------------------------------------------- data loaded once


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_the_data_checked_before_the_store_opens_is_the_data_trained_on(
        tmp_path, monkeypatch, command):
    # Before: _check_data loaded the task's data, and the pipeline loaded it again.
    if command == "sweep":
        pytest.importorskip("optuna")
    from dropkit.lab.tasks import get_task

    task = get_task("breast-cancer")
    loads = []
    real_load = task.load

    def counting(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(task, "load", counting)
    extra = ["--trials", 1] if command == "sweep" else ["--rates", "0,0.5", "--seeds", "0,1"]
    result = _lab(command, "breast-cancer", "--epochs", 1, "--mc-samples", 2,
                  "--store", tmp_path / "s.sqlite", "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    assert len(loads) == 1


def test_info_reports_what_serves_dropout():
    import torch

    from dropkit import kernels

    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.splitlines())
    assert lines["torch"].strip() == str(torch.__version__)
    assert lines["cpu backend"].strip() == kernels.backend_name()
    assert lines["eager op"].strip() == kernels.dispatch_status()
    assert set(lines) >= {"dropkit", "cuda", "triton", "DROPKIT_NATIVE", "DROPKIT_DISPATCH"}


def test_info_shows_the_route_the_environment_chose():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPKIT_")}
    result = subprocess.run(
        [sys.executable, "-m", "dropkit", "info"], capture_output=True, text=True, timeout=120,
        env={**env, "DROPKIT_DISPATCH": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert "eager op:          python (DROPKIT_DISPATCH=0)" in result.stdout
    assert "DROPKIT_DISPATCH:  0" in result.stdout
