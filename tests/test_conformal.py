"""dropkit.conformal: the marginal coverage guarantee on held-out exchangeable data.

Bound used throughout: given n calibration scores (continuous, no ties), the
coverage of a fresh test point is Beta(k, n + 1 - k) with k = ceil((n+1)(1-alpha)),
mean in [1 - alpha, 1 - alpha + 1/(n+1)), variance about alpha(1 - alpha)/(n + 2);
averaging over m test points adds binomial variance alpha(1 - alpha)/m. The
tests allow 4 standard deviations of the sum on either side of that mean.
"""

from __future__ import annotations

import math

import pytest
import torch

from dropkit import conformal
from dropkit.conformal import ConformalClassifier, ConformalRegressor, conformal_quantile

N_CAL, N_TEST = 1000, 4000


def _tolerance(alpha: float) -> float:
    return 4 * math.sqrt(alpha * (1 - alpha) * (1 / (N_CAL + 2) + 1 / N_TEST))


def _check_coverage(covered: float, alpha: float) -> None:
    tol = _tolerance(alpha)
    assert 1 - alpha - tol <= covered <= 1 - alpha + 1 / (N_CAL + 1) + tol


def _regression(generator: torch.Generator, rows: int):
    x = torch.rand(rows, generator=generator, dtype=torch.float64)
    sigma = 0.05 + 0.5 * x
    target = torch.sin(6 * x) + sigma * torch.randn(rows, generator=generator,
                                                    dtype=torch.float64)
    # A biased mean and a standard deviation 2x too small: the guarantee must not care.
    return torch.sin(6 * x) + 0.05, 0.5 * sigma, target


def _classification(generator: torch.Generator, rows: int, classes: int = 10):
    z = 2.0 * torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(1)
    return (3.0 * z).softmax(-1), labels  # an over-confident model


def test_quantile_is_the_finite_sample_rank():
    scores = torch.arange(1, 20, dtype=torch.float64)  # n = 19
    # ceil(20 * 0.9) = 18: the 18th smallest.
    assert conformal_quantile(scores, 0.1) == 18.0
    assert conformal_quantile(scores.flip(0), 0.5) == 10.0  # ceil(20 * 0.5) = 10
    with pytest.raises(ValueError, match=r"has 5 examples; alpha=0.1 needs at least 9"):
        conformal_quantile(torch.ones(5), 0.1)
    with pytest.raises(ValueError, match="empty"):
        conformal_quantile(torch.ones(0), 0.1)
    with pytest.raises(ValueError, match=r"alpha .* must be in \(0, 1\), but got 1.5"):
        conformal_quantile(torch.ones(5), 1.5)


@pytest.mark.parametrize("score", ["normalized", "absolute"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_intervals_cover(score, alpha, seed):
    generator = torch.Generator().manual_seed(seed)
    mean, std, target = _regression(generator, N_CAL)
    reg = ConformalRegressor(alpha, score=score).fit(mean, std, target)
    mean, std, target = _regression(generator, N_TEST)
    lower, upper = reg.predict(mean, std)
    covered = float(((lower <= target) & (target <= upper)).double().mean())
    _check_coverage(covered, alpha)


def test_normalized_intervals_adapt_to_the_std_and_absolute_ones_do_not():
    generator = torch.Generator().manual_seed(3)
    mean, std, target = _regression(generator, N_CAL)
    normalized = ConformalRegressor(0.1).fit(mean, std, target)
    absolute = ConformalRegressor(0.1, score="absolute").fit(mean, None, target)
    lo_n, hi_n = normalized.predict(mean, std)
    lo_a, hi_a = absolute.predict(mean)
    assert torch.allclose(hi_n - lo_n, 2 * normalized.quantile * std)
    assert torch.allclose(hi_a - lo_a, torch.full_like(mean, 2 * absolute.quantile))
    # With the noise proportional to std, normalised intervals are narrower on average.
    assert (hi_n - lo_n).mean() < (hi_a - lo_a).mean()


@pytest.mark.parametrize("method", ["aps", "raps"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prediction_sets_cover(method, alpha, seed):
    generator = torch.Generator().manual_seed(seed)
    probs, labels = _classification(generator, N_CAL)
    clf = ConformalClassifier(alpha, method=method, lam=0.05, k_reg=2, seed=seed)
    clf.fit(probs, labels)
    probs, labels = _classification(generator, N_TEST)
    sets = clf.predict(probs)
    _check_coverage(conformal.coverage(sets, labels), alpha)


def test_non_randomized_sets_cover_too():
    generator = torch.Generator().manual_seed(4)
    probs, labels = _classification(generator, N_CAL)
    test_probs, test_labels = _classification(generator, N_TEST)
    plain = ConformalClassifier(0.1, randomized=False).fit(probs, labels)
    sets = plain.predict(test_probs)
    # The scores are still continuous (sums of probabilities), so both bounds hold.
    _check_coverage(conformal.coverage(sets, test_labels), 0.1)
    randomized = ConformalClassifier(0.1).fit(probs, labels)
    assert plain.quantile >= randomized.quantile  # u * p_y only ever lowers a score


def test_raps_penalty_shrinks_sets_with_many_classes():
    generator = torch.Generator().manual_seed(5)
    probs, labels = _classification(generator, N_CAL, classes=50)
    test_probs, _ = _classification(generator, N_TEST, classes=50)
    aps = ConformalClassifier(0.05, method="aps").fit(probs, labels).predict(test_probs)
    raps = ConformalClassifier(0.05, method="raps", lam=0.2, k_reg=1).fit(probs, labels)
    raps_sets = raps.predict(test_probs)
    assert conformal.set_sizes(raps_sets).double().var() < conformal.set_sizes(aps).double().var()


def test_mc_samples_are_averaged():
    generator = torch.Generator().manual_seed(6)
    samples = torch.rand(8, 300, 4, generator=generator, dtype=torch.float64)
    samples = samples / samples.sum(-1, keepdim=True)
    labels = torch.randint(0, 4, (300,), generator=generator)
    from_samples = ConformalClassifier(0.1, seed=1).fit(samples, labels)
    from_mean = ConformalClassifier(0.1, seed=1).fit(samples.mean(0), labels)
    assert from_samples.quantile == from_mean.quantile


def test_classifier_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] for 3 classes, but got 7"):
        ConformalClassifier().fit(torch.full((20, 3), 1 / 3), torch.full((20,), 7))
    with pytest.raises(ValueError, match=r"\(N, C\).*shape \(20,\)"):
        ConformalClassifier().fit(torch.rand(20), torch.zeros(20))
    with pytest.raises(RuntimeError, match="before fit"):
        ConformalClassifier().predict(torch.full((2, 3), 1 / 3))
