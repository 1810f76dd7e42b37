"""Structured dropout for convolutional and residual networks: DropBlock and DropPath.

Element-wise dropout barely regularises a CNN: neighbouring activations are
correlated, so the information a dropped pixel carried still flows through its
neighbours. DropBlock drops contiguous squares (cubes) of each feature map;
DropPath drops a whole residual branch for a sample. Both draw their randomness
from dropkit's Philox contract through :func:`dropkit.functional.dropout`, so a
``seed`` (or ``torch.manual_seed``) reproduces every mask.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as torch_F
from torch import Tensor

from dropkit.functional.checks import RankError, validate_inplace, validate_input, validate_p
from dropkit.functional.standard import Offset, dropout, keep_mask_like, multiply_mask
from dropkit.random import keep_scale

__all__ = [
    "BlockSize",
    "block_sizes",
    "drop_block_gamma",
    "expand_seeds",
    "drop_block2d",
    "drop_block3d",
    "drop_path",
]

BlockSize = Union[int, Sequence[int]]


def _product(values: Sequence[int]) -> int:
    # A plain loop, not math.prod over a generator: torch.compile(fullgraph=True)
    # traces it without a graph break.
    total = 1
    for value in values:
        total *= value
    return total


def block_sizes(block_size: BlockSize, spatial: int, op: str) -> tuple[int, ...]:
    """``block_size`` as ``spatial`` positive ints, or a ValueError quoting it."""
    if isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool):
        sizes: tuple = (int(block_size),) * spatial
    elif isinstance(block_size, Sequence) and not isinstance(block_size, str):
        sizes = tuple(block_size)
    else:
        sizes = ()
    if len(sizes) != spatial or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes
    ):
        raise ValueError(
            f"{op}: block_size has to be a positive int or a sequence of {spatial} positive "
            f"ints, but got {block_size!r}"
        )
    return tuple(int(s) for s in sizes)


def _check_rank(input: Tensor, spatial: int, op: str) -> None:
    if input.dim() not in (spatial + 1, spatial + 2):
        layout = "(N, C, H, W)" if spatial == 2 else "(N, C, D, H, W)"
        raise RankError(
            f"{op} expects a {spatial + 2}-D {layout} input or a {spatial + 1}-D unbatched one, "
            f"but got a {input.dim()}-D input of shape {tuple(input.shape)}"
        )


def drop_block_gamma(p: float, feature_size: Sequence[int], block_size: Sequence[int]) -> float:
    """Per-position probability of starting a block (Ghiasi et al., 2018, eq. 1).

    ``gamma = p / prod(block) * prod(feature) / prod(feature - block + 1)``: the
    ``block`` factor turns a per-unit drop rate into a per-block seed rate and
    the last ratio compensates for seeds being drawn only where a whole block
    fits. Overlapping blocks make the realised drop fraction slightly below ``p``.
    """
    valid = _product([f - b + 1 for f, b in zip(feature_size, block_size, strict=True)])
    return p * _product(feature_size) / (_product(block_size) * valid)


def expand_seeds(seeds: Tensor, block_size: tuple[int, ...]) -> Tensor:
    """Coverage (0/1) of the feature map by blocks started at the 1s of ``seeds``."""
    # A seed at valid position i covers [i, i + block). Along each axis, position j
    # of the feature map is covered when a seed lies in [j - block + 1, j]: a sliding
    # window count, computed as the difference of a cumulative sum over the seed grid
    # padded with block zeros before (one for the sum's leading zero) and block - 1
    # after. Linear in the map size whatever the block, and 4x faster on CPU than
    # max-pooling with a block-wide window (2026-11-25, one thread, 32x256x14x14, block 7).
    # Counts of 0/1 values stay exact in float32 far beyond any feature size.
    spatial = len(block_size)
    covered = seeds
    for axis, size in enumerate(block_size):
        if size == 1:
            continue
        dim = covered.dim() - spatial + axis
        pad = [0, 0] * spatial
        pad[2 * (spatial - 1 - axis)] = size
        pad[2 * (spatial - 1 - axis) + 1] = size - 1
        sums = torch_F.pad(covered, pad).cumsum(dim)
        length = covered.shape[dim] + size - 1
        covered = (sums.narrow(dim, size, length) - sums.narrow(dim, 0, length)).clamp_(max=1.0)
    return covered


def _drop_block(
    input: Tensor,
    p: float,
    block_size: BlockSize,
    training: bool,
    spatial: int,
    op: str,
    inplace: bool,
    batchwise: bool,
    share_channels: bool,
    scale_by_keep: bool,
    clip_blocks: bool,
    seed: Optional[int],
    offset: Offset,
    generator: Optional[torch.Generator],
) -> Tensor:
    p = validate_p(p)
    validate_input(input, op)
    _check_rank(input, spatial, op)
    sizes = block_sizes(block_size, spatial, op)
    feature = tuple(input.shape[-spatial:])
    if torch.jit.is_tracing():
        # A trace records sizes as tensors; gamma and the keep threshold are plain
        # numbers of the traced shape (a trace is specialised to its shapes anyway).
        feature = tuple(int(f) for f in feature)
    if clip_blocks:
        sizes = tuple(min(b, f) for b, f in zip(sizes, feature, strict=True))
    elif any(b > f for b, f in zip(sizes, feature, strict=True)):
        raise ValueError(
            f"{op}: block_size {sizes if len(set(sizes)) > 1 else sizes[0]} is larger than "
            f"the feature map {feature} of input shape {tuple(input.shape)}; "
            f"use a block_size <= {min(feature)}"
        )
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if inplace:
        validate_inplace(input, op)
    batched = input.dim() == spatial + 2
    x = input if batched else input.unsqueeze(0)
    batch, channels = x.shape[:2]
    # The paper draws seeds only where a whole block fits; clip_blocks draws them
    # everywhere (timm) and the blocks are centred on them and cut at the edges.
    grid = feature if clip_blocks else tuple(
        f - b + 1 for f, b in zip(feature, sizes, strict=True)
    )
    gamma = drop_block_gamma(p, feature, sizes)
    threshold, _, _ = keep_scale(gamma)
    # Counts run in float32 for half types: cumsum of fp16 loses exactness past 2048.
    mask_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    seed_grid = x.narrow(0, 0, 1) if batchwise else x
    seed_grid = seed_grid.narrow(1, 0, 1) if share_channels else seed_grid
    for axis, size in enumerate(grid):
        seed_grid = seed_grid.narrow(2 + axis, 0, size)
    # 1 = no block starts here, 0 = a block starts (classic scale 1: survivors unscaled).
    no_seed = keep_mask_like(
        seed_grid, (), threshold, 1.0 if threshold else 0.0, seed, offset, generator,
        dtype=mask_dtype,
    )
    covered = expand_seeds(no_seed.neg_().add_(1.0), sizes)
    if clip_blocks:
        # A seed at i covers [i - b // 2, i - b // 2 + b): timm's max-pool window.
        for axis, (size, length) in enumerate(zip(sizes, feature, strict=True)):
            covered = covered.narrow(covered.dim() - spatial + axis, size // 2, length)
    scale = 1.0
    if scale_by_keep:
        # Ghiasi et al., Algorithm 1 step 6: A * count(M) / count_ones(M), over the mask drawn.
        kept = covered.numel() - covered.sum()
        scale = torch.where(kept > 0, covered.numel() / kept.clamp_min(1.0), 0.0)
    # keep = (1 - covered) * scale, built in place: the mask is as large as the input.
    keep = covered.mul_(-scale).add_(scale) if scale_by_keep else covered.neg_().add_(1.0)
    out = multiply_mask(x, keep.to(x.dtype), inplace)
    if inplace:
        return input
    return out if batched else out.squeeze(0)


def drop_block2d(
    input: Tensor,
    p: float = 0.1,
    block_size: BlockSize = 7,
    training: bool = True,
    *,
    inplace: bool = False,
    batchwise: bool = False,
    share_channels: bool = False,
    scale_by_keep: bool = True,
    clip_blocks: bool = False,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Zero contiguous ``block_size x block_size`` squares of each feature map.

    Ghiasi, Lin & Le (2018), "DropBlock: A regularization method for convolutional
    networks" (NeurIPS). Use it after convolutional stages of a CNN (the paper:
    ResNet groups 3 and 4, ``block_size=7``, ``p`` ramped up to 0.1 during
    training), where plain or channel dropout regularises too little.

    Block seeds are drawn only where a whole block fits inside the map (the
    paper's Algorithm 1), at rate :func:`drop_block_gamma`; each seed zeroes the
    block whose top-left corner it is, so blocks never leave the map and odd and
    even sizes behave alike. Survivors are scaled by ``numel / kept`` of the mask.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)`` floating-point tensor.
        p: target fraction of units dropped, in ``[0, 1]``.
        block_size: block edge, an int or ``(h, w)``; at most the feature size.
        training: apply DropBlock (``True``) or return ``input`` (``False``).
        inplace: overwrite ``input`` (torchvision's and timm's ``inplace=True``).
        batchwise: one mask for the whole batch instead of one per sample.
        share_channels: one mask shared by all channels of a sample (timm's
            default ``couple_channels=True``) instead of one per channel (the
            paper, its TPU reference and torchvision).
        scale_by_keep: scale survivors by the inverse kept fraction.
        clip_blocks: timm's placement: seeds anywhere in the map (at the same
            rate ``gamma``), each block centred on its seed and cut at the edges,
            and a ``block_size`` larger than the map clipped to it instead of
            refused. It drops more than the paper's placement (about 0.37 instead
            of 0.25 at ``p=0.3``, block 5 on 16x16 maps): what converted timm
            models need to keep training as before.
        seed, offset, generator: the Philox stream, see :func:`dropkit.functional.dropout`.

    Returns:
        A tensor of ``input``'s shape; dropped units are 0 even where ``input`` is inf.

    Example::

        >>> x = torch.randn(8, 64, 14, 14)
        >>> y = drop_block2d(x, p=0.1, block_size=5, seed=0)
        >>> torch.equal(y, drop_block2d(x, p=0.1, block_size=5, seed=0))
        True
    """
    return _drop_block(
        input, p, block_size, training, 2, "drop_block2d", inplace, batchwise, share_channels,
        scale_by_keep, clip_blocks, seed, offset, generator,
    )


