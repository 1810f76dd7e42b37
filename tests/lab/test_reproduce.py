"""``dropkit lab reproduce``: the registry, the verdict statistics, and each protocol end to end.

The protocols run on ../shared/data with a tiny budget (module sizes shrunk by
monkeypatch, recorded in each run's config), so a test takes seconds, not the
default budget's half hour.
"""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from dropkit.lab.cli import app
from dropkit.lab.reproduce import (
    PROTOCOLS,
    ReproduceError,
    gal2016_uci,
    get_protocol,
    judge,
    paired_comparison,
    srivastava2014_mnist,
    zaremba2014_ptb,
)
from dropkit.lab.reproduce._base import holm
from dropkit.lab.store import open_store
from tests.conftest import require_shared

runner = CliRunner()


def _lab(*args):
    return runner.invoke(app, ["lab", "reproduce", *map(str, args)])


# -- registry and CLI --------------------------------------------------------------------------


def test_list_shows_every_protocol_with_its_paper():
    result = _lab("--list")
    assert result.exit_code == 0, result.output
    for name in ("srivastava2014-mnist", "zaremba2014-ptb", "gal2016-uci"):
        assert name in result.output
    assert "Srivastava et al. (2014)" in result.output and "Zaremba" in result.output


def test_registry_entries_are_complete():
    assert list(PROTOCOLS) == [
        "srivastava2014-mnist", "zaremba2014-ptb", "gal2016-uci", "gal2017-active-mnist"]
    for protocol in PROTOCOLS.values():
        assert protocol.paper_numbers and protocol.default_epochs >= 1
        assert len(protocol.default_seeds) >= 3       # verdicts need 3 paired seeds
    with pytest.raises(ReproduceError, match="unknown protocol 'nope'; known: srivastava"):
        get_protocol("nope")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown protocol 'nope'"),
        (["srivastava2014-mnist", "--epochs", "0"], "--epochs has to be a positive integer"),
        (["srivastava2014-mnist", "--seeds", "a,b"], "--seeds has to be comma-separated integers"),
        (["srivastava2014-mnist", "--seeds", "-1"], "--seeds has to be non-negative"),
        (["srivastava2014-mnist", "--seeds", "1,1"], "repeats 1; give each value once"),
        (["srivastava2014-mnist", "--threads", "0"], "--threads has to be >= 1"),
        ([], "name a protocol"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    store = tmp_path / "store" / "lab.sqlite"
    result = _lab(*args, "--store", store)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not store.parent.exists()


@pytest.mark.parametrize("name", ["srivastava2014-mnist", "zaremba2014-ptb", "gal2016-uci"])
def test_missing_data_exits_2_and_writes_nothing(tmp_path, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    store = tmp_path / "store" / "lab.sqlite"
    result = _lab(name, "--data-dir", empty, "--store", store)
    assert result.exit_code == 2, result.output
    assert f"{name} needs" in result.output
    assert not store.parent.exists()


# -- statistics --------------------------------------------------------------------------------


def test_paired_t_test_interval_and_holm():
    baseline = {0: 2.0, 1: 2.1, 2: 1.9, 3: 2.0}
    treated = {0: 1.5, 1: 1.7, 2: 1.4, 3: 1.6}
    c = paired_comparison("x", "err", baseline, treated, lower_is_better=True)
    assert c.n == 4 and c.effect == pytest.approx(-0.45)
    # sd of the differences (-0.5, -0.4, -0.5, -0.4) is 0.0577; t_{0.975, 3} = 3.182.
    half = 3.182446 * 0.0577350 / 2
    assert (c.low, c.high) == (pytest.approx(-0.45 - half, abs=1e-5),
                               pytest.approx(-0.45 + half, abs=1e-5))
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert judge([c])[0].verdict == "supported"
    worse = paired_comparison("y", "err", treated, baseline, lower_is_better=True)
    assert judge([worse])[0].verdict == "contradicted"


def test_fewer_than_three_seeds_is_not_measured_and_ties_are_ties():
    two = paired_comparison("x", "err", {0: 2.0, 1: 2.0}, {0: 1.0, 1: 1.1}, lower_is_better=True)
    tie = paired_comparison("t", "err", {0: 1.0, 1: 1.0, 2: 1.0}, {0: 1.00005, 1: 0.99996, 2: 1.0},
                            lower_is_better=True, resolution=0.01)
    noisy = paired_comparison("n", "err", {0: 1.0, 1: 1.0, 2: 1.0}, {0: 1.5, 1: 0.4, 2: 1.1},
                              lower_is_better=True)
    judged = judge([two, tie, noisy])
    assert judged[0].verdict == "not measured (2 paired seeds; need 3)"
    assert judged[0].describe() == "x: not measured (2 paired seeds; need 3)"
    assert judged[1].verdict.startswith("tie")
    assert judged[2].verdict == "no significant difference"
    assert "95% CI" in judged[2].describe() and "n=3" in judged[2].describe()
    assert math.isnan(two.p_holm)


# -- srivastava2014-mnist ----------------------------------------------------------------------


@pytest.fixture
def tiny_mnist(monkeypatch):
    require_shared("mnist", "train-images-idx3-ubyte.gz")
    x, y, x_test, y_test = srivastava2014_mnist._load(str(require_shared()))
    # 600 train + 500 validation images, 500 test images: seconds instead of the half hour.
    small = (x[:1100], y[:1100], x_test[:500], y_test[:500])
    monkeypatch.setattr(srivastava2014_mnist, "_load", lambda data_dir: small)
    monkeypatch.setattr(srivastava2014_mnist, "N_VALIDATION", 500)
    monkeypatch.setattr(srivastava2014_mnist, "N_TRAIN_EVAL", 300)
    monkeypatch.setattr(srivastava2014_mnist, "ARCHITECTURES",
                        {"2x1024": (32, 32), "3x1024": (32, 32, 32)})
    return require_shared()


def test_arms_of_a_seed_share_initial_weights(tiny_mnist):
    data = srivastava2014_mnist._load(str(tiny_mnist))
    x, y = data[0][:600], data[1][:600]
    split = (x, y, x, y, x, y)
    states = [srivastava2014_mnist._Trainer(split, (32, 32), arm, 3, 1).model.state_dict()
              for arm in srivastava2014_mnist.ARMS]
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])


