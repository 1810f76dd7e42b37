"""Bit-for-bit comparison of kernel outputs, shared by the native and Triton tests."""

from __future__ import annotations

import torch

_INT_VIEW = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s storage reinterpreted as integers of the same width."""
    return t.view(_INT_VIEW[t.element_size()])


def assert_bit_identical(actual: torch.Tensor, expected: torch.Tensor, label: str = "kernel"
                         ) -> None:
    """Same dtype, shape and bits; NaN payloads are the one exception.

    torch's own float32 -> bfloat16/half casts return different NaN bit patterns in
    their vectorised and scalar loops, so a reference is not self-consistent there,
    and a NaN's payload is not part of the contract (docs/kernel.md): a NaN must
    stay NaN.
    """
    actual, expected = actual.cpu(), expected.cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    both_nan = torch.isnan(actual) & torch.isnan(expected)
    differ = ((bits(actual) != bits(expected)) & ~both_nan).reshape(-1)
    if differ.any():
        index = int(differ.nonzero()[0, 0])
        raise AssertionError(
            f"{int(differ.sum())} of {actual.numel()} elements differ (first flat index "
            f"{index}): {label} {actual.reshape(-1)[differ][:3].tolist()} vs reference "
            f"{expected.reshape(-1)[differ][:3].tolist()}"
        )
