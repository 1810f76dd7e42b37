"""Dropout masks for distributed training: one stream per data-parallel rank,
one shared stream per tensor-parallel group, and masks that activation
checkpointing regenerates exactly.

The idea is Megatron-LM's CUDA RNG tracker (Shoeybi et al., 2019,
"Megatron-LM: training multi-billion parameter language models using model
parallelism", section 3) without depending on Megatron: named streams, entered
with ``with tracker.fork(name):``.

How a stream feeds dropkit
--------------------------
Every dropkit op with ``seed=None`` draws its Philox key from torch's default
CPU generator (:func:`dropkit.random.draw_seed`). ``fork(name)`` therefore
swaps that generator, and nothing in the ops has to know about ranks:

1. ``base = draw_seed()``: one draw from the generator current at entry (torch's
   default generator outside any fork). Seeded alike on every rank, it is the
   same on every rank and advances in lockstep.
2. ``stream_seed = fold_seed(base, stream_key)``, where ``stream_key`` is
   ``fold_seed(name_key, *keys)`` fixed at :meth:`RNGTracker.add` time
   (``name_key``: the first 8 bytes of BLAKE2b of the name, little-endian). The
   keys carry the group id (a digest of the group's member ranks) and, for a
   stream per rank, the rank within the group.
3. The default CPU generator is re-seeded with ``stream_seed`` for the body of
   the ``with`` block, and restored afterwards to its state just after step 1.
   When CUDA is initialised, the current device's generator is handled the same
   way with ``fold_seed(stream_seed, 1)``, so ``torch.nn.Dropout`` on GPU
   follows the stream too.

Because a stream is re-derived from the enclosing generator at every entry, the
tracker holds no generator state of its own: ``torch.utils.checkpoint``, which
saves and restores torch's generators around the recomputed forward, sees the
same draws whether the fork is inside or outside the checkpointed function, and
resuming training needs nothing beyond ``torch.get_rng_state()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from typing import NoReturn, Optional

import torch
import torch.distributed as dist

from dropkit.random import (
    _MASK32,
    _PHILOX_M0,
    _PHILOX_M1,
    _PHILOX_W0,
    _PHILOX_W1,
    _ROUNDS,
    draw_seed,
    fold_seed,
)

__all__ = ["RNGTracker", "exit_rank", "get_rng_tracker", "per_rank_seed"]

_SEED_SPACE = 1 << 64
# Fold value that separates the CUDA generator's seed from the CPU one's.
_CUDA_LANE = 1


def _fold_seed_scalar(seed: int, value: int) -> int:
    """``dropkit.random.fold_seed(seed, value)`` on Python ints.

    The tensor reference costs ~0.5 ms per call in small-op overhead; a fork
    folds once per entry, so the scalar twin keeps a fork at tens of
    microseconds. Tested bit for bit against the reference.
    """
    # The counter words spell "keys" and "fold", as in dropkit.random.fold_seed.
    c0, c1, c2, c3 = value & _MASK32, value >> 32, 0x6B657973, 0x666F6C64
    k0, k1 = seed & _MASK32, seed >> 32
    for round_index in range(_ROUNDS):
        if round_index:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        product0 = _PHILOX_M0 * c0
        product1 = _PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (product1 >> 32) ^ c1 ^ k0,
            product1 & _MASK32,
            (product0 >> 32) ^ c3 ^ k1,
            product0 & _MASK32,
        )
    return c0 | (c1 << 32)


def _name_key(name: str) -> int:
    # Python's hash() of a str is salted per process; ranks need a digest they agree on.
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _validate_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"stream name has to be a non-empty str, but got {name!r}")


def _validate_key(key: int) -> None:
    if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < _SEED_SPACE:
        raise ValueError(f"stream key has to be an int in [0, 2**64), but got {key!r}")


def _require_initialized(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{what} needs torch.distributed to be initialised (call "
            "torch.distributed.init_process_group first), or pass explicit keys to "
            "RNGTracker.add(name, *keys)"
        )


def _group_rank(group: Optional[dist.ProcessGroup]) -> int:
    rank = dist.get_rank(group)
    if rank < 0:
        raise RuntimeError(
            f"this process (global rank {dist.get_rank()}) is not a member of the group it "
            "passed; register group streams only on the group's members"
        )
    return rank


def _group_id(group: Optional[dist.ProcessGroup]) -> int:
    # A digest of the member list names a group identically on all of its members
    # and differently for any other member list, overlapping or not, without
    # communication.
    _group_rank(group)
    ranks = sorted(dist.get_process_group_ranks(group if group is not None else dist.group.WORLD))
    digest = hashlib.blake2b(("ranks:" + ",".join(map(str, ranks))).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def per_rank_seed(seed: int, group: Optional[dist.ProcessGroup] = None) -> int:
    """``fold_seed(seed, group_id, rank)``: a fixed seed made distinct per rank of ``group``.

    ``group_id`` identifies the group's member list, as in
    :meth:`RNGTracker.add_per_rank`, so ranks of different groups differ too.

    For modules built with an explicit ``seed=`` (those bypass the generator
    and hence :meth:`RNGTracker.fork`): ``Dropout(0.1, seed=per_rank_seed(42))``
    gives every data-parallel rank its own reproducible masks.
    """
    _require_initialized("per_rank_seed")
    return fold_seed(seed, _group_id(group), _group_rank(group))


class RNGTracker:
    """Named random streams for distributed training; ``fork(name)`` runs a block in one.

    A stream is a name plus integer keys. Ranks that register the same name
    with the same keys draw the same masks inside ``fork``; different keys give
    independent masks. Three ways to register one:

    * :meth:`add_per_rank`: one stream per rank of a group (data parallelism;
      activations sharded across tensor-parallel ranks).
    * :meth:`add_shared`: one stream for the whole group (activations that are
      replicated across a tensor-parallel group must be dropped identically).
    * :meth:`add`: explicit keys, for custom layouts or without ``torch.distributed``.

    Contract: every rank must seed torch alike (``torch.manual_seed(seed)``) and
    draw from torch's default generator equally often outside forks, so that
    the ``base`` draws agree; inside a fork each rank may draw what it likes.
    A fork nested in another derives from the enclosing stream, so the outer
    stream must be shared by at least the ranks that share the inner one.
    Forks swap process-global generators: not for concurrent use from threads.

    Example::

        >>> torch.manual_seed(0)                         # same on every rank
        >>> tracker = RNGTracker()
        >>> tracker.add_per_rank("data-parallel")        # rank folded into the key
        >>> with tracker.fork("data-parallel"):
        ...     loss = ddp_model(x).sum()                # masks differ per rank
    """

    def __init__(self) -> None:
        self._stream_keys: dict[str, int] = {}

    def add(self, name: str, *keys: int) -> None:
        """Register stream ``name`` keyed by ``keys`` (ints in ``[0, 2**64)``)."""
        _validate_name(name)
        for key in keys:
            _validate_key(key)
        if name in self._stream_keys:
            raise ValueError(f"stream {name!r} is already registered; use another name")
        self._stream_keys[name] = fold_seed(_name_key(name), *keys)

    def add_per_rank(self, name: str, group: Optional[dist.ProcessGroup] = None) -> None:
        """Register ``name`` with a distinct stream on every rank of ``group`` (default: world)."""
        _require_initialized("RNGTracker.add_per_rank")
        self.add(name, _group_id(group), _group_rank(group))

    def add_shared(self, name: str, group: Optional[dist.ProcessGroup] = None) -> None:
        """Register ``name`` with one stream shared by all ranks of ``group`` (default: world).

        Other groups get independent streams (the key is a digest of the member ranks).
        """
        _require_initialized("RNGTracker.add_shared")
        self.add(name, _group_id(group))

    def remove(self, name: str) -> None:
        """Forget stream ``name``."""
        self._stream_key(name)
        del self._stream_keys[name]

    @property
    def names(self) -> tuple[str, ...]:
        """Registered stream names, in registration order."""
        return tuple(self._stream_keys)

    def __contains__(self, name: object) -> bool:
        return name in self._stream_keys

    def _stream_key(self, name: str) -> int:
        try:
            return self._stream_keys[name]
        except KeyError:
            raise KeyError(
                f"unknown stream {name!r}; registered streams: {list(self._stream_keys)}"
            ) from None

    def stream_seed(self, name: str, base: int) -> int:
        """The seed stream ``name`` runs on for a given ``base`` draw (step 2 of the module doc)."""
        _validate_key(base)
        return _fold_seed_scalar(base, self._stream_key(name))

    @contextlib.contextmanager
    def fork(self, name: str) -> Iterator[None]:
        """Run the block with torch's default generator(s) on stream ``name``.

        Also usable as a decorator. Costs one draw from the enclosing generator.
        """
        stream_key = self._stream_key(name)
        stream_seed = _fold_seed_scalar(draw_seed(), stream_key)
        cpu = torch.default_generator
        cpu_state = cpu.get_state()
        cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        cuda_state = None if cuda_device is None else torch.cuda.get_rng_state(cuda_device)
        try:
            cpu.manual_seed(stream_seed)
            if cuda_device is not None:
                torch.cuda.default_generators[cuda_device].manual_seed(
                    _fold_seed_scalar(stream_seed, _CUDA_LANE)
                )
            yield
        finally:
            cpu.set_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, cuda_device)


_DEFAULT_TRACKER = RNGTracker()


def get_rng_tracker() -> RNGTracker:
    """The process-wide tracker, for layers that fork without having one passed in
    (like Megatron-LM's ``get_cuda_rng_tracker()``)."""
    return _DEFAULT_TRACKER


def exit_rank(code: int = 0) -> NoReturn:
    """End a data-parallel rank's process now, with ``code``, skipping the interpreter's
    finalization. Call it last, once everything the rank owes is written.

    Why: a ``DistributedDataParallel`` module keeps its gloo backend alive after
    ``destroy_process_group`` (torch 2.13: the worker threads outlive the module;
    checked with the threads' names in ``/proc/self/task``). Those threads still
    release finished collectives, whose tensors hold Python references, and
    releasing one takes the GIL; if Python is finalizing by then, the thread is
    unwound through C++ and the process aborts ("terminate called without an
    active exception", SIGABRT, after all its work was done). That happened to
    3 of 49 torchrun launches of the lab and 5 of 20 of ``examples/ddp_dropout.py``
    here (2026-12-01), and a core dump showed ``ProcessGroupGloo::runLoop``
    destroying a barrier's prior all-gather in ``take_gil``. pytorch/pytorch#179291
    describes the same race. Standard streams are flushed first; files and stores
    must be closed by the caller.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream must not keep us alive
            pass
    os._exit(code)
