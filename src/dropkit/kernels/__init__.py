"""Backends that apply a Philox keep-mask: ``y = keep ? x * scale : 0``.

This package is the one seam between dropkit's ops and the code that touches
memory. Every backend implements the same two calls on a *contiguous* tensor,
where element ``i`` of the flattened tensor uses 16-bit lane ``i`` of the
stream ``(seed, offset)`` (see :mod:`dropkit.random`):

* ``mask_scale(x, seed, offset, threshold, scale) -> Tensor`` (new tensor)
* ``mask_scale_(x, seed, offset, threshold, scale) -> Tensor`` (in place)

``scale`` is applied in float32 for float16/bfloat16/float32 inputs and in
float64 for float64 inputs, then rounded once to the input dtype, so every
backend produces the same bits.
"""

from __future__ import annotations

from torch import Tensor

from dropkit.kernels import reference

__all__ = ["mask_scale", "mask_scale_", "backend_name"]


def backend_name(x: Tensor | None = None) -> str:
    """Name of the backend that would serve ``x`` (``"reference"`` here)."""
    return "reference"


def mask_scale(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    return reference.mask_scale(x, seed, offset, threshold, scale)


def mask_scale_(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    return reference.mask_scale_(x, seed, offset, threshold, scale)
