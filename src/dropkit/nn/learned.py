"""Dropout whose rate is learned: ConcreteDropout, over ``functional.concrete_dropout``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Optional, Union

import torch
from torch import Tensor, nn

from dropkit import functional as F
from dropkit.functional.checks import validate_p, validate_positive
from dropkit.nn.base import SeedStream

__all__ = ["ConcreteDropout"]


class ConcreteDropout(SeedStream, nn.Module):
    """Dropout with a learned rate ``p`` (Gal, Hron & Kendall, 2017, "Concrete Dropout").

    Use it instead of a grid search over dropout rates, and when the rate
    matters for calibrated uncertainty (MC dropout): each layer learns its own
    ``p``. The rate only moves sensibly when the loss includes the layer's
    regulariser, so add :meth:`regularization` of the layer that consumes this
    output::

        loss = nll + sum(cd.regularization(layer) for cd, layer in pairs)

    The paper's settings: ``weight_regularizer = l**2 / N`` and
    ``dropout_regularizer = 2 / (tau * N)`` for ``N`` training points, prior
    length-scale ``l`` and model precision ``tau``; the defaults suit N of a
    few thousand.

    Args:
        p_init: initial drop probability, in ``(0, 1)``.
        temperature: Concrete relaxation temperature (> 0).
        weight_regularizer: weight-decay factor of the following layer's
            parameters, divided by the keep probability.
        dropout_regularizer: factor of the negative Bernoulli entropy term.
        seed: Philox stream of the noise (``None``: a new seed per call from
            torch's generator); ``fixed_mask``/``persist_stream`` as in
            :mod:`dropkit.nn.base`.

    Shape: any ``(N, *)``; output has the input's shape. Identity in eval mode.

    Example::

        >>> drop, layer = dropkit.ConcreteDropout(p_init=0.1), torch.nn.Linear(16, 1)
        >>> y = layer(drop(torch.randn(32, 16)))
        >>> loss = y.pow(2).mean() + drop.regularization(layer)
    """

    def __init__(
        self,
        p_init: float = 0.1,
        *,
        temperature: float = 0.1,
        weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        p_init = validate_p(p_init, "p_init")
        if p_init in (0.0, 1.0):
            raise ValueError(f"p_init has to be strictly between 0 and 1, but got {p_init}")
        self.temperature = validate_positive(temperature, "temperature")
        self.weight_regularizer = validate_positive(
            weight_regularizer, "weight_regularizer", allow_zero=True
        )
        self.dropout_regularizer = validate_positive(
            dropout_regularizer, "dropout_regularizer", allow_zero=True
        )
        self._init_stream(seed, fixed_mask, persist_stream)
        self.p_logit = nn.Parameter(torch.tensor(math.log(p_init) - math.log1p(-p_init)))
        self.input_features: Optional[int] = None

    @property
    def p(self) -> float:
        """The current drop probability ``sigmoid(p_logit)``, as a float."""
        return float(torch.sigmoid(self.p_logit.detach()))

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}, temperature={self.temperature}"

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() >= 1:
            # The entropy term scales with the units dropped per sample (the paper's K):
            # the product of the non-batch sizes, defined also for an empty batch.
            features = 1
            for size in input.shape[1:] if input.dim() > 1 else input.shape:
                features *= size
            self.input_features = features
        return F.concrete_dropout(
            input,
            self.p_logit,
            self.temperature,
            self.training,
            seed=self.seed,
            offset=self._next_offset() if self.training else 0,
        )

    def regularization(
        self,
        layer_or_params: Union[nn.Module, Iterable[Tensor]],
        input_features: Optional[int] = None,
    ) -> Tensor:
        """The Concrete-dropout KL term for this layer, to add to the loss.

        ``weight_regularizer * sum(W**2) / (1 - p)
        + dropout_regularizer * K * (p log p + (1 - p) log(1 - p))`` where ``W``
        are the parameters of the layer fed by this dropout and ``K`` is the
        number of dropped units per sample (taken from the last forward, or
        ``input_features``). Differentiable in ``p`` and ``W``.
        """
        params = (
            list(layer_or_params.parameters())
            if isinstance(layer_or_params, nn.Module)
            else list(layer_or_params)
        )
        if not params or not all(isinstance(t, Tensor) for t in params):
            raise ValueError(
                "regularization expects the layer after this dropout (an nn.Module with "
                f"parameters) or an iterable of tensors, but got {layer_or_params!r}"
            )
        features = self.input_features if input_features is None else input_features
        if features is None:
            raise RuntimeError(
                "regularization needs the number of input features: call the module on a "
                "batch first or pass input_features="
            )
        p = torch.sigmoid(self.p_logit)
        # log(p) and log(1 - p) via logsigmoid stay finite for saturated logits.
        log_p = nn.functional.logsigmoid(self.p_logit)
        log_q = nn.functional.logsigmoid(-self.p_logit)
        squares = sum(t.pow(2).sum() for t in params)
        weight_term = self.weight_regularizer * squares / (1.0 - p)
        entropy_term = self.dropout_regularizer * features * (p * log_p + (1.0 - p) * log_q)
        return weight_term + entropy_term
