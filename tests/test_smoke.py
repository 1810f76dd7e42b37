import torch

import dropkit


def test_dropout_values_are_zero_or_scaled():
    y = dropkit.functional.dropout(torch.ones(10_000), 0.5, seed=1)
    assert set(y.unique().tolist()) == {0.0, 2.0}
