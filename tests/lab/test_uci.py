"""dropkit.lab.uci (alias dropkit.uci): the loader, a quick protocol run, the shared data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dropkit import metrics
from dropkit.lab import uci
from dropkit.lab.uci import cli, model, runner
from tests.conftest import require_shared


def _write_dataset(root: Path, name: str = "toy", rows: int = 60, splits: int = 2) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, 3))
    target = features @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=rows)
    np.savetxt(folder / "data.txt", np.column_stack([features, target]))
    np.savetxt(folder / "index_features.txt", [0, 1, 2], fmt="%d")
    np.savetxt(folder / "index_target.txt", [3], fmt="%d")
    for k in range(splits):
        order = rng.permutation(rows)
        np.savetxt(folder / f"index_train_{k}.txt", order[: rows - 10], fmt="%d")
        np.savetxt(folder / f"index_test_{k}.txt", order[rows - 10 :], fmt="%d")
    for file, value in (("n_splits", splits), ("n_hidden", 8), ("n_epochs", 2)):
        (folder / f"{file}.txt").write_text(f"{value}\n")
    (folder / "dropout_rates.txt").write_text("0.01\n0.1\n")
    (folder / "tau_values.txt").write_text("10\n100\n")
    return folder


def test_loader_on_generated_folder(tmp_path):
    _write_dataset(tmp_path)
    dataset = uci.load_uci("toy", tmp_path)
    assert dataset.features.shape == (60, 3) and dataset.target.shape == (60,)
    assert (dataset.n_splits, dataset.n_hidden, dataset.n_epochs) == (2, 8, 2)
    assert dataset.dropout_rates == (0.01, 0.1) and dataset.tau_values == (10.0, 100.0)
    train, test = dataset.split(1)
    assert len(train) == 50 and len(test) == 10 and not set(train) & set(test)
    with pytest.raises(ValueError, match="splits 0..1, but split 2"):
        dataset.split(2)


def test_loader_errors_name_the_problem(tmp_path):
    folder = _write_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="no UCI data set 'nope'.*found: toy"):
        uci.load_uci("nope", tmp_path)
    np.savetxt(folder / "index_test_0.txt", [0, 999], fmt="%d")
    with pytest.raises(ValueError, match="indexes row 999 but data.txt has rows 0..59"):
        uci.load_uci("toy", tmp_path).split(0)
    (folder / "tau_values.txt").unlink()
    with pytest.raises(FileNotFoundError, match="lacks tau_values.txt"):
        uci.load_uci("toy", tmp_path)


def test_quick_protocol_run_resumes(tmp_path):
    _write_dataset(tmp_path / "data")
    protocol = uci.UCIProtocol(epochs_multiplier=5, samples=200, val_samples=50)
    records = uci.run_benchmark(
        ["toy"], [0], tmp_path / "out", root=tmp_path / "data", protocol=protocol,
        log=lambda m: None,
    )
    assert len(records) == 1
    record = records[0]
    assert record["dropout_rate"] in (0.01, 0.1) and record["tau"] in (10.0, 100.0)
    assert record["n_train"] == 50 and record["n_val"] == 10 and record["n_test"] == 10
    assert math.isfinite(record["test_ll"]) and record["test_rmse"] > 0
    # A second call finds the split done and does not rerun it.
    logs = []
    again = uci.run_benchmark(
        ["toy"], [0], tmp_path / "out", root=tmp_path / "data", protocol=protocol, log=logs.append
    )
    assert again == records and "skipped" in logs[0]
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["split"] == 0


def test_mc_scores_match_metrics():
    # The streamed RMSE / log-likelihood equal dropkit.metrics on the same samples.
    generator = torch.Generator().manual_seed(0)
    net = model._GridMLP(1, 3, 4, torch.tensor([1.0]), generator)  # keep=1: deterministic
    x = torch.randn(7, 3)
    y = np.random.default_rng(1).normal(size=7)
    rmse, ll, standard = model._mc_scores(
        net, x, y, (0.5, 2.0), torch.tensor([3.0]), 5, model._MaskStream(1)
    )
    with torch.no_grad():
        prediction = (net.forward(x.unsqueeze(0), None)[0].double() * 2.0 + 0.5).numpy()
    assert rmse[0] == pytest.approx(metrics.rmse(prediction, y), rel=1e-5)
    assert standard[0] == pytest.approx(rmse[0], rel=1e-6)
    samples = np.repeat(prediction[None], 5, 0)
    assert ll[0] == pytest.approx(metrics.mc_log_likelihood(samples, y, 3.0), rel=1e-5)


def test_grid_training_reduces_loss():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([1.0, -1.0, 0.5])
    protocol = uci.UCIProtocol()
    net, grid = model._train_grid(
        x, y, (0.01, 0.05), (1.0,), 16, 150, protocol, generator, model._MaskStream(0)
    )
    assert grid == [(0.01, 1.0), (0.05, 1.0)]
    with torch.no_grad():
        error = ((net.forward(x.unsqueeze(0).expand(2, -1, -1), None) - y) ** 2).mean(1)
    # A linear target: 300 Adam steps must remove most of its variance.
    assert (error < 0.2 * y.var()).all()


def test_hand_derived_gradients_equal_autograd():
    # The same Philox masks, re-drawn from the same (seed, offset) pairs, under autograd.
    groups, inputs, hidden, batch = 4, 3, 5, 7
    keep = torch.tensor([0.5, 0.5, 0.9, 1.0])
    net = model._GridMLP(groups, inputs, hidden, keep, torch.Generator().manual_seed(0))
    reference = [p.clone().requires_grad_() for p in net.parameters()]
    x, y = torch.randn(batch, inputs), torch.randn(batch)
    decay = torch.tensor([0.1, 0.2, 0.3, 0.4])

    class NoStep:
        def step(self) -> None:
            pass

    net.step(x, y, decay, model._MaskStream(123), NoStep())
    replay = model._MaskStream(123)
    input_mask = net._drop_(torch.ones(groups, batch, inputs), replay)
    hidden_mask = net._drop_(torch.ones(groups, batch, hidden), replay)
    assert (input_mask[:2] == 0).any() and (input_mask[3] == 1).all()  # keep=1 drops nothing
    w1, b1, w2, b2 = reference
    activations = torch.relu(torch.baddbmm(b1, x * input_mask, w1)) * hidden_mask
    prediction = torch.baddbmm(b2, activations, w2).squeeze(-1)
    penalty = decay * ((w1**2).sum((1, 2)) + (w2**2).sum((1, 2)))
    (((prediction - y) ** 2).mean(1).sum() + penalty.sum()).backward()
    for mine, theirs in zip(net._grads, reference, strict=True):
        torch.testing.assert_close(mine, theirs.grad, rtol=1e-5, atol=1e-6)


def test_flat_adam_is_torch_adam():
    params, grad = torch.randn(40), torch.zeros(40)
    theirs = params.clone().requires_grad_()
    mine = model._Adam(params, grad, lr=1e-2, eps=1e-7)
    optimiser = torch.optim.Adam([theirs], lr=1e-2, eps=1e-7)
    for _ in range(50):
        step_grad = torch.randn(40)
        grad.copy_(step_grad)
        mine.step()
        theirs.grad = step_grad
        optimiser.step()
    torch.testing.assert_close(params, theirs.detach(), rtol=1e-6, atol=1e-7)


def test_winner_is_refit_on_the_whole_training_set(tmp_path, monkeypatch):
    # Reference README: "a network is trained on the whole training set using the
    # best hyperparameters and is then tested on the test set".
    _write_dataset(tmp_path / "data")
    dataset = uci.load_uci("toy", tmp_path / "data")
    calls = []
    train_grid = model._train_grid

    def recording(x, y, rates, taus, *args):
        moments = float(y.mean()), float(y.std(unbiased=False))
        calls.append((x.shape[0], tuple(rates), tuple(taus), *moments))
        return train_grid(x, y, rates, taus, *args)

    monkeypatch.setattr(runner, "_train_grid", recording)
    protocol = uci.UCIProtocol(epochs_multiplier=1, samples=4, val_samples=4)
    result = uci.run_split(dataset, 0, protocol)
    train, _ = dataset.split(0)
    (fit_rows, rates, taus, _, _), (final_rows, final_rates, final_taus, mean, std) = calls
    assert fit_rows == int(0.8 * len(train)) and len(rates) * len(taus) > 1
    assert final_rows == len(train) == result.n_train
    assert (final_rates, final_taus) == ((result.dropout_rate,), (result.tau,))
    assert abs(mean) < 1e-5 and std == pytest.approx(1.0, abs=1e-4)  # standardised on all of it


def test_cli_arguments():
    assert cli._parse_splits("0-2,5") == [0, 1, 2, 5]
    assert cli._parse_splits("all") is None
    with pytest.raises(Exception, match="runs backwards"):
        cli._parse_splits("4-1")
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        uci.UCIProtocol(samples=0)


def test_shared_uci_layout_and_published_numbers():
    root = require_shared("uci")
    dataset = uci.load_uci("yacht", root)
    assert dataset.features.shape == (308, 6) and dataset.n_splits == 20
    train, test = dataset.split(0)
    assert (len(train), len(test)) == (277, 31)
    naval = uci.load_uci("naval-propulsion-plant", root)
    assert naval.features.shape[1] == 16
    published = uci.published_results(root / "README.md")
    assert set(published) == set(uci.DATASETS)
    assert published["yacht"]["rmse"] == (0.67, 0.05)
    assert published["bostonHousing"]["ll"] == (-2.40, 0.04)
    assert published["energy"]["rmse_bayesopt"] == (1.08, 0.03)


def test_summary_table_marks_agreement():
    records = [
        {"dataset": "yacht", "split": k, "test_rmse": 0.6 + 0.01 * k, "test_ll": -1.3,
         "test_rmse_standard": 0.7, "seconds": 60.0}
        for k in range(4)
    ]
    published = {"yacht": {"rmse": (0.67, 0.05), "ll": (-1.25, 0.01)}}
    (row,) = uci.summarise(records, published)
    assert row["splits"] == 4 and row["rmse_ok"] is True  # better than published
    assert row["ll_ok"] is False  # 0.05 worse with ~0.01 standard error
    assert "| yacht | 4 |" in uci.format_table([row])


def test_alias_module_and_no_path_outside_the_package(monkeypatch, tmp_path):
    import subprocess
    import sys

    import dropkit.uci as alias
    from dropkit.lab.uci import loader

    assert alias.load_uci is uci.load_uci and alias.main is uci.main
    for variable in ("DROPKIT_UCI_DIR", "DROPKIT_SHARED_DATA", "DROPKIT_DATA"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    package = Path(loader.__file__).resolve().parents[3]  # the source tree's root
    root = uci.default_uci_root()
    assert package not in root.resolve().parents and root.name == "uci"
    monkeypatch.setenv("DROPKIT_DATA", str(tmp_path / "data"))
    assert uci.default_uci_root() == tmp_path / "data" / "uci"
    shown = subprocess.run([sys.executable, "-m", "dropkit.uci", "--help"], capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "usage: python -m dropkit.uci" in shown.stdout
