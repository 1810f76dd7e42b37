"""Dropout whose rate is learned: concrete_dropout."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dropkit.functional.checks import validate_input, validate_positive
from dropkit.functional.noise import noise_seed
from dropkit.functional.standard import Offset
from dropkit.random import uniform

__all__ = ["concrete_dropout"]

# Keeps log(u) and log(1 - u) finite: uniform() can return exactly 0.
_UNIFORM_EPS = 1e-7


def concrete_dropout(
    input: Tensor,
    p_logit: Tensor,
    temperature: float = 0.1,
    training: bool = True,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Relaxed-Bernoulli dropout, differentiable in the drop probability ``sigmoid(p_logit)``.

    Gal, Hron & Kendall (2017), "Concrete Dropout" (NeurIPS). The Bernoulli mask
    is replaced by its Concrete (Gumbel-sigmoid) relaxation
    ``z = sigmoid((logit(p) + log u - log(1 - u)) / temperature)``, ``u ~ U(0, 1)``,
    and the output is ``x * (1 - z) / (1 - p)``; as ``temperature -> 0`` this is
    inverted dropout at rate ``p``. Gradients reach both ``input`` and ``p_logit``.

    Args:
        input: floating-point tensor of any shape.
        p_logit: scalar (one-element) floating-point tensor, ``log(p) - log(1 - p)``.
        temperature: relaxation temperature (> 0); the paper uses 0.1.
        training: apply (``True``) or return ``input`` (``False``).
        seed, offset, generator: the Philox stream for ``u``.

    Example::

        >>> logit = torch.tensor(-2.0, requires_grad=True)
        >>> y = concrete_dropout(torch.randn(8, 16), logit, seed=0)
        >>> y.sum().backward(); logit.grad is not None
        True
    """
    validate_input(input, "concrete_dropout")
    if not isinstance(p_logit, Tensor) or p_logit.numel() != 1 or not p_logit.is_floating_point():
        kind = (
            f"a {p_logit.dtype} tensor of shape {tuple(p_logit.shape)}"
            if isinstance(p_logit, Tensor)
            else f"{type(p_logit).__name__} {p_logit!r}"
        )
        raise TypeError(
            "concrete_dropout expects p_logit as a one-element floating-point tensor "
            f"(log p - log(1 - p), e.g. torch.tensor(-2.0)), but got {kind}"
        )
    temperature = validate_positive(temperature, "temperature")
    if not training or input.numel() == 0:
        return input
    dtype = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    u = uniform(
        input.shape, noise_seed(seed, generator), offset, device=input.device, dtype=dtype
    )
    u = u.clamp(_UNIFORM_EPS, 1.0 - _UNIFORM_EPS)
    logit = p_logit.reshape(()).to(dtype)
    drop = torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / temperature)
    keep_prob = torch.sigmoid(-logit)
    return input * ((1.0 - drop) / keep_prob).to(input.dtype)
