"""dropkit's RNG contract written with ``keras.ops``: the same bits on every backend.

Philox4x32-10 (Salmon et al., 2011) with the counter layout of
:mod:`dropkit.random`: block ``b`` of stream ``(seed, offset)`` is
``philox(counter=(b lo, b hi, offset lo, offset hi), key=(seed lo, seed hi))``,
and element ``i`` reads 16-bit lane ``i % 8`` of block ``i // 8``.

Only 32-bit unsigned arithmetic is used: JAX runs without 64-bit types by
default, so the 32x32 -> 64-bit product that Philox needs comes from the
backend's own multiply-high where it has one (``jax.lax.mulhi``; NumPy's uint64)
and is otherwise assembled from four 16x16-bit partial products, each exact in
uint32 (tests/keras3 check every path against the torch ops). Seed and offset are
tensors (never Python state), so the functions trace under ``jax.jit`` and
``tf.function`` and a traced graph does not freeze one mask.
"""

from __future__ import annotations

import functools

import keras
from keras import ops

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10
_LOW16 = 0xFFFF
_MASK32 = 0xFFFFFFFF


def u32(value):
    """``value`` (a Python int, array or tensor) as a uint32 tensor."""
    return ops.convert_to_tensor(value, dtype="uint32") if not _is_u32(value) else value


def _is_u32(value) -> bool:
    return hasattr(value, "dtype") and "uint32" in str(value.dtype)


def _mulhilo(multiplier: int, value):
    """``(hi, lo)``: the high and low 32-bit words of ``multiplier * value``."""
    backend = keras.backend.backend()
    if backend == "jax":
        fast = _jax_mulhilo()
        if fast is not None:
            return fast(multiplier, value)
    elif backend == "numpy":
        import numpy as np

        wide = np.asarray(value, dtype=np.uint64) * np.uint64(multiplier)
        return (wide >> np.uint64(32)).astype(np.uint32), wide.astype(np.uint32)
    return _mulhilo_16(multiplier, value)


@functools.lru_cache(maxsize=1)
def _jax_mulhilo():
    import jax
    import jax.numpy as jnp

    mulhi = getattr(jax.lax, "mulhi", None)  # jax >= 0.6; older ones take the 16-bit path
    if mulhi is None:
        return None

    def mulhilo(multiplier: int, value):
        m = jnp.uint32(multiplier)
        return mulhi(value, jnp.broadcast_to(m, value.shape)), value * m

    return mulhilo


def _mulhilo_16(multiplier: int, value):
    m_lo, m_hi = u32(multiplier & _LOW16), u32(multiplier >> 16)
    v_lo, v_hi = ops.bitwise_and(value, u32(_LOW16)), ops.right_shift(value, u32(16))
    p00 = ops.multiply(v_lo, m_lo)
    p01 = ops.multiply(v_hi, m_lo)
    p10 = ops.multiply(v_lo, m_hi)
    p11 = ops.multiply(v_hi, m_hi)
    # The middle 16-bit column: at most 3 * (2**16 - 1), so no overflow.
    middle = (
        ops.right_shift(p00, u32(16))
        + ops.bitwise_and(p01, u32(_LOW16))
        + ops.bitwise_and(p10, u32(_LOW16))
    )
    lo = ops.bitwise_or(
        ops.bitwise_and(p00, u32(_LOW16)),
        ops.left_shift(ops.bitwise_and(middle, u32(_LOW16)), u32(16)),
    )
    hi = (
        p11
        + ops.right_shift(p01, u32(16))
        + ops.right_shift(p10, u32(16))
        + ops.right_shift(middle, u32(16))
    )
    return hi, lo


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = _ROUNDS):
    """Philox4x32 on uint32 tensors (counters broadcast against the scalar key words)."""
    for round_index in range(rounds):
        if round_index:
            k0 = k0 + u32(_W0)
            k1 = k1 + u32(_W1)
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = (
            ops.bitwise_xor(ops.bitwise_xor(hi1, c1), k0),
            lo1,
            ops.bitwise_xor(ops.bitwise_xor(hi0, c3), k1),
            lo0,
        )
    return c0, c1, c2, c3


def split_u64(value: int) -> tuple[int, int]:
    """The low and high 32-bit words of a 64-bit Python int."""
    return value & _MASK32, (value >> 32) & _MASK32


def random_bits16(numel: int, key, counter_hi):
    """The first ``numel`` 16-bit lanes of a stream, as a uint32 vector.

    Args:
        numel: number of lanes (a Python int: shapes are static under a trace).
        key: ``(k0, k1)``, the seed's two 32-bit words (ints or uint32 tensors).
        counter_hi: ``(o0, o1)``, the offset's two 32-bit words.
    """
    blocks = -(-numel // 8)
    # TensorFlow has no uint32 range op: count in int32, which bounds a call to 2**34 lanes.
    if blocks >= 1 << 31:
        raise ValueError(
            f"dropkit.keras draws at most 2**34 lanes per call, but {numel} were asked for"
        )
    words = [u32(k) for k in key] + [u32(o) for o in counter_hi]
    if keras.backend.backend() == "jax":
        # Eager JAX dispatches each of Philox's ~200 elementwise ops on its own; one
        # jitted program per size runs them fused, and inside an outer jax.jit it inlines.
        return _jitted_lanes(numel)(*words)
    return _lanes(numel, *words)


@functools.lru_cache(maxsize=64)
def _jitted_lanes(numel: int):
    import jax

    return jax.jit(functools.partial(_lanes, numel))


def _lanes(numel: int, k0, k1, o0, o1):
    blocks = -(-numel // 8)
    block = ops.cast(ops.arange(blocks, dtype="int32"), "uint32")
    zero = ops.zeros_like(block)
    words = philox4x32(block, zero, zero + o0, zero + o1, k0, k1)
    lanes = []
    for word in words:
        lanes.append(ops.bitwise_and(word, u32(_LOW16)))
        lanes.append(ops.right_shift(word, u32(16)))
    return ops.reshape(ops.stack(lanes, axis=-1), (-1,))[:numel]
