"""Dropout for recurrent and sequence models: the AWD-LSTM toolbox and Zoneout.

Naive dropout on an RNN samples a new mask at every time step, which destroys
the memory the recurrence carries. The variants here share one mask across time
(:class:`LockedDropout`, :class:`WeightDrop`), drop whole words
(:class:`EmbeddingDropout`, :class:`WordDropout`) or randomly keep the previous
state instead of zeroing (:class:`Zoneout`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as torch_F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from dropkit.functional import _validate_input, dropout, validate_p
from dropkit.nn.weights import _DroppedParameters, _forward_dropped
from dropkit.random import draw_seed

__all__ = [
    "locked_dropout",
    "embedding_dropout",
    "word_dropout",
    "zoneout",
    "LockedDropout",
    "WeightDrop",
    "EmbeddingDropout",
    "WordDropout",
    "Zoneout",
]

Sequenceish = Union[Tensor, PackedSequence]


def _locked_packed(
    packed: PackedSequence,
    p: float,
    seed: Optional[int],
    offset: int,
    generator: Optional[torch.Generator],
) -> PackedSequence:
    data = packed.data
    _validate_input(data, "locked_dropout")
    batch = int(packed.batch_sizes[0])
    ones = torch.ones((batch, *data.shape[1:]), dtype=data.dtype, device=data.device)
    mask = dropout(ones, p, seed=seed, offset=offset, generator=generator)
    # Time step t of the packed data holds the first batch_sizes[t] sequences in
    # sorted order; row r of the mask belongs to original sequence sorted_indices[r],
    # so packed and padded inputs with one seed get the same masks.
    rows = torch.cat([torch.arange(int(n)) for n in packed.batch_sizes]).to(data.device)
    if packed.sorted_indices is not None:
        rows = packed.sorted_indices[rows]
    return packed._replace(data=data * mask[rows])


def locked_dropout(
    input: Sequenceish,
    p: float = 0.5,
    training: bool = True,
    *,
    batch_first: bool = False,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Sequenceish:
    """Drop the same features at every time step of a sequence (variational dropout).

    Gal & Ghahramani (2016), "A theoretically grounded application of dropout in
    recurrent neural networks" (NeurIPS); used between the layers of AWD-LSTM
    (Merity, Keskar & Socher, 2018). Use it on the inputs/outputs of RNN layers
    instead of :class:`torch.nn.Dropout`, whose fresh mask per step is noise the
    recurrence cannot average out.

    Args:
        input: ``(T, B, H)`` (``batch_first=False``), ``(B, T, H)``
            (``batch_first=True``), an unbatched ``(T, H)``, or a
            :class:`~torch.nn.utils.rnn.PackedSequence`; any trailing feature
            shape is allowed.
        p: drop probability in ``[0, 1]``; survivors are scaled by ``1 / (1 - p)``.
        training: apply (``True``) or return ``input`` (``False``).
        batch_first: layout of a tensor input.
        seed, offset, generator: the Philox stream, see :func:`dropkit.functional.dropout`.

    Returns:
        The input's type and shape; one ``(B, H)`` mask shared over time.

    Example::

        >>> h = torch.randn(35, 20, 400)                    # (T, B, H)
        >>> y = locked_dropout(h, 0.3, seed=0)
        >>> bool(((y[0] == 0) == (y[-1] == 0)).all())
        True
    """
    p = validate_p(p)
    if not training or p == 0.0:
        return input
    if isinstance(input, PackedSequence):
        return _locked_packed(input, p, seed, offset, generator)
    _validate_input(input, "locked_dropout")
    if input.dim() < 2:
        raise ValueError(
            "locked_dropout expects a (T, B, H), (B, T, H) or (T, H) sequence, "
            f"but got shape {tuple(input.shape)}"
        )
    time_dim = 1 if batch_first and input.dim() > 2 else 0
    return dropout(
        input, p, broadcast_dims=(time_dim,), seed=seed, offset=offset, generator=generator
    )


def embedding_dropout(
    input: Tensor,
    weight: Tensor,
    p: float = 0.1,
    training: bool = True,
    *,
    padding_idx: Optional[int] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Look up embeddings with whole rows (words) dropped and survivors scaled by ``1/(1-p)``.

    Gal & Ghahramani (2016), section 4.1 ("embedding dropout"), as in AWD-LSTM's
    ``embedded_dropout``: a dropped word is zero at every position of the batch
    it occurs in, so the model cannot rely on any single word.

    Instead of masking the ``(V, D)`` matrix (AWD-LSTM's copy costs ``V*D`` per
    step) a ``(V,)`` row mask is drawn and gathered; outputs and gradients are
    the same as masking the matrix.

    Args:
        input: integer token ids of any shape.
        weight: ``(V, D)`` embedding matrix.
        p: probability of dropping a vocabulary row.
        Other keywords: as :func:`torch.nn.functional.embedding`, and the Philox stream.

    Returns:
        ``(*input.shape, D)``.

    Example::

        >>> emb = torch.nn.Embedding(10_000, 400)
        >>> vectors = embedding_dropout(torch.randint(0, 10_000, (35, 20)), emb.weight, 0.1)
    """
    p = validate_p(p)
    _validate_input(weight, "embedding_dropout")
    if weight.dim() != 2:
        raise ValueError(
            f"embedding_dropout expects a (V, D) weight, but got shape {tuple(weight.shape)}"
        )
    vectors = torch_F.embedding(
        input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse
    )
    if not training or p == 0.0:
        return vectors
    ones = torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device)
    row_mask = dropout(ones, p, seed=seed, offset=offset, generator=generator)
    return vectors * row_mask[input].unsqueeze(-1)


