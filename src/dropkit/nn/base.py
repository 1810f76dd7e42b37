"""What every dropkit module shares: ``seed=`` as a reproducible stream of masks.

With ``seed=None`` (the default) each training call draws a fresh seed from
torch's generator, so ``torch.manual_seed`` reproduces a run and
``torch.utils.checkpoint`` (which restores that generator) regenerates masks.

With ``seed=s`` the module owns the Philox stream ``s``: its masks take the
offsets ``0, 1, 2, ...`` of that stream in order, one per mask drawn, so
training call ``k`` of a one-mask module (``Dropout``, ``DropBlock2d``, ...)
draws the mask of ``(s, k)``, exactly ``dropkit.functional.dropout(x, p,
seed=s, offset=k)``. Modules drawing ``n`` masks per call (``Zoneout``: 2,
``WeightDrop``: one per weight) take offsets ``k*n .. k*n + n - 1``. Eval
calls draw nothing and do not advance the stream.

The position is the int64 buffer ``stream_offset`` (the next offset). It is
*not* in ``state_dict`` by default, so the keys stay those of the torch module
the class replaces; pass ``persist_stream=True`` to save and restore it with
the model, or use :func:`stream_state` / :func:`load_stream_state` to carry
the positions of a whole model in a checkpoint of your own. ``fixed_mask=True``
asks for the old behaviour explicitly: every call reuses the mask of ``(s, 0)``
(one fixed sub-network, e.g. to compare inputs under one sampled mask).

A seeded module is not meant for activation checkpointing: the recomputation
is another call and draws the next mask. Leave ``seed=None`` there. The buffer
moves with ``module.to(device)``; on a GPU, reading it in eager mode costs one
device sync per call (under ``torch.compile`` it stays on the device as data).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from dropkit import _ops
from dropkit.random import validate_seed

__all__ = ["SeedStream", "stream_state", "load_stream_state"]

_COUNTER = "stream_offset"


class SeedStream:
    """Mixin for ``nn.Module`` subclasses: the ``seed``/``fixed_mask`` knobs and the counter."""

    seed: Optional[int]
    fixed_mask: bool

    def _init_stream(
        self, seed: Optional[int], fixed_mask: bool = False, persist_stream: bool = False
    ) -> None:
        for name, value in (("fixed_mask", fixed_mask), ("persist_stream", persist_stream)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} has to be a bool, but got {value!r}")
        self.seed = validate_seed(seed)
        if fixed_mask and self.seed is None:
            raise ValueError("fixed_mask=True needs a seed: the fixed mask is that of (seed, 0)")
        self.fixed_mask = fixed_mask
        if self.seed is not None and not fixed_mask:
            self._register_counter(persist_stream)

    def _register_counter(self, persistent: bool) -> Tensor:
        counter = torch.zeros((), dtype=torch.int64)
        self.register_buffer(_COUNTER, counter, persistent=persistent)
        return counter

    def _next_offset(self, masks: int = 1) -> Union[int, Tensor]:
        """The offset of this call's first mask, advancing the stream by ``masks``."""
        if self.seed is None or self.fixed_mask:
            return 0
        counter = self._buffers.get(_COUNTER)
        if counter is None:
            # seed assigned after construction: start its stream now.
            counter = self._register_counter(persistent=False)
        if _ops.graph_building():
            # A tensor, so the compiled (or traced) graph reads the counter as data instead of
            # guarding on (and recompiling for) every value.
            offset = counter.clone()
            counter.add_(masks)
            return offset
        offset = int(counter)
        counter.fill_(offset + masks)
        return offset


def stream_state(model: nn.Module) -> dict[str, int]:
    """``{qualified name: next offset}`` of every seeded dropkit module of ``model``.

    Save it with a checkpoint and restore it with :func:`load_stream_state` so a
    resumed run continues each module's mask stream instead of repeating it.
    """
    return {
        name: int(module._buffers[_COUNTER])
        for name, module in model.named_modules()
        if isinstance(module, SeedStream) and module._buffers.get(_COUNTER) is not None
    }


def load_stream_state(model: nn.Module, state: dict[str, int]) -> None:
    """Set the stream positions saved by :func:`stream_state`; unknown names raise KeyError."""
    modules = dict(model.named_modules())
    for name, offset in state.items():
        module = modules.get(name)
        if not isinstance(module, SeedStream) or module.seed is None or module.fixed_mask:
            raise KeyError(f"load_stream_state: {name!r} is not a seeded dropkit module of model")
        counter = module._buffers.get(_COUNTER)
        if counter is None:
            counter = module._register_counter(persistent=False)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"load_stream_state: offset of {name!r} has to be an int >= 0, "
                             f"but got {offset!r}")
        counter.fill_(offset)
