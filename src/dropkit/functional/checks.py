"""Argument checks shared by the functional ops: each value is checked once, where it enters.

The ops call these at their entry; the modules of :mod:`dropkit.nn` call them
in their constructors (so a bad value fails where it is written) and then rely
on the op's own check for values assigned later (``module.p = ...``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal, Union

import torch
from torch import Tensor

__all__ = [
    "Mode",
    "MODES",
    "RankError",
    "validate_p",
    "validate_mode",
    "validate_input",
    "validate_inplace",
    "validate_positive",
    "validate_index",
    "normalise_dims",
    "BroadcastDims",
]

MODES = ("inverted", "classic")
Mode = Literal["inverted", "classic"]
BroadcastDims = Union[int, Sequence[int], None]


class RankError(ValueError, RuntimeError):
    """An input of the wrong rank.

    Both a ``ValueError`` (dropkit's convention for bad arguments) and a
    ``RuntimeError`` (what ``torch.nn.functional.dropout1d/2d/3d`` and
    ``feature_alpha_dropout`` raise), so ``except RuntimeError`` written against
    torch keeps working after a swap to dropkit.
    """


def validate_p(p: float, name: str = "dropout probability") -> float:
    """Return ``p`` as a float, or raise naming it when it is not a probability.

    Any real number type is accepted (``0``, ``0.5``, ``numpy.float32(0.25)``,
    as torch accepts); ``bool``, NaN and values outside ``[0, 1]`` are refused.
    """
    if type(p) is float and 0.0 <= p <= 1.0:
        # The common case, without the ABC isinstance checks below (~1 us a call).
        return p
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} has to be a float between 0 and 1, but got {p!r}")
    value = float(p)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} has to be between 0 and 1, but got {p}")
    return value


def validate_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode has to be one of {MODES}, but got {mode!r}")
    return mode


def validate_input(input: Tensor, op: str) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op} expects a torch.Tensor, but got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{op} expects a floating-point tensor, but got dtype {input.dtype}")


def validate_inplace(input: Tensor, op: str) -> None:
    """Refuse to overwrite a leaf that requires grad; call it only when something is written."""
    if input.is_leaf and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}(inplace=True) cannot modify a leaf tensor that requires grad "
            f"(shape {tuple(input.shape)}); use inplace=False or apply it to a non-leaf"
        )


def validate_positive(value: float, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} has to be a float, but got {value!r}")
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not math.isfinite(value) or not low_ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} has to be finite and {bound}, but got {value}")
    return value


def validate_index(index: int, name: str) -> int:
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or index < 0:
        raise ValueError(f"{name} has to be a non-negative int token id, but got {index!r}")
    return int(index)


def normalise_dims(dims: BroadcastDims, ndim: int, op: str) -> tuple[int, ...]:
    """``broadcast_dims`` as sorted non-negative dims; an int is one dim, ``None`` none
    (as Keras' ``noise_shape=None``)."""
    if dims is None or (type(dims) is tuple and not dims):
        return ()
    if isinstance(dims, numbers.Integral) and not isinstance(dims, bool):
        dims = (dims,)
    if not isinstance(dims, Sequence) or isinstance(dims, str):
        raise TypeError(
            f"{op}: broadcast_dims has to be an int, a sequence of ints or None, "
            f"but got {dims!r}"
        )
    normalised = []
    for dim in dims:
        if (
            isinstance(dim, bool)
            or not isinstance(dim, numbers.Integral)
            or not -ndim <= dim < ndim
        ):
            raise ValueError(
                f"{op}: broadcast_dims entry {dim!r} is not a dimension of a {ndim}-D input"
            )
        normalised.append(int(dim) % ndim)
    return tuple(sorted(set(normalised)))
