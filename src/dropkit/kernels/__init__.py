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
* ``"triton"``: :mod:`dropkit.kernels.triton` for CUDA tensors of those four
  dtypes, when ``triton`` imports. It is imported on the first CUDA tensor, so
  ``import dropkit`` never imports triton on its own;
* ``"reference"``: :mod:`dropkit.kernels.reference` for everything else (other
  devices and dtypes), when ``DROPKIT_NATIVE=0`` / ``DROPKIT_TRITON=0``, or
  when the compiled module / triton is missing (then one warning is emitted on
  first use).

``DROPKIT_NATIVE`` (read once, at import): unset, ``""`` or ``"auto"`` uses
the native kernel when it was built; ``"0"`` forces the reference; ``"1"``
requires the native kernel and makes a missing build an ImportError.
``DROPKIT_TRITON`` (read once, at import) takes the same values for CUDA
tensors; with ``"1"`` a missing triton is an ImportError on the first CUDA call.

The eager op around the native kernel (seed draw, autograd node, kernel call)
also has a C++ form, ``_dispatch`` (``_dispatch.cpp``), compiled against the
torch present at build time; ``dispatch_module()`` returns it when it was
built for the torch running now, and ``dispatch_status()`` says why not
otherwise. ``DROPKIT_DISPATCH`` (read once, at import) takes the same values:
``"0"`` keeps the Python route, ``"1"`` makes a missing or mismatched build an
ImportError. Both routes give the same bits; the C++ one saves the Python
dispatch a training step pays on every dropout call.

Two calls take the key as an int64[2] tensor ``[seed, offset]`` (u64 bit
patterns) on the input's device instead of Python ints, so a seed drawn on the
GPU never visits the host (``torch.compile``, CUDA graphs):
``mask_scale_state(x, state, threshold, scale)`` and ``mask_scale_state_``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from dropkit.kernels import reference
from dropkit.random import as_int64_bits

__all__ = [
    "mask_scale",
    "mask_scale_",
    "mask_scale_state",
    "mask_scale_state_",
    "mask_scale_streams",
    "backend_name",
    "native_module",
    "dispatch_module",
    "dispatch_status",
    "describe",
    "triton_backend",
]

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_ENV_VAR = "DROPKIT_NATIVE"
_ENV_CHOICES = ("", "auto", "0", "1")


def _env_setting(var: str) -> str:
    """``var``'s value, normalised, or a ValueError naming it and the allowed values."""
    setting = os.environ.get(var, "").strip().lower()
    if setting not in _ENV_CHOICES:
        raise ValueError(
            f"{var} has to be one of {_ENV_CHOICES[1:]} or unset, but got {os.environ[var]!r}"
        )
    return setting


def _load_native():
    """The compiled module, or ``None`` with the reason it is unavailable."""
    setting = _env_setting(_ENV_VAR)
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

_DISPATCH_VAR = "DROPKIT_DISPATCH"


def _load_dispatch():
    """The C++ eager op bound to the native kernel, or ``None`` with the reason."""
    setting = _env_setting(_DISPATCH_VAR)
    if setting == "0":
        return None, f"{_DISPATCH_VAR}=0"
    reason = ""
    if _native is None:
        reason = f"the native kernel is unavailable ({_native_missing_reason})"
    else:
        try:
            from dropkit.kernels import _dispatch
        except ImportError as error:
            reason = f"not built for this install ({error})"
        else:
            if _dispatch.TORCH_VERSION != torch.__version__:
                # A C++ build is tied to torch's ABI: never run one against another torch.
                reason = (
                    f"built for torch {_dispatch.TORCH_VERSION}, running torch "
                    f"{torch.__version__}; reinstall dropkit to rebuild it"
                )
            else:
                _dispatch.init(_native._C_API)
                return _dispatch, ""
    if setting == "1":
        raise ImportError(f"{_DISPATCH_VAR}=1 requires dropkit's C++ eager op, which is {reason}")
    return None, reason


_dispatch, _dispatch_missing_reason = _load_dispatch()
_warned_missing = False

_TRITON_VAR = "DROPKIT_TRITON"


_triton_mode = _env_setting(_TRITON_VAR)
# None: not tried yet; False: tried and unavailable; otherwise the module.
_triton = None


