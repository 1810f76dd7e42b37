"""max_norm_ and MaxNorm: the max-norm constraint of Srivastava et al. (2014), s.5.1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))


def _row_norms(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().flatten(1).norm(dim=1)


def test_module_rows_end_at_the_bound_and_biases_are_untouched():
    net = _net()
    with torch.no_grad():
        net[0].weight.mul_(10.0)          # every row far above the bound
        net[0].bias.fill_(50.0)
    before = net[0].weight.clone()
    assert dropkit.max_norm_(net, 1.5) == 2
    norms = _row_norms(net[0])
    torch.testing.assert_close(norms, torch.full_like(norms, 1.5), rtol=1e-5, atol=0)
    # Direction kept: each row is the old row times a positive factor.
    cosine = nn.functional.cosine_similarity(before, net[0].weight, dim=1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))
    assert torch.all(net[0].bias == 50.0)


def test_rows_below_the_bound_are_bit_for_bit_unchanged():
    net = _net()
    with torch.no_grad():
        net[0].weight[:8].mul_(100.0)     # half the rows above, half below
    bound = float(_row_norms(net[0])[8:].max()) + 1e-3
    below = net[0].weight[8:].clone()
    dropkit.max_norm_(net, bound)
    assert torch.equal(net[0].weight[8:], below)
    assert float(_row_norms(net[0])[:8].max()) <= bound * (1 + 1e-6)


def test_conv_filters_and_conv_transpose_output_channels():
    conv = nn.Conv2d(3, 5, 3)
    deconv = nn.ConvTranspose2d(5, 2, 3)
    with torch.no_grad():
        conv.weight.mul_(100.0)
        deconv.weight.mul_(100.0)
    dropkit.max_norm_(nn.Sequential(conv, deconv), 0.5)
    assert float(conv.weight.detach().flatten(1).norm(dim=1).max()) <= 0.5 * (1 + 1e-6)
    # ConvTranspose weight is (in, out, kH, kW): an output channel's weights are dim 1.
    per_output = deconv.weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
    assert float(per_output.max()) <= 0.5 * (1 + 1e-6)


def test_parameters_iterable_skips_one_dimensional_tensors():
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(100.0)
    bias = net[2].bias.clone()
    assert dropkit.max_norm_(net.parameters(), 1.0) == 2
    assert torch.equal(net[2].bias, bias)
    assert float(_row_norms(net[2]).max()) <= 1.0 + 1e-6


def test_explicit_dim_constrains_columns():
    weight = torch.randn(6, 9) * 10
    dropkit.max_norm_(weight, 2.0, dim=1)
    assert float(weight.norm(dim=0).max()) <= 2.0 * (1 + 1e-6)


def test_max_norm_hook_bounds_norms_after_every_step():
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=5.0, momentum=0.9)
    constraint = dropkit.MaxNorm(net, 0.8, optimizer=optimizer)
    x, y = torch.randn(64, 20), torch.randint(0, 4, (64,))
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        for layer in (net[0], net[2]):
            assert float(_row_norms(layer).max()) <= 0.8 * (1 + 1e-6)
    # With lr 5 the rows were pushed to the bound: the constraint was active.
    assert float(_row_norms(net[0]).max()) > 0.79
    constraint.remove()
    with torch.no_grad():
        net[0].weight.mul_(10.0)
    optimizer.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
    assert float(_row_norms(net[0]).max()) > 1.0   # no longer applied


def test_max_norm_on_an_optimizer():
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with torch.no_grad():
        net[0].weight.mul_(50.0)
    dropkit.MaxNorm(optimizer, 1.0)                # applied at construction
    assert float(_row_norms(net[0]).max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_max_norm_is_named(bad):
    with pytest.raises(ValueError, match="max_norm has to be a positive finite float"):
        dropkit.max_norm_(_net(), bad)


def test_non_numeric_max_norm_and_dim_are_named():
    with pytest.raises(TypeError, match="max_norm has to be a positive float, but got 'two'"):
        dropkit.max_norm_(_net(), "two")
    with pytest.raises(TypeError, match="max_norm has to be a positive float, but got True"):
        dropkit.max_norm_(_net(), True)
    with pytest.raises(TypeError, match="dim has to be an int or None, but got 0.5"):
        dropkit.max_norm_(_net(), 1.0, dim=0.5)


def test_dim_out_of_range_names_the_tensor():
    with pytest.raises(ValueError, match=r"dim has to be in \[-2, 1\] for 0.weight .* got 2"):
        dropkit.max_norm_(_net(), 1.0, dim=2)
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="got 3"):
        dropkit.MaxNorm(net, 1.0, dim=3, optimizer=optimizer)


def test_module_without_weights_and_missing_optimizer_are_errors():
    with pytest.raises(ValueError, match="no Linear or convolution weight in ReLU"):
        dropkit.max_norm_(nn.ReLU(), 1.0)
    with pytest.raises(ValueError, match="needs optimizer="):
        dropkit.MaxNorm(_net(), 1.0)
    with pytest.raises(TypeError, match="item 1 is a str"):
        dropkit.max_norm_([torch.zeros(2, 2), "w"], 1.0)
