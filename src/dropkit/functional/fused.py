"""Fused bias + activation + dropout + residual add, the transformer block's hot path.

``bias_dropout_add(x, bias, residual, p)`` is ``residual + dropout(act(x + bias), p)``
with the mask of :func:`dropkit.functional.dropout` for the same ``seed`` and
``offset`` (the Philox contract of :mod:`dropkit.random`). On CUDA it is one
Triton kernel forward and one backward: the eager chain is four kernels and
about ten passes over memory, the fused kernel reads ``x``, ``bias`` and
``residual`` once and writes the output once. Backward regenerates the mask
from the seed and offset; no mask is saved, and with ``activation=None``
nothing per element is saved at all. On CPU (and for float64) the same result
is composed from the existing ops.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as torch_functional
from torch import Tensor
from torch.autograd.function import once_differentiable

from dropkit import _ops, kernels
from dropkit.functional.checks import validate_p
from dropkit.functional.standard import dropout
from dropkit.random import as_u64, draw_seed, keep_scale

__all__ = ["bias_dropout_add", "ACTIVATIONS"]

#: The activations applied to ``x + bias`` before dropout.
ACTIVATIONS = (None, "relu", "gelu")
_ACTIVATION_CODES = {None: 0, "relu": 1, "gelu": 2}
# The Triton kernel computes in float32: float64 is composed instead, exactly.
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _activate(h: Tensor, activation: Optional[str]) -> Tensor:
    if activation == "relu":
        return torch.relu(h)
    if activation == "gelu":
        return torch_functional.gelu(h)
    return h


def _validate(x: Tensor, bias: Tensor, residual: Tensor, activation: Optional[str]) -> None:
    for name, value in (("x", x), ("bias", bias), ("residual", residual)):
        if not isinstance(value, Tensor):
            raise TypeError(
                f"bias_dropout_add expects {name} to be a torch.Tensor, but got "
                f"{type(value).__name__}"
            )
    if not x.is_floating_point():
        raise TypeError(f"bias_dropout_add expects a floating-point x, but got dtype {x.dtype}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation has to be one of {ACTIVATIONS}, but got {activation!r}")
    if not x.device == bias.device == residual.device:
        raise ValueError(
            "bias_dropout_add expects x, bias and residual on one device, but got "
            f"x on {x.device}, bias on {bias.device}, residual on {residual.device}"
        )
    if not x.dtype == bias.dtype == residual.dtype:
        raise TypeError(
            "bias_dropout_add expects x, bias and residual of one dtype, but got "
            f"x {x.dtype}, bias {bias.dtype}, residual {residual.dtype}"
        )
    if x.dim() == 0 or bias.shape != x.shape[-1:]:
        raise ValueError(
            f"bias of shape {tuple(bias.shape)} does not broadcast to the last dimension of x "
            f"of shape {tuple(x.shape)}: expected shape {tuple(x.shape[-1:])}"
        )
    if residual.shape != x.shape:
        raise ValueError(
            f"residual of shape {tuple(residual.shape)} must have the shape of x "
            f"{tuple(x.shape)}"
        )


class _BiasDropoutAdd(torch.autograd.Function):
    """The fused Triton kernels: forward and backward each one launch (plus the bias sum)."""

    @staticmethod
    def forward(
        ctx, x, bias, residual, state, backend, threshold, scale, activation, seed, offset
    ):
        code = _ACTIVATION_CODES[activation]
        out = backend.bias_dropout_add_forward(
            x, bias, residual, threshold, scale, code, seed=seed, offset=offset, state=state
        )
        # Only what regenerates the mask (16 bytes) and, for an activation, the
        # inputs themselves (already alive): never a mask, never act(x + bias).
        if activation is None:
            ctx.save_for_backward(state)
        else:
            ctx.save_for_backward(state, x, bias)
        ctx.backend, ctx.key = backend, (threshold, scale, code, seed, offset)
        ctx.bias_shape = bias.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        threshold, scale, code, seed, offset = ctx.key
        saved = ctx.saved_tensors
        state = saved[0]
        grad = grad.contiguous()
        if code == 0:
            if state is not None:
                grad_x = ctx.backend.mask_scale_state(grad, state, threshold, scale)
            else:
                grad_x = ctx.backend.mask_scale(grad, seed, offset, threshold, scale)
        else:
            x, bias = saved[1], saved[2]
            grad_x = ctx.backend.bias_dropout_add_backward(
                grad, x, bias, threshold, scale, code, seed=seed, offset=offset, state=state
            )
        grad_bias = grad_x.sum_to_size(ctx.bias_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_bias, grad, None, None, None, None, None, None, None


@torch.library.custom_op("dropkit::bias_dropout_add", mutates_args=())
def _fused_op(
    x: Tensor, bias: Tensor, residual: Tensor, state: Tensor, threshold: int, scale: float,
    activation: int,
) -> Tensor:
    backend = kernels.triton_backend(x)
    return backend.bias_dropout_add_forward(
        x, bias, residual, threshold, scale, activation, state=state
    )


@_fused_op.register_fake
def _(x, bias, residual, state, threshold, scale, activation):
    return torch.empty_like(x)


@torch.library.custom_op("dropkit::bias_dropout_add_backward", mutates_args=())
def _fused_backward_op(
    grad: Tensor, x: Tensor, bias: Tensor, state: Tensor, threshold: int, scale: float,
    activation: int,
) -> Tensor:
    backend = kernels.triton_backend(x)
    if activation == 0:
        return backend.mask_scale_state(grad, state, threshold, scale)
    return backend.bias_dropout_add_backward(
        grad, x, bias, threshold, scale, activation, state=state
    )


@_fused_backward_op.register_fake
def _(grad, x, bias, state, threshold, scale, activation):
    return torch.empty_like(x)


def _setup_fused_op(ctx, inputs, output) -> None:
    x, bias, _, state, threshold, scale, activation = inputs
    ctx.save_for_backward(x, bias, state)
    ctx.key = (threshold, scale, activation)


def _fused_op_backward(ctx, grad):
    x, bias, state = ctx.saved_tensors
    grad_x = _fused_backward_op(grad.contiguous(), x, bias, state, *ctx.key)
    return grad_x, grad_x.sum_to_size(bias.shape), grad, None, None, None, None


# torch.compile path: custom ops run their bodies eagerly, so the launches keep
# enable_fp_fusion=False (dynamo's triton tracing has no such launch option) and
# each direction stays one graph node with its state on the device.
_fused_op.register_autograd(_fused_op_backward, setup_context=_setup_fused_op)


def bias_dropout_add(
    x: Tensor,
    bias: Tensor,
    residual: Tensor,
    p: float,
    training: bool = True,
    *,
    activation: Optional[str] = None,
    seed: Optional[int] = None,
    offset: int = 0,
) -> Tensor:
    """``residual + dropout(act(x + bias), p)``, fused on CUDA.

    The bias-dropout-add of Megatron-LM (Shoeybi et al., 2019, "Megatron-LM:
    training multi-billion parameter language models using model parallelism")
    and xformers' fused dropout-bias-activation, on dropkit's reproducible mask
    (dropout: Srivastava et al., 2014). Use it where a transformer block adds
    the output of a bias-free projection, its bias and dropout to the residual
    stream (``Linear(..., bias=False)`` / Megatron's ``skip_bias_add``).

    Args:
        x: ``(*, H)`` floating-point tensor (e.g. the projection output).
        bias: ``(H,)`` tensor added along the last dimension.
        residual: tensor of ``x``'s shape.
        p: probability of dropping an element, in ``[0, 1]`` (quantised to ``2**-16``).
        training: apply dropout; ``False`` returns ``residual + act(x + bias)``.
        activation: ``None``, ``"relu"`` or ``"gelu"`` (exact, erf-based) on ``x + bias``.
        seed, offset: the Philox key; the mask equals that of
            ``dropout(act(x + bias), p, seed=seed, offset=offset)``. ``seed=None``
            draws one from torch's generator (on the device inside a CUDA graph
            capture or ``torch.compile``).

    Returns:
        A contiguous tensor of ``x``'s shape. On CUDA (float32/float16/bfloat16)
        the math is float32 with one rounding at the end: float32 results equal
        the unfused chain bit for bit (FMA contraction is off); float16/bfloat16
        differ from it by rounding only, with the same dropped positions.

    Example::

        >>> x, bias, residual = torch.randn(4, 16, 64), torch.randn(64), torch.randn(4, 16, 64)
        >>> y = bias_dropout_add(x, bias, residual, 0.1, activation="gelu", seed=0)
        >>> y.shape
        torch.Size([4, 16, 64])
    """
    p = validate_p(p)
    _validate(x, bias, residual, activation)
    offset = as_u64(offset, "offset")
    if seed is not None:
        seed = as_u64(seed, "seed")
    if not training or p == 0.0 or x.numel() == 0:
        return residual + _activate(x + bias, activation)
    backend = kernels.triton_backend(x)
    if backend is None or x.dtype not in _FUSED_DTYPES or bias.numel() > backend.MAX_FUSED_HIDDEN:
        return residual + dropout(_activate(x + bias, activation), p, seed=seed, offset=offset)
    threshold, _, scale = keep_scale(p)
    x, bias, residual = x.contiguous(), bias.contiguous(), residual.contiguous()
    if _ops.graph_building():
        state = (
            _ops.draw_state(offset, x.device) if seed is None
            else _ops.make_state(seed, offset, x.device)
        )
        return _fused_op(
            x, bias, residual, state, threshold, scale, _ACTIVATION_CODES[activation]
        )
    state = None
    if seed is None and _ops.capturing(x.device):
        state = _ops.draw_state(offset, x.device)
    elif seed is None:
        seed = draw_seed()
    # Eager: an autograd.Function, not the custom op (its dispatch costs ~35 us a call).
    return _BiasDropoutAdd.apply(
        x, bias, residual, state, backend, threshold, scale, activation, seed, offset
    )
