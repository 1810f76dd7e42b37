"""Losses built on dropout: the R-Drop consistency regulariser."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["r_drop_loss"]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def r_drop_loss(
    logits1: Tensor,
    logits2: Tensor,
    reduction: Reduction = "mean",
    *,
    dim: int = -1,
) -> Tensor:
    """Symmetric KL divergence between the predictions of two dropout passes.

    Liang, Wu, Li, Wang, Meng, Qin, Chen, Zhang & Liu (2021), "R-Drop:
    Regularized dropout for neural networks" (NeurIPS). Run the same batch
    through the model twice in training mode (two dropout masks) and add
    ``alpha * r_drop_loss(logits1, logits2)`` to the two task losses; it pushes
    the sub-models dropout samples to agree. The paper uses ``alpha`` 0.3-5.

    Per sample ``(KL(P1 || P2) + KL(P2 || P1)) / 2`` over the class axis ``dim``,
    computed as ``sum((P1 - P2) * (log P1 - log P2)) / 2`` from log-softmax, so
    it is finite for any logits.

    Args:
        logits1, logits2: unnormalised scores of one shape, classes on ``dim``.
        reduction: ``"mean"`` over samples (every axis but ``dim``), ``"sum"``
            (the official code's choice), or ``"none"`` (shape without ``dim``).
        dim: class axis.

    Example::

        >>> a, b = model(x), model(x)            # model in train mode
        >>> loss = ce(a, y) + ce(b, y) + 1.0 * r_drop_loss(a, b)
    """
    if not isinstance(logits1, Tensor) or not isinstance(logits2, Tensor):
        raise TypeError(
            f"r_drop_loss expects two tensors, but got {type(logits1).__name__} "
            f"and {type(logits2).__name__}"
        )
    if logits1.shape != logits2.shape:
        raise ValueError(
            f"r_drop_loss expects logits of one shape, but got {tuple(logits1.shape)} "
            f"and {tuple(logits2.shape)}"
        )
    if logits1.dim() == 0:
        raise ValueError("r_drop_loss expects logits with a class axis, but got 0-D tensors")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction has to be one of {_REDUCTIONS}, but got {reduction!r}")
    log_p1 = torch.log_softmax(logits1, dim=dim)
    log_p2 = torch.log_softmax(logits2, dim=dim)
    per_sample = 0.5 * ((log_p1.exp() - log_p2.exp()) * (log_p1 - log_p2)).sum(dim=dim)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
