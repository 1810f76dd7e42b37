"""The RNG contract: every random number dropkit draws is a pure function of
``(seed, offset, logical element index)``.

The generator is Philox4x32-10 (Salmon et al., 2011, "Parallel random numbers:
as easy as 1, 2, 3"; the Random123 library), the counter-based generator behind
cuRAND, JAX and TensorFlow's stateless ops. A counter-based generator has no
state to advance: block ``b`` of the stream ``(seed, offset)`` is

    philox4x32_10(counter=(b mod 2**32, b >> 32, offset mod 2**32, offset >> 32),
                  key=(seed mod 2**32, seed >> 32))

so any thread, device or memory layout that asks for element ``i`` gets the same
bits. Two layouts of those bits are used:

* **16-bit lanes** (dropout masks). Element ``i`` reads block ``i // 8``; lane
  ``j = i % 8`` is bits ``16*(j % 2) .. 16*(j % 2) + 15`` of word ``j // 2``.
  The element is kept when that 16-bit value is ``< threshold`` with
  ``threshold = round(keep_prob * 2**16)``; the quantised keep probability is
  ``threshold / 2**16`` and survivors are scaled by ``2**16 / threshold``, so
  ``E[y] = x`` holds exactly for the quantised probability.
* **32-bit words** (uniform and normal noise). Element ``i`` reads word
  ``i % 4`` of block ``i // 4``; ``uniform = (word >> 8) * 2**-24`` in
  ``[0, 1)``.

Everything here is written with int64 tensor ops (values kept in
``[0, 2**32)``), so it runs unchanged on CPU and CUDA. It is the reference the
native kernel is tested against bit for bit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = [
    "KEEP_BITS",
    "philox4x32",
    "draw_seed",
    "cuda_capturing",
    "fold_seed",
    "keep_threshold",
    "keep_scale",
    "validate_seed",
    "random_bits16",
    "random_bits16_streams",
    "as_u64",
    "as_int64_bits",
    "keep_mask",
    "random_words",
    "uniform",
    "normal",
]

#: Resolution of the keep probability: thresholds are integers in [0, 2**16].
KEEP_BITS = 16
_KEEP_ONE = 1 << KEEP_BITS

_MASK32 = 0xFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_ROUNDS = 10
_SEED_SPACE = 1 << 64


def _mulhilo(multiplier: int, value: Tensor) -> tuple[Tensor, Tensor]:
    # A 32x32 -> 64-bit product overflows int64, so split `value` into 16-bit
    # halves; each partial product is < 2**48 and the sums stay < 2**49.
    low_part = multiplier * (value & 0xFFFF)
    high_part = multiplier * (value >> 16)
    upper = high_part + (low_part >> 16)
    hi = upper >> 16
    lo = ((upper & 0xFFFF) << 16) | (low_part & 0xFFFF)
    return hi, lo


def philox4x32(counter: Tensor, key: Tensor, rounds: int = _ROUNDS) -> Tensor:
    """Philox4x32 on int64 tensors holding uint32 values.

    Args:
        counter: ``(..., 4)`` int64 tensor, each value in ``[0, 2**32)``.
        key: ``(..., 2)`` int64 tensor broadcastable against ``counter[..., :2]``.
        rounds: number of rounds; 10 is the standard, crush-resistant choice.

    Returns:
        ``(..., 4)`` int64 tensor of uint32 output words.
    """
    if counter.shape[-1] != 4 or key.shape[-1] != 2:
        raise ValueError(
            f"philox4x32 expects counter (..., 4) and key (..., 2), got "
            f"{tuple(counter.shape)} and {tuple(key.shape)}"
        )
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key.unbind(-1)
    for round_index in range(rounds):
        if round_index:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack((c0, c1, c2, c3), dim=-1)


def as_u64(value: int, name: str) -> int:
    """``value`` as an int if it is an integer in ``[0, 2**64)``, else an error naming ``name``.

    Any integral type (``int``, ``numpy.int64``) is accepted; ``bool``, floats and
    strings are refused, so ``seed=True`` or ``seed=1.5`` never silently means 1.
    """
    if type(value) is int and 0 <= value < _SEED_SPACE:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {value!r}")
    value = int(value)
    if not 0 <= value < _SEED_SPACE:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def validate_seed(seed: Optional[int], name: str = "seed") -> Optional[int]:
    """``None`` (draw from torch's generator) or a checked 64-bit seed; for constructors
    and ``mc.predict``, so a bad seed fails where it is given, not at the first forward."""
    return None if seed is None else as_u64(seed, name)


def as_int64_bits(values: Sequence[int]) -> Tensor:
    """64-bit unsigned ints as an int64 tensor with the same bit patterns (for C and tensors)."""
    return torch.tensor([v - _SEED_SPACE if v >= 1 << 63 else v for v in values], dtype=torch.int64)


def cuda_capturing() -> bool:
    """Whether a CUDA graph is being captured on the current stream (no CUDA: ``False``)."""
    # is_initialized() first: capture needs CUDA, and it costs nothing without it.
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def draw_seed(generator: Optional[torch.Generator] = None) -> int:
    """Draw a 63-bit seed from ``generator`` (default: torch's global CPU generator).

    Drawing from torch's generator is what makes ``torch.manual_seed``
    reproduce a run, and what lets ``torch.utils.checkpoint`` (which restores
    that generator before recomputing) regenerate identical masks.

    Raises RuntimeError while a CUDA graph is being captured: a seed drawn on
    the host would be frozen into the graph and every replay would reuse one
    mask. ``dropkit.functional.dropout`` draws on the device there instead.
    """
    if cuda_capturing():
        raise RuntimeError(
            "dropkit: a seed drawn on the host inside a CUDA graph capture would be frozen "
            "into the graph (every replay would drop the same units); pass seed= "
            "explicitly, or use dropkit.functional.dropout / dropkit.Dropout / "
            "bias_dropout_add, which draw their seed on the device while capturing"
        )
    drawn = torch.randint(0, 2**63 - 1, (), dtype=torch.int64, generator=generator)
    # Under torch.func.vmap(randomness="different") the draw is a batched tensor
    # (one seed per batch entry) that has no single int value: take the first
    # entry. The op's vmap rule, not the seed, makes the entries' masks differ.
    while torch._C._functorch.is_batchedtensor(drawn):
        drawn = torch._C._functorch.get_unwrapped(drawn).reshape(-1)[0]
    return int(drawn)


def fold_seed(seed: int, *values: int) -> int:
    """Derive an independent 64-bit seed from ``seed`` and integers (rank, layer id, ...).

    Each value is mixed in with one Philox block keyed by the running seed, so
    ``fold_seed(s, rank)`` gives every rank its own reproducible stream.
    """
    seed = as_u64(seed, "seed")
    for value in values:
        value = as_u64(value, "fold value")
        counter = torch.tensor(
            [value & _MASK32, value >> 32, 0x6B657973, 0x666F6C64], dtype=torch.int64
        )
        key = torch.tensor([seed & _MASK32, seed >> 32], dtype=torch.int64)
        words = philox4x32(counter, key).tolist()
        seed = words[0] | (words[1] << 32)
    return seed


def keep_threshold(keep_prob: float) -> int:
    """The integer threshold that quantises ``keep_prob`` to a multiple of ``2**-16``."""
    if not 0.0 <= keep_prob <= 1.0 or math.isnan(keep_prob):
        raise ValueError(f"keep probability has to be between 0 and 1, but got {keep_prob}")
    return int(round(keep_prob * _KEEP_ONE))


def keep_scale(p: float) -> tuple[int, float, float]:
    """``(threshold, keep_prob, scale)`` for a drop probability ``p`` already checked.

    ``threshold = round((1 - p) * 2**16)``, the quantised keep probability
    ``threshold / 2**16`` and the unbiased survivor scale ``2**16 / threshold``
    (0 when everything is dropped). No check here: the ops validate ``p`` once,
    where it enters (:func:`dropkit.functional.validate_p`).
    """
    threshold = int(round((1.0 - p) * _KEEP_ONE))
    return threshold, threshold / _KEEP_ONE, (_KEEP_ONE / threshold if threshold else 0.0)


SeedLike = Union[int, Tensor]


def _key_words(value: SeedLike, name: str, device) -> tuple:
    # A 0-d int64 tensor (a seed drawn, or a stream counter read, inside a
    # torch.compile graph) stays a tensor so the graph has no data-dependent guard.
    if isinstance(value, Tensor):
        value = value.to(device=device, dtype=torch.int64)
        return value & _MASK32, (value >> 32) & _MASK32
    value = as_u64(value, name)
    return value & _MASK32, value >> 32


def _blocks(
    num_blocks: int, seed: SeedLike, offset: SeedLike, device: torch.device | str | None
) -> Tensor:
    seed_lo, seed_hi = _key_words(seed, "seed", device)
    offset_lo, offset_hi = _key_words(offset, "offset", device)
    block = torch.arange(num_blocks, dtype=torch.int64, device=device)
    zeros = torch.zeros_like(block)
    counter = torch.stack(
        (block & _MASK32, block >> 32, zeros + offset_lo, zeros + offset_hi), dim=-1
    )
    key = torch.stack((zeros[:1] + seed_lo, zeros[:1] + seed_hi), dim=-1)
    return philox4x32(counter, key)


def random_bits16(
    numel: int, seed: int, offset: int = 0, device: torch.device | str | None = None
) -> Tensor:
    """The first ``numel`` 16-bit lanes of stream ``(seed, offset)``, as int64."""
    return random_bits16_streams(numel, [seed], [offset], device)[0, 0]


def random_bits16_streams(
    numel: int,
    seeds: Sequence[int],
    offsets: Sequence[int],
    device: torch.device | str | None = None,
) -> Tensor:
    """Lanes of many streams at once, as int64 of shape ``(len(seeds), len(offsets), numel)``.

    Row ``(t, r)`` equals ``random_bits16(numel, seeds[t], offsets[r])``; one
    batched Philox evaluation replaces ``len(seeds) * len(offsets)`` calls.
    """
    seeds = [as_u64(s, "seed") for s in seeds]
    offsets = [as_u64(o, "offset") for o in offsets]
    blocks = -(-numel // 8)
    shape = (len(seeds), len(offsets), blocks)
    block = torch.arange(blocks, dtype=torch.int64, device=device)
    offset = torch.tensor(
        [[o & _MASK32, o >> 32] for o in offsets], dtype=torch.int64, device=device
    ).view(1, -1, 1, 2)
    counter = torch.cat(
        (
            torch.stack((block & _MASK32, block >> 32), dim=-1).expand(*shape, 2),
            offset.expand(*shape, 2),
        ),
        dim=-1,
    )
    key = torch.tensor(
        [[s & _MASK32, s >> 32] for s in seeds], dtype=torch.int64, device=device
    ).view(-1, 1, 1, 2)
    words = philox4x32(counter, key)
    lanes = torch.stack((words & 0xFFFF, words >> 16), dim=-1)
    return lanes.reshape(len(seeds), len(offsets), blocks * 8)[..., :numel]


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    threshold: int,
    seed: int,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boolean keep mask of ``shape``: element ``i`` (row-major) kept iff lane ``i < threshold``."""
    numel = math.prod(shape)
    return (random_bits16(numel, seed, offset, device) < threshold).reshape(shape)


def random_words(
    numel: int, seed: SeedLike, offset: SeedLike = 0, device: torch.device | str | None = None
) -> Tensor:
    """The first ``numel`` 32-bit words of stream ``(seed, offset)``, as int64."""
    return _blocks(-(-numel // 4), seed, offset, device).reshape(-1)[:numel]


def uniform(
    shape: torch.Size | tuple[int, ...],
    seed: SeedLike,
    offset: SeedLike = 0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform samples in ``[0, 1)`` with 24 random bits each.

    ``seed`` and ``offset`` may be 0-d int64 tensors (what compiled graphs pass).
    """
    words = random_words(torch.Size(shape).numel(), seed, offset, device)
    return ((words >> 8).to(torch.float64) * 2.0**-24).to(dtype).reshape(shape)


def normal(
    shape: torch.Size | tuple[int, ...],
    seed: SeedLike,
    offset: SeedLike = 0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal samples (Box-Muller on consecutive pairs of 32-bit words)."""
    numel = torch.Size(shape).numel()
    words = random_words(2 * (-(-numel // 2)), seed, offset, device).to(torch.float64)
    # (word + 1) / 2**32 lies in (0, 1], so the log never sees zero.
    u1 = (words[0::2] + 1.0) * 2.0**-32
    u2 = words[1::2] * 2.0**-32
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = 2.0 * math.pi * u2
    pairs = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)
    return pairs.reshape(-1)[:numel].to(dtype).reshape(shape)
