"""Additive and multiplicative Gaussian noise: gaussian_dropout and gaussian_noise.

The noise comes from :func:`dropkit.random.normal`, the Philox contract's
normal stream, so a ``seed`` (or ``torch.manual_seed``) reproduces it.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from dropkit import _ops
from dropkit.functional.checks import validate_input, validate_p
from dropkit.functional.standard import Offset
from dropkit.random import SeedLike, draw_seed, normal

__all__ = [
    "gaussian_dropout",
    "gaussian_noise",
    "noise_seed",
    "validate_gaussian_p",
    "validate_std",
]


def noise_seed(seed: Optional[int], generator: Optional[torch.Generator]) -> SeedLike:
    """The seed of a noise draw: ``seed``, or one drawn from torch's generator.

    Inside a torch.compile graph the drawn seed stays a 0-d tensor: an int would
    be a data-dependent guard and break ``fullgraph=True``.
    """
    if seed is not None:
        return seed
    if _ops.graph_building():
        return torch.randint(0, 2**63 - 1, (), dtype=torch.int64, generator=generator)
    return draw_seed(generator)


def _noise(
    input: Tensor, seed: Optional[int], offset: Offset, generator: Optional[torch.Generator]
) -> Tensor:
    # Half types draw in float32: Box-Muller's log/cos lose too much in fp16.
    dtype = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    return normal(
        input.shape, noise_seed(seed, generator), offset, device=input.device, dtype=dtype
    )


def validate_gaussian_p(p: float) -> float:
    p = validate_p(p)
    if p == 1.0:
        raise ValueError(
            "gaussian_dropout probability has to be in [0, 1): the noise variance "
            "p / (1 - p) is infinite at p = 1, but got 1.0"
        )
    return p


def gaussian_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Multiply each element by ``N(1, p / (1 - p))`` noise.

    Srivastava et al. (2014), "Dropout: a simple way to prevent neural networks
    from overfitting", section 10: Gaussian noise with the mean and variance of
    inverted Bernoulli dropout at rate ``p``, which the authors found to work as
    well or better. Use it where zeros hurt (e.g. small layers) or as Keras'
    ``GaussianDropout(rate)``; it is the basis of variational dropout.

    Args:
        input: floating-point tensor of any shape.
        p: the equivalent drop rate, in ``[0, 1)``.
        training: apply (``True``) or return ``input`` (``False``; ``E[y] = x``).
        seed, offset, generator: the Philox stream.

    Example::

        >>> y = gaussian_dropout(torch.randn(32, 128), p=0.3, seed=0)
    """
    p = validate_gaussian_p(p)
    validate_input(input, "gaussian_dropout")
    if not training or p == 0.0 or input.numel() == 0:
        return input
    std = math.sqrt(p / (1.0 - p))
    factor = _noise(input, seed, offset, generator).mul_(std).add_(1.0)
    return input * factor.to(input.dtype)


def validate_std(std: float) -> float:
    if isinstance(std, bool) or not isinstance(std, numbers.Real):
        raise TypeError(f"noise std has to be a non-negative float, but got {std!r}")
    std = float(std)
    if not math.isfinite(std) or std < 0.0:
        raise ValueError(f"noise std has to be finite and >= 0, but got {std}")
    return std


def gaussian_noise(
    input: Tensor,
    std: float = 0.1,
    training: bool = True,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Add ``N(0, std^2)`` noise during training (Keras ``GaussianNoise``).

    Additive input noise is equivalent to Tikhonov regularisation (Bishop, 1995,
    "Training with noise is equivalent to Tikhonov regularization"). Use it on
    real-valued inputs (sensors, audio features) or as a data augmentation.

    Example::

        >>> y = gaussian_noise(torch.randn(32, 16), std=0.1, seed=0)
    """
    std = validate_std(std)
    validate_input(input, "gaussian_noise")
    if not training or std == 0.0 or input.numel() == 0:
        return input
    return input + _noise(input, seed, offset, generator).mul_(std).to(input.dtype)
