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

:func:`apply_keyed` (what the functional ops call in eager mode) sends a plain CPU
tensor to the C++ twin of :func:`apply`, ``kernels._dispatch``, when it is built:
the same seed draw, kernel and backward with no Python on the path (inside a
training step the Python route costs several times the kernel). Everything else
takes :func:`apply`; ``tests/kernels/test_dispatch.py`` holds the two to the same bits.

The state tensor lives on the input's device and the kernels read it there
(``kernels.mask_scale_state``): no ``.tolist()``, so no device-to-host sync
under ``torch.compile`` or inside a CUDA graph. For CUDA tensors the op is a
``torch.library.triton_op`` around the Triton kernel (registered when triton
is first imported), which ``torch.compile`` can see into.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dropkit import kernels
from dropkit.random import cuda_capturing, draw_seed

_U64 = 1 << 64
_SEED_HIGH = 2**63 - 1


def _signed(value: int) -> int:
    return value - _U64 if value >= 1 << 63 else value


def make_state(seed: int, offset: int, device: torch.device | str | None = None) -> Tensor:
    """Pack a 64-bit seed and offset into an int64[2] tensor on ``device`` (bits preserved)."""
    values = (_signed(seed), _signed(offset))
    if device is None or torch.device(device).type == "cpu":
        return torch.tensor(values, dtype=torch.int64, device=device)
    # Fills rather than a copy from host memory: no sync, and allowed while capturing.
    return torch.cat([torch.full((1,), v, dtype=torch.int64, device=device) for v in values])


def draw_state(
    offset: int, device: torch.device | str | None, generator: Optional[torch.Generator] = None
) -> Tensor:
    """``[fresh seed, offset]`` made on ``device``: the seed never visits the host.

    On CUDA the seed comes from the device's Philox generator, whose offset
    torch advances on every replay of a captured CUDA graph, so each replay
    draws a new mask; under ``torch.compile`` it keeps the graph free of syncs.
    """
    source = generator.device if generator is not None else device
    drawn = torch.randint(
        0, _SEED_HIGH, (1,), dtype=torch.int64, device=source, generator=generator
    ).to(device)
    # torch.full, not torch.tensor: copying a host list is not allowed while capturing.
    return torch.cat((drawn, torch.full((1,), _signed(offset), dtype=torch.int64, device=device)))


def graph_building() -> bool:
    """Whether ops are being recorded into a graph: ``torch.compile`` or ``torch.jit.trace``.

    There a seed or offset must be data (a tensor the graph computes), never a Python
    int: ``torch.compile`` would guard on it and a trace would freeze it, so every run
    of the graph would drop the same units. The eager routes write through raw pointers,
    which a trace does not record at all.
    """
    return torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None


def capturing(device: torch.device | str | None) -> bool:
    """Whether the current CUDA stream of ``device`` is being captured into a CUDA graph."""
    return (
        device is not None
        and torch.device(device).type == "cuda"
        and torch.cuda.is_current_stream_capturing()
    )


def unpack_state(state: Tensor) -> tuple[int, int]:
    """``(seed, offset)`` as Python ints. On a CUDA state this is a device-to-host sync:
    the kernels read the state tensor themselves (``kernels.mask_scale_state``)."""
    seed, offset = state.tolist()
    return seed % _U64, offset % _U64


