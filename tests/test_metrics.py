"""dropkit.metrics against scikit-learn / scipy and their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, mean_squared_error, roc_auc_score

from dropkit import metrics


@pytest.fixture
def classification():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, size=500)
    return probs, labels


def test_nll_matches_sklearn(classification):
    probs, labels = classification
    assert metrics.nll(probs, labels) == pytest.approx(log_loss(labels, probs), rel=1e-12)


def test_brier_binary_is_twice_sklearn():
    rng = np.random.default_rng(1)
    p1 = rng.uniform(size=300)
    labels = rng.integers(0, 2, size=300)
    probs = np.stack([1 - p1, p1], 1)
    assert metrics.brier_score(probs, labels) == pytest.approx(
        2 * brier_score_loss(labels, p1), rel=1e-12
    )


def test_reliability_bins_match_calibration_curve(classification):
    probs, labels = classification
    bins = metrics.reliability_bins(probs, labels, n_bins=10)
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    filled = bins.count > 0
    np.testing.assert_allclose(bins.accuracy[filled].numpy(), accuracy, rtol=1e-12)
    np.testing.assert_allclose(bins.confidence[filled].numpy(), mean_conf, rtol=1e-12)
    assert int(bins.count.sum()) == len(labels)


def test_ece_definition_and_perfect_calibration(classification):
    probs, labels = classification
    bins = metrics.reliability_bins(probs, labels, n_bins=15)
    filled = bins.count > 0
    expected = (
        (bins.count[filled] / bins.count.sum())
        * (bins.accuracy[filled] - bins.confidence[filled]).abs()
    ).sum()
    assert metrics.expected_calibration_error(probs, labels, 15) == pytest.approx(float(expected))
    # One-hot correct predictions: confidence 1, accuracy 1, ECE exactly 0.
    onehot = np.eye(4)[labels]
    assert metrics.expected_calibration_error(onehot, labels) == 0.0


def test_uncertainty_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 20, size=400).astype(float)  # many ties
    errors = rng.uniform(size=400) < 0.3
    assert metrics.uncertainty_auroc(scores, errors) == pytest.approx(
        roc_auc_score(errors, scores), rel=1e-12
    )


def test_selective_prediction_curve():
    uncertainty = torch.tensor([0.1, 0.9, 0.2, 0.8])
    correct = torch.tensor([1, 0, 1, 1])
    curve = metrics.selective_prediction(uncertainty, correct)
    # Answer order by uncertainty: rows 0, 2, 3, 1 -> hits 1, 1, 1, 0.
    assert curve.accuracy.tolist() == [1.0, 1.0, 1.0, 0.75]
    assert curve.coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert curve.area == pytest.approx(3.75 / 4)
    assert curve.accuracy_at(0.5) == 1.0


def test_regression_metrics_match_references():
    rng = np.random.default_rng(3)
    mean = rng.normal(size=200)
    var = rng.uniform(0.1, 2.0, size=200)
    target = mean + rng.normal(size=200) * np.sqrt(var)
    assert metrics.rmse(mean, target) == pytest.approx(
        math.sqrt(mean_squared_error(target, mean)), rel=1e-12
    )
    assert metrics.gaussian_log_likelihood(mean, var, target) == pytest.approx(
        norm.logpdf(target, mean, np.sqrt(var)).mean(), rel=1e-12
    )
    inside = np.abs(target - mean) <= norm.ppf(0.975) * np.sqrt(var)
    assert metrics.interval_coverage(mean, var, target, 0.95) == pytest.approx(inside.mean())


def test_mc_log_likelihood_matches_logsumexp():
    rng = np.random.default_rng(4)
    samples = rng.normal(size=(50, 30))
    target = rng.normal(size=30)
    tau = 2.5
    expected = (
        logsumexp(-0.5 * tau * (target[None] - samples) ** 2, 0)
        - np.log(50) - 0.5 * np.log(2 * np.pi) + 0.5 * np.log(tau)
    ).mean()
    assert metrics.mc_log_likelihood(samples, target, tau) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.nll([[0.5, float("nan")]], [0]), "probs contains 1 NaN"),
        (lambda: metrics.nll([[0.5, 0.5]], [2]), "labels must be in \\[0, 1\\]"),
        (lambda: metrics.nll([0.5, 0.5], [0]), "probs must be \\(N, C\\)"),
        (lambda: metrics.brier_score([[1.5, -0.5]], [0]), "probs must lie in \\[0, 1\\]"),
        (lambda: metrics.expected_calibration_error([[1.0, 0.0]], [0], 0), "n_bins"),
        (lambda: metrics.uncertainty_auroc([0.1, 0.2], [True, True]), "both errors and correct"),
        (lambda: metrics.rmse([1.0, 2.0], [1.0]), "shape"),
        (lambda: metrics.gaussian_log_likelihood([0.0], [0.0], [0.0]), "var must be > 0"),
        (lambda: metrics.mc_log_likelihood([[0.0]], [0.0], 0.0), "tau must be a positive"),
        (lambda: metrics.interval_coverage([0.0], [1.0], [0.0], 1.5), "level"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