def drop_block3d(
    input: Tensor,
    p: float = 0.1,
    block_size: BlockSize = 7,
    training: bool = True,
    *,
    inplace: bool = False,
    batchwise: bool = False,
    share_channels: bool = False,
    scale_by_keep: bool = True,
    clip_blocks: bool = False,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Zero contiguous ``block_size`` cubes of each ``(D, H, W)`` volume.

    The 3-D form of Ghiasi et al. (2018), "DropBlock": use it in 3-D CNNs
    (video, volumetric medical images). ``block_size`` may be ``(d, h, w)``,
    e.g. a short temporal extent with a large spatial one.

    Args:
        input: ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` tensor.
        Other arguments as in :func:`drop_block2d`.

    Example::

        >>> x = torch.randn(2, 16, 8, 28, 28)
        >>> y = drop_block3d(x, p=0.1, block_size=(3, 7, 7), seed=0)
    """
    return _drop_block(
        input, p, block_size, training, 3, "drop_block3d", inplace, batchwise, share_channels,
        scale_by_keep, clip_blocks, seed, offset, generator,
    )


def drop_path(
    input: Tensor,
    p: float = 0.1,
    training: bool = True,
    scale_by_keep: bool = True,
    *,
    batchwise: bool = False,
    inplace: bool = False,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Zero the whole input of a sample with probability ``p`` (stochastic depth).

    Huang, Sun, Liu, Sedra & Weinberger (2016), "Deep networks with stochastic
    depth" (ECCV). Apply it to the residual branch, ``x + drop_path(f(x), p)``, of
    deep ResNets and vision transformers (timm ramps ``p`` linearly with depth,
    up to 0.1-0.4).

    The paper drops a block for the whole mini-batch (``batchwise=True``,
    torchvision's ``mode="batch"``); the per-sample form (default) is what timm
    and torchvision's ``mode="row"`` use and regularises better per step.

    Args:
        input: ``(N, ...)`` floating-point tensor; the first axis is the sample.
        p: probability of dropping a sample's branch, in ``[0, 1]``.
        training: apply (``True``) or return ``input`` (``False``).
        scale_by_keep: scale kept samples by ``1 / (1 - p)`` so the expectation
            is unchanged; ``False`` keeps them as they are (the paper, which
            instead scales by ``1 - p`` at test time).
        batchwise: one decision for the whole batch.
        inplace: overwrite ``input``.
        seed, offset, generator: the Philox stream, see :func:`dropkit.functional.dropout`.

    Example::

        >>> h = torch.randn(32, 197, 384)
        >>> out = h + drop_path(torch.tanh(h), p=0.2, seed=0)
    """
    p = validate_p(p)
    validate_input(input, "drop_path")
    if input.dim() < 1:
        raise RankError(
            "drop_path expects an input with a batch dimension, but got a 0-D tensor"
        )
    if not training or p == 0.0:
        return input
    first = 0 if batchwise else 1
    return dropout(
        input,
        p,
        True,
        inplace,
        mode="inverted" if scale_by_keep else "classic",
        broadcast_dims=tuple(range(first, input.dim())),
        seed=seed,
        offset=offset,
        generator=generator,
    )
