"""dropkit.calibration: temperature scaling and variance rescaling on known-miscalibrated models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from dropkit import metrics
from dropkit.calibration import TemperatureScaler, VarianceScaler, fit_temperature


def _overconfident(seed: int, rows: int, sharpen: float = 3.0, classes: int = 5):
    """True logits z; labels drawn from softmax(z); the model reports sharpen * z."""
    generator = torch.Generator().manual_seed(seed)
    true_logits = 1.5 * torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=generator).squeeze(1)
    return sharpen * true_logits, labels


def test_temperature_recovers_the_sharpening_and_improves_nll_and_ece():
    val_logits, val_labels = _overconfident(0, 4000)
    test_logits, test_labels = _overconfident(1, 4000)
    scaler = TemperatureScaler().fit(val_logits, val_labels)
    # The model is the true one sharpened 3x, so T = 3 is the population optimum; with
    # 4000 validation rows the fitted T lands within 10 % of it.
    assert scaler.temperature == pytest.approx(3.0, rel=0.1)
    before = test_logits.softmax(-1)
    after = scaler.transform(test_logits)
    assert metrics.nll(after, test_labels) < metrics.nll(before, test_labels) - 0.1
    assert metrics.expected_calibration_error(after, test_labels) < 0.5 * (
        metrics.expected_calibration_error(before, test_labels)
    )
    assert torch.equal(after.argmax(-1), before.argmax(-1))  # accuracy unchanged


def test_temperature_is_the_nll_minimum_found_by_scipy():
    logits, labels = _overconfident(2, 500, sharpen=0.5)
    z, y = logits.numpy(), labels.numpy()

    def nll(log_t):
        return -log_softmax(z / math.exp(log_t), axis=1)[np.arange(len(y)), y].mean()

    reference = math.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded",
                                         options={"xatol": 1e-10}).x)
    assert fit_temperature(logits, labels) == pytest.approx(reference, rel=1e-5)
    assert reference < 1  # an under-confident model is sharpened


def test_temperature_on_mc_probabilities_and_samples():
    generator = torch.Generator().manual_seed(3)
    logits, labels = _overconfident(3, 3000)
    # MC samples: the over-confident logits plus per-sample noise.
    samples = logits[None] + 0.3 * torch.randn(10, *logits.shape, generator=generator,
                                                dtype=torch.float64)
    mean_probs = samples.softmax(-1).mean(0)
    from_samples = fit_temperature(samples, labels)
    from_probs = fit_temperature(mean_probs, labels, inputs="probs")
    assert from_samples == pytest.approx(from_probs, rel=1e-9)
    scaler = TemperatureScaler(inputs="probs").fit(mean_probs, labels)
    assert scaler.temperature > 1.5
    assert metrics.nll(scaler.transform(mean_probs), labels) < metrics.nll(mean_probs, labels)


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (torch.zeros(0, 3), torch.zeros(0), "validation set is empty"),
        (torch.zeros(5, 3), torch.zeros(5), r"has 5 examples.*at least 20"),
        (torch.zeros(30, 3), torch.full((30,), 3), r"labels must be in \[0, 2\] for 3 classes"),
        (torch.zeros(30, 3), torch.zeros(29), "labels has 29 entries but there are 30"),
        (torch.zeros(30), torch.zeros(30), r"\(N, C\).*shape \(30,\)"),
    ],
)
def test_temperature_refuses_bad_validation_sets(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        TemperatureScaler().fit(logits, labels)


def test_transform_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="before fit"):
        TemperatureScaler().transform(torch.zeros(2, 3))


def _regression(seed: int, rows: int, shrink: float):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, generator=generator, dtype=torch.float64)
    sigma = 0.1 + x  # heteroscedastic noise, predicted with the right shape
    target = torch.sin(6 * x) + sigma * torch.randn(rows, generator=generator,
                                                    dtype=torch.float64)
    return torch.sin(6 * x), (shrink * sigma) ** 2, target


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_variance_scaler_matches_nominal_coverage(level):
    mean, var, target = _regression(0, 3000, shrink=0.4)  # intervals 2.5x too narrow
    assert metrics.interval_coverage(mean, var, target, level) < level - 0.1
    scaler = VarianceScaler(level).fit(mean, var, target)
    # On the validation set: at least `level`, and within one example of it.
    covered = metrics.interval_coverage(mean, scaler.transform(var), target, level)
    assert level <= covered + 1e-12 <= level + 1 / 3000 + 1e-9
    # On fresh data: a binomial count; 4 standard deviations of the validation
    # quantile's sampling error plus the test count's, sqrt(l(1-l)(1/3000 + 1/5000)).
    mean2, var2, target2 = _regression(1, 5000, shrink=0.4)
    tolerance = 4 * math.sqrt(level * (1 - level) * (1 / 3000 + 1 / 5000))
    fresh = metrics.interval_coverage(mean2, scaler.transform(var2), target2, level)
    assert fresh == pytest.approx(level, abs=tolerance)
    assert scaler.scale == pytest.approx(1 / 0.4**2, rel=0.15)


def test_variance_scaler_nll_is_the_maximum_likelihood_scale():
    mean, var, target = _regression(2, 2000, shrink=2.0)
    scaler = VarianceScaler(method="nll").fit(mean, var, target)
    scales = np.linspace(0.5 * scaler.scale, 1.5 * scaler.scale, 201)
    lls = [metrics.gaussian_log_likelihood(mean, var * s, target) for s in scales]
    assert scales[int(np.argmax(lls))] == pytest.approx(scaler.scale, rel=0.01)
    assert metrics.gaussian_log_likelihood(mean, scaler.transform(var), target) > (
        metrics.gaussian_log_likelihood(mean, var, target)
    )


def test_variance_scaler_refuses_small_sets_and_bad_variance():
    with pytest.raises(ValueError, match=r"has 3 examples.*at least 20"):
        VarianceScaler().fit(torch.zeros(3), torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="var must be > 0"):
        VarianceScaler().fit(torch.zeros(30), torch.zeros(30), torch.zeros(30))
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        VarianceScaler(level=1.0)


def test_temperature_on_an_overfitted_mc_dropout_network():
    # A wide MLP trained to near-zero loss on 200 noisy examples is over-confident on
    # new ones even after MC averaging; temperature scaling of the MC mean must cut the
    # held-out NLL and keep the accuracy.
    from torch import nn

    from dropkit import mc

    generator = torch.Generator().manual_seed(7)
    centres = 0.5 * torch.randn(3, 10, generator=generator)  # overlapping classes

    def draw(rows):
        labels = torch.randint(0, 3, (rows,), generator=generator)
        return centres[labels] + torch.randn(rows, 10, generator=generator), labels

    x_train, y_train = draw(200)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 3))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x_train), y_train).backward()
        optimiser.step()
    x_val, y_val = draw(1000)
    x_test, y_test = draw(1000)
    val = mc.predict(net, x_val, 20, seed=0).mean
    test = mc.predict(net, x_test, 20, seed=1).mean
    scaler = TemperatureScaler(inputs="probs").fit(val, y_val)
    assert scaler.temperature > 1.2  # over-confident: softened
    calibrated = scaler.transform(test)
    assert metrics.nll(calibrated, y_test) < 0.5 * metrics.nll(test, y_test)
    assert metrics.expected_calibration_error(calibrated, y_test) < (
        metrics.expected_calibration_error(test, y_test)
    )
    assert torch.equal(calibrated.argmax(-1), test.argmax(-1))