def word_dropout(
    input: Tensor,
    p: float,
    unk_index: int,
    training: bool = True,
    *,
    pad_index: Optional[int] = None,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Replace each token id by ``unk_index`` with probability ``p``.

    Bowman et al. (2016), "Generating sentences from a continuous space" and
    Iyyer et al. (2015), "Deep unordered composition rivals syntactic methods";
    also in Sennrich et al.'s NMT. Use it on the input ids of text models so they
    learn to cope with unknown words; unlike :func:`embedding_dropout` the
    replacement has a learned embedding (the ``<unk>`` vector) and nothing is rescaled.

    Args:
        input: integer token ids of any shape.
        p: replacement probability in ``[0, 1]``.
        unk_index: id written in place of dropped tokens.
        training: apply (``True``) or return ``input`` (``False``).
        pad_index: id that is never replaced (padding).
        seed, offset, generator: the Philox stream.

    Example::

        >>> ids = torch.randint(4, 100, (8, 12))
        >>> noisy = word_dropout(ids, 0.1, unk_index=1, pad_index=0, seed=0)
    """
    p = validate_p(p)
    if not isinstance(input, Tensor) or input.is_floating_point() or input.is_complex():
        kind = input.dtype if isinstance(input, Tensor) else type(input).__name__
        raise TypeError(f"word_dropout expects an integer tensor of token ids, but got {kind}")
    _validate_index(unk_index, "unk_index")
    if pad_index is not None:
        _validate_index(pad_index, "pad_index")
    if not training or p == 0.0 or input.numel() == 0:
        return input
    ones = torch.ones(input.shape, dtype=torch.float32, device=input.device)
    dropped = dropout(ones, p, mode="classic", seed=seed, offset=offset, generator=generator) == 0
    if pad_index is not None:
        dropped &= input != pad_index
    return input.masked_fill(dropped, unk_index)


def _validate_index(index: int, name: str) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{name} has to be a non-negative int token id, but got {index!r}")


def zoneout(
    previous: Tensor,
    candidate: Tensor,
    p: float = 0.1,
    training: bool = True,
    *,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Keep each unit's previous state with probability ``p``, else take the new one.

    Krueger et al. (2017), "Zoneout: Regularizing RNNs by randomly preserving
    hidden activations" (ICLR). Training: ``d * previous + (1 - d) * candidate``
    with ``d ~ Bernoulli(p)``; inference uses the expectation
    ``p * previous + (1 - p) * candidate``. Gradients reach both states, so
    zoneout, unlike dropout on the state, keeps the gradient path through time.

    Example::

        >>> h_next = zoneout(h, cell(x, h), p=0.1, seed=0)
    """
    p = validate_p(p)
    _validate_input(candidate, "zoneout")
    if previous.shape != candidate.shape:
        raise ValueError(
            f"zoneout expects previous and candidate states of one shape, but got "
            f"{tuple(previous.shape)} and {tuple(candidate.shape)}"
        )
    if p == 0.0:
        return candidate
    if not training:
        return torch.lerp(candidate, previous, p)
    ones = torch.ones(candidate.shape, dtype=candidate.dtype, device=candidate.device)
    update = dropout(ones, p, mode="classic", seed=seed, offset=offset, generator=generator)
    # Written as a convex mix, not previous + update * (candidate - previous), so a
    # unit takes exactly one of the two states.
    return update * candidate + (1.0 - update) * previous


class LockedDropout(nn.Module):
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
        self, p: float = 0.5, *, batch_first: bool = False, seed: Optional[int] = None
    ) -> None:
        super().__init__()
        self.p = validate_p(p)
        self.batch_first = batch_first
        self.seed = seed

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"

    def forward(self, input: Sequenceish) -> Sequenceish:
        return locked_dropout(
            input, self.p, self.training, batch_first=self.batch_first, seed=self.seed
        )


