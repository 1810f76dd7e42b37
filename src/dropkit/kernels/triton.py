"""Triton backend for CUDA tensors: the Philox keep-mask of :mod:`dropkit.random`, bit for bit.

Same calls and results as :mod:`dropkit.kernels.reference` (``mask_scale``,
``mask_scale_``, ``mask_scale_streams``), plus ``mask_scale_state``: the same
mask with ``[seed, offset]`` read from an int64[2] tensor on the device, so a
seed drawn on the GPU (``torch.compile``, CUDA graphs) never visits the host.
The fused ``bias_dropout_add`` kernels (:mod:`dropkit.functional.fused`) share the mask
code.

Layout of one program: ``BLOCK`` consecutive elements seen as a
``(BLOCK // 8, 8)`` tile, one row per Philox block. Each row costs one
Philox4x32-10 evaluation with counter ``(block_lo, block_hi, offset_lo,
offset_hi)`` and key ``(seed_lo, seed_hi)`` (``tl.randint4x`` fixes the
counter to ``(offset_lo, offset_hi, 0, 0)``, which cannot express this
layout, so the four counter words are set here); column ``j`` takes
16-bit half ``j % 2`` of word ``j // 2``. Nothing per element is stored:
backward runs the same kernel on the gradient.

Importing this module imports triton; :mod:`dropkit.kernels` does that only
when a CUDA tensor asks for it. Set ``TRITON_INTERPRET=1`` *before* importing
it to run the kernels on CPU tensors under Triton's interpreter (the tests do).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "DTYPES",
    "INTERPRETED",
    "mask_scale",
    "mask_scale_",
    "mask_scale_state",
    "mask_scale_state_",
    "mask_scale_streams",
    "launch_mask_state",
    "bias_dropout_add_forward",
    "bias_dropout_add_backward",
    "MAX_FUSED_HIDDEN",
]

#: The dtypes these kernels serve; others go to the reference.
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
#: Whether the kernels were defined under Triton's interpreter (decided at import).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "") == "1"
#: Round float32 -> bfloat16 with integer ops instead of the conversion instruction.
#: Required under the interpreter (its cast truncates); on a GPU the hardware
#: conversion rounds to nearest even, and a GPU test checks both paths agree.
BF16_INTEGER_ROUNDING = INTERPRETED
#: Largest last dimension the fused kernels take (their column arithmetic is float32-exact
#: below 2**24 - BLOCK); :mod:`dropkit.functional.fused` composes larger ones.
MAX_FUSED_HIDDEN = 1 << 23

# 4096 elements = 512 Philox rows per program, 32 elements per thread at 4 warps
# (a starting point, not yet tuned on a GPU). The interpreter costs ~5 ms per
# *program* whatever its size, so under it one program covers 64K elements.
_BLOCK = 65536 if INTERPRETED else 4096
_NUM_WARPS = 4
_MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension
_U64 = 1 << 64


def _signed64(value: int) -> int:
    """A u64 as the int64 with the same bits: kernel scalars are typed int64, not specialised."""
    return value - _U64 if value >= 1 << 63 else value


def _f64_bits(value: float) -> int:
    # The interpreter would turn a Python float into an fp32 constant; passing the
    # float64 bits as an integer keeps the scale exact for float64 inputs.
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


# --------------------------------------------------------------------------- device code


@triton.jit
def _as_u64(value):
    # Scalars arrive as int64 on a GPU but as int32/uint32/int64 under the
    # interpreter (it types them by value); an integer cast sign-extends signed
    # and zero-extends unsigned sources, so every case keeps its 64-bit pattern.
    return value.to(tl.uint64)


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Random123's Philox4x32-10, the round of :func:`dropkit.random.philox4x32`.

    The same function as ``tl.philox``; spelled out here so that kernels
    defined under the interpreter never call a ``@triton.jit`` function that
    triton itself compiled at its import (a process that imported triton
    before setting ``TRITON_INTERPRET`` has those as non-interpreted).
    """
    M0: tl.constexpr = 0xD2511F53
    M1: tl.constexpr = 0xCD9E8D57
    W0: tl.constexpr = 0x9E3779B9
    W1: tl.constexpr = 0xBB67AE85
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(M0, c0)
        lo0 = tl.mul(M0, c0, sanitize_overflow=False)
        hi1 = tl.umulhi(M1, c2)
        lo1 = tl.mul(M1, c2, sanitize_overflow=False)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = tl.add(k0, W0, sanitize_overflow=False)
        k1 = tl.add(k1, W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _keep_tile(seed, offset, first_block, threshold, ROWS: tl.constexpr):
    """``(ROWS, 8)`` keep mask for Philox blocks ``first_block .. first_block + ROWS - 1``."""
    block = first_block + tl.arange(0, ROWS).to(tl.uint64)
    c0 = (block & 0xFFFFFFFF).to(tl.uint32)
    c1 = (block >> 32).to(tl.uint32)
    zero = tl.full([ROWS], 0, tl.uint32)
    c2 = zero + (offset & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + (offset >> 32).to(tl.uint32)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    lane = tl.arange(0, 8)[None, :]
    word = tl.where(
        lane < 2,
        w0[:, None],
        tl.where(lane < 4, w1[:, None], tl.where(lane < 6, w2[:, None], w3[:, None])),
    )
    bits = (word >> ((lane % 2) * 16).to(tl.uint32)) & 0xFFFF
    return bits < threshold.to(tl.uint32)


@triton.jit
def _tile_index(ROWS: tl.constexpr):
    return tl.arange(0, ROWS)[:, None] * 8 + tl.arange(0, 8)[None, :]


@triton.jit
def _load_f32(ptr, index, mask, BF16_BITS: tl.constexpr):
    if BF16_BITS:
        # bfloat16 stored as int16: widening is a 16-bit shift, exact everywhere.
        raw = tl.load(ptr + index, mask=mask, other=0).to(tl.uint16, bitcast=True)
        return (raw.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return tl.load(ptr + index, mask=mask, other=0).to(tl.float32)


@triton.jit
def _store(ptr, index, mask, y, BF16_BITS: tl.constexpr):
    """Store ``y`` rounded to nearest even in the output dtype."""
    if BF16_BITS:
        # Integer round-to-nearest-even to bfloat16 (the interpreter's own cast
        # truncates and mishandles subnormals); NaNs become quiet NaNs.
        bits = y.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
        rounded = tl.where(is_nan, (bits >> 16) | 0x40, rounded)
        tl.store(ptr + index, rounded.to(tl.uint16).to(tl.int16, bitcast=True), mask=mask)
    else:
        tl.store(ptr + index, y.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mask_tile(
    x_ptr, out_ptr, numel, seed, offset, pid, first_block, threshold, scale_bits,
    BLOCK: tl.constexpr, F64: tl.constexpr, BF16_BITS: tl.constexpr,
):
    """Program ``pid``'s tile: ``keep ? x * scale : +0.0``, Philox rows from ``first_block``."""
    ROWS: tl.constexpr = BLOCK // 8
    keep = _keep_tile(seed, offset, first_block, threshold, ROWS)
    index = pid * BLOCK + _tile_index(ROWS)
    mask = index < numel
    scale = scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
    if F64:
        x = tl.load(x_ptr + index, mask=mask, other=0)
        tl.store(out_ptr + index, tl.where(keep, x * scale, 0.0), mask=mask)
    else:
        # The scale is rounded once to float32, as the reference does; dropped
        # elements are zeroed before rounding (+0.0 rounds to +0.0).
        y = _load_f32(x_ptr, index, mask, BF16_BITS) * scale.to(tl.float32)
        _store(out_ptr, index, mask, tl.where(keep, y, 0.0), BF16_BITS)


@triton.jit
def _first_block(block_base, pid, BLOCK: tl.constexpr):
    return _as_u64(block_base) + (pid * (BLOCK // 8)).to(tl.uint64)


@triton.jit
def _read_key(seed, offset, state_ptr, from_state):
    """The 64-bit seed and offset: scalar arguments, or read from ``state_ptr`` on the device.

    A runtime branch (uniform, so free), not a constexpr: one binary serves both,
    so the eager calls that warm a step up before CUDA-graph capture have already
    compiled and loaded the kernel its captured, device-seeded calls launch
    (loading a module while a stream is captured is not allowed).
    """
    if from_state != 0:
        seed_u = tl.load(state_ptr).to(tl.uint64, bitcast=True)
        offset_u = tl.load(state_ptr + 1).to(tl.uint64, bitcast=True)
    else:
        seed_u = _as_u64(seed)
        offset_u = _as_u64(offset)
    return seed_u, offset_u


_KEY_ARGS = ["seed", "offset", "state_ptr", "from_state", "threshold", "scale_bits"]


@triton.jit(do_not_specialize=_KEY_ARGS + ["block_base"])
def _mask_scale_kernel(
    x_ptr, out_ptr, numel, seed: tl.int64, offset: tl.int64, state_ptr, from_state: tl.int32,
    block_base: tl.int64, threshold: tl.int32, scale_bits: tl.int64,
    BLOCK: tl.constexpr, F64: tl.constexpr, BF16_BITS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    seed_u, offset_u = _read_key(seed, offset, state_ptr, from_state)
    _mask_tile(
        x_ptr, out_ptr, numel, seed_u, offset_u, pid, _first_block(block_base, pid, BLOCK),
        threshold, scale_bits, BLOCK, F64, BF16_BITS,
    )


@triton.jit(do_not_specialize=["num_offsets", "threshold", "scale_bits"])
def _mask_scale_streams_kernel(
    x_ptr, out_ptr, numel, seeds_ptr, offsets_ptr, num_offsets, threshold: tl.int32,
    scale_bits: tl.int64,
    BLOCK: tl.constexpr, F64: tl.constexpr, BF16_BITS: tl.constexpr,
):
    # Axis 0 enumerates streams (up to 2**31 - 1 of them), axis 1 the blocks of
    # one stream (CUDA caps it at 65535: 268M elements per stream at 4096).
    stream = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1).to(tl.int64)
    seed = tl.load(seeds_ptr + stream // num_offsets).to(tl.uint64, bitcast=True)
    offset = tl.load(offsets_ptr + stream % num_offsets).to(tl.uint64, bitcast=True)
    base = stream * numel
    _mask_tile(
        x_ptr + base, out_ptr + base, numel, seed, offset, pid,
        (pid * (BLOCK // 8)).to(tl.uint64), threshold, scale_bits, BLOCK, F64, BF16_BITS,
    )


@triton.jit
def _activation(h, ACT: tl.constexpr):
    if ACT == 1:
        # torch.relu keeps -0.0 and NaN: clamp only what compares below zero.
        return tl.where(h < 0, 0.0, h)
    elif ACT == 2:
        # torch's exact GELU, in its operation order: x * 0.5 * (1 + erf(x / sqrt(2))).
        return h * 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
    else:
        return h


@triton.jit
def _activation_grad(grad, h, ACT: tl.constexpr):
    if ACT == 1:
        return tl.where(h <= 0, 0.0, grad)
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476))
        # 0.39894... = M_2_SQRTPI * M_SQRT1_2 * 0.5, torch's kBeta.
        pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
        return grad * (cdf + h * pdf)
    else:
        return grad


@triton.jit
def _wrap_columns(column, hidden, inv_hidden):
    # ``column % hidden`` for 0 <= column < 2**24 (exact in float32): the float32
    # quotient is off by at most one, which the two corrections fix.
    quotient = (column.to(tl.float32) * inv_hidden).to(tl.int32)
    column = column - quotient * hidden
    column = tl.where(column < 0, column + hidden, column)
    return tl.where(column >= hidden, column - hidden, column)


@triton.jit
def _bias_column(pid, hidden, inv_hidden, BLOCK: tl.constexpr, ROW_ALIGNED: tl.constexpr):
    """``index % hidden`` for the tile of program ``pid``, without a 64-bit modulo per element.

    A 64-bit ``%`` is a long emulated sequence on a GPU, more than the rest of
    the kernel. The tile starts at column ``col0 = pid * BLOCK % hidden`` (one
    scalar modulo), so its columns are ``col0 + local < hidden + BLOCK``. When
    ``hidden`` is a multiple of 8 (``ROW_ALIGNED``, nearly every model) a Philox
    row's 8 elements sit in 8 consecutive columns: the modulo runs once per row
    and the bias loads are contiguous, aligned vectors.
    """
    ROWS: tl.constexpr = BLOCK // 8
    col0 = ((pid * BLOCK) % hidden).to(tl.int32)
    if ROW_ALIGNED:
        row_column = _wrap_columns(col0 + tl.arange(0, ROWS) * 8, hidden, inv_hidden)
        row_column = tl.multiple_of(row_column, 8)
        return row_column[:, None] + tl.arange(0, 8)[None, :]
    else:
        return _wrap_columns(col0 + _tile_index(ROWS), hidden, inv_hidden)


@triton.jit(do_not_specialize=_KEY_ARGS + ["inv_hidden"])
def _bias_dropout_add_kernel(
    x_ptr, bias_ptr, residual_ptr, out_ptr, numel, hidden, inv_hidden,
    seed: tl.int64, offset: tl.int64, state_ptr, from_state: tl.int32, threshold: tl.int32,
    scale_bits: tl.int64,
    BLOCK: tl.constexpr, ACT: tl.constexpr, BF16_BITS: tl.constexpr,
    ROW_ALIGNED: tl.constexpr,
):
    """``out = residual + (keep ? act(x + bias) * scale : 0)`` in float32, one rounding."""
    ROWS: tl.constexpr = BLOCK // 8
    pid = tl.program_id(0).to(tl.int64)
    seed_u, offset_u = _read_key(seed, offset, state_ptr, from_state)
    keep = _keep_tile(seed_u, offset_u, (pid * ROWS).to(tl.uint64), threshold, ROWS)
    index = pid * BLOCK + _tile_index(ROWS)
    mask = index < numel
    scale = scale_bits.to(tl.int64).to(tl.float64, bitcast=True).to(tl.float32)
    h = _load_f32(x_ptr, index, mask, BF16_BITS) + _load_f32(
        bias_ptr, _bias_column(pid, hidden, inv_hidden, BLOCK, ROW_ALIGNED), mask, BF16_BITS
    )
    dropped = tl.where(keep, _activation(h, ACT) * scale, 0.0)
    y = _load_f32(residual_ptr, index, mask, BF16_BITS) + dropped
    _store(out_ptr, index, mask, y, BF16_BITS)


@triton.jit(do_not_specialize=_KEY_ARGS + ["inv_hidden"])
def _bias_dropout_add_backward_kernel(
    grad_ptr, x_ptr, bias_ptr, grad_x_ptr, numel, hidden, inv_hidden,
    seed: tl.int64, offset: tl.int64, state_ptr, from_state: tl.int32, threshold: tl.int32,
    scale_bits: tl.int64,
    BLOCK: tl.constexpr, ACT: tl.constexpr, BF16_BITS: tl.constexpr,
    ROW_ALIGNED: tl.constexpr,
):
    """``grad_x = act'(x + bias) * (keep ? grad * scale : 0)``: the mask regenerated, not read."""
    ROWS: tl.constexpr = BLOCK // 8
    pid = tl.program_id(0).to(tl.int64)
    seed_u, offset_u = _read_key(seed, offset, state_ptr, from_state)
    keep = _keep_tile(seed_u, offset_u, (pid * ROWS).to(tl.uint64), threshold, ROWS)
    index = pid * BLOCK + _tile_index(ROWS)
    mask = index < numel
    scale = scale_bits.to(tl.int64).to(tl.float64, bitcast=True).to(tl.float32)
    grad = _load_f32(grad_ptr, index, mask, BF16_BITS)
    # Rounded to the storage dtype like the unfused chain's dropout backward output.
    masked = _round_like(tl.where(keep, grad * scale, 0.0), grad_x_ptr, BF16_BITS)
    h = _load_f32(x_ptr, index, mask, BF16_BITS) + _load_f32(
        bias_ptr, _bias_column(pid, hidden, inv_hidden, BLOCK, ROW_ALIGNED), mask, BF16_BITS
    )
    _store(grad_x_ptr, index, mask, _activation_grad(masked, h, ACT), BF16_BITS)


@triton.jit
def _round_like(y, ptr, BF16_BITS: tl.constexpr):
    """``y`` rounded to the dtype behind ``ptr`` and widened back to float32."""
    if BF16_BITS:
        bits = y.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
        rounded = tl.where(is_nan, bits | 0x400000, rounded)
        return rounded.to(tl.float32, bitcast=True)
    return y.to(ptr.dtype.element_ty).to(tl.float32)


# --------------------------------------------------------------------------- host code


def _bf16_bits(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and BF16_INTEGER_ROUNDING


def _as_kernel_tensor(t: Tensor, bf16_bits: bool) -> Tensor:
    return t.view(torch.int16) if bf16_bits else t


def _check_dtype(x: Tensor) -> None:
    if x.dtype not in DTYPES:
        raise TypeError(
            f"the Triton kernels serve {[str(d) for d in DTYPES]}, but got {x.dtype}; "
            "dropkit.kernels sends other dtypes to the reference"
        )


def _grid(numel: int, block: int) -> tuple[int]:
    return (triton.cdiv(numel, block),)


# One int64[2] per device, passed as the state pointer when the key is scalar:
# never read then, but it keeps the pointer's type (and so the binary) the same.
_PLACEHOLDER_STATES: dict[torch.device, Tensor] = {}


def _placeholder_state(device: torch.device) -> Tensor:
    placeholder = _PLACEHOLDER_STATES.get(device)
    if placeholder is None:
        placeholder = _PLACEHOLDER_STATES[device] = torch.zeros(2, dtype=torch.int64, device=device)
    return placeholder


def _check_state(state: Tensor, x: Tensor) -> None:
    if state.dtype != torch.int64 or state.shape != (2,) or state.device != x.device:
        raise ValueError(
            f"state must be an int64 tensor of shape (2,) on {x.device} ([seed, offset]), "
            f"but got {state.dtype} {tuple(state.shape)} on {state.device}"
        )


def _key_args(x: Tensor, seed: int, offset: int, state: Tensor | None) -> tuple:
    """``(seed, offset, state_ptr, from_state)`` kernel arguments for a scalar or device key."""
    if state is None:
        return _signed64(seed), _signed64(offset), _placeholder_state(x.device), 0
    _check_state(state, x)
    return 0, 0, state.contiguous(), 1


def _launch_mask(
    x: Tensor, out: Tensor, threshold: int, scale: float, *, seed: int = 0, offset: int = 0,
    state: Tensor | None = None, wrap=None, block_base: int = 0, block: int | None = None,
) -> Tensor:
    """Write ``keep ? x * scale : 0`` into ``out`` (both contiguous; may be the same tensor).

    The key is ``seed``/``offset`` or, when given, ``state = int64[2] [seed, offset]``
    on the device. ``wrap`` is ``torch.library.wrap_triton`` inside a ``triton_op``,
    so that ``torch.compile`` traces the launch; ``block_base`` shifts the Philox
    block counter (tests reach the ``2**32`` carry without a 2**35-element tensor).
    """
    _check_dtype(x)
    key = _key_args(x, seed, offset, state)
    if x.numel() == 0:
        return out
    block = block or _BLOCK
    bits = _bf16_bits(x.dtype)
    kernel, options = _mask_scale_kernel, {"enable_fp_fusion": False}
    if wrap is not None:
        # Dynamo's Triton tracing takes no compile options (and this kernel has
        # no multiply-add to contract).
        kernel, options = wrap(_mask_scale_kernel), {}
    kernel[_grid(x.numel(), block)](
        _as_kernel_tensor(x, bits), _as_kernel_tensor(out, bits), x.numel(), *key,
        _signed64(block_base), threshold, _f64_bits(scale),
        BLOCK=block, F64=x.dtype == torch.float64, BF16_BITS=bits, num_warps=_NUM_WARPS,
        **options,
    )
    return out


def mask_scale(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    x = x.contiguous()
    return _launch_mask(x, torch.empty_like(x), threshold, scale, seed=seed, offset=offset)


def mask_scale_(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    key = {"seed": seed, "offset": offset}
    if x.is_contiguous():
        return _launch_mask(x, x, threshold, scale, **key)
    dense = x.contiguous()
    return x.copy_(_launch_mask(dense, dense, threshold, scale, **key))


def launch_mask_state(
    x: Tensor, out: Tensor, state: Tensor, threshold: int, scale: float, *, wrap=None
) -> Tensor:
    """:func:`mask_scale_state` into ``out``; ``wrap``: ``torch.library.wrap_triton``/``None``."""
    return _launch_mask(x, out, threshold, scale, state=state, wrap=wrap)


def mask_scale_state(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    """``mask_scale`` with ``state = int64[2] [seed, offset]`` on ``x``'s device (no host sync)."""
    x = x.contiguous()
    return _launch_mask(x, torch.empty_like(x), threshold, scale, state=state)


def mask_scale_state_(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    """In-place :func:`mask_scale_state`."""
    if x.is_contiguous():
        return _launch_mask(x, x, threshold, scale, state=state)
    dense = x.contiguous()
    return x.copy_(_launch_mask(dense, dense, threshold, scale, state=state))


def _u64_tensor(values: Sequence[int], device: torch.device) -> Tensor:
    return torch.tensor([_signed64(v) for v in values], dtype=torch.int64, device=device)


def mask_scale_streams(
    x: Tensor, seeds: Sequence[int], offsets: Sequence[int], threshold: int, scale: float
) -> Tensor:
    _check_dtype(x)
    x = x.contiguous()
    out = torch.empty_like(x)
    numel = x[0, 0].numel() if x.numel() else 0
    if numel == 0:
        return out
    # Streams are often small (a few hundred elements): a block near their size
    # wastes fewer masked-off lanes; powers of two keep the compile count at a handful.
    block = max(128, min(_BLOCK, triton.next_power_of_2(numel)))
    if triton.cdiv(numel, block) > _MAX_GRID_Y:
        # Streams too long for grid axis 1: one launch per stream instead.
        for t, seed in enumerate(seeds):
            for r, offset in enumerate(offsets):
                _launch_mask(x[t, r], out[t, r], threshold, scale, seed=seed, offset=offset)
        return out
    bits = _bf16_bits(x.dtype)
    _mask_scale_streams_kernel[(len(seeds) * len(offsets), triton.cdiv(numel, block))](
        _as_kernel_tensor(x, bits), _as_kernel_tensor(out, bits), numel,
        _u64_tensor(seeds, x.device), _u64_tensor(offsets, x.device), len(offsets),
        threshold, _f64_bits(scale),
        BLOCK=block, F64=x.dtype == torch.float64, BF16_BITS=bits, num_warps=_NUM_WARPS,
        enable_fp_fusion=False,
    )
    return out


def bias_dropout_add_forward(
    x: Tensor, bias: Tensor, residual: Tensor, threshold: int, scale: float, activation: int,
    *, seed: int = 0, offset: int = 0, state: Tensor | None = None,
    block: int | None = None,
) -> Tensor:
    """``residual + (keep ? act(x + bias) * scale : 0)`` for contiguous ``x``/``residual``
    and a 1-D ``bias`` of ``x.shape[-1] <= MAX_FUSED_HIDDEN`` elements,
    float16/bfloat16/float32 (fp32 math).

    FMA contraction is off (``enable_fp_fusion=False``): a fused multiply-add
    rounds once where the unfused chain rounds twice, and float32 results must
    equal the chain's bit for bit.
    """
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    bits = _bf16_bits(x.dtype)
    key = _key_args(x, seed, offset, state)
    block = block or _BLOCK
    _bias_dropout_add_kernel[_grid(x.numel(), block)](
        *(_as_kernel_tensor(t, bits) for t in (x, bias, residual, out)),
        x.numel(), bias.numel(), 1.0 / bias.numel(), *key, threshold, _f64_bits(scale),
        BLOCK=block, ACT=activation, BF16_BITS=bits,
        ROW_ALIGNED=bias.numel() % 8 == 0, num_warps=_NUM_WARPS, enable_fp_fusion=False,
    )
    return out


def bias_dropout_add_backward(
    grad: Tensor, x: Tensor, bias: Tensor, threshold: int, scale: float, activation: int,
    *, seed: int = 0, offset: int = 0, state: Tensor | None = None,
    block: int | None = None,
) -> Tensor:
    """Gradient of ``x + bias`` (before the bias sum): ``act'(x + bias) * mask(grad) * scale``."""
    grad = grad.contiguous()
    grad_x = torch.empty_like(x)
    if x.numel() == 0:
        return grad_x
    bits = _bf16_bits(x.dtype)
    key = _key_args(x, seed, offset, state)
    block = block or _BLOCK
    _bias_dropout_add_backward_kernel[_grid(x.numel(), block)](
        *(_as_kernel_tensor(t, bits) for t in (grad, x, bias, grad_x)),
        x.numel(), bias.numel(), 1.0 / bias.numel(), *key, threshold, _f64_bits(scale),
        BLOCK=block, ACT=activation, BF16_BITS=bits,
        ROW_ALIGNED=bias.numel() % 8 == 0, num_warps=_NUM_WARPS, enable_fp_fusion=False,
    )
    return grad_x
