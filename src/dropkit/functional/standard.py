"""Element-wise, channel-wise and alpha dropout: torch.nn.functional's dropout family.

Convention: ``p`` is the probability of *dropping* a unit. The explainer's
``r ~ Bernoulli(p)`` notation is about keeping: here ``keep ~ Bernoulli(1 - p)``.

Signatures follow ``torch.nn.functional``: ``(input, p, training, inplace)``
positionally, dropkit's extras (``mode``, ``broadcast_dims``, ``seed``,
``offset``, ``generator``) keyword-only after them.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from dropkit import _ops
from dropkit.functional.checks import (
    BroadcastDims,
    Mode,
    RankError,
    normalise_dims,
    validate_inplace,
    validate_input,
    validate_mode,
    validate_p,
)
from dropkit.random import as_u64, draw_seed, keep_scale

__all__ = [
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "spatial_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "apply_alpha_mask",
    "keep_mask_like",
    "multiply_mask",
    "Offset",
]

#: A stream offset: an int, or a 0-d int64 tensor (what a seeded module passes
#: inside a torch.compile graph, so its stream counter is data, not a guard).
Offset = Union[int, Tensor]

# SELU's fixed point: alpha * lambda from Klambauer et al. (2017), eq. 14.
_SELU_NEGATIVE_SATURATION = -1.7580993408473766


def _resolve_seed(seed: Optional[int], generator: Optional[torch.Generator]) -> int:
    """``seed`` as a checked 64-bit int, drawn from ``generator`` when it is ``None``."""
    return draw_seed(generator) if seed is None else as_u64(seed, "seed")


def _state(
    seed: Optional[int],
    offset: int,
    generator: Optional[torch.Generator],
    device: torch.device | None = None,
) -> Tensor:
    """``[seed, offset]`` as an int64[2] tensor on ``device``, where the kernel reads it."""
    offset = as_u64(offset, "offset")
    if seed is None and (_ops.graph_building() or _ops.capturing(device)):
        # A Python-int seed would be a data-dependent guard in a compiled graph
        # and a constant frozen into a captured CUDA graph: draw it on the device.
        return _ops.draw_state(offset, device, generator)
    return _ops.make_state(_resolve_seed(seed, generator), offset, device)


def _compiled_state(
    seed: Optional[int],
    offset: Offset,
    generator: Optional[torch.Generator],
    device: torch.device | None = None,
) -> Tensor:
    if not isinstance(offset, Tensor):
        return _state(seed, offset, generator, device)
    # A seeded module's counter: the offset is a tensor read from its buffer.
    key = _state(seed, 0, generator, device)[:1]
    return torch.cat((key, offset.reshape(1).to(device=key.device, dtype=torch.int64)))


def _masked(
    input: Tensor,
    threshold: int,
    scale: float,
    seed: Optional[int],
    offset: Offset,
    generator: Optional[torch.Generator],
    inplace: bool,
) -> Tensor:
    """``keep ? input * scale : 0`` with one mask value per element."""
    if _ops.graph_building() or (seed is None and _ops.capturing(input.device)):
        state = _compiled_state(seed, offset, generator, input.device)
        if inplace:
            return _ops.mask_scale_inplace(input, state, threshold, scale)
        return _ops.mask_scale(input, state, threshold, scale)
    offset = as_u64(int(offset) if isinstance(offset, Tensor) else offset, "offset")
    seed = None if seed is None else as_u64(seed, "seed")
    return _ops.apply_keyed(input, seed, offset, threshold, scale, generator, inplace)


def keep_mask_like(
    input: Tensor,
    dims: tuple[int, ...],
    threshold: int,
    scale: float,
    seed: Optional[int],
    offset: Offset,
    generator: Optional[torch.Generator],
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """``scale`` where kept, 0 where dropped, of ``input``'s shape with size 1 along ``dims``.

    Built from ``input`` (``ones_like`` of a narrowed view, not ``torch.ones``)
    so that under ``torch.func.vmap`` the mask is batched and the op's vmap rule
    honours ``randomness``. Element ``i`` of the row-major mask uses lane ``i``.
    """
    view = input
    for dim in dims:
        view = view.narrow(dim, 0, 1)
    ones = torch.ones_like(view, dtype=dtype, memory_format=torch.contiguous_format)
    return _masked(ones, threshold, scale, seed, offset, generator, inplace=False)


def _plain_product_is_exact(input: Tensor) -> bool:
    """Whether ``input * mask`` already gives exact zeros: ``input`` has no inf or NaN.

    Asked on CPU in eager mode only, where a broadcast ``torch.where`` costs 4-7x the
    product (DropPath at ViT-S size: 1.7 against 0.3 ms) and the answer costs one
    read pass: the sum of the elements is finite only if every element is (an
    overflowing sum of finite values merely takes the slower exact path). Not on
    CUDA, where reading the answer would synchronise, nor in graphs and transforms.
    """
    if (
        input.device.type != "cpu"
        or _ops.graph_building()
        or torch._C._are_functorch_transforms_active()
    ):
        return False
    # Half types sum in float32: a float16 sum of a large finite tensor overflows.
    wide = torch.float32 if input.element_size() < 4 else None
    return bool(torch.isfinite(input.detach().sum(dtype=wide)))


def multiply_mask(input: Tensor, mask: Tensor, inplace: bool = False) -> Tensor:
    """``input * mask`` with dropped positions exactly 0, also where ``input`` is inf or NaN.

    A plain product gives ``inf * 0 = NaN``; the element-wise kernel writes 0.
    Every mask-based variant goes through here so ``p = 1`` gives zeros, never NaN.
    """
    if _plain_product_is_exact(input):
        return input.mul_(mask) if inplace else input * mask
    dropped = mask == 0
    if inplace:
        return input.masked_fill_(dropped, 0.0).mul_(mask)
    return torch.where(dropped, torch.zeros((), dtype=input.dtype, device=input.device),
                       input * mask)


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: Mode = "inverted",
    broadcast_dims: BroadcastDims = (),
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Zero each element with probability ``p`` (Srivastava et al., 2014, "Dropout: a
    simple way to prevent neural networks from overfitting", JMLR 15).

    Args:
        input: floating-point tensor of any shape and memory layout.
        p: probability of dropping an element, in ``[0, 1]``. It is quantised to
            a multiple of ``2**-16`` (see :mod:`dropkit.random`).
        training: apply dropout (``True``) or the inference rule (``False``).
        inplace: overwrite ``input`` (torch's fourth positional argument).
        mode: ``"inverted"`` scales survivors by ``1 / (1 - p)`` in training and is
            the identity at inference (PyTorch/Keras). ``"classic"`` keeps
            survivors unscaled in training and multiplies by ``1 - p`` at
            inference (the original paper).
        broadcast_dims: dimensions along which one mask value is shared (Keras'
            ``noise_shape``, Flax's ``broadcast_dims``); ``(2, 3)`` on NCHW drops
            whole channels. An int is one dimension, ``None`` none.
        seed: 64-bit Philox key. ``None`` draws one from torch's default generator
            (or ``generator``), so ``torch.manual_seed`` reproduces the mask.
        offset: 64-bit stream id; different offsets with one seed give
            independent masks.
        generator: generator to draw the seed from when ``seed`` is ``None``.

    Returns:
        A tensor of ``input``'s shape and memory layout. The mask is a function of
        the logical (row-major) index, so it does not depend on the layout.
        Dropped elements are 0 even where ``input`` is inf or NaN.

    Example::

        >>> x = torch.ones(4, 8)
        >>> y = dropout(x, 0.5, seed=0)
        >>> torch.equal(y, dropout(x, 0.5, seed=0))
        True
    """
    p = validate_p(p)
    validate_mode(mode)
    validate_input(input, "dropout")
    dims = normalise_dims(broadcast_dims, input.dim(), "dropout")
    if p == 0.0 or (not training and mode == "inverted") or input.numel() == 0:
        return input
    # Only now is something written: torch also returns a leaf untouched at p = 0
    # or in eval mode instead of refusing it.
    if inplace:
        validate_inplace(input, "dropout")
    threshold, keep_prob, scale = keep_scale(p)
    if not training:
        return input.mul_(keep_prob) if inplace else input * keep_prob
    if mode == "classic":
        scale = 1.0 if threshold else 0.0
    if not dims:
        return _masked(input, threshold, scale, seed, offset, generator, inplace)
    mask = keep_mask_like(input, dims, threshold, scale, seed, offset, generator)
    return multiply_mask(input, mask, inplace)


