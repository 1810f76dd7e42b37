"""ConcreteDropout: relaxation, learned rate, regulariser, errors."""

from __future__ import annotations

import math

import pytest
import torch

import dropkit
from dropkit.functional import concrete_dropout


def _logit(p: float) -> torch.Tensor:
    return torch.tensor(math.log(p / (1 - p)), dtype=torch.float64)


def test_low_temperature_is_inverted_dropout_at_rate_p():
    n, p = 100_000, 0.3
    y = concrete_dropout(torch.ones(n, dtype=torch.float64), _logit(p), 1e-3, seed=1)
    dropped = (y < 0.5).double().mean().item()
    assert abs(dropped - p) < 6 * math.sqrt(p * (1 - p) / n)  # 6 binomial sigma
    # The relaxation is soft only where logit(u) is within a few temperatures of logit(1 - p).
    hard = (y.abs() < 1e-3) | ((y - 1 / (1 - p)).abs() < 1e-3)
    assert float(hard.double().mean()) > 0.99


def test_concrete_dropout_gradients_reach_the_rate():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    logit = _logit(0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t, l: concrete_dropout(t, l, 0.5, seed=3), (x, logit)
    )


def test_regularizer_matches_paper_formula_and_pushes_entropy_up():
    drop = dropkit.ConcreteDropout(0.1, weight_regularizer=1e-2, dropout_regularizer=1e-1)
    layer = torch.nn.Linear(5, 2)
    drop(torch.randn(8, 5))
    assert drop.input_features == 5
    p = drop.p
    squares = sum(float(t.detach().pow(2).sum()) for t in layer.parameters())
    expected = 1e-2 * squares / (1 - p) + 1e-1 * 5 * (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert float(drop.regularization(layer).detach()) == pytest.approx(expected, rel=1e-5)
    # With no weights to pay for, the entropy term alone moves p from 0.1 towards 0.5.
    entropy_only = dropkit.ConcreteDropout(0.1, weight_regularizer=0.0, dropout_regularizer=1.0)
    optimiser = torch.optim.SGD(entropy_only.parameters(), lr=0.1)
    for _ in range(20):
        loss = entropy_only.regularization([torch.zeros(1)], input_features=4)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert 0.2 < entropy_only.p < 0.5


def test_concrete_dropout_eval_identity_and_reproducibility():
    x = torch.randn(4, 6)
    drop = dropkit.ConcreteDropout(0.2, seed=4)
    assert torch.equal(drop(x), dropkit.ConcreteDropout(0.2, seed=4)(x))
    fixed = dropkit.ConcreteDropout(0.2, seed=4, fixed_mask=True)
    assert torch.equal(fixed(x), fixed(x))
    assert drop.eval()(x) is x
    assert "p=0.2000" in repr(drop)


def test_p_moves_when_training_a_regression():
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(512, 1)
    drop = dropkit.ConcreteDropout(0.3, weight_regularizer=1e-4, dropout_regularizer=2e-3)
    hidden, head = torch.nn.Linear(8, 64), torch.nn.Linear(64, 1)
    params = [*drop.parameters(), *hidden.parameters(), *head.parameters()]
    optimiser = torch.optim.Adam(params, lr=1e-2)
    for _ in range(150):
        prediction = head(drop(torch.relu(hidden(x))))
        loss = torch.nn.functional.mse_loss(prediction, y) + drop.regularization(head)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # Adam moves p_logit about lr per step; a stuck rate would stay at 0.3.
    assert abs(drop.p - 0.3) > 0.05, drop.p
    assert 0.0 < drop.p < 1.0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: dropkit.ConcreteDropout(0.0), ValueError, "strictly between 0 and 1, but got 0.0"),
        (lambda: dropkit.ConcreteDropout(1.5), ValueError, "p_init has to be between 0 and 1"),
        (lambda: dropkit.ConcreteDropout(temperature=0), ValueError, "temperature.*> 0, but got 0"),
        (
            lambda: dropkit.ConcreteDropout(weight_regularizer=-1),
            ValueError,
            "weight_regularizer.*>= 0, but got -1",
        ),
        (lambda: dropkit.ConcreteDropout().regularization([]), ValueError, "got \\[\\]"),
        (
            lambda: dropkit.ConcreteDropout().regularization(torch.nn.Linear(2, 2)),
            RuntimeError,
            "call the module on a batch first",
        ),
    ],
)
def test_concrete_dropout_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
