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


# --- adaptive ECE, AURC, CRPS, miscalibration area ---------------------------------------


def test_adaptive_ece_matches_netcal_equal_mass_bins(classification):
    netcal_metrics = pytest.importorskip("netcal.metrics")
    probs, labels = classification  # 500 rows, distinct confidences
    for bins in (5, 10, 20):  # 500 is a multiple of each: equal-mass bins agree exactly
        reference = netcal_metrics.ECE(bins, equal_intervals=False).measure(probs, labels)
        assert metrics.adaptive_calibration_error(probs, labels, bins) == pytest.approx(
            reference, rel=1e-9
        )


def test_adaptive_ece_by_hand():
    # Confidences 0.6, 0.7 (both right) | 0.8, 0.9 (one wrong): gaps 0.35 and 0.35.
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    labels = np.array([0, 1, 1, 1])
    assert metrics.adaptive_calibration_error(probs, labels, 2) == pytest.approx(
        (abs(2 - 1.3) + abs(1 - 1.7)) / 4
    )
    # One bin: |accuracy - mean confidence| overall.
    assert metrics.adaptive_calibration_error(probs, labels, 1) == pytest.approx(abs(0.75 - 0.75))


def test_aurc_is_one_minus_selective_area_and_orders_rankings():
    rng = np.random.default_rng(3)
    errors = rng.uniform(size=400) < 0.3
    good = errors + 0.5 * rng.uniform(size=400)  # errors ranked mostly last
    assert metrics.aurc(good, errors) == pytest.approx(
        1 - metrics.selective_prediction(good, ~errors).area, rel=1e-12
    )
    assert metrics.aurc(good, errors) < metrics.aurc(rng.uniform(size=400), errors)
    # Hand example: losses in uncertainty order 0, 1, 0 -> risks 0, 1/2, 1/3.
    assert metrics.aurc([0.1, 0.2, 0.3], [0, 1, 0]) == pytest.approx((0 + 0.5 + 1 / 3) / 3)


def test_crps_gaussian_closed_form_matches_integration():
    from scipy.integrate import quad

    mean, sd, y = 0.3, 1.7, -1.1
    integral = quad(lambda x: norm.cdf(x, mean, sd) ** 2, -np.inf, y)[0] + quad(
        lambda x: (norm.cdf(x, mean, sd) - 1) ** 2, y, np.inf
    )[0]
    assert metrics.crps_gaussian([mean], [sd**2], [y]) == pytest.approx(integral, rel=1e-7)
    # As the variance vanishes the CRPS tends to the absolute error.
    assert metrics.crps_gaussian([mean], [1e-12], [y]) == pytest.approx(abs(mean - y), rel=1e-5)


def test_crps_and_miscalibration_area_match_uncertainty_toolbox():
    uct = pytest.importorskip("uncertainty_toolbox")
    rng = np.random.default_rng(4)
    mean = rng.normal(size=300)
    std = rng.uniform(0.2, 2.0, size=300)
    target = mean + 0.6 * std * rng.normal(size=300)  # intervals too wide
    assert metrics.crps_gaussian(mean, std**2, target) == pytest.approx(
        uct.metrics_scoring_rule.crps_gaussian(mean, std, target), rel=1e-9
    )
    assert metrics.miscalibration_area(mean, std**2, target) == pytest.approx(
        uct.miscalibration_area(mean, std, target), rel=1e-6
    )


def test_miscalibration_area_is_small_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(5)
    mean = np.zeros(20000)
    target = rng.normal(size=20000)
    # Calibrated: the empirical coverage curve deviates by O(1/sqrt(N)) ~ 0.007.
    assert metrics.miscalibration_area(mean, np.ones(20000), target) < 0.01
    # sigma 100x too small: intervals cover almost nothing at any level; area near 1/2.
    assert metrics.miscalibration_area(mean, np.full(20000, 0.01), target) > 0.4
    with pytest.raises(ValueError, match="n_levels must be an int >= 2"):
        metrics.miscalibration_area(mean, np.ones(20000), target, n_levels=1)
