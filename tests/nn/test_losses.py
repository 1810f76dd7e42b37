"""r_drop_loss: the symmetric KL of R-Drop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F

import dropkit
from dropkit import r_drop_loss


def test_r_drop_loss_is_symmetric_kl_of_official_code():
    torch.manual_seed(0)
    a, b = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    # The official implementation: kl_div both ways, summed, halved.
    p_loss = torch_F.kl_div(torch_F.log_softmax(a, -1), torch_F.softmax(b, -1), reduction="none")
    q_loss = torch_F.kl_div(torch_F.log_softmax(b, -1), torch_F.softmax(a, -1), reduction="none")
    official = (p_loss.sum() + q_loss.sum()) / 2
    assert torch.allclose(r_drop_loss(a, b, "sum"), official)
    assert torch.allclose(r_drop_loss(a, b), official / 6)
    assert torch.allclose(r_drop_loss(a, b, "none"), (p_loss + q_loss).sum(-1) / 2)
    assert torch.allclose(r_drop_loss(a, b), r_drop_loss(b, a))
    assert float(r_drop_loss(a, a)) == 0.0
    assert torch.isfinite(r_drop_loss(a * 1e4, b * 1e4))


def test_r_drop_loss_with_two_dropout_passes_and_grad():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), dropkit.Dropout(0.5), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4)
    loss = r_drop_loss(model(x), model(x))
    assert float(loss) > 0.0
    loss.backward()
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(r_drop_loss, (a, b))
    per_token = r_drop_loss(torch.randn(2, 5, 7), torch.randn(2, 5, 7), "none", dim=1)
    assert per_token.shape == (2, 7)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: r_drop_loss(torch.ones(2, 3), torch.ones(2, 4)),
            ValueError,
            r"\(2, 3\) and \(2, 4\)",
        ),
        (lambda: r_drop_loss(torch.ones(2, 3), torch.ones(2, 3), "avg"), ValueError, "'avg'"),
        (lambda: r_drop_loss([1.0], torch.ones(1)), TypeError, "list"),
    ],
)
def test_r_drop_loss_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