def _channelwise_dims(input: Tensor, op: str, ranks: tuple[int, int]) -> tuple[int, ...]:
    unbatched, batched = ranks
    if input.dim() not in ranks:
        raise RankError(
            f"{op} expects a {unbatched}-D (unbatched) or {batched}-D (batched) input, "
            f"but got a {input.dim()}-D input of shape {tuple(input.shape)}"
        )
    spatial = unbatched - 1
    return tuple(range(input.dim() - spatial, input.dim()))


def _channelwise(
    input: Tensor,
    p: float,
    training: bool,
    inplace: bool,
    op: str,
    ranks: tuple[int, int],
    seed: Optional[int],
    offset: Offset,
    generator: Optional[torch.Generator],
) -> Tensor:
    validate_input(input, op)
    dims = _channelwise_dims(input, op, ranks)
    return dropout(
        input, p, training, inplace, broadcast_dims=dims, seed=seed, offset=offset,
        generator=generator,
    )


def dropout1d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Drop whole channels of ``(N, C, L)`` or ``(C, L)`` inputs (Tompson et al., 2015).

    Raises :class:`~dropkit.functional.RankError` (a ``ValueError`` and a
    ``RuntimeError``, as torch raises) for other ranks.
    """
    return _channelwise(input, p, training, inplace, "dropout1d", (2, 3), seed, offset, generator)


def dropout2d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Drop whole feature maps of ``(N, C, H, W)`` or ``(C, H, W)`` inputs.

    Tompson et al. (2015), "Efficient object localization using convolutional
    networks": adjacent pixels are correlated, so dropping single pixels barely
    regularises a CNN; dropping channels does.
    """
    return _channelwise(input, p, training, inplace, "dropout2d", (3, 4), seed, offset, generator)


