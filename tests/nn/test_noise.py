"""GaussianDropout and GaussianNoise: moments, eval identity, reproducibility, errors."""

from __future__ import annotations

import math

import pytest
import torch

import dropkit
from dropkit.functional import gaussian_dropout, gaussian_noise


def test_gaussian_dropout_moments_match_bernoulli_dropout():
    n, p = 200_000, 0.3
    y = gaussian_dropout(torch.ones(n, dtype=torch.float64), p, seed=1)
    variance = p / (1 - p)
    # Mean: 6 standard errors; variance: 6 standard errors of a normal sample variance.
    assert abs(float(y.mean()) - 1.0) < 6 * math.sqrt(variance / n)
    assert abs(float(y.var()) - variance) < 6 * variance * math.sqrt(2 / n)


def test_gaussian_noise_moments():
    n, std = 200_000, 0.5
    y = gaussian_noise(torch.full((n,), 2.0, dtype=torch.float64), std, seed=2)
    assert abs(float(y.mean()) - 2.0) < 6 * std / math.sqrt(n)
    assert abs(float(y.std()) - std) < 6 * std / math.sqrt(2 * n)


def test_noise_eval_identity_reproducible_grad_and_dtype():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    for module in (dropkit.GaussianDropout(0.5), dropkit.GaussianNoise(0.1)):
        assert module.eval()(x) is x
    assert torch.equal(gaussian_dropout(x, 0.4, seed=5), dropkit.GaussianDropout(0.4, seed=5)(x))
    assert not torch.equal(gaussian_noise(x, 0.1, seed=5), gaussian_noise(x, 0.1, seed=6))
    torch.manual_seed(1)
    first = dropkit.GaussianNoise(0.1)(x)
    torch.manual_seed(1)
    assert torch.equal(first, dropkit.GaussianNoise(0.1)(x))
    assert torch.autograd.gradcheck(lambda t: gaussian_dropout(t, 0.4, seed=5), (x,))
    half = torch.ones(4, dtype=torch.bfloat16)
    assert gaussian_dropout(half, 0.3, seed=0).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: dropkit.GaussianDropout(1.0), ValueError, r"\[0, 1\).*but got 1.0"),
        (lambda: gaussian_dropout(torch.ones(2), -0.5), ValueError, "got -0.5"),
        (lambda: dropkit.GaussianNoise(-0.1), ValueError, ">= 0, but got -0.1"),
        (lambda: gaussian_noise(torch.ones(2), float("inf")), ValueError, "got inf"),
        (lambda: dropkit.GaussianNoise("0.1"), TypeError, "'0.1'"),
    ],
)
def test_noise_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