@torch.library.custom_op("dropkit::mask_scale", mutates_args=())
def _mask_scale_op(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    return kernels.mask_scale_state(x.contiguous(), state, threshold, scale)


@_mask_scale_op.register_fake
def _(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("dropkit::mask_scale_", mutates_args=("x",))
def _mask_scale_inplace_op(x: Tensor, state: Tensor, threshold: int, scale: float) -> None:
    kernels.mask_scale_state_(x, state, threshold, scale)


@_mask_scale_inplace_op.register_fake
def _(x: Tensor, state: Tensor, threshold: int, scale: float) -> None:
    return None


def _setup_context(ctx, inputs, output) -> None:
    _, state, threshold, scale = inputs
    ctx.save_for_backward(state)
    ctx.threshold, ctx.scale = threshold, scale


def _backward(ctx, grad: Tensor):
    (state,) = ctx.saved_tensors
    return mask_scale(grad, state, ctx.threshold, ctx.scale), None, None, None


_mask_scale_op.register_autograd(_backward, setup_context=_setup_context)

# One triton_op per kernels module (the real one; the interpreted copy in tests).
_triton_ops: dict[int, object] = {}


def _triton_mask_scale(backend):
    """``dropkit::mask_scale_triton``: the Triton kernel as a ``torch.library.triton_op``.

    Registered on first use, because registering imports triton. Unlike the
    opaque custom op, ``torch.compile`` sees the kernel (``wrap_triton``) and
    can schedule it like its own; the state tensor is read on the device.
    """
    op = _triton_ops.get(id(backend))
    if op is not None:
        return op
    name = "dropkit::mask_scale_triton" + ("_interpreted" if backend.INTERPRETED else "")

    def forward(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        return backend.launch_mask_state(
            x, out, state, threshold, scale, wrap=torch.library.wrap_triton
        )

    op = torch.library.triton_op(name, forward, mutates_args=())
    op.register_autograd(_backward, setup_context=_setup_context)
    _triton_ops[id(backend)] = op
    return op


def mask_scale(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    """Differentiable ``keep ? x * scale : 0`` keyed by ``state = int64[2] [seed, offset]``.

    One graph node under ``torch.compile``: the Triton ``triton_op`` for CUDA
    tensors, the opaque custom op ``dropkit::mask_scale`` elsewhere. Backward
    applies the same op to the gradient with the saved 16-byte state.

    Outside compile (a CUDA-graph capture) it is the custom op, which launches
    the kernel exactly as eager calls do: the capture then finds the binary its
    warm-up calls compiled and loaded, where a ``wrap_triton`` launch (other
    compile options) would need a new one, and loading one while capturing fails.
    """
    if graph_building():
        backend = kernels.triton_backend(x)
        if backend is not None:
            return _triton_mask_scale(backend)(x, state, threshold, scale)
    return _mask_scale_op(x, state, threshold, scale)


class _MaskScaleInplace(torch.autograd.Function):
    """In-place twin of ``mask_scale`` (``inplace=True`` under compile or graph capture)."""

    @staticmethod
    def forward(ctx, x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
        # A mutating custom op, so torch.compile keeps it one node (no .tolist()).
        _mask_scale_inplace_op(x, state, threshold, scale)
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


def _like_input(out: Tensor, x: Tensor) -> Tensor:
    """``out`` (row-major) in ``x``'s memory layout: channels_last and permuted inputs keep it.

    The mask is a function of the logical index, so only the strides change,
    never a value; a dense row-major input returns ``out`` untouched.
    """
    if x.is_contiguous():
        return out
    # empty_like keeps the strides of a dense permuted input and falls back to
    # row-major for overlapping or gapped views (torch's rule for elementwise ops).
    return torch.empty_like(x).copy_(out)


def _eager(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    return _like_input(kernels.mask_scale(x, seed, offset, threshold, scale), x)


def _vmap_rule(info, in_dims, x, seed, offset, threshold, scale, inplace: bool):
    """One rule for both eager functions under ``torch.func.vmap``.

    ``randomness="error"`` refuses, as torch's dropout does. ``"different"``
    masks the whole ``(B, *shape)`` batch as one tensor: entry ``b`` reads
    lanes ``[b * n, (b + 1) * n)`` of the stream, its own mask. ``"same"``
    gives every entry the mask of ``(seed, offset)`` over ``shape``, the mask
    the unbatched call would draw.
    """
    if info.randomness == "error":
        raise RuntimeError(
            "vmap: dropkit's dropout is random; call torch.func.vmap with "
            "randomness='different' (a mask per batch entry) or 'same' (one shared mask)"
        )
    batched = x.movedim(in_dims[0], 0)
    if info.randomness == "same":
        mask = apply(
            torch.ones(batched.shape[1:], dtype=torch.float32, device=x.device),
            seed, offset, threshold, scale,
        )
        # where, not a product, so a dropped inf or NaN is 0 as in the kernel.
        out = torch.where(mask != 0, batched * mask, 0.0).to(x.dtype)
    else:
        out = apply(batched, seed, offset, threshold, scale)
    if inplace:
        batched.copy_(out)
        return x, in_dims[0]
    return out, 0


class _MaskScale(torch.autograd.Function):
    """Eager twin of ``dropkit::mask_scale`` (same kernel, same backward), with a ``jvp``.

    ``ctx``-style on purpose: ``Function.apply`` binds the arguments with
    ``inspect.signature`` on every call once a class defines ``setup_context``,
    about 20 us here, more than the kernel on small activations. The
    ``setup_context`` twins below serve ``torch.func`` only.
    """

    @staticmethod
    def forward(ctx, x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
        ctx.key = (seed, offset, threshold, scale)
        return _eager(x, seed, offset, threshold, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _grad_input(grad, ctx.key), None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, *_):
        # A linear map of x: the tangent gets the same mask.
        return apply(x_tangent, *ctx.key)


class _MaskScaleInplaceEager(torch.autograd.Function):
    """In-place form of :class:`_MaskScale` (``inplace=True``), same mask and backward."""

    @staticmethod
    def forward(ctx, x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
        kernels.mask_scale_(x, seed, offset, threshold, scale)
        ctx.mark_dirty(x)
        ctx.key = (seed, offset, threshold, scale)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _grad_input(grad, ctx.key), None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, *_):
        return _tangent_inplace(x_tangent, ctx.key)


def _grad_input(grad: Tensor, key: tuple) -> Tensor:
    """The eager functions' backward: the forward's mask applied to ``grad``."""
    if torch.is_grad_enabled():
        # create_graph=True: through apply again, so that double backward sees the
        # same mask.
        return apply(grad, *key)
    # The usual backward runs without grad mode: the kernel directly, without a second
    # Function.apply (~30 us of dispatch on the cold caches of a training step).
    return _eager(grad, *key)


def _tangent_inplace(x_tangent: Tensor, key: tuple) -> Tensor:
    # Forward AD of an in-place op updates the tangent in place too; the native
    # kernel writes through a raw pointer, so bump the version torch checks.
    kernels.mask_scale_(x_tangent, *key)
    torch.autograd.graph.increment_version(x_tangent)
    return x_tangent


class _MaskScaleTransformable(torch.autograd.Function):
    """:class:`_MaskScale` in ``setup_context`` style with a ``vmap`` rule, for ``torch.func``.

    ``torch.func.grad``/``vmap``/``jvp`` need this style; :func:`apply` picks it
    only while a functorch transform is active.
    """

    @staticmethod
    def forward(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
        return _eager(x, seed, offset, threshold, scale)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.key = inputs[1:]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return apply(grad, *ctx.key), None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, *_):
        return apply(x_tangent, *ctx.key)

    @staticmethod
    def vmap(info, in_dims, x, seed, offset, threshold, scale):
        return _vmap_rule(info, in_dims, x, seed, offset, threshold, scale, inplace=False)


class _MaskScaleInplaceTransformable(torch.autograd.Function):
    """In-place :class:`_MaskScaleTransformable`."""

    @staticmethod
    def forward(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
        kernels.mask_scale_(x, seed, offset, threshold, scale)
        return x

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.mark_dirty(inputs[0])
        ctx.key = inputs[1:]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return apply(grad, *ctx.key), None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, *_):
        return _tangent_inplace(x_tangent, ctx.key)

    @staticmethod
    def vmap(info, in_dims, x, seed, offset, threshold, scale):
        return _vmap_rule(info, in_dims, x, seed, offset, threshold, scale, inplace=True)


def apply(
    x: Tensor, seed: int, offset: int, threshold: int, scale: float, inplace: bool = False
) -> Tensor:
    """Eager-mode ``keep ? x * scale : 0`` with the mask of ``(seed, offset)``, differentiable.

    The output keeps ``x``'s memory layout (channels_last, permuted strides).
    """
    if torch._C._are_functorch_transforms_active():
        function = _MaskScaleInplaceTransformable if inplace else _MaskScaleTransformable
    else:
        function = _MaskScaleInplaceEager if inplace else _MaskScale
    return function.apply(x, seed, offset, threshold, scale)


_dispatch = kernels.dispatch_module()
# Parameter too: its __torch_function__ is disabled, so it is a plain tensor here.
_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)
_DISPATCH_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def apply_keyed(
    x: Tensor,
    seed: Optional[int],
    offset: int,
    threshold: int,
    scale: float,
    generator: Optional[torch.Generator] = None,
    inplace: bool = False,
) -> Tensor:
    """:func:`apply` with ``seed`` drawn from ``generator`` (torch's default) when ``None``.

    A plain CPU tensor outside ``torch.func`` goes to the C++ op of
    ``kernels._dispatch`` when it is built: the same seed draw, kernel and
    backward, without the Python path (``Function.apply``, ``torch.randint``)
    that costs several times the kernel inside a training step. Everything
    else (subclasses, transforms, forward AD, other devices) takes the Python
    route, with the same bits.
    """
    if (
        _dispatch is not None
        and type(x) in _PLAIN_TENSORS
        and x.device.type == "cpu"
        and x.dtype in _DISPATCH_DTYPES
        and (generator is None or generator.device.type == "cpu")
        and not torch._C._are_functorch_transforms_active()
        # draw_seed's refusal while a CUDA graph is captured must hold here too.
        and not (seed is None and cuda_capturing())
    ):
        out = _dispatch.apply(x, seed, generator, offset, threshold, scale, inplace)
        if out is not None:
            return out
    if seed is None:
        seed = draw_seed(generator)
    return apply(x, seed, offset, threshold, scale, inplace)