def dropout3d(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Drop whole volumes of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs."""
    return _channelwise(input, p, training, inplace, "dropout3d", (4, 5), seed, offset, generator)


def spatial_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    channels_last: bool = False,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Channel-wise dropout for any rank >= 3: one mask value per (sample, channel).

    The channel axis is 1 (``channels_last=False``) or -1 (``True``, e.g.
    ``(N, L, C)`` token features or NHWC images); all other non-batch axes share
    the mask.
    """
    validate_input(input, "spatial_dropout")
    if input.dim() < 3:
        raise RankError(
            "spatial_dropout expects an input with a batch, a channel and at least one "
            f"spatial dimension (>= 3-D), but got shape {tuple(input.shape)}"
        )
    channel = input.dim() - 1 if channels_last else 1
    dims = tuple(d for d in range(1, input.dim()) if d != channel)
    return dropout(
        input, p, training, inplace, broadcast_dims=dims, seed=seed, offset=offset,
        generator=generator,
    )


def _alpha(
    input: Tensor,
    p: float,
    training: bool,
    inplace: bool,
    dims: tuple[int, ...],
    seed: Optional[int],
    offset: Offset,
    generator: Optional[torch.Generator],
    op: str,
) -> Tensor:
    if p == 0.0 or not training or input.numel() == 0:
        return input
    if inplace:
        validate_inplace(input, op)
    threshold, keep_prob, _ = keep_scale(p)
    if threshold == 0:
        # Everything dropped: the affine map collapses to its fixed point, zero mean.
        return input.zero_() if inplace else torch.zeros_like(input)
    # The mask goes through the kernel op (lane i < threshold), so it equals
    # random.keep_mask bit for bit and stays whole under torch.compile.
    keep = keep_mask_like(input, dims, threshold, 1.0, seed, offset, generator) != 0
    out = apply_alpha_mask(input, keep, keep_prob)
    return input.copy_(out) if inplace else out


def apply_alpha_mask(input: Tensor, keep: Tensor, keep_prob: float) -> Tensor:
    """Alpha dropout's output for a given boolean ``keep`` mask (broadcastable to ``input``).

    Klambauer et al. (2017), eq. 19-20 with the quantised keep probability q:
    dropped units take alpha' = -lambda * alpha, then ``a * x + b`` with
    ``a = (q + alpha'^2 q (1 - q))^-1/2`` and ``b = -a (1 - q) alpha'`` restores
    zero mean and unit variance. Shared by the functional ops and MC sampling.
    A dropped unit takes the constant ``a * alpha' + b`` even where ``input`` is inf.
    """
    alpha = _SELU_NEGATIVE_SATURATION
    a = (keep_prob + alpha**2 * keep_prob * (1.0 - keep_prob)) ** -0.5
    b = -a * (1.0 - keep_prob) * alpha
    dropped_value = torch.full((), a * alpha + b, dtype=input.dtype, device=input.device)
    keep = keep if keep.dtype == torch.bool else keep != 0
    return torch.where(keep, input * a + b, dropped_value)


def alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Alpha dropout for self-normalising networks (Klambauer et al., 2017, "Self-normalizing
    neural networks"): dropped units take SELU's negative saturation value and an
    affine correction keeps zero mean and unit variance. Use with SELU activations.
    """
    p = validate_p(p)
    validate_input(input, "alpha_dropout")
    return _alpha(input, p, training, inplace, (), seed, offset, generator, "alpha_dropout")


def feature_alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    seed: Optional[int] = None,
    offset: Offset = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Channel-wise alpha dropout: one mask value per (sample, channel) of ``(N, C, ...)``."""
    p = validate_p(p)
    validate_input(input, "feature_alpha_dropout")
    if input.dim() < 2:
        raise RankError(
            "feature_alpha_dropout expects an (N, C, *) input of at least 2-D, "
            f"but got shape {tuple(input.shape)}"
        )
    dims = tuple(range(2, input.dim()))
    return _alpha(
        input, p, training, inplace, dims, seed, offset, generator, "feature_alpha_dropout"
    )
