"""Pure-PyTorch backend: the definition every faster backend must match bit for bit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dropkit.random import keep_mask, random_bits16_streams


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scaled_kept(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    return _apply(x, keep_mask(x.shape, threshold, seed, offset, x.device), scale)


def _apply(x: Tensor, keep: Tensor, scale: float) -> Tensor:
    compute = _compute_dtype(x.dtype)
    scaled = (x.to(compute) * torch.tensor(scale, dtype=compute, device=x.device)).to(x.dtype)
    return torch.where(keep, scaled, torch.zeros((), dtype=x.dtype, device=x.device))


def mask_scale(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    return _scaled_kept(x, seed, offset, threshold, scale)


def mask_scale_(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    return x.copy_(_scaled_kept(x, seed, offset, threshold, scale))


def mask_scale_streams(
    x: Tensor, seeds: Sequence[int], offsets: Sequence[int], threshold: int, scale: float
) -> Tensor:
    numel = x[0, 0].numel() if x.numel() else 0
    lanes = random_bits16_streams(numel, seeds, offsets, x.device)
    return _apply(x, (lanes < threshold).view(x.shape), scale)
