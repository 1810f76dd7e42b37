"""Stateless dropout ops for Keras 3 on dropkit's Philox contract.

Each op takes the key explicitly (``seed``: a 64-bit Python int or a ``(2,)``
uint32 tensor ``[lo, hi]`` as :class:`keras.random.SeedGenerator` yields it)
and a stream id (``offset``: an int or a uint32 scalar tensor). The kept
positions and the scaled values are those of the torch op of the same name in
:mod:`dropkit.functional` for the same seed, offset and logical input; with
the torch backend the torch op itself runs (native CPU kernel, Triton on GPU).

Values: float32 results are bit-identical to torch's. Half types are scaled
in float32 and rounded once, like dropkit's kernel. The Gaussian variants
draw their normals in float32 on the non-torch backends (JAX runs without
float64 by default), so they agree with torch to float32 rounding, not bit
for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import keras
from keras import ops

from dropkit.functional import validate_p
from dropkit.functional.conv import block_sizes
from dropkit.keras import _philox
from dropkit.random import keep_scale

__all__ = [
    "keep_mask",
    "dropout",
    "alpha_dropout",
    "drop_path",
    "drop_block2d",
    "gaussian_dropout",
    "gaussian_noise",
    "resolve_noise_shape",
]

Seed = Union[int, "keras.KerasTensor"]

# SELU's negative saturation alpha * lambda (Klambauer et al., 2017, eq. 14), as in torch.
_SELU_NEGATIVE_SATURATION = -1.7580993408473766


def _torch_backend() -> bool:
    return keras.backend.backend() == "torch"


def _int_words(value, name: str, tensor_form: str) -> Optional[tuple]:
    """A 64-bit int's two 32-bit words; ``None`` for a tensor (the caller reads it)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int in [0, 2**64) or {tensor_form}, got {value!r}")
    if not isinstance(value, int):
        return None
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return _philox.split_u64(value)


def _key_words(seed) -> tuple:
    words = _int_words(seed, "seed", "a (2,) uint32 tensor")
    if words is not None:
        return words
    words = ops.cast(ops.convert_to_tensor(seed), "uint32")
    return words[0], words[1]


def _offset_words(offset) -> tuple:
    words = _int_words(offset, "offset", "a uint32 scalar")
    return words if words is not None else (ops.cast(offset, "uint32"), 0)


def _as_int(value) -> int:
    """A key or offset as a Python int (torch backend only, where values are eager)."""
    if isinstance(value, int):
        return value
    array = ops.convert_to_numpy(value).astype("uint64").reshape(-1)
    return int(array[0]) | (int(array[1]) << 32 if array.size > 1 else 0)


def resolve_noise_shape(shape: Sequence[int], noise_shape: Optional[Sequence]) -> tuple[int, ...]:
    """Keras' ``noise_shape`` with ``None`` entries filled from ``shape``; checked."""
    shape = tuple(shape)
    if noise_shape is None:
        return shape
    noise_shape = tuple(noise_shape)
    if len(noise_shape) != len(shape):
        raise ValueError(
            f"noise_shape {noise_shape} has {len(noise_shape)} entries, but the input "
            f"shape {shape} has {len(shape)} dimensions"
        )
    resolved = []
    for noise, size in zip(noise_shape, shape, strict=True):
        noise = size if noise is None else noise
        if noise not in (1, size):
            raise ValueError(
                f"noise_shape {noise_shape} does not broadcast to the input shape {shape}: "
                "each entry has to be 1, None or the input's size"
            )
        resolved.append(noise)
    return tuple(resolved)


