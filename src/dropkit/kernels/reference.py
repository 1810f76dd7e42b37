"""Pure-PyTorch backend: the definition every faster backend must match bit for bit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dropkit.random import keep_mask, philox4x32, random_bits16_streams

_MASK32 = 0xFFFFFFFF


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


def _lanes_from_state(numel: int, state: Tensor) -> Tensor:
    # The seed and offset stay tensors on the input's device: no host sync, so
    # this path is safe under torch.compile and inside CUDA graphs. ``>>`` on a
    # negative int64 sign-extends; the mask keeps the 32 bits that matter.
    seed, offset = state.unbind()
    blocks = -(-numel // 8)
    block = torch.arange(blocks, dtype=torch.int64, device=state.device)
    counter = torch.stack(
        (
            block & _MASK32,
            block >> 32,
            (offset & _MASK32).expand(blocks),
            ((offset >> 32) & _MASK32).expand(blocks),
        ),
        dim=-1,
    )
    key = torch.stack((seed & _MASK32, (seed >> 32) & _MASK32))
    words = philox4x32(counter, key)
    return torch.stack((words & 0xFFFF, words >> 16), dim=-1).reshape(-1)[:numel]


def mask_scale_state(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    """``mask_scale`` with ``state = int64[2] [seed, offset]`` (u64 bit patterns) on x's device."""
    keep = (_lanes_from_state(x.numel(), state) < threshold).view(x.shape)
    return _apply(x, keep, scale)


def mask_scale_state_(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    return x.copy_(mask_scale_state(x, state, threshold, scale))
