"""Backends that apply a Philox keep-mask: ``y = keep ? x * scale : 0``.

This package is the one seam between dropkit's ops and the code that touches
memory. Every backend implements the same two calls on a *contiguous* tensor,
where element ``i`` of the flattened tensor uses 16-bit lane ``i`` of the
stream ``(seed, offset)`` (see :mod:`dropkit.random`):

* ``mask_scale(x, seed, offset, threshold, scale) -> Tensor`` (new tensor)
* ``mask_scale_(x, seed, offset, threshold, scale) -> Tensor`` (in place)

and one batched call for many small streams (Monte Carlo sampling draws one
stream per sample and input row):

* ``mask_scale_streams(x, seeds, offsets, threshold, scale) -> Tensor``: ``x``
  of shape ``(len(seeds), len(offsets), ...)``; slice ``[t, r]`` is masked
  exactly as ``mask_scale(x[t, r], seeds[t], offsets[r], ...)`` would.

``scale`` is applied in float32 for float16/bfloat16/float32 inputs and in
float64 for float64 inputs, then rounded once to the input dtype, so every
backend produces the same bits.

Dispatch (``backend_name(x)`` says which one serves ``x``):

* ``"native-avx512"`` / ``"native-avx2"`` / ``"native-portable"``: the
  compiled kernel (``_native.c``, the best instruction set the CPU has, chosen
  at run time) for CPU tensors of dtype float32, float64, float16 and
  bfloat16, run on ``torch.get_num_threads()`` threads;
* ``"reference"``: :mod:`dropkit.kernels.reference` for everything else (CUDA,
  other dtypes), when ``DROPKIT_NATIVE=0``, or when the compiled module is
  missing (then one warning is emitted on first CPU use).

``DROPKIT_NATIVE`` (read once, at import): unset, ``""`` or ``"auto"`` uses
the native kernel when it was built; ``"0"`` forces the reference; ``"1"``
requires the native kernel and makes a missing build an ImportError.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from dropkit.kernels import reference
from dropkit.random import as_int64_bits

__all__ = ["mask_scale", "mask_scale_", "mask_scale_streams", "backend_name", "native_module"]

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_ENV_VAR = "DROPKIT_NATIVE"
_ENV_CHOICES = ("", "auto", "0", "1")


def _load_native():
    """The compiled module, or ``None`` with the reason it is unavailable."""
    setting = os.environ.get(_ENV_VAR, "").strip().lower()
    if setting not in _ENV_CHOICES:
        raise ValueError(
            f"{_ENV_VAR} has to be one of {_ENV_CHOICES[1:]} or unset, "
            f"but got {os.environ[_ENV_VAR]!r}"
        )
    if setting == "0":
        return None, f"{_ENV_VAR}=0"
    try:
        # Imported after torch on purpose: the kernel runs its own threads and
        # must find torch's runtime already set up, never a second one.
        from dropkit.kernels import _native
    except ImportError as error:
        if setting == "1":
            raise ImportError(
                f"{_ENV_VAR}=1 requires dropkit's compiled kernel, which failed to import "
                f"({error}); reinstall with a C compiler available"
            ) from error
        return None, str(error)
    return _native, ""


_native, _native_missing_reason = _load_native()
_warned_missing = False


def native_module():
    """The compiled ``_native`` module, or ``None`` when the reference serves CPU tensors."""
    return _native


def _warn_missing_once() -> None:
    global _warned_missing
    if not _warned_missing:
        _warned_missing = True
        warnings.warn(
            "dropkit: native CPU kernel unavailable "
            f"({_native_missing_reason}); using the slower pure-PyTorch reference "
            f"(set {_ENV_VAR}=0 to silence)",
            RuntimeWarning,
            stacklevel=3,
        )


def _native_serves(x: Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype not in _DTYPE_CODES:
        return False
    if _native is None:
        if _native_missing_reason != f"{_ENV_VAR}=0":
            _warn_missing_once()
        return False
    return True


def backend_name(x: Tensor | None = None) -> str:
    """Name of the backend that would serve ``x`` (a CPU float32 tensor when ``None``)."""
    if x is None:
        x = torch.empty(0)
    if x.device.type != "cpu" or x.dtype not in _DTYPE_CODES or _native is None:
        return "reference"
    return f"native-{_native.isa()}"


def _run_native(x: Tensor, out: Tensor, seed: int, offset: int, threshold: int, scale: float):
    _native.mask_scale(
        x.data_ptr(),
        out.data_ptr(),
        x.numel(),
        _DTYPE_CODES[x.dtype],
        seed,
        offset,
        threshold,
        scale,
        torch.get_num_threads(),
    )
    return out


def mask_scale(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    if not _native_serves(x):
        return reference.mask_scale(x, seed, offset, threshold, scale)
    # Element i means flat row-major index i: other layouts are copied first.
    x = x.contiguous()
    return _run_native(x, torch.empty_like(x), seed, offset, threshold, scale)


def mask_scale_(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    if not _native_serves(x):
        return reference.mask_scale_(x, seed, offset, threshold, scale)
    if x.is_contiguous():
        return _run_native(x, x, seed, offset, threshold, scale)
    # A strided view (transposed, sliced, channels_last) has no flat element
    # order of its own: compute in row-major order and scatter back.
    dense = x.contiguous()
    return x.copy_(_run_native(dense, dense, seed, offset, threshold, scale))


def mask_scale_streams(
    x: Tensor, seeds: Sequence[int], offsets: Sequence[int], threshold: int, scale: float
) -> Tensor:
    if x.dim() < 2 or tuple(x.shape[:2]) != (len(seeds), len(offsets)):
        raise ValueError(
            f"mask_scale_streams expects x of shape ({len(seeds)}, {len(offsets)}, ...) for "
            f"{len(seeds)} seeds and {len(offsets)} offsets, but got {tuple(x.shape)}"
        )
    if not _native_serves(x):
        return reference.mask_scale_streams(x, seeds, offsets, threshold, scale)
    x = x.contiguous()
    out = torch.empty_like(x)
    # The kernel reads the arrays as uint64.
    seed_array, offset_array = as_int64_bits(seeds), as_int64_bits(offsets)
    _native.mask_scale_streams(
        x.data_ptr(),
        out.data_ptr(),
        x[0, 0].numel() if x.numel() else 0,
        _DTYPE_CODES[x.dtype],
        seed_array.data_ptr(),
        len(seeds),
        offset_array.data_ptr(),
        len(offsets),
        threshold,
        scale,
        torch.get_num_threads(),
    )
    return out
