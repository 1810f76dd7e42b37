"""DropConnect on Linear and Conv layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as torch_F

import dropkit
from dropkit.functional import drop_connect, dropout


def test_drop_connect_linear_equals_masked_weight():
    torch.manual_seed(0)
    layer = torch.nn.Linear(20, 10)
    wrapped = dropkit.DropConnect(layer, 0.5, seed=3)
    x = torch.randn(4, 20)
    masked = dropout(layer.weight, 0.5, seed=3, offset=0)
    assert torch.equal(wrapped(x), torch_F.linear(x, masked, layer.bias))
    wrapped.eval()
    assert torch.equal(wrapped(x), layer(x))


def test_drop_connect_rate_and_unbiased_output():
    # A 1x1 conv on ones: each output = sum over 4000 masked weights of 1/(1-p) * w.
    n, p = 4000, 0.3
    layer = torch.nn.Conv2d(n, 1, 1, bias=False).double()
    torch.nn.init.constant_(layer.weight, 1.0)
    wrapped = dropkit.DropConnect(layer, p, seed=1)
    out = wrapped(torch.ones(1, n, 2, 2, dtype=torch.float64)).detach()
    assert torch.all(out == out[0, 0, 0, 0])  # one mask per forward, shared over positions
    kept = float(out[0, 0, 0, 0]) * (1 - p)
    assert abs(kept / n - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)  # 6 binomial sigma


def test_drop_connect_bias_option_conv1d_and_grad():
    layer = torch.nn.Conv1d(3, 4, 3).double()
    wrapped = dropkit.DropConnect(layer, 0.5, drop_bias=True, seed=2)
    assert wrapped.weights == ("weight", "bias")
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    weight = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda w: torch_F.conv1d(x, drop_connect(w, 0.5, seed=2), layer.bias), (weight,)
    )
    wrapped(x).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


def test_drop_connect_rejects_other_modules_and_bad_p():
    with pytest.raises(TypeError, match="Linear, Conv1d, Conv2d, Conv3d, but got LSTM"):
        dropkit.DropConnect(torch.nn.LSTM(2, 2))
    with pytest.raises(ValueError, match="got 1.1"):
        dropkit.DropConnect(torch.nn.Linear(2, 2), 1.1)
