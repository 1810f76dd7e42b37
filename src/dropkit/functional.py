"""Functional dropout ops. Every module in :mod:`dropkit.nn` is a thin wrapper over one of these.

Convention: ``p`` is the probability of *dropping* a unit. The explainer's
``r ~ Bernoulli(p)`` notation is about keeping: here ``keep ~ Bernoulli(1 - p)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Optional

import torch
from torch import Tensor

from dropkit import _ops
from dropkit.random import KEEP_BITS, as_u64, draw_seed, keep_mask, keep_threshold

__all__ = [
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "spatial_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "validate_p",
    "drop_block2d",
    "drop_block3d",
    "drop_path",
    "locked_dropout",
    "embedding_dropout",
    "word_dropout",
    "zoneout",
    "drop_connect",
    "gaussian_dropout",
    "gaussian_noise",
    "concrete_dropout",
    "bias_dropout_add",
]

Mode = Literal["inverted", "classic"]
_MODES = ("inverted", "classic")

# SELU's fixed point: alpha * lambda from Klambauer et al. (2017), eq. 14.
_SELU_NEGATIVE_SATURATION = -1.7580993408473766


def validate_p(p: float, name: str = "dropout probability") -> float:
    """Return ``p`` as a float, or raise naming it when it is not a probability."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} has to be a float between 0 and 1, but got {p!r}")
    p = float(p)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} has to be between 0 and 1, but got {p}")
    return p


def _validate_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode has to be one of {_MODES}, but got {mode!r}")


def _validate_input(input: Tensor, op: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op} expects a torch.Tensor, but got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{op} expects a floating-point tensor, but got dtype {input.dtype}")


def _validate_inplace(input: Tensor, op: str) -> None:
    if input.is_leaf and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}(inplace=True) cannot modify a leaf tensor that requires grad "
            f"(shape {tuple(input.shape)}); use inplace=False or apply it to a non-leaf"
        )


def _normalise_dims(dims: Sequence[int], ndim: int, op: str) -> tuple[int, ...]:
    normalised = []
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
            raise ValueError(
                f"{op}: broadcast_dims entry {dim!r} is not a dimension of a {ndim}-D input"
            )
        normalised.append(dim % ndim)
    return tuple(sorted(set(normalised)))


def _resolve_seed(seed: Optional[int], generator: Optional[torch.Generator]) -> int:
    """``seed`` as a checked 64-bit int, drawn from ``generator`` when it is ``None``."""
    return draw_seed(generator) if seed is None else as_u64(seed, "seed")


def _resolve_key(
    seed: Optional[int], offset: int, generator: Optional[torch.Generator]
) -> tuple[int, int]:
    return _resolve_seed(seed, generator), as_u64(offset, "offset")


def _state(
    seed: Optional[int],
    offset: int,
    generator: Optional[torch.Generator],
    device: torch.device | None = None,
) -> Tensor:
    """``[seed, offset]`` as an int64[2] tensor on ``device``, where the kernel reads it."""
    offset = as_u64(offset, "offset")
    if seed is None and (torch.compiler.is_compiling() or _ops.capturing(device)):
        # A Python-int seed would be a data-dependent guard in a compiled graph
        # and a constant frozen into a captured CUDA graph: draw it on the device.
        return _ops.draw_state(offset, device, generator)
    return _ops.make_state(_resolve_seed(seed, generator), offset, device)


