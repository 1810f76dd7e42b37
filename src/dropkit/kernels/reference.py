"""Pure-PyTorch backend: the definition every faster backend must match bit for bit."""

from __future__ import annotations

import torch
from torch import Tensor

from dropkit.random import keep_mask


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scaled_kept(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    keep = keep_mask(x.shape, threshold, seed, offset, x.device)
    compute = _compute_dtype(x.dtype)
    scaled = (x.to(compute) * torch.tensor(scale, dtype=compute, device=x.device)).to(x.dtype)
    return torch.where(keep, scaled, torch.zeros((), dtype=x.dtype, device=x.device))


def mask_scale(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    return _scaled_kept(x, seed, offset, threshold, scale)


def mask_scale_(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    return x.copy_(_scaled_kept(x, seed, offset, threshold, scale))
