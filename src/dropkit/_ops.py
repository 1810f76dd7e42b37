"""The autograd-aware mask op, in two forms with one behaviour.

``dropkit::mask_scale`` (registered with ``torch.library``) is opaque to
``torch.compile`` (no graph break, no retracing of the kernel) and
differentiable: its backward applies the *same* mask to the incoming gradient
by regenerating it from the saved ``state`` tensor ``[seed, offset]``. Only
those 16 bytes are saved for backward, never a mask: dropout costs no
activation memory beyond the output itself.

In eager mode the same computation runs through :func:`apply`, an
``autograd.Function`` holding the seed and offset as Python ints: a custom
op's dispatch cost ~35 us per call here, several times the kernel itself on
activations of a few thousand elements (the fixed cost that made small
DropPath/DropBlock calls slower than timm's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dropkit import kernels
from dropkit.random import as_int64_bits

_U64 = 1 << 64


def make_state(seed: int, offset: int) -> Tensor:
    """Pack a 64-bit seed and offset into an int64 tensor (bit patterns preserved)."""
    return as_int64_bits((seed, offset))


def unpack_state(state: Tensor) -> tuple[int, int]:
    seed, offset = state.tolist()
    return seed % _U64, offset % _U64


@torch.library.custom_op("dropkit::mask_scale", mutates_args=())
def mask_scale(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    seed, offset = unpack_state(state)
    return kernels.mask_scale(x.contiguous(), seed, offset, threshold, scale)


@mask_scale.register_fake
def _(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output) -> None:
    _, state, threshold, scale = inputs
    ctx.save_for_backward(state)
    ctx.threshold, ctx.scale = threshold, scale


def _backward(ctx, grad: Tensor):
    (state,) = ctx.saved_tensors
    return mask_scale(grad, state, ctx.threshold, ctx.scale), None, None, None


mask_scale.register_autograd(_backward, setup_context=_setup_context)


class _MaskScaleInplace(torch.autograd.Function):
    """In-place twin of ``mask_scale`` for eager mode (``inplace=True``)."""

    @staticmethod
    def forward(ctx, x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
        seed, offset = unpack_state(state)
        kernels.mask_scale_(x, seed, offset, threshold, scale)
        ctx.mark_dirty(x)
        ctx.save_for_backward(state)
        ctx.threshold, ctx.scale = threshold, scale
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        (state,) = ctx.saved_tensors
        return mask_scale(grad, state, ctx.threshold, ctx.scale), None, None, None


def mask_scale_inplace(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    return _MaskScaleInplace.apply(x, state, threshold, scale)


class _MaskScale(torch.autograd.Function):
    """Eager twin of ``dropkit::mask_scale`` (same kernel, same backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
        ctx.key = (seed, offset, threshold, scale)
        return kernels.mask_scale(x.contiguous(), seed, offset, threshold, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Through apply again, so that double backward sees the same mask.
        return _MaskScale.apply(grad, *ctx.key), None, None, None, None


class _MaskScaleInplaceEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
        kernels.mask_scale_(x, seed, offset, threshold, scale)
        ctx.mark_dirty(x)
        ctx.key = (seed, offset, threshold, scale)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _MaskScale.apply(grad, *ctx.key), None, None, None, None


def apply(
    x: Tensor, seed: int, offset: int, threshold: int, scale: float, inplace: bool = False
) -> Tensor:
    """Eager-mode ``keep ? x * scale : 0`` with the mask of ``(seed, offset)``, differentiable."""
    function = _MaskScaleInplaceEager if inplace else _MaskScale
    return function.apply(x, seed, offset, threshold, scale)