def _broadcast_dims(shape: Sequence[int], mask_shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(d for d, (m, s) in enumerate(zip(mask_shape, shape, strict=True)) if m == 1 != s)


def keep_mask(shape: Sequence[int], rate: float, seed: Seed, offset=0):
    """Boolean mask of ``shape``: element ``i`` (row-major) kept iff its lane < threshold."""
    threshold, _, _ = keep_scale(validate_p(rate))
    if _torch_backend():
        from dropkit.random import keep_mask as torch_keep_mask

        return torch_keep_mask(tuple(shape), threshold, _as_int(seed), _as_int(offset))
    numel = math.prod(shape)
    lanes = _philox.random_bits16(numel, _key_words(seed), _offset_words(offset))
    return ops.reshape(ops.less(lanes, _philox.u32(threshold)), tuple(shape))


def _scaled(x, keep, scale: float):
    compute = "float64" if x.dtype == "float64" else "float32"
    values = ops.cast(ops.multiply(ops.cast(x, compute), ops.cast(scale, compute)), x.dtype)
    return ops.where(keep, values, ops.zeros_like(x))


def dropout(x, rate: float, *, seed: Seed, offset=0, noise_shape=None, scale_by_keep=True):
    """Inverted dropout of ``x`` (Srivastava et al., 2014): ``keep ? x / (1 - rate) : 0``.

    ``noise_shape`` follows Keras: dimensions of size 1 share one mask value
    (torch's ``broadcast_dims``). Dropped elements are zero even where ``x`` is
    inf or NaN. ``scale_by_keep=False`` leaves survivors unscaled.
    """
    rate = validate_p(rate)
    x = ops.convert_to_tensor(x)
    shape = tuple(x.shape)
    mask_shape = resolve_noise_shape(shape, noise_shape)
    if rate == 0.0 or math.prod(shape) == 0:
        return x
    if _torch_backend():
        from dropkit import functional as F

        return F.dropout(
            x, rate, mode="inverted" if scale_by_keep else "classic",
            broadcast_dims=_broadcast_dims(shape, mask_shape),
            seed=_as_int(seed), offset=_as_int(offset),
        )
    threshold, _, scale = keep_scale(rate)
    if not scale_by_keep:
        scale = 1.0 if threshold else 0.0
    keep = keep_mask(mask_shape, rate, seed, offset)
    return _scaled(x, ops.broadcast_to(keep, shape), scale)


def alpha_dropout(x, rate: float, *, seed: Seed, offset=0, noise_shape=None):
    """Alpha dropout for SELU networks (Klambauer et al., 2017), as ``dropkit.functional``."""
    rate = validate_p(rate)
    x = ops.convert_to_tensor(x)
    shape = tuple(x.shape)
    mask_shape = resolve_noise_shape(shape, noise_shape)
    if rate == 0.0 or math.prod(shape) == 0:
        return x
    threshold, keep_prob, _ = keep_scale(rate)
    if threshold == 0:
        return ops.zeros_like(x)
    keep = ops.broadcast_to(keep_mask(mask_shape, rate, seed, offset), shape)
    alpha = _SELU_NEGATIVE_SATURATION
    a = (keep_prob + alpha**2 * keep_prob * (1.0 - keep_prob)) ** -0.5
    b = -a * (1.0 - keep_prob) * alpha
    # As dropkit.functional.apply_alpha_mask: a select, so inf/NaN never leak from dropped units.
    dropped = ops.cast(ops.convert_to_tensor(a * alpha + b), x.dtype)
    return ops.where(keep, x * a + b, dropped)


def drop_path(x, rate: float, *, seed: Seed, offset=0, scale_by_keep: bool = True):
    """Stochastic depth (Huang et al., 2016): drop a sample's whole branch with ``rate``."""
    x = ops.convert_to_tensor(x)
    if len(x.shape) < 1:
        raise ValueError("drop_path expects an input with a batch dimension, but got a 0-D tensor")
    noise_shape = (x.shape[0],) + (1,) * (len(x.shape) - 1)
    return dropout(
        x, rate, seed=seed, offset=offset, noise_shape=noise_shape, scale_by_keep=scale_by_keep
    )


def check_block_size(block_size, op: str) -> tuple[int, int]:
    """``block_size`` as two positive ints (the torch ops' check and message)."""
    return block_sizes(block_size, 2, op)


def drop_block2d(
    x,
    rate: float,
    block_size=7,
    *,
    seed: Seed,
    offset=0,
    data_format: str = "channels_last",
    share_channels: bool = False,
    scale_by_keep: bool = True,
):
    """DropBlock (Ghiasi, Lin & Le, 2018) on a 4-D batch; the mask equals
    ``dropkit.functional.drop_block2d`` on the same image in NCHW."""
    from dropkit.functional import drop_block_gamma

    rate = validate_p(rate)
    sizes = check_block_size(block_size, "drop_block2d")
    x = ops.convert_to_tensor(x)
    if len(x.shape) != 4:
        raise ValueError(
            f"drop_block2d expects a 4-D input, but got shape {tuple(x.shape)}"
        )
    channels_last = data_format == "channels_last"
    batch, *rest = x.shape
    height, width, channels = rest if channels_last else (rest[1], rest[2], rest[0])
    if sizes[0] > height or sizes[1] > width:
        raise ValueError(
            f"drop_block2d: block_size {sizes} is larger than the feature map "
            f"{(height, width)} of input shape {tuple(x.shape)}"
        )
    if rate == 0.0 or math.prod(x.shape) == 0:
        return x
    if _torch_backend():
        from dropkit import functional as F

        nchw = ops.transpose(x, (0, 3, 1, 2)) if channels_last else x
        out = F.drop_block2d(
            nchw, rate, sizes, share_channels=share_channels, scale_by_keep=scale_by_keep,
            seed=_as_int(seed), offset=_as_int(offset),
        )
        return ops.transpose(out, (0, 2, 3, 1)) if channels_last else out
    valid = (height - sizes[0] + 1, width - sizes[1] + 1)
    gamma = drop_block_gamma(rate, (height, width), sizes)
    grid_channels = 1 if share_channels else channels
    # Seeds are drawn in NCHW order, whatever the layout, so torch and Keras agree.
    started = ops.logical_not(keep_mask((batch, grid_channels, *valid), gamma, seed, offset))
    started = ops.transpose(ops.cast(started, "float32"), (0, 2, 3, 1))
    padded = ops.pad(started, [[0, 0], [sizes[0] - 1] * 2, [sizes[1] - 1] * 2, [0, 0]])
    covered = ops.max_pool(padded, sizes, strides=1, padding="valid", data_format="channels_last")
    if not channels_last:
        covered = ops.transpose(covered, (0, 3, 1, 2))
    if scale_by_keep:
        numel = math.prod(covered.shape)
        kept = numel - ops.sum(covered)
        # torch evaluates `numel / kept` as `kept.reciprocal() * numel` (two roundings): so here.
        scale = ops.where(kept > 0, ops.reciprocal(ops.maximum(kept, 1.0)) * numel, 0.0)
        keep = covered * (-scale) + scale
    else:
        keep = 1.0 - covered
    return x * ops.cast(ops.broadcast_to(keep, x.shape), x.dtype)


def _normal(shape: Sequence[int], seed: Seed, offset):
    # Box-Muller on consecutive pairs of 32-bit words, as dropkit.random.normal.
    numel = math.prod(shape)
    pairs = -(-numel // 2)
    lanes = _philox.random_bits16(8 * -(-pairs // 2), _key_words(seed), _offset_words(offset))
    lanes = ops.reshape(lanes, (-1, 2))
    words = ops.cast(lanes[:, 0], "float32") + ops.cast(lanes[:, 1], "float32") * 65536.0
    words = ops.reshape(words, (-1, 2))[:pairs]
    u1 = (words[:, 0] + 1.0) * 2.0**-32
    u2 = words[:, 1] * 2.0**-32
    radius = ops.sqrt(-2.0 * ops.log(u1))
    angle = 2.0 * math.pi * u2
    values = ops.stack((radius * ops.cos(angle), radius * ops.sin(angle)), axis=-1)
    return ops.reshape(ops.reshape(values, (-1,))[:numel], tuple(shape))


def gaussian_dropout(x, rate: float, *, seed: Seed, offset=0):
    """Multiply by ``N(1, rate / (1 - rate))`` noise (Srivastava et al., 2014, s.10)."""
    rate = validate_p(rate)
    if rate == 1.0:
        raise ValueError(
            "gaussian_dropout rate has to be in [0, 1): the noise variance rate / (1 - rate) "
            "is infinite at 1, but got 1.0"
        )
    x = ops.convert_to_tensor(x)
    if rate == 0.0 or math.prod(x.shape) == 0:
        return x
    if _torch_backend():
        from dropkit import functional as F

        return F.gaussian_dropout(x, rate, seed=_as_int(seed), offset=_as_int(offset))
    std = math.sqrt(rate / (1.0 - rate))
    return x * ops.cast(_normal(x.shape, seed, offset) * std + 1.0, x.dtype)


def gaussian_noise(x, stddev: float, *, seed: Seed, offset=0):
    """Add ``N(0, stddev**2)`` noise (Bishop, 1995), as ``dropkit.functional.gaussian_noise``."""
    if isinstance(stddev, bool) or not isinstance(stddev, (int, float)):
        raise TypeError(f"stddev has to be a non-negative float, but got {stddev!r}")
    if not math.isfinite(stddev) or stddev < 0:
        raise ValueError(f"stddev has to be a finite non-negative float, but got {stddev}")
    x = ops.convert_to_tensor(x)
    if stddev == 0.0 or math.prod(x.shape) == 0:
        return x
    if _torch_backend():
        from dropkit import functional as F

        return F.gaussian_noise(x, float(stddev), seed=_as_int(seed), offset=_as_int(offset))
    return x + ops.cast(_normal(x.shape, seed, offset) * float(stddev), x.dtype)