def _load_triton():
    """dropkit.kernels.triton, imported on first use, or ``False`` when triton is missing."""
    global _triton
    if _triton is None:
        try:
            from dropkit.kernels import triton as triton_kernels
        except ImportError as error:
            if _triton_mode == "1":
                raise ImportError(
                    f"{_TRITON_VAR}=1 requires triton for CUDA tensors, which failed to "
                    f"import ({error}); pip install triton"
                ) from error
            warnings.warn(
                f"dropkit: triton unavailable ({error}); CUDA tensors use the slower "
                f"pure-PyTorch reference (set {_TRITON_VAR}=0 to silence)",
                RuntimeWarning,
                stacklevel=4,
            )
            triton_kernels = False
        _triton = triton_kernels
    return _triton


def triton_backend(x: Tensor):
    """:mod:`dropkit.kernels.triton` when it serves ``x`` (CUDA, a served dtype), else ``None``.

    Importing triton happens here, on the first CUDA tensor, never at ``import dropkit``.
    """
    if x.device.type != "cuda" or x.dtype not in _DTYPE_CODES or _triton_mode == "0":
        return None
    return _load_triton() or None


def native_module():
    """The compiled ``_native`` module, or ``None`` when the reference serves CPU tensors."""
    return _native


def dispatch_module():
    """The compiled C++ eager op (``_dispatch``), or ``None`` when the Python route serves."""
    return _dispatch


def dispatch_status() -> str:
    """``"c++"`` when eager CPU dropout runs through ``_dispatch``, else why it does not."""
    return "c++" if _dispatch is not None else f"python ({_dispatch_missing_reason})"


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
    if triton_backend(x) is not None:
        return "triton"
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
    fast = triton_backend(x)
    if fast is not None:
        return fast.mask_scale(x, seed, offset, threshold, scale)
    if not _native_serves(x):
        return reference.mask_scale(x, seed, offset, threshold, scale)
    # Element i means flat row-major index i: other layouts are copied first.
    x = x.contiguous()
    return _run_native(x, torch.empty_like(x), seed, offset, threshold, scale)


def mask_scale_(x: Tensor, seed: int, offset: int, threshold: int, scale: float) -> Tensor:
    fast = triton_backend(x)
    if fast is not None:
        return fast.mask_scale_(x, seed, offset, threshold, scale)
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
    fast = triton_backend(x)
    if fast is not None:
        return fast.mask_scale_streams(x, seeds, offsets, threshold, scale)
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


def _unpack(state: Tensor) -> tuple[int, int]:
    # Only for CPU tensors, where reading two ints is not a device sync.
    seed, offset = state.tolist()
    return seed % (1 << 64), offset % (1 << 64)


def mask_scale_state(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    """``mask_scale`` keyed by ``state = int64[2] [seed, offset]`` on ``x``'s device."""
    fast = triton_backend(x)
    if fast is not None:
        return fast.mask_scale_state(x, state, threshold, scale)
    if _native_serves(x) and state.device.type == "cpu":
        return mask_scale(x, *_unpack(state), threshold, scale)
    return reference.mask_scale_state(x.contiguous(), state, threshold, scale)


def mask_scale_state_(x: Tensor, state: Tensor, threshold: int, scale: float) -> Tensor:
    """In-place :func:`mask_scale_state`."""
    fast = triton_backend(x)
    if fast is not None:
        return fast.mask_scale_state_(x, state, threshold, scale)
    if _native_serves(x) and state.device.type == "cpu":
        return mask_scale_(x, *_unpack(state), threshold, scale)
    return reference.mask_scale_state_(x, state, threshold, scale)


def describe() -> dict[str, str]:
    """What serves dropout here, for bug reports: ``dropkit info`` prints it.

    Versions, the CPU kernel and its instruction sets, the eager route, threads,
    CUDA and triton, and the environment variables that change any of them.
    """
    import platform

    import dropkit

    available = ", ".join(_native.available_isas()) if _native is not None else "-"
    info = {
        "dropkit": dropkit.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu backend": backend_name(),
        "cpu kernel": (
            f"native, instruction sets {available}" if _native is not None
            else f"reference ({_native_missing_reason})"
        ),
        "eager op": dispatch_status(),
        "torch threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        device = torch.empty(0, device="cuda")
        info["cuda"] = f"{torch.version.cuda}, {torch.cuda.get_device_name()}"
        info["cuda backend"] = backend_name(device)
    else:
        info["cuda"] = "not available"
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as error:
        info["triton"] = f"not importable ({error})"
    for var in (_ENV_VAR, _TRITON_VAR, _DISPATCH_VAR):
        info[var] = os.environ.get(var, "(unset)")
    return info
