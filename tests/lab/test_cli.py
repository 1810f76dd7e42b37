import csv
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
        (["run", "digits", "--rates", "0,half"], None, "comma-separated floats"),
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