def test_mnist_end_to_end_resumes_bit_for_bit(tiny_mnist, tmp_path, monkeypatch):
    with open_store(tmp_path / "a.sqlite") as store:
        straight = srivastava2014_mnist.run(store, tiny_mnist, 2, (0, 1, 2), False)
        epochs_a = {r.key: store.epochs(r.id) for e in store.experiments()
                    for r in store.runs(e.id)}
    assert len(epochs_a) == 18
    text = straight.markdown()
    assert "1.06" in text and "1.25" in text and "1,000,000" in text   # the paper beside ours
    assert "ours (2 epochs x 6 updates)" in text
    assert len(straight.comparisons) == 8
    assert all(c.n == 3 and c.verdict for c in straight.comparisons)
    for c in straight.comparisons:
        assert c.low <= c.effect <= c.high

    # Kill the third run after its first epoch, then resume: same numbers as straight through.
    original = srivastava2014_mnist._Trainer.train_epoch
    calls = {"n": 0}

    def crash(self, epoch):
        calls["n"] += 1
        if calls["n"] == 6:       # runs 1-2 did 2 epochs each, run 3 did 1: crash in its 2nd
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(srivastava2014_mnist._Trainer, "train_epoch", crash)
    with open_store(tmp_path / "b.sqlite") as store, pytest.raises(KeyboardInterrupt):
        srivastava2014_mnist.run(store, tiny_mnist, 2, (0, 1, 2), False)
    monkeypatch.setattr(srivastava2014_mnist._Trainer, "train_epoch", original)
    with open_store(tmp_path / "b.sqlite") as store:
        resumed = srivastava2014_mnist.run(store, tiny_mnist, 2, (0, 1, 2), False)
        epochs_b = {r.key: store.epochs(r.id) for e in store.experiments()
                    for r in store.runs(e.id)}
        assert all(r.status == "finished" for e in store.experiments() for r in store.runs(e.id))
    strip = {k: [{m: v for m, v in row.items() if m != "train_cpu_seconds"} for row in rows]
             for k, rows in epochs_a.items()}
    assert strip == {k: [{m: v for m, v in row.items() if m != "train_cpu_seconds"}
                         for row in rows] for k, rows in epochs_b.items()}
    assert resumed.markdown() == straight.markdown()


