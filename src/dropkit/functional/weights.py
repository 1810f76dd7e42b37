"""Dropout on weights instead of activations: DropConnect."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dropkit.functional.standard import Offset, dropout

__all__ = ["drop_connect"]


def drop_connect(
    weight: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Zero each weight with probability ``p`` and scale survivors by ``1 / (1 - p)``.

    Wan, Zeiler, Zhang, LeCun & Fergus (2013), "Regularization of neural networks
    using DropConnect" (ICML). Pass the result to the layer's functional form,
    e.g. ``F.linear(x, drop_connect(w, 0.5), b)``; one mask serves the whole batch.

    Example::

        >>> w = torch.randn(10, 20, requires_grad=True)
        >>> y = torch.nn.functional.linear(torch.randn(4, 20), drop_connect(w, 0.5, seed=0))
    """
    return dropout(weight, p, training, seed=seed, offset=offset, generator=generator)
