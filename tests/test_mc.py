"""dropkit.mc: mode handling, the fx fast path against the loop, result math, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit import mc
from dropkit.random import fold_seed, keep_mask


class HeadDropoutCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 4 * 4, 16), nn.ReLU(),
            dropkit.Dropout(0.3), nn.Linear(16, 5),
        )

    def forward(self, x):
        return self.head(self.features(x))


class FunctionalDropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        hidden = torch.relu(self.body(x))
        return self.out(F.dropout(hidden, 0.4, training=self.training))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent control flow defeats torch.fx
            x = self.a(x)
        return self.b(self.drop(x))


class Channelwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.drop2d = nn.Dropout2d(0.3)
        self.spatial = dropkit.SpatialDropout(0.2)
        self.alpha = nn.AlphaDropout(0.1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        x = self.spatial(self.drop2d(torch.relu(self.conv(x))))
        return self.fc(self.alpha(x.flatten(1)))


def _fresh(cls):
    torch.manual_seed(0)
    return cls().eval()


@pytest.mark.parametrize("cls", [HeadDropoutCNN, FunctionalDropoutNet, Channelwise])
@pytest.mark.parametrize("consistent", [False, True])
def test_fast_path_equals_loop(cls, consistent):
    model = _fresh(cls)
    shape = {HeadDropoutCNN: (6, 1, 8, 8), FunctionalDropoutNet: (6, 6), Channelwise: (6, 2, 4, 4)}
    x = torch.randn(shape[cls])
    with warnings.catch_warnings():
        warnings.simplefilter("error", mc.MCFallbackWarning)
        fast = mc.predict(model, x, 7, seed=11, consistent=consistent)
    loop = mc.predict(model, x, 7, seed=11, consistent=consistent, fast=False)
    assert fast.samples.shape == (7, 6, *loop.samples.shape[2:])
    torch.testing.assert_close(fast.samples, loop.samples, rtol=1e-6, atol=1e-6)
    # The samples really differ (dropout sampled), and chunking does not change them.
    assert fast.samples.std(0).max() > 0
    chunked = mc.predict(model, x, 7, seed=11, consistent=consistent, batch_size=4)
    torch.testing.assert_close(chunked.samples, fast.samples, rtol=1e-6, atol=1e-6)


def test_seeded_mask_is_the_philox_contract():
    # A lone nn.Dropout: sample t, row r must use keep_mask(stream (fold_seed(seed, t), r)).
    model = nn.Sequential(nn.Dropout(0.5))
    x = torch.ones(3, 40)
    result = mc.predict(model, x, 2, seed=5, task="regression", tau=1.0)
    threshold = round(0.5 * 2**16)
    for t in range(2):
        for r in range(3):
            keep = keep_mask((40,), threshold, fold_seed(5, t), r)
            torch.testing.assert_close(result.samples[t, r], keep.float() * 2.0)


def test_consistent_shares_masks_across_inputs():
    model = _fresh(HeadDropoutCNN)
    x = torch.randn(1, 1, 8, 8).repeat(5, 1, 1, 1)
    shared = mc.predict(model, x, 4, seed=1, consistent=True).samples
    assert torch.equal(shared, shared[:, :1].expand_as(shared))
    independent = mc.predict(model, x, 4, seed=1).samples
    assert not torch.equal(independent, independent[:, :1].expand_as(independent))


def test_untraceable_model_falls_back_with_notice():
    model = _fresh(Untraceable)
    x = torch.randn(4, 5)
    with pytest.warns(mc.MCFallbackWarning, match="cannot trace"):
        result = mc.predict(model, x, 5, seed=0)
    loop = mc.predict(model, x, 5, seed=0, fast=False)
    assert torch.equal(result.samples, loop.samples)


def test_unseeded_fast_path_samples_and_is_reproducible():
    model = _fresh(HeadDropoutCNN)
    x = torch.randn(3, 1, 8, 8)
    torch.manual_seed(3)
    a = mc.predict(model, x, 10).samples
    torch.manual_seed(3)
    b = mc.predict(model, x, 10).samples
    assert torch.equal(a, b)
    assert a.std(0).max() > 0


def test_mc_mode_keeps_batchnorm_in_eval_and_restores_on_exception():
    model = _fresh(HeadDropoutCNN)
    model.features[1].train()  # an unusual mix the context must restore exactly
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with mc.mc_mode(model):
            assert not model.features[1].training  # BatchNorm
            assert model.head[1].training and model.head[4].training  # both dropouts
            assert not model.training
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before


def test_batchnorm_running_stats_untouched_by_predict():
    model = _fresh(HeadDropoutCNN)
    stats = model.features[1].running_mean.clone()
    mc.predict(model, torch.randn(8, 1, 8, 8) * 5 + 3, 5)
    assert torch.equal(model.features[1].running_mean, stats)


def test_result_math():
    probs = torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]])
    result = mc.MCResult(probs, "classification", logits=False)
    torch.testing.assert_close(result.mean, torch.full((2, 2), 0.5))
    ln2 = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(result.predictive_entropy, torch.stack([ln2, ln2]))
    h = -(0.9 * torch.log(torch.tensor(0.9)) + 0.1 * torch.log(torch.tensor(0.1)))
    torch.testing.assert_close(result.expected_entropy, torch.stack([h, ln2]))
    # Disagreeing samples carry mutual information; identical ones none.
    torch.testing.assert_close(result.mutual_information, torch.stack([ln2 - h, torch.tensor(0.0)]))
    torch.testing.assert_close(result.variance[0], torch.tensor([0.16, 0.16]))


def test_mutual_information_nonnegative_on_random_logits():
    torch.manual_seed(0)
    result = mc.MCResult(torch.randn(30, 50, 6) * 3, "classification")
    assert (result.mutual_information >= 0).all()
    assert (result.predictive_entropy >= result.expected_entropy - 1e-6).all()
    assert torch.allclose(result.probs.sum(-1), torch.ones(30, 50))


def test_regression_variance_adds_noise_and_log_likelihood():
    samples = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    result = mc.MCResult(samples, "regression", tau=4.0)
    torch.testing.assert_close(result.mean, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(result.variance, torch.tensor([1.25, 0.25]))
    torch.testing.assert_close(result.epistemic_variance, torch.tensor([1.0, 0.0]))
    assert result.log_likelihood(torch.tensor([2.0, 2.0])) == pytest.approx(
        dropkit.metrics.mc_log_likelihood(samples, torch.tensor([2.0, 2.0]), 4.0)
    )
    with pytest.raises(ValueError, match="task='classification'"):
        result.predictive_entropy  # noqa: B018


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"samples": 0}, ValueError, "samples \\(T\\) must be an int >= 1, but got 0"),
        ({"samples": 2.5}, ValueError, "but got 2.5"),
        ({"task": "regression"}, ValueError, "needs tau"),
        ({"task": "regression", "tau": -1.0}, ValueError, "tau must be a positive"),
        ({"tau": 1.0}, ValueError, "applies to task='regression' only"),
        ({"task": "ranking"}, ValueError, "task must be"),
        ({"batch_size": 0}, ValueError, "batch_size must be"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    model = _fresh(FunctionalDropoutNet)
    args = {"samples": 3, **kwargs}
    with pytest.raises(error, match=message):
        mc.predict(model, torch.randn(2, 6), **args)


def test_nan_input_rejected():
    x = torch.randn(3, 6)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 NaN"):
        mc.predict(_fresh(FunctionalDropoutNet), x, 3)


def test_no_stochastic_layer_warns():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.warns(mc.NoStochasticLayerWarning, match="all be equal"):
        result = mc.predict(model, torch.randn(4, 3), 3)
    assert torch.equal(result.samples[0], result.samples[2])


def test_custom_stochastic_module_detected_and_sampled():
    class Noise(nn.Module):
        dropkit_stochastic = True

        def forward(self, x):
            return x + torch.randn_like(x) if self.training else x

    model = nn.Sequential(nn.Linear(3, 3), Noise())
    assert [n for n, _ in mc.stochastic_modules(model)] == ["1"]
    x = torch.randn(2, 3)
    fast = mc.predict(model, x, 4, seed=2, task="regression", tau=1.0)
    loop = mc.predict(model, x, 4, seed=2, task="regression", tau=1.0, fast=False)
    assert torch.equal(fast.samples, loop.samples)  # unknown kinds loop per sample, seeded
    assert fast.samples.std(0).max() > 0


def test_model_mode_preserved_by_predict():
    model = _fresh(HeadDropoutCNN).train()
    mc.predict(model, torch.randn(2, 1, 8, 8), 2)
    assert all(m.training for m in model.modules())


def test_weight_scaling_vs_mc():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3)).eval()
    x = torch.randn(64, 4)
    y = model(x).argmax(-1)  # labels the eval network gets right by construction
    comparison = mc.weight_scaling_vs_mc(model, [(x[:32], y[:32]), (x[32:], y[32:])], (1, 50))
    assert comparison.weight_scaling_error == 0.0
    assert comparison.examples == 64
    # One thinned net errs more often than the 50-sample average.
    assert comparison.mc_error[0] > comparison.mc_error[1]
    assert "T=50" in str(comparison)


@pytest.mark.parametrize("threshold", [0, 1, 32768, 65535, 65536])
def test_sample_masks_follow_the_rng_contract(threshold):
    from dropkit.mc import _keep
    from dropkit.random import random_bits16

    seeds, offsets = [3, 2**64 - 1, 12345], [0, 7, (5 << 48) | 9]
    keep = _keep(seeds, offsets, 37, threshold, "cpu")
    for t, seed in enumerate(seeds):
        for r, offset in enumerate(offsets):
            assert torch.equal(keep[t, r], random_bits16(37, seed, offset) < threshold)
