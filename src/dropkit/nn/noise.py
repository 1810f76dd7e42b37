"""GaussianDropout and GaussianNoise: thin wrappers over :mod:`dropkit.functional.noise`."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from dropkit import functional as F
from dropkit.functional.noise import validate_gaussian_p, validate_std
from dropkit.nn.base import SeedStream

__all__ = ["GaussianDropout", "GaussianNoise"]


class GaussianDropout(SeedStream, nn.Module):
    """Multiplicative ``N(1, p / (1 - p))`` noise (Srivastava et al., 2014, section 10).

    See :func:`gaussian_dropout`. Keras: ``GaussianDropout(rate=p)``.

    Shape: any; output has the input's shape. Identity in eval mode.

    Example::

        >>> layer = dropkit.GaussianDropout(0.3)
        >>> y = layer(torch.randn(32, 128))
    """

    def __init__(
        self,
        p: float = 0.5,
        *,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        self.p = validate_gaussian_p(p)
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, input: Tensor) -> Tensor:
        offset = self._next_offset() if self.training else 0
        return F.gaussian_dropout(input, self.p, self.training, seed=self.seed, offset=offset)


class GaussianNoise(SeedStream, nn.Module):
    """Additive ``N(0, std^2)`` noise during training (Keras ``GaussianNoise(stddev)``).

    See :func:`gaussian_noise`. Shape: any; identity in eval mode.

    Example::

        >>> layer = dropkit.GaussianNoise(0.1)
        >>> y = layer(torch.randn(32, 16))
    """

    def __init__(
        self,
        std: float = 0.1,
        *,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        self.std = validate_std(std)
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        return f"std={self.std}"

    def forward(self, input: Tensor) -> Tensor:
        offset = self._next_offset() if self.training else 0
        return F.gaussian_noise(input, self.std, self.training, seed=self.seed, offset=offset)
