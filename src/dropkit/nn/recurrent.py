"""Modules for recurrent and sequence models: the AWD-LSTM toolbox and Zoneout.

Thin wrappers over :mod:`dropkit.functional.recurrent` (and, for
:class:`WeightDrop`, the parameter masking of :mod:`dropkit.nn.weights`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from dropkit import _ops
from dropkit import functional as F
from dropkit.functional.checks import validate_index, validate_p
from dropkit.functional.recurrent import Sequenceish
from dropkit.nn.base import SeedStream
from dropkit.nn.weights import DroppedParameters
from dropkit.random import draw_seed

__all__ = ["LockedDropout", "WeightDrop", "EmbeddingDropout", "WordDropout", "Zoneout"]


class LockedDropout(SeedStream, nn.Module):
    """Variational (locked) dropout: one mask per sequence, shared by all time steps.

    Gal & Ghahramani (2016); AWD-LSTM applies it to the embedding output, between
    LSTM layers and before the decoder. See :func:`locked_dropout`.

    Shape: ``(T, B, *)`` or, with ``batch_first=True``, ``(B, T, *)``; ``(T, *)``
    unbatched; or a ``PackedSequence``. Output matches the input.

    Example::

        >>> drop = dropkit.LockedDropout(0.3)
        >>> out, _ = lstm(drop(embedded))
    """

    def __init__(
        self,
        p: float = 0.5,
        *,
        batch_first: bool = False,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        self.p = validate_p(p)
        self.batch_first = batch_first
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"

    def forward(self, input: Sequenceish) -> Sequenceish:
        return F.locked_dropout(
            input,
            self.p,
            self.training,
            batch_first=self.batch_first,
            seed=self.seed,
            offset=self._next_offset() if self.training else 0,
        )


_NONCONTIGUOUS_RNN_WARNING = ".*not part of single contiguous chunk of memory.*"


class WeightDrop(DroppedParameters):
    """DropConnect on named weights of a wrapped module, e.g. an LSTM's hidden-to-hidden matrix.

    Merity, Keskar & Socher (2018), "Regularizing and optimizing LSTM language
    models" (AWD-LSTM); DropConnect is Wan et al. (2013). One mask per forward
    pass is shared by every time step, which regularises the recurrence without
    touching cuDNN's fused kernel. Use ``p`` 0.2-0.5 on ``weight_hh_l{k}``.

    The module's parameters are never deleted or renamed: each training forward
    runs it through :func:`torch.func.functional_call` with masked copies, so
    ``state_dict``, ``deepcopy``, ``.to()`` and optimisers behave as usual and
    ``flatten_parameters`` is not needed.

    Args:
        module: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, ``nn.Linear`` or any module.
        weights: parameter names to drop (``module.named_parameters()`` keys).
        p: drop probability; survivors are scaled by ``1 / (1 - p)``.
        seed: fixed Philox seed (``None``: a new one from torch's generator per call).

    Shape: the wrapped module's; ``forward(*args, **kwargs)`` passes everything on.

    Example::

        >>> lstm = dropkit.WeightDrop(torch.nn.LSTM(400, 1150), ["weight_hh_l0"], p=0.5)
        >>> output, (h, c) = lstm(torch.randn(35, 20, 400))
    """

    def __init__(
        self,
        module: nn.Module,
        weights: Sequence[str] = ("weight_hh_l0",),
        p: float = 0.5,
        *,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__(module, weights, p, seed, fixed_mask, persist_stream)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training or self.p == 0.0:
            return self.module(*args, **kwargs)
        if not isinstance(self.module, nn.RNNBase):
            return self.forward_dropped(args, kwargs)
        # cuDNN warns when an RNN's weights are not one flat buffer; the masked
        # copies never are, and that is expected here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NONCONTIGUOUS_RNN_WARNING)
            return self.forward_dropped(args, kwargs)


class EmbeddingDropout(SeedStream, nn.Module):
    """An ``nn.Embedding`` whose vocabulary rows are dropped during training.

    Gal & Ghahramani (2016), embedding dropout as used by AWD-LSTM: drops whole
    words (every occurrence in the batch), survivors scaled by ``1 / (1 - p)``.
    See :func:`embedding_dropout`. The wrapped embedding keeps its parameters
    (``self.embedding.weight``), so tied decoders still work.

    Shape: integer ids ``(*)`` -> ``(*, D)``.

    Example::

        >>> emb = dropkit.EmbeddingDropout(torch.nn.Embedding(10_000, 400), p=0.1)
        >>> vectors = emb(torch.randint(0, 10_000, (35, 20)))   # (35, 20, 400)
    """

    def __init__(
        self,
        embedding: nn.Embedding,
        p: float = 0.1,
        *,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(
                f"EmbeddingDropout wraps an nn.Embedding, but got {type(embedding).__name__}"
            )
        self.embedding = embedding
        self.p = validate_p(p)
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, input: Tensor) -> Tensor:
        emb = self.embedding
        return F.embedding_dropout(
            input,
            emb.weight,
            self.p,
            self.training,
            padding_idx=emb.padding_idx,
            max_norm=emb.max_norm,
            norm_type=emb.norm_type,
            scale_grad_by_freq=emb.scale_grad_by_freq,
            sparse=emb.sparse,
            seed=self.seed,
            offset=self._next_offset() if self.training else 0,
        )


class WordDropout(SeedStream, nn.Module):
    """Replace input token ids by ``unk_index`` with probability ``p`` during training.

    Bowman et al. (2016); Iyyer et al. (2015). See :func:`word_dropout`. Put it
    before the embedding of text models; ``pad_index`` tokens are never replaced.

    Shape: integer ids of any shape; output has the same shape and dtype.

    Example::

        >>> drop = dropkit.WordDropout(0.1, unk_index=1, pad_index=0)
        >>> noisy_ids = drop(ids)
    """

    def __init__(
        self,
        p: float = 0.1,
        unk_index: Optional[int] = None,
        *,
        pad_index: Optional[int] = None,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        if unk_index is None:
            raise TypeError("WordDropout needs unk_index, the id that replaces dropped tokens")
        validate_index(unk_index, "unk_index")
        if pad_index is not None:
            validate_index(pad_index, "pad_index")
        self.p = validate_p(p)
        self.unk_index = unk_index
        self.pad_index = pad_index
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        return f"p={self.p}, unk_index={self.unk_index}, pad_index={self.pad_index}"

    def forward(self, input: Tensor) -> Tensor:
        return F.word_dropout(
            input,
            self.p,
            self.unk_index,
            self.training,
            pad_index=self.pad_index,
            seed=self.seed,
            offset=self._next_offset() if self.training else 0,
        )


class Zoneout(SeedStream, nn.Module):
    """Wrap an ``nn.LSTMCell``/``nn.GRUCell`` so units randomly keep their previous state.

    Krueger et al. (2017), "Zoneout". Use it in step-by-step RNN loops (speech,
    character LMs) where dropout on the state would erase memory. ``p_hidden``
    applies to ``h``; ``p_cell`` to an LSTM's ``c`` (ignored by a GRU). The
    hidden and cell masks are independent streams of one seed. With a ``seed``
    the masks of successive steps are a reproducible stream (two offsets per
    step, see :mod:`dropkit.nn.base`); ``None`` draws from torch's generator.

    Shape: as the cell: ``forward(input, state)`` with ``state`` ``(h, c)`` for
    an LSTM cell, ``h`` for a GRU cell, or ``None`` (zeros); returns the new state.

    Example::

        >>> cell = dropkit.Zoneout(torch.nn.LSTMCell(32, 64), p_hidden=0.05, p_cell=0.5)
        >>> state = None
        >>> for x_t in x:                       # x: (T, B, 32)
        ...     state = cell(x_t, state)
    """

    def __init__(
        self,
        cell: nn.Module,
        p_hidden: float = 0.1,
        p_cell: float = 0.1,
        *,
        seed: Optional[int] = None,
        fixed_mask: bool = False,
        persist_stream: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(cell, (nn.LSTMCell, nn.GRUCell)):
            raise TypeError(
                f"Zoneout wraps nn.LSTMCell or nn.GRUCell, but got {type(cell).__name__}"
            )
        self.cell = cell
        self.p_hidden = validate_p(p_hidden, "p_hidden")
        self.p_cell = validate_p(p_cell, "p_cell")
        self._init_stream(seed, fixed_mask, persist_stream)

    def extra_repr(self) -> str:
        return f"p_hidden={self.p_hidden}, p_cell={self.p_cell}"

    def _zero_state(self, input: Tensor) -> Tensor:
        shape = (*input.shape[:-1], self.cell.hidden_size)
        return torch.zeros(shape, dtype=input.dtype, device=input.device)

    def forward(
        self, input: Tensor, state: Union[Tensor, tuple[Tensor, Tensor], None] = None
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        seed, first = self.seed, 0
        if self.training:
            if seed is None and not _ops.graph_building():
                seed = draw_seed()
            # Two offsets per step (hidden, cell) for both cell kinds, so a stream
            # position means the same step whatever the cell.
            first = self._next_offset(2)
        if isinstance(self.cell, nn.LSTMCell):
            if state is None:
                state = (self._zero_state(input), self._zero_state(input))
            h, c = state
            h_new, c_new = self.cell(input, (h, c))
            return (
                F.zoneout(h, h_new, self.p_hidden, self.training, seed=seed, offset=first),
                F.zoneout(c, c_new, self.p_cell, self.training, seed=seed, offset=first + 1),
            )
        if state is None:
            state = self._zero_state(input)
        return F.zoneout(
            state, self.cell(input, state), self.p_hidden, self.training, seed=seed, offset=first
        )