def _keep_scale(p: float) -> tuple[int, float, float]:
    """Threshold, quantised keep probability and the unbiased survivor scale."""
    threshold = keep_threshold(1.0 - p)
    keep_prob = threshold / (1 << KEEP_BITS)
    scale = (1 << KEEP_BITS) / threshold if threshold else 0.0
    return threshold, keep_prob, scale


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    mode: Mode = "inverted",
    broadcast_dims: Sequence[int] = (),
    seed: Optional[int] = None,
    offset: int = 0,
    inplace: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Zero each element with probability ``p`` (Srivastava et al., 2014, "Dropout: a
    simple way to prevent neural networks from overfitting", JMLR 15).

    Args:
        input: floating-point tensor of any shape.
        p: probability of dropping an element, in ``[0, 1]``. It is quantised to
            a multiple of ``2**-16`` (see :mod:`dropkit.random`).
        training: apply dropout (``True``) or the inference rule (``False``).
        mode: ``"inverted"`` scales survivors by ``1 / (1 - p)`` in training and is
            the identity at inference (PyTorch/Keras). ``"classic"`` keeps
            survivors unscaled in training and multiplies by ``1 - p`` at
            inference (the original paper).
        broadcast_dims: dimensions along which one mask value is shared (Keras'
            ``noise_shape``, Flax's ``broadcast_dims``); ``(2, 3)`` on NCHW drops
            whole channels.
        seed: 64-bit Philox key. ``None`` draws one from torch's default generator
            (or ``generator``), so ``torch.manual_seed`` reproduces the mask.
        offset: 64-bit stream id; different offsets with one seed give
            independent masks.
        inplace: overwrite ``input``.
        generator: generator to draw the seed from when ``seed`` is ``None``.

    Returns:
        A tensor of ``input``'s shape (contiguous when ``inplace=False``).

    Example::

        >>> x = torch.ones(4, 8)
        >>> y = dropout(x, 0.5, seed=0)
        >>> torch.equal(y, dropout(x, 0.5, seed=0))
        True
    """
    p = validate_p(p)
    _validate_mode(mode)
    _validate_input(input, "dropout")
    if inplace:
        _validate_inplace(input, "dropout")
    dims = _normalise_dims(broadcast_dims, input.dim(), "dropout")
    if p == 0.0 or (not training and mode == "inverted"):
        return input
    threshold, keep_prob, scale = _keep_scale(p)
    if not training:
        return input.mul_(keep_prob) if inplace else input * keep_prob
    if mode == "classic":
        scale = 1.0 if threshold else 0.0
    if input.numel() == 0:
        return input
    if torch.compiler.is_compiling() or (seed is None and _ops.capturing(input.device)):
        state = _state(seed, offset, generator, input.device)
        if not dims:
            if inplace:
                return _ops.mask_scale_inplace(input, state, threshold, scale)
            return _ops.mask_scale(input, state, threshold, scale)
        mask = _ops.mask_scale(_mask_ones(input, dims), state, threshold, scale)
    else:
        seed, offset = _resolve_key(seed, offset, generator)
        if not dims:
            return _ops.apply(input, seed, offset, threshold, scale, inplace=inplace)
        mask = _ops.apply(_mask_ones(input, dims), seed, offset, threshold, scale)
    return input.mul_(mask) if inplace else input * mask


def _mask_ones(input: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Ones of ``input``'s shape with size 1 along ``dims``: masked, it is a shared mask."""
    mask_shape = tuple(1 if d in dims else n for d, n in enumerate(input.shape))
    return torch.ones(mask_shape, dtype=input.dtype, device=input.device)


def _channelwise_dims(input: Tensor, op: str, ranks: tuple[int, int]) -> tuple[int, ...]:
    unbatched, batched = ranks
    if input.dim() not in ranks:
        raise ValueError(
            f"{op} expects a {unbatched}-D (unbatched) or {batched}-D (batched) input, "
            f"but got a {input.dim()}-D input of shape {tuple(input.shape)}"
        )
    spatial = unbatched - 1
    return tuple(range(input.dim() - spatial, input.dim()))


def _channelwise(
    input: Tensor, p: float, training: bool, inplace: bool, op: str, ranks: tuple[int, int],
    **kwargs,
) -> Tensor:
    _validate_input(input, op)
    dims = _channelwise_dims(input, op, ranks)
    return dropout(input, p, training, broadcast_dims=dims, inplace=inplace, **kwargs)


def dropout1d(
    input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, **kwargs
) -> Tensor:
    """Drop whole channels of ``(N, C, L)`` or ``(C, L)`` inputs (Tompson et al., 2015)."""
    return _channelwise(input, p, training, inplace, "dropout1d", (2, 3), **kwargs)


def dropout2d(
    input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, **kwargs
) -> Tensor:
    """Drop whole feature maps of ``(N, C, H, W)`` or ``(C, H, W)`` inputs.

    Tompson et al. (2015), "Efficient object localization using convolutional
    networks": adjacent pixels are correlated, so dropping single pixels barely
    regularises a CNN; dropping channels does.
    """
    return _channelwise(input, p, training, inplace, "dropout2d", (3, 4), **kwargs)


def dropout3d(
    input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, **kwargs
) -> Tensor:
    """Drop whole volumes of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs."""
    return _channelwise(input, p, training, inplace, "dropout3d", (4, 5), **kwargs)


def spatial_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    channels_last: bool = False,
    inplace: bool = False,
    **kwargs,
) -> Tensor:
    """Channel-wise dropout for any rank >= 3: one mask value per (sample, channel).

    The channel axis is 1 (``channels_last=False``) or -1 (``True``, e.g.
    ``(N, L, C)`` token features or NHWC images); all other non-batch axes share
    the mask.
    """
    _validate_input(input, "spatial_dropout")
    if input.dim() < 3:
        raise ValueError(
            "spatial_dropout expects an input with a batch, a channel and at least one "
            f"spatial dimension (>= 3-D), but got shape {tuple(input.shape)}"
        )
    channel = input.dim() - 1 if channels_last else 1
    dims = tuple(d for d in range(1, input.dim()) if d != channel)
    return dropout(input, p, training, broadcast_dims=dims, inplace=inplace, **kwargs)


def _alpha(
    input: Tensor,
    p: float,
    training: bool,
    broadcast_dims: tuple[int, ...],
    seed: Optional[int],
    offset: int,
    generator: Optional[torch.Generator],
) -> Tensor:
    if p == 0.0 or not training or input.numel() == 0:
        return input
    threshold, keep_prob, _ = _keep_scale(p)
    if threshold == 0:
        # Everything dropped: the affine map collapses to its fixed point, zero mean.
        return torch.zeros_like(input)
    mask_shape = tuple(1 if d in broadcast_dims else n for d, n in enumerate(input.shape))
    keep = keep_mask(mask_shape, threshold, _resolve_seed(seed, generator), offset, input.device)
    return apply_alpha_mask(input, keep, keep_prob)


def apply_alpha_mask(input: Tensor, keep: Tensor, keep_prob: float) -> Tensor:
    """Alpha dropout's output for a given boolean ``keep`` mask (broadcastable to ``input``).

    Klambauer et al. (2017), eq. 19-20 with the quantised keep probability q:
    dropped units take alpha' = -lambda * alpha, then ``a * x + b`` with
    ``a = (q + alpha'^2 q (1 - q))^-1/2`` and ``b = -a (1 - q) alpha'`` restores
    zero mean and unit variance. Shared by the functional ops and MC sampling.
    """
    alpha = _SELU_NEGATIVE_SATURATION
    a = (keep_prob + alpha**2 * keep_prob * (1.0 - keep_prob)) ** -0.5
    b = -a * (1.0 - keep_prob) * alpha
    keep = keep.to(input.dtype)
    return input * (a * keep) + (a * alpha * (1.0 - keep) + b)


def alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = False,
    *,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Alpha dropout for self-normalising networks (Klambauer et al., 2017, "Self-normalizing
    neural networks"): dropped units take SELU's negative saturation value and an
    affine correction keeps zero mean and unit variance. Use with SELU activations.
    """
    p = validate_p(p)
    _validate_input(input, "alpha_dropout")
    return _alpha(input, p, training, (), seed, offset, generator)


def feature_alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = False,
    *,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Channel-wise alpha dropout: one mask value per (sample, channel) of ``(N, C, ...)``."""
    p = validate_p(p)
    _validate_input(input, "feature_alpha_dropout")
    if input.dim() < 2:
        raise ValueError(
            "feature_alpha_dropout expects an (N, C, *) input of at least 2-D, "
            f"but got shape {tuple(input.shape)}"
        )
    dims = tuple(range(2, input.dim()))
    return _alpha(input, p, training, dims, seed, offset, generator)


# The variant families live beside their modules (one file per family); their
# functional ops are re-exported here so `dropkit.functional` is the one place to look.
from dropkit._fused import bias_dropout_add  # noqa: E402
from dropkit.nn.conv import drop_block2d, drop_block3d, drop_path  # noqa: E402
from dropkit.nn.learned import concrete_dropout  # noqa: E402
from dropkit.nn.noise import gaussian_dropout, gaussian_noise  # noqa: E402
from dropkit.nn.recurrent import (  # noqa: E402
    embedding_dropout,
    locked_dropout,
    word_dropout,
    zoneout,
)
from dropkit.nn.weights import drop_connect  # noqa: E402