_NONCONTIGUOUS_RNN_WARNING = ".*not part of single contiguous chunk of memory.*"


class WeightDrop(_DroppedParameters):
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
    ) -> None:
        super().__init__(module, weights, p, seed)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training or self.p == 0.0:
            return self.module(*args, **kwargs)
        if not isinstance(self.module, nn.RNNBase):
            return _forward_dropped(self.module, self.weights, self.p, self.seed, args, kwargs)
        # cuDNN warns when an RNN's weights are not one flat buffer; the masked
        # copies never are, and that is expected here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NONCONTIGUOUS_RNN_WARNING)
            return _forward_dropped(self.module, self.weights, self.p, self.seed, args, kwargs)


class EmbeddingDropout(nn.Module):
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
        self, embedding: nn.Embedding, p: float = 0.1, *, seed: Optional[int] = None
    ) -> None:
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(
                f"EmbeddingDropout wraps an nn.Embedding, but got {type(embedding).__name__}"
            )
        self.embedding = embedding
        self.p = validate_p(p)
        self.seed = seed

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, input: Tensor) -> Tensor:
        emb = self.embedding
        return embedding_dropout(
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
        )


class WordDropout(nn.Module):
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
    ) -> None:
        super().__init__()
        if unk_index is None:
            raise TypeError("WordDropout needs unk_index, the id that replaces dropped tokens")
        _validate_index(unk_index, "unk_index")
        if pad_index is not None:
            _validate_index(pad_index, "pad_index")
        self.p = validate_p(p)
        self.unk_index = unk_index
        self.pad_index = pad_index
        self.seed = seed

    def extra_repr(self) -> str:
        return f"p={self.p}, unk_index={self.unk_index}, pad_index={self.pad_index}"

    def forward(self, input: Tensor) -> Tensor:
        return word_dropout(
            input, self.p, self.unk_index, self.training, pad_index=self.pad_index, seed=self.seed
        )


class Zoneout(nn.Module):
    """Wrap an ``nn.LSTMCell``/``nn.GRUCell`` so units randomly keep their previous state.

    Krueger et al. (2017), "Zoneout". Use it in step-by-step RNN loops (speech,
    character LMs) where dropout on the state would erase memory. ``p_hidden``
    applies to ``h``; ``p_cell`` to an LSTM's ``c`` (ignored by a GRU). The
    hidden and cell masks are independent streams of one seed. With a fixed
    ``seed`` every call reuses the same masks; leave it ``None`` (torch's
    generator, so ``torch.manual_seed`` reproduces a run) to get new masks per step.

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
    ) -> None:
        super().__init__()
        if not isinstance(cell, (nn.LSTMCell, nn.GRUCell)):
            raise TypeError(
                f"Zoneout wraps nn.LSTMCell or nn.GRUCell, but got {type(cell).__name__}"
            )
        self.cell = cell
        self.p_hidden = validate_p(p_hidden, "p_hidden")
        self.p_cell = validate_p(p_cell, "p_cell")
        self.seed = seed

    def extra_repr(self) -> str:
        return f"p_hidden={self.p_hidden}, p_cell={self.p_cell}"

    def _zero_state(self, input: Tensor) -> Tensor:
        shape = (*input.shape[:-1], self.cell.hidden_size)
        return torch.zeros(shape, dtype=input.dtype, device=input.device)

    def forward(
        self, input: Tensor, state: Union[Tensor, tuple[Tensor, Tensor], None] = None
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        seed = self.seed
        if self.training and seed is None:
            seed = draw_seed()
        if isinstance(self.cell, nn.LSTMCell):
            if state is None:
                state = (self._zero_state(input), self._zero_state(input))
            h, c = state
            h_new, c_new = self.cell(input, (h, c))
            return (
                zoneout(h, h_new, self.p_hidden, self.training, seed=seed, offset=0),
                zoneout(c, c_new, self.p_cell, self.training, seed=seed, offset=1),
            )
        if state is None:
            state = self._zero_state(input)
        return zoneout(state, self.cell(input, state), self.p_hidden, self.training, seed=seed)