def test_mnist_one_seed_prints_numbers_but_no_verdict(tiny_mnist, tmp_path):
    with open_store(tmp_path / "s.sqlite") as store:
        result = srivastava2014_mnist.run(store, tiny_mnist, 1, (0,), False)
    assert all(c.verdict == "not measured (1 paired seed; need 3)" for c in result.comparisons)
    assert "| 2x1024 | dropout+max-norm | 1 |" in result.markdown()


def test_max_norm_arm_keeps_every_row_inside_c(tiny_mnist):
    data = srivastava2014_mnist._load(str(tiny_mnist))
    x, y = data[0][:600], data[1][:600]
    trainer = srivastava2014_mnist._Trainer((x, y, x, y, x, y), (32, 32), "dropout+max-norm", 0, 1)
    trainer.train_epoch(1)
    for layer in trainer.model:
        if isinstance(layer, torch.nn.Linear):
            assert float(layer.weight.detach().norm(dim=1).max()) <= 2.0 * (1 + 1e-6)


# -- zaremba2014-ptb ---------------------------------------------------------------------------


def test_ptb_end_to_end(monkeypatch, tmp_path):
    require_shared("ptb", "ptb.train.txt")
    corpus = zaremba2014_ptb._load(str(require_shared()))
    monkeypatch.setattr(zaremba2014_ptb, "TRAIN_TOKENS", 2000)
    monkeypatch.setattr(zaremba2014_ptb, "TRAIN_EVAL_TOKENS", 500)
    monkeypatch.setattr(zaremba2014_ptb, "HIDDEN", 16)
    small = type(corpus)(corpus.train, corpus.valid[:800], corpus.test[:800], corpus.vocab,
                         corpus.description)
    monkeypatch.setattr(zaremba2014_ptb, "_load", lambda data_dir: small)
    with open_store(tmp_path / "s.sqlite") as store:
        result = zaremba2014_ptb.run(store, require_shared(), 2, (0, 1, 2), False)
        runs = [r for e in store.experiments() for r in store.runs(e.id)]
        assert len(runs) == 6 and all(r.status == "finished" for r in runs)
        assert {r.config["train_tokens"] for r in runs} == {2000}
        again = zaremba2014_ptb.run(store, require_shared(), 2, (0, 1, 2), False)
    text = result.markdown()
    assert "114.5" in text and "82.7" in text and "first 2,000 tokens" in text
    assert [c.n for c in result.comparisons] == [3, 3]
    assert again.markdown() == text


def test_zaremba_dropout_is_only_on_non_recurrent_connections():
    model = zaremba2014_ptb.ZarembaLSTM(50, 8, 2, 0.5)
    assert len(model.drops) == 3            # input of each LSTM layer and of the softmax
    assert all(lstm.dropout == 0.0 for lstm in model.lstms)   # no dropout inside nn.LSTM


# -- gal2016-uci -------------------------------------------------------------------------------


def test_uci_end_to_end(monkeypatch, tmp_path):
    require_shared("uci", "yacht", "data.txt")
    monkeypatch.setattr(gal2016_uci, "DATASETS", ("yacht",))
    monkeypatch.setattr(gal2016_uci, "SAMPLES", 20)
    monkeypatch.setattr(gal2016_uci, "VAL_SAMPLES", 10)
    with open_store(tmp_path / "s.sqlite") as store:
        result = gal2016_uci.run(store, require_shared(), 1, (0, 1, 2), False)
        runs = [r for e in store.experiments() for r in store.runs(e.id)]
        assert sorted(r.key for r in runs) == ["yacht/split=0", "yacht/split=1", "yacht/split=2"]
        assert all(r.status == "finished" for r in runs)
        again = gal2016_uci.run(store, require_shared(), 1, (0, 1, 2), False)
        with pytest.raises(ReproduceError, match="yacht has splits 0..19, but 20"):
            gal2016_uci.run(store, require_shared(), 1, (20,), False)
    text = result.markdown()
    assert "| yacht | 3 |" in text and "0.67 ± 0.05" in text     # the published RMSE beside
    assert result.comparisons[0].n == 3 and result.comparisons[0].verdict
    assert again.markdown() == text
